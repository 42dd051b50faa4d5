"""`--workers`: the split of one schedule (or of the clients) across processes, and the merge
of their partials, checked against a single process doing all the work."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.engine import schedule, summarise
from loadtest.plan import Arrival, StepSpec
from loadtest.recorder import StepRecorder

CliFn = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_partition_the_global_schedule(arrival: Arrival, workers: int) -> None:
    spec = StepSpec(rate=1000, arrival=arrival, warmup_s=0.1, duration_s=None, requests=250, seed=7)
    whole = list(schedule(spec, 10.0, 10.1))
    assert sum(1 for _, due in whole if due >= 10.1) == 250  # --requests counts measured ones
    slices = [[x for x in whole if x[0] % workers == i] for i in range(workers)]
    assert sorted(x for s in slices for x in s) == whole
    assert max(len(s) for s in slices) - min(len(s) for s in slices) <= 1


@pytest.mark.parametrize("concurrency, requests, workers", [(8, 100, 3), (2, None, 2), (5, 7, 4)])
def test_closed_loop_shares_add_up(concurrency: int, requests: int | None, workers: int) -> None:
    spec = StepSpec(concurrency=concurrency, requests=requests)
    shares = [spec.share(i, workers) for i in range(workers)]
    assert sum(c for c, _ in shares) == concurrency
    if requests is not None:
        assert sum(r or 0 for _, r in shares) == requests


def test_merged_partials_equal_one_recorder() -> None:
    rng = random.Random(5)
    t0 = 100.0
    reqs = []
    for i in range(3000):
        due = t0 + i * 0.001
        lat = rng.lognormvariate(-6, 1)
        ok = rng.random() > 0.05
        status = 200 if ok else 503
        body = None if ok else b'{"error":"overloaded","detail":"queue full","request_id":"%d"}' % i
        reqs.append(
            (due, due + 0.0001 * (i % 40), due + lat, status, ok, None, b"total;dur=1.5", body)
        )
    spec = StepSpec(rate=1000, duration_s=2.5, warmup_s=0.5)
    one = StepRecorder(t0 + 0.5, open_loop=True)
    parts = [StepRecorder(t0 + 0.5, open_loop=True) for _ in range(3)]
    for i, r in enumerate(reqs):
        one.record(*r)
        parts[i % 3].record(*r)
    whole = summarise(spec, [one.partial()], 0.0)
    merged = summarise(spec, [p.partial() for p in parts], 0.0)
    assert merged == whole
    assert whole.requests == 2500 and whole.status_counts["503"] > 0
    assert whole.schedule is not None and whole.schedule.late > 0 and len(whole.timeseries) >= 3
    assert whole.error_details == {"HTTP 503 overloaded: queue full": whole.status_counts["503"]}


def test_cli_with_two_workers(server_url: str, tmp_path: Path, cli: CliFn) -> None:
    a, b = tmp_path / "open", tmp_path / "closed"
    ra = cli("run", server_url, "--rate", "200", "--duration", "1", "--warmup", "0.2", "--workers", "2",
             "--gen-size", "32x32", "--out", str(a), "--quiet")  # fmt: skip
    assert ra.returncode == 0, ra.stderr
    doc = json.loads((a / "result.json").read_text())
    step = doc["steps"][0]
    assert doc["target"]["workers"] == 2
    assert step["ok"] == step["requests"] == 200 and step["errors"] == 0
    assert sum(row["completed"] for row in step["timeseries"]) == 200
    assert step["stages_ms"]["total"]["count"] == 200
    rb = cli("run", server_url, "--concurrency", "3", "--requests", "90", "--warmup", "0",
             "--workers", "2", "--gen-size", "32x32", "--out", str(b), "--quiet")  # fmt: skip
    assert rb.returncode == 0, rb.stderr
    closed = json.loads((b / "result.json").read_text())["steps"][0]
    assert closed["ok"] == 90 and closed["concurrency"] == 3


def test_bad_workers_value_is_one_line(cli: CliFn) -> None:
    proc = cli("run", "http://127.0.0.1:9", "--rate", "1", "--workers", "lots")
    assert proc.returncode == 2 and "--workers must be 1..256 or auto" in proc.stderr, proc.stderr
