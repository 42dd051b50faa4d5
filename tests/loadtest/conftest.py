"""Shared pieces for loadtest tests: a local gateway look-alike and a ready-made target."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtest.payloads import Image, build_http_requests
from loadtest.targets import HttpTarget

TINY = [Image("a.jpg", b"\xff\xd8" + b"x" * 500, "image/jpeg")]


def http_target(port: int, max_connections: int = 1000) -> HttpTarget:
    reqs = build_http_requests(TINY, host=f"127.0.0.1:{port}", path="/v1/classify", per_request=1)
    return HttpTarget(
        f"http://127.0.0.1:{port}", reqs, max_connections=max_connections, connect_timeout=2.0
    )


@pytest.fixture
def make_target() -> Callable[..., HttpTarget]:
    """`make_target(port)` -> an HttpTarget posting a tiny JPEG to /v1/classify."""
    return http_target


ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A look-alike gateway (echo_server) in its own process, for CLI runs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "testdoubles.echo_server", "--port", str(port)], env=ENV,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resnet_serving", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV)  # fmt: skip


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`cli("run", URL, ...)`: `resnet-serving loadtest ...` in a subprocess, output captured."""
    return run_cli
