"""Shared pieces for loadtest tests: a local gateway look-alike and a ready-made target."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.payloads import Image, build_http_requests
from loadtest.results import Generator, Latency, StepResult
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


def step_result(**fields: Any) -> StepResult:
    """A StepResult with plausible values (open loop, 100 req/s, all ok); `fields` override."""
    p99 = fields.pop("p99_ms", 40.0)
    latency = Latency(
        100, 1.0, 10.0, {50.0: 10.0, 90.0: 20.0, 95.0: 30.0, 99.0: p99, 99.9: p99}, p99
    )
    base: dict[str, Any] = {
        "mode": "open", "offered_rate": 100.0, "arrival": "constant", "concurrency": None,
        "warmup_s": 0.0, "started_at": 0.0, "window_s": 1.0, "elapsed_s": 1.0, "requests": 100,
        "ok": 100, "errors": 0, "error_rate": 0.0, "throughput_rps": 100.0,
        "latency_ms": latency if p99 is not None else Latency(), "status_counts": {"200": 100},
        "transport_errors": {}, "error_details": {}, "stages_ms": {}, "schedule": None,
        "timeseries": (), "generator": Generator(0.01, 100.0),
    }  # fmt: skip
    return StepResult(**{**base, **fields})


@pytest.fixture
def make_step() -> Callable[..., StepResult]:
    """`make_step(p99_ms=60.0, error_rate=0.05, ...)` -> a StepResult (see step_result)."""
    return step_result
