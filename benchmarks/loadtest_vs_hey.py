"""Benchmark: our generator vs `hey` (open loop at a fixed rate, closed loop) and `wrk`
(closed loop) against the same local endpoint, plus the highest open-loop rate our
generator keeps its schedule at, with 1 and N worker processes.

The endpoint is `loadtest.echo_server` on uvloop, served by `--server-processes` processes
(SO_REUSEPORT), started once; every pair runs back to back against it, alternating
A B A B for `--rounds` rounds, and the table reports medians.

Usage: PYTHONPATH=src python benchmarks/loadtest_vs_hey.py [--seconds 3] [--rounds 3]
Writes benchmarks/results/loadtest_vs_hey.md. Needs `apt-get install -y hey wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
PORT = 18555
URL = f"http://127.0.0.1:{PORT}/v1/classify"
Result = dict[str, float]


def sh(cmd: list[str], timeout: float = 120) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, check=True)
    return out.stdout


def _secs(m: re.Match[str] | None) -> float:
    assert m is not None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "secs": 1e3}[m.group(2)]


def hey(args: list[str]) -> Result:
    out = sh(["hey", *args, "-m", "POST", "-T", "image/jpeg", "-d", "x" * 500, URL])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _secs(re.search(r"50% in ([\d.]+) (secs)", out))
    p99 = _secs(re.search(r"99% in ([\d.]+) (secs)", out))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def wrk(conns: int, seconds: int) -> Result:
    out = sh(["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency", URL])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _secs(re.search(r"50%\s+([\d.]+)(us|ms|s)", out))
    p99 = _secs(re.search(r"99%\s+([\d.]+)(us|ms|s)", out))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def ours(args: list[str]) -> Result:
    with tempfile.TemporaryDirectory() as d:
        sh([sys.executable, "-m", "resnet_serving", "loadtest", "run", URL, "--body", "raw",
            "--gen-size", "32x32", "--warmup", "0.5", "--quiet", "--out", d, *args])  # fmt: skip
        step = json.loads((Path(d) / "result.json").read_text())["steps"][-1]
    lat, sched = step["latency_ms"], step["schedule"] or {}
    return {"rps": step["throughput_rps"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
            "behind": float(bool(sched.get("behind"))), "late_fraction": sched.get("late_fraction", 0.0)}  # fmt: skip


def median(runs: list[Result]) -> Result:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def pair(rounds: int, a: Callable[[], Result], b: Callable[[], Result]) -> tuple[Result, Result]:
    """A B A B ...: medians of each side."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    return median(ra), median(rb)


def ceiling(workers: int, rates: list[int]) -> list[tuple[int, Result]]:
    rows = []
    for rate in rates:
        r = ours(["--rate", str(rate), "--duration", "3", "--workers", str(workers)])
        rows.append((rate, r))
        if r["behind"] or r["rps"] < 0.95 * rate:
            break
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=2000, help="open-loop rate for the hey -q comparison")
    ap.add_argument("--hey-c", type=int, default=10, help="hey -c for the open-loop run (rate = c * q)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="our N for the N-worker rows")
    ap.add_argument("--server-processes", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "loadtest.echo_server", "--port", str(PORT), "--uvloop",
                               "--processes", str(a.server_processes)], env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    s, c, n, k = str(a.seconds), str(a.concurrency), str(a.workers), a.rounds
    q = a.rate // a.hey_c
    rows: list[tuple[str, str, Result, Result]] = []
    load_before = os.getloadavg()[0]
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        time.sleep(1.0)  # the other server processes bind
        for w in ("1", n):
            t, o = pair(k, lambda: hey(["-c", str(a.hey_c), "-q", str(q), "-z", f"{s}s"]),
                        lambda w=w: ours(["--rate", str(a.rate), "--duration", s, "--workers", w]))  # type: ignore[misc]  # fmt: skip
            rows.append(("open loop", f"hey -c {a.hey_c} -q {q} -z {s}s  vs  --rate {a.rate} --workers {w}", t, o))
        for w in ("1", n):
            t, o = pair(k, lambda: hey(["-c", c, "-z", f"{s}s"]),
                        lambda w=w: ours(["--concurrency", c, "--duration", s, "--workers", w]))  # type: ignore[misc]  # fmt: skip
            rows.append(("closed loop", f"hey -c {c} -z {s}s  vs  --concurrency {c} --workers {w}", t, o))
        for w in ("1", n):
            t, o = pair(k, lambda: wrk(a.concurrency, a.seconds),
                        lambda w=w: ours(["--concurrency", c, "--duration", s, "--workers", w]))  # type: ignore[misc]  # fmt: skip
            rows.append(("closed loop", f"wrk -t1 -c {c} -d {s}s  vs  --concurrency {c} --workers {w}", t, o))
        ceilings = {w: ceiling(w, [2000, 4000, 6000, 8000, 12000, 16000]) for w in (1, a.workers)}
    finally:
        server.terminate()
        server.wait(10)
    lines = [
        "# loadtest vs hey / wrk against a trivial local endpoint",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f}: the 2 cores are "
        "shared with other engineers' TensorFlow jobs, so every number here is noisy",
        f"- endpoint: `python -m loadtest.echo_server --uvloop --processes {a.server_processes}` (same machine, "
        "started once), 500 B POST; both tools hit it back to back",
        f"- method: A B A B, {k} rounds of {s} s each, medians; ours runs with `--warmup 0.5` (not counted)",
        f"- command: `PYTHONPATH=src python benchmarks/loadtest_vs_hey.py --seconds {s} --rounds {k} --rate {a.rate} --workers {n}`",
        "",
        "| mode | command | tool req/s | ours req/s | ratio | tool p50 ms | ours p50 ms | ratio | tool p99 ms | ours p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, cmd, t, o in rows:
        lines.append(f"| {mode} | `{cmd}` | {t['rps']:.0f} | {o['rps']:.0f} | {o['rps'] / t['rps']:.2f} | "
                     f"{t['p50_ms']:.3f} | {o['p50_ms']:.3f} | {o['p50_ms'] / t['p50_ms']:.2f} | "
                     f"{t['p99_ms']:.2f} | {o['p99_ms']:.2f} |")  # fmt: skip
    for w, rows_w in ceilings.items():
        lines += ["", f"## Open-loop schedule keeping, {w} worker process(es)", "",
                  "| offered req/s | achieved req/s | late (>2 ms) | behind warning | p50 ms | p99 ms |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for rate, r in rows_w:
            lines.append(f"| {rate} | {r['rps']:.0f} | {r['late_fraction']:.1%} | {bool(r['behind'])} | "
                         f"{r['p50_ms']:.3f} | {r['p99_ms']:.2f} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "loadtest_vs_hey.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
