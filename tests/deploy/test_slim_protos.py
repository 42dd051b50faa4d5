"""The gateway image carries no TensorFlow runtime: prove the slim proto tree is enough.

Builds the tree from the installed TensorFlow exactly as the Dockerfile does from the wheel,
then, in a fresh interpreter whose `tensorflow` package can only be the slim one, imports
TF Serving's gRPC API and our gRPC backend.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ROOT

SLIM = DEPLOY / "gateway" / "slim_protos.py"
SRC = ROOT / "src"
MODULES = [
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
    "service.settings",
    "model_builder.manifest",
]
# Gateway modules that must load without TensorFlow, once their branches are merged.
OPTIONAL = ["service.backends.tfserving", "service.app"]

PROBE = """
import importlib, json, sys
slim, src, site = sys.argv[1:4]
stdlib = [p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p]
sys.path[:] = [slim, src, site, *stdlib]
loaded = []
for name in json.loads(sys.argv[4]):
    importlib.import_module(name)
    loaded.append(name)
import tensorflow
leaks = sorted(
    k for k, m in sys.modules.items()
    if k.split(".")[0] in ("tensorflow", "keras")
    and not (getattr(m, "__file__", None) or slim).startswith(slim)
)
print(json.dumps({"tensorflow": tensorflow.__file__, "leaks": leaks, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def slim_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("tensorflow") is None:  # find, not import: TF is slow to load
        pytest.skip("the slim tree is cut from an installed TensorFlow")
    out = tmp_path_factory.mktemp("slim")
    site = sysconfig.get_path("purelib")
    result = subprocess.run(
        [sys.executable, str(SLIM), site, str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return out


def probe(slim: Path, modules: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(slim),
            str(SRC),
            sysconfig.get_path("purelib"),
            json.dumps(modules),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_tree_is_small_and_only_protos(slim_tree: Path) -> None:
    files = [p for p in slim_tree.rglob("*.py") if p.name != "__init__.py"]
    assert files and all(p.name.endswith("_pb2.py") for p in files)
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    assert (slim_tree / "tensorflow" / "core" / "framework" / "tensor_pb2.py").exists()
    assert (slim_tree / "tensorflow" / "__init__.py").read_text() == ""


def test_client_api_imports_without_tensorflow(slim_tree: Path) -> None:
    report = probe(slim_tree, MODULES)
    assert str(report["tensorflow"]).startswith(str(slim_tree))
    assert report["leaks"] == []


def test_keras_cannot_sneak_in(slim_tree: Path) -> None:
    # The check has teeth: anything needing the real runtime fails in this interpreter.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(slim_tree),
            str(SRC),
            sysconfig.get_path("purelib"),
            json.dumps(["tensorflow.python.framework.ops"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("module", OPTIONAL)
def test_gateway_modules_import_without_tensorflow(slim_tree: Path, module: str) -> None:
    path = SRC / Path(*module.split("."))
    if not path.with_suffix(".py").exists():
        pytest.skip(f"{module} is not on this branch yet (branches backends/gateway)")
    report = probe(slim_tree, [module])
    assert report["leaks"] == []
