"""The gateway installed from its extra alone: no TensorFlow, and it serves over gRPC.

What the gateway image does (`pip install './[gateway]'`), done here in a fresh virtual
environment: the project's packages are copied to a temporary folder and installed with the
`gateway` extra only. That environment must not be able to import TensorFlow at all, and a
gateway started from it must classify an image through the local stand-in (which runs in
this environment, with TensorFlow). Slow: pip resolves and installs the gateway's wheels.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import MODEL_NAME, GatewayModel, png, random_images
from tests.service.procs import Proc, child_env, free_port, start_standin, wait_status
from tests.test_architecture import ROOMS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOMS  # every room: the CLI's parser imports each one's `cli`

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the project with the `gateway` extra and nothing else."""
    base = tmp_path_factory.mktemp("gateway-extra")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"{src}[gateway]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return python


def test_the_gateway_extra_brings_no_tensorflow(gateway_venv: Path) -> None:
    code = (
        "import importlib.util as u, service.app, service.backends.tfserving, loadtest.targets\n"
        "print([m for m in ('tensorflow', 'keras', 'tensorflow_serving') if u.find_spec(m)])"
    )
    result = subprocess.run([str(gateway_venv), "-c", code], capture_output=True, text=True,
                            cwd="/", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_gateway_extra_serves_through_tf_serving_grpc(
    gateway_venv: Path, gateway_model: GatewayModel, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    standin = start_standin(gateway_model.model_base, grpc_port)
    env = child_env(backend="tfserving", tfserving_address=f"127.0.0.1:{grpc_port}",
                    model_base_path=gateway_model.model_base, model_name=MODEL_NAME)  # fmt: skip
    env.pop("PYTHONPATH")  # the venv's own installed copy, not this checkout
    gateway = Proc([str(gateway_venv), "-m", "resnet_serving", "serve", "--port", str(http_port)],
                   env, cwd=tmp_path)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_status(f"{url}/readyz", 200, 120)
        [image] = random_images(1, seed=3)
        reply = httpx.post(f"{url}/v1/classify", files={"image": ("a.png", png(image))},
                           timeout=30)  # fmt: skip
        assert reply.status_code == 200, reply.text
        scores = {s["class_id"]: s["score"] for s in reply.json()["predictions"][0]["top_k"]}
        expected = gateway_model.reference(image[None])[0]
        for class_id, score in scores.items():
            assert abs(score - float(expected[class_id])) < 1e-4
        # The demo page's files are package data: they must be in the installed copy too.
        for path, media_type in (("/", "text/html"), ("/static/app.js", "text/javascript")):
            page = httpx.get(url + path, timeout=10)
            assert page.status_code == 200 and page.headers["content-type"].startswith(media_type)
    finally:
        assert gateway.stop() == 0, gateway.output
        standin.stop()
