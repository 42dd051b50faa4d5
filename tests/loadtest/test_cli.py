"""The CLI end to end against a local look-alike server: outputs, compare, sweep, errors."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.report import SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from loadtest.results import SCHEMA

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resnet_serving", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV)  # fmt: skip


@pytest.fixture(scope="module")
def two_results(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("b")
    ra = cli("run", server_url, "--rates", "20,40", "--duration", "1", "--warmup", "0.2",
             "--gen-size", "64x48", "--out", str(a), "--quiet")  # fmt: skip
    assert ra.returncode == 0, ra.stderr
    rb = cli("run", server_url, "--concurrency", "2", "--requests", "50", "--warmup", "0",
             "--gen-size", "32x32", "--gen-format", "png", "--out", str(b), "--quiet")  # fmt: skip
    assert rb.returncode == 0, rb.stderr
    return a, b


def test_outputs_follow_the_schema(two_results: tuple[Path, Path]) -> None:
    a, b = two_results
    doc = json.loads((a / "result.json").read_text())
    assert doc["schema"] == SCHEMA
    assert [s["offered_rate"] for s in doc["steps"]] == [20.0, 40.0]
    for step in doc["steps"]:
        assert step["mode"] == "open" and step["ok"] == step["requests"] > 0
        assert set(step["latency_ms"]) >= {
            "p50_ms",
            "p90_ms",
            "p95_ms",
            "p99_ms",
            "p99.9_ms",
            "max_ms",
        }
        assert set(step["stages_ms"]) == {"decode", "queue", "backend", "total"}
        assert step["status_counts"] == {"200": step["requests"]}
        assert step["timeseries"] and step["schedule"] is not None
    with (a / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SUMMARY_COLUMNS and len(rows) == 2
    with (a / "timeseries.csv").open() as f:
        assert list(next(csv.DictReader(f))) == TIMESERIES_COLUMNS
    for png in ("latency_vs_load.png", "latency_over_time.png"):
        assert (a / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    closed = json.loads((b / "result.json").read_text())["steps"][0]
    assert closed["mode"] == "closed" and closed["concurrency"] == 2 and closed["ok"] == 50


def test_compare_gives_ratios(two_results: tuple[Path, Path]) -> None:
    a, b = two_results
    proc = cli("compare", str(a / "result.json"), str(b / "result.json"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_metric = {r["metric"]: r for r in rows if r["step"] == 0}
    tp = by_metric["throughput_rps"]
    assert tp["ratio"] == pytest.approx(tp["b"] / tp["a"], rel=1e-2)
    assert len(rows) == len(by_metric)  # b has one step: only step 0 is paired
    table = cli("compare", str(a / "result.json"), str(b / "result.json"))
    assert "B/A" in table.stdout and "p99_ms" in table.stdout


def test_sweep_launches_gateway_per_setting_and_writes_env(tmp_path: Path) -> None:
    port = free_port()
    cmd = f"{sys.executable} -m testdoubles.echo_server --from-env"
    # Wide margins: on the shared 2-core machine a generator stall of tens of ms is common.
    proc = cli("sweep", f"http://127.0.0.1:{port}", "--rate", "50", "--p99-target-ms", "450",
               "--max-batch", "8,16", "--max-wait-ms", "500,5", "--cmd", cmd, "--duration", "1",
               "--warmup", "0.2", "--ready-timeout", "20", "--gen-size", "32x32", "--out", str(tmp_path),
               "--quiet", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert len(doc["points"]) == 4
    # The echo server answers after max_wait_ms: a 500 ms wait can never meet a 450 ms p99,
    # and 5 ms meets it unless the machine stalls for ~0.4 s.
    assert doc["best"]["gateway"]["max_wait_ms"] == 5
    env = (tmp_path / "gateway.env").read_text()
    assert "RESNET_SERVING_MAX_WAIT_MS=5\n" in env and "RESNET_SERVING_MAX_BATCH_SIZE=" in env
    with socket.socket() as s:  # every launched gateway was stopped
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "ftp://x", "--rate", "1"], "URL must look like http://"),
        (["run", "http://127.0.0.1:{closed}", "--rate", "5", "--duration", "1"], "cannot connect to 127.0.0.1"),
        (["run", "http://127.0.0.1:{closed}", "--rate", "5", "--concurrency", "2"], "cannot be combined"),
        (["run", "http://127.0.0.1:{closed}", "--rate", "-3"], "must be > 0"),
        (["run", "http://127.0.0.1:{closed}", "--ramp", "5:1:1"], "--ramp needs"),
        (["run", "http://127.0.0.1:{closed}", "--rate", "5", "--gen-size", "big"], "--gen-size must be WIDTHxHEIGHT"),
        (["run", "http://127.0.0.1:{closed}", "--rate", "5", "--images", "/nonexistent"], "--images must be a folder"),
        (["run", "http://127.0.0.1:{closed}", "--find-max-rate"], "needs --p99-target-ms"),
        (["run", "--rate", "5"], "give exactly one target"),
        (["compare", "/nonexistent.json", "/nonexistent.json"], "cannot read a loadtest result"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(args: list[str], needle: str) -> None:
    closed = str(free_port())
    t0 = time.monotonic()
    proc = cli(*[a.replace("{closed}", closed) for a in args], timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize(
    "argv",
    [
        ["loadtest", "run", "http://127.0.0.1:1", "--rate", "1", "--duration", "1"],
        ["loadtest", "run", "--grpc", "127.0.0.1:1", "--concurrency", "1", "--duration", "1"],
        ["loadtest", "compare", "missing-a.json", "missing-b.json"],
    ],
)
def test_loadtest_commands_never_import_tensorflow(argv: list[str]) -> None:
    """The load tester (HTTP or gRPC) runs without TensorFlow, even where it is installed."""
    code = (
        "import sys\n"
        "from resnet_serving.cli import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tensorflow_serving')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=ENV, timeout=60)  # fmt: skip
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert result.stderr.startswith("error: "), result.stderr
