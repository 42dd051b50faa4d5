"""`loadtest run --grpc` against the local stand-in for TF Serving (real gRPC, real model).

The tiny exported model takes uint8 [?, 8, 8, 3]: the load tester must read that from the
server's signature (GetModelMetadata), and say what the server answered when it fails.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from loadtest.engine import run_step
from loadtest.plan import StepSpec
from loadtest.report import print_summary
from loadtest.results import RunResult
from loadtest.targets import GrpcTarget
from testdoubles.standin import StandIn

CliFn = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    server = StandIn(exported_model.model_base, exported_model.name, port=0).start()
    try:
        yield server
    finally:
        server.close()


def _run(cli: CliFn, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("run", *args, "--gen-size", "16x16", "--warmup", "0", "--requests", "20",
               "--out", str(out), "--quiet")  # fmt: skip


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_reads_the_input_size_from_the_server(
    standin: StandIn, cli: CliFn, tmp_path: Path, workers: str
) -> None:
    """No --grpc-size: 16x16 images are sent at the served 8x8 (the default once was 224x224,
    and every request failed with INVALID_ARGUMENT)."""
    proc = _run(cli, tmp_path, "--grpc", standin.address, "--model", "tiny", "--concurrency", "2",
                "--workers", workers)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    step = doc["steps"][0]
    assert doc["target"]["kind"] == "grpc" and doc["target"]["input_shape"] == [1, 8, 8, 3]
    assert step["ok"] == step["requests"] == 20 and step["errors"] == 0
    assert step["status_counts"] == {"OK": 20} and step["error_details"] == {}


@pytest.mark.parametrize(
    "args, needle",
    [
        # The model is looked up before any request: the server's own words, in one line.
        (["--model", "nope"], "cannot describe model 'nope' (NOT_FOUND: Servable not found"),
        # --grpc-size only fills sizes the signature leaves open.
        (["--model", "tiny", "--grpc-size", "224x224"], "--grpc-size must match the served input [?,8,8,3]"),
    ],
)  # fmt: skip
def test_grpc_refuses_what_the_server_cannot_take(
    standin: StandIn, cli: CliFn, tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = _run(cli, tmp_path, "--grpc", standin.address, *args, "--concurrency", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "result.json").exists()


def test_grpc_unreachable_is_one_line(cli: CliFn, tmp_path: Path) -> None:
    proc = _run(
        cli, tmp_path, "--grpc", "127.0.0.1:1", "--concurrency", "1", "--connect-timeout", "1"
    )
    assert proc.returncode == 2 and "cannot reach TF Serving at 127.0.0.1:1" in proc.stderr, (
        proc.stderr
    )


async def test_failed_requests_show_what_the_server_said(standin: StandIn) -> None:
    """Requests the server refuses are counted by code *and* text, once per distinct text,
    and the summary prints that text (not only `INVALID_ARGUMENT: 20`)."""
    wrong = [np.zeros((1, 16, 16, 3), dtype=np.uint8)]  # the model takes 8x8
    target = GrpcTarget(standin.address, "tiny", wrong, signature="serving_default",
                        input_name="images")  # fmt: skip
    try:
        await target.check()
        step = await run_step(target, StepSpec(concurrency=2, requests=20, duration_s=None))
    finally:
        await target.close()
    assert step.status_counts == {"INVALID_ARGUMENT": 20}
    ((text, count),) = step.error_details.items()
    assert count == 20 and text.startswith(
        "INVALID_ARGUMENT: input images has shape [1, 16, 16, 3]"
    )
    console = Console(record=True, width=200)
    print_summary(RunResult(target={"address": standin.address}, options={}, steps=[step]), console)
    shown = console.export_text()
    assert "INVALID_ARGUMENT: input images has shape [1, 16, 16, 3]" in shown and "20 x" in shown
