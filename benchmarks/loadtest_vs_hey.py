"""Benchmark: our generator vs `hey` (open loop at a fixed rate, closed loop) and `wrk`
(closed loop) against the same trivial local endpoint (loadtest.echo_server on uvloop),
plus the highest open-loop rate our generator keeps its schedule at.

Usage: PYTHONPATH=src python benchmarks/loadtest_vs_hey.py [--seconds 4] [--rate 1000]
Writes benchmarks/results/loadtest_vs_hey.md. Needs `apt-get install -y hey wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
PORT = 18555
URL = f"http://127.0.0.1:{PORT}/v1/classify"


def sh(cmd: list[str], timeout: float = 120) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, check=True).stdout


def hey(args: list[str]) -> dict[str, float]:
    out = sh(["hey", *args, "-m", "POST", "-T", "image/jpeg", "-d", "x" * 500, URL])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%% in ([\d.]+) secs".replace("%%", "%"), out).group(1)) * 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def wrk(conns: int, seconds: int) -> dict[str, float]:
    out = sh(["wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency", URL])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert m is not None
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return {"rps": rps, "p50_ms": p50, "p99_ms": float("nan")}


def ours(args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        sh([sys.executable, "-m", "resnet_serving", "loadtest", "run", URL, "--body", "raw",
            "--gen-size", "32x32", "--warmup", "0.5", "--quiet", "--out", d, *args])  # fmt: skip
        step = json.loads((Path(d) / "result.json").read_text())["steps"][-1]
    lat = step["latency_ms"]
    sched = step["schedule"] or {}
    return {"rps": step["throughput_rps"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
            "behind": bool(sched.get("behind")), "late_fraction": sched.get("late_fraction", 0.0)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rate", type=int, default=1000, help="open-loop rate for the hey -q comparison")
    ap.add_argument("--workers", type=int, default=10, help="hey -c for the open-loop run (rate = c * q)")
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "loadtest.echo_server", "--port", str(PORT), "--uvloop"],
                              env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    rows: list[tuple[str, str, dict[str, float], dict[str, float]]] = []
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        s = str(a.seconds)
        q = a.rate // a.workers
        rows.append(("open loop", f"hey -c {a.workers} -q {q} -z {s}s  vs  --rate {a.rate}",
                     hey(["-c", str(a.workers), "-q", str(q), "-z", f"{s}s"]),
                     ours(["--rate", str(a.rate), "--duration", s])))  # fmt: skip
        c = str(a.concurrency)
        rows.append(("closed loop", f"hey -c {c} -z {s}s  vs  --concurrency {c}",
                     hey(["-c", c, "-z", f"{s}s"]), ours(["--concurrency", c, "--duration", s])))  # fmt: skip
        rows.append(("closed loop", f"wrk -t1 -c {c} -d {s}s  vs  --concurrency {c}",
                     wrk(a.concurrency, a.seconds), ours(["--concurrency", c, "--duration", s])))  # fmt: skip
        ceiling = []
        for rate in (1000, 2000, 3000, 4000, 6000, 8000):
            r = ours(["--rate", str(rate), "--duration", "3"])
            ceiling.append((rate, r))
            if r["behind"] or r["rps"] < 0.95 * rate:
                break
    finally:
        server.terminate()
        server.wait(10)
    lines = [
        "# loadtest vs hey / wrk against a trivial local endpoint",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- load average at the end: {os.getloadavg()[0]:.1f} (the 2 cores are shared with other engineers' "
        "TensorFlow jobs: numbers are noisy and conservative)",
        f"- endpoint: `python -m loadtest.echo_server --uvloop` (same machine), body 500 B raw POST",
        f"- command: `PYTHONPATH=src python benchmarks/loadtest_vs_hey.py --seconds {a.seconds} --rate {a.rate}`",
        "",
        "| mode | command | tool req/s | ours req/s | ratio | tool p50 ms | ours p50 ms | ratio | ours p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, cmd, t, o in rows:
        lines.append(f"| {mode} | `{cmd}` | {t['rps']:.0f} | {o['rps']:.0f} | {o['rps'] / t['rps']:.2f} | "
                     f"{t['p50_ms']:.3f} | {o['p50_ms']:.3f} | {o['p50_ms'] / t['p50_ms']:.2f} | {o['p99_ms']:.2f} |")  # fmt: skip
    lines += ["", "## Highest open-loop rate our generator keeps its schedule at (one process, uvloop)", "",
              "| offered req/s | achieved req/s | late (>2 ms) | behind warning | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]  # fmt: skip
    for rate, r in ceiling:
        lines.append(f"| {rate} | {r['rps']:.0f} | {r['late_fraction']:.1%} | {r['behind']} | {r['p50_ms']:.3f} | {r['p99_ms']:.2f} |")
    out = ROOT / "benchmarks" / "results" / "loadtest_vs_hey.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
