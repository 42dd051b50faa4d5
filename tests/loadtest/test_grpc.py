"""`loadtest run --grpc` against the local stand-in for TF Serving (real gRPC, real model)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testdoubles.standin import StandIn

CliFn = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    server = StandIn(exported_model.model_base, exported_model.name, port=0).start()
    try:
        yield server
    finally:
        server.stop()


def _run(cli: CliFn, out: Path, *args: str) -> dict[str, Any]:
    proc = cli("run", *args, "--grpc-size", "8x8", "--gen-size", "16x16", "--warmup", "0",
               "--requests", "20", "--out", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads((out / "result.json").read_text())
    return doc


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_closed_loop_completes(
    standin: StandIn, cli: CliFn, tmp_path: Path, workers: str
) -> None:
    doc = _run(cli, tmp_path, "--grpc", standin.address, "--model", "tiny", "--concurrency", "2",
               "--workers", workers)  # fmt: skip
    step = doc["steps"][0]
    assert doc["target"]["kind"] == "grpc" and doc["target"]["input_shape"] == [1, 8, 8, 3]
    assert step["ok"] == step["requests"] == 20 and step["errors"] == 0
    assert step["status_counts"] == {"OK": 20}


def test_grpc_wrong_model_is_counted_not_a_crash(
    standin: StandIn, cli: CliFn, tmp_path: Path
) -> None:
    doc = _run(cli, tmp_path, "--grpc", standin.address, "--model", "nope", "--concurrency", "2")
    step = doc["steps"][0]
    assert step["ok"] == 0 and step["errors"] == step["requests"] == 20
    assert step["status_counts"] == {"NOT_FOUND": 20}
    assert step["transport_errors"] == {}
