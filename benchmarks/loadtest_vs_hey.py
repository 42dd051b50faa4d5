"""Benchmark: our generator vs `hey` (open loop at the same rate; closed loop) and `wrk`
(closed loop) against the same local endpoint, plus the highest open-loop rate our
generator keeps its schedule at, with 1 and 2 worker processes.

The endpoint is `testdoubles.echo_server --uvloop` in its own process, started once and pinned
to CPU 0 (`taskset -c 0`); every generator (hey, wrk, ours) is pinned to CPU 1, so the
endpoint and the generator never share a core and each tool gets the same core. All tools
send the same 500-byte POST body. Pairs run A B A B for `--rounds` rounds; tables report
medians. (`--workers 2` rows run unpinned: two workers on one core would measure nothing.)

Usage: python -m benchmarks.loadtest_vs_hey [--seconds 3] [--rounds 5]
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
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PORT, SLOW_PORT = 18555, 18556  # trivial endpoint; the same with a 1 ms server-side delay
URL = f"http://127.0.0.1:{PORT}/v1/classify"
SLOW_URL = f"http://127.0.0.1:{SLOW_PORT}/v1/classify"
BODY = b"\xff\xd8" + b"x" * 498  # 500 B, sent by every tool with Content-Type image/jpeg
Result = dict[str, float]
WORK = Path(tempfile.mkdtemp(prefix="lt_vs_hey_"))
(WORK / "body.jpg").write_bytes(BODY)
(WORK / "post.lua").write_text(
    'wrk.method = "POST"\nwrk.headers["Content-Type"] = "image/jpeg"\n'
    f'local f = io.open("{WORK / "body.jpg"}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
)
GEN_CPU: list[str] = []  # set in main: ["taskset", "-c", "1"] when pinning


def sh(cmd: list[str], timeout: float = 120) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, check=True)
    return out.stdout


def _ms(m: re.Match[str] | None) -> float:
    assert m is not None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "secs": 1e3}[m.group(2)]


def hey(args: list[str], url: str = URL) -> Result:
    out = sh(
        [
            *GEN_CPU,
            "hey",
            *args,
            "-m",
            "POST",
            "-T",
            "image/jpeg",
            "-D",
            str(WORK / "body.jpg"),
            url,
        ]
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": _ms(re.search(r"50% in ([\d.]+) (secs)", out)),
            "p99_ms": _ms(re.search(r"99% in ([\d.]+) (secs)", out))}  # fmt: skip


def wrk(conns: int, seconds: int) -> Result:
    out = sh([*GEN_CPU, "wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s", "--latency",
              "-s", str(WORK / "post.lua"), URL])  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": _ms(re.search(r"50%\s+([\d.]+)(us|ms|s)", out)),
            "p99_ms": _ms(re.search(r"99%\s+([\d.]+)(us|ms|s)", out))}  # fmt: skip


def ours(args: list[str], pin: bool = True, url: str = URL) -> Result:
    with tempfile.TemporaryDirectory() as d:
        sh([*(GEN_CPU if pin else []), sys.executable, "-m", "resnet_serving", "loadtest", "run", url,
            "--body", "raw", "--images", str(WORK), "--warmup", "0.5", "--quiet", "--out", d, *args])  # fmt: skip
        step = json.loads((Path(d) / "result.json").read_text())["steps"][-1]
    lat, sched = step["latency_ms"], step["schedule"] or {}
    return {"rps": step["throughput_rps"], "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
            "min_ms": lat["min_ms"], "behind": float(bool(sched.get("behind"))),
            "late_fraction": sched.get("late_fraction", 0.0),
            "lag_p50_ms": sched.get("send_lag_p50_ms") or 0.0,
            "cpu_us": step["generator"]["cpu_us_per_request"] or 0.0}  # fmt: skip


def median(runs: list[Result]) -> Result:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def pair(rounds: int, a: Callable[[], Result], b: Callable[[], Result]) -> tuple[Result, Result]:
    """A B A B ...: medians of each side."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a())
        rb.append(b())
    return median(ra), median(rb)


def ceiling(workers: int, rates: list[int], seconds: int) -> list[tuple[int, Result]]:
    """Rates upwards until the schedule is lost; best of 2 tries per rate (the machine is
    shared: one preempted try says little about what the generator can do)."""
    rows = []
    for rate in rates:
        tries = []
        for _ in range(2):
            r = ours(["--rate", str(rate), "--duration", str(seconds), "--workers", str(workers)],
                     pin=workers == 1)  # fmt: skip
            tries.append(r)
            if not r["behind"]:
                break
        best = min(tries, key=lambda r: r["late_fraction"])
        rows.append((rate, best))
        if best["behind"] or best["rps"] < 0.98 * rate:
            break
    return rows


def verdict(t: Result, o: Result) -> str:
    rps, p50 = o["rps"] / t["rps"], o["p50_ms"] / t["p50_ms"]
    return "pass" if abs(rps - 1) <= 0.10 and abs(p50 - 1) <= 0.20 else "fail"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rates", default="500,2000", help="open-loop rates for the hey -q comparison")
    ap.add_argument(
        "--hey-c", type=int, default=10, help="hey -c for the open-loop runs (rate = c * q)"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--ceiling-rates", default="1000,2000,3000,4000,5000,6000,8000,10000,12000,16000"
    )
    ap.add_argument(
        "--no-pin", action="store_true", help="do not pin the server / generators to CPUs"
    )
    a = ap.parse_args()
    pin = not a.no_pin and (os.cpu_count() or 1) >= 2
    servers = []
    for port, delay in ((PORT, "0"), (SLOW_PORT, "1")):
        cmd = [
            sys.executable,
            "-m",
            "testdoubles.echo_server",
            "--port",
            str(port),
            "--uvloop",
            "--delay-ms",
            delay,
        ]
        servers.append(subprocess.Popen(["taskset", "-c", "0", *cmd] if pin else cmd, env=ENV,
                                        stdout=subprocess.PIPE, text=True))  # fmt: skip
    if pin:
        GEN_CPU.extend(["taskset", "-c", "1"])
    s, c, k = str(a.seconds), str(a.concurrency), a.rounds
    rows: list[tuple[str, str, Result, Result]] = []
    load_before = os.getloadavg()
    try:
        for server in servers:
            assert server.stdout is not None and "listening" in server.stdout.readline()
        for url, where in ((URL, "trivial endpoint"), (SLOW_URL, "endpoint +1 ms")):
            for rate in (int(r) for r in a.rates.split(",")):
                q = rate // a.hey_c
                t, o = pair(k, lambda q=q, url=url: hey(["-c", str(a.hey_c), "-q", str(q), "-z", f"{s}s"], url),  # type: ignore[misc]
                            lambda rate=rate, url=url: ours(["--rate", str(rate), "--duration", s], url=url))  # type: ignore[misc]  # fmt: skip
                rows.append(
                    (
                        f"open loop, same rate, {where}",
                        f"hey -c {a.hey_c} -q {q} -z {s}s  vs  --rate {rate}",
                        t,
                        o,
                    )
                )
        t, o = pair(
            k,
            lambda: hey(["-c", c, "-z", f"{s}s"]),
            lambda: ours(["--concurrency", c, "--duration", s]),
        )
        rows.append(("closed loop", f"hey -c {c} -z {s}s  vs  --concurrency {c}", t, o))
        t, o = pair(
            k,
            lambda: wrk(a.concurrency, a.seconds),
            lambda: ours(["--concurrency", c, "--duration", s]),
        )
        rows.append(
            ("closed loop", f"wrk -t1 -c {c} -d {s}s -s post.lua  vs  --concurrency {c}", t, o)
        )
        rates = [int(r) for r in a.ceiling_rates.split(",")]
        ceilings = {w: ceiling(w, rates, a.seconds) for w in (1, 2)}
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
    load_after = os.getloadavg()
    lines = [
        "# loadtest vs hey / wrk against a trivial local endpoint",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- load average (1/5/15 min) before: {' / '.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{' / '.join(f'{x:.1f}' for x in load_after)}. The 2 cores are shared with other engineers' "
        "TensorFlow jobs and test runs, so every number here is noisy",
        f"- endpoints: `{'taskset -c 0 ' if pin else ''}python -m testdoubles.echo_server --uvloop --delay-ms 0` "
        "(trivial) and the same with `--delay-ms 1` (each its own process, started once); every generator "
        + ("pinned with `taskset -c 1`" if pin else "unpinned")
        + "; all send the same 500 B POST body (`hey -D`, `wrk -s post.lua`, ours `--images --body raw`)",
        f"- method: A B A B, {k} rounds of {s} s each, medians; ours with `--warmup 0.5` (not counted)",
        f"- command: `python -m benchmarks.loadtest_vs_hey --seconds {s} --rounds {k} "
        f"--rates {a.rates} --concurrency {c}`",
        "",
        "| mode | command | tool req/s | ours req/s | ratio | tool p50 ms | ours p50 ms | ratio | tool p99 ms | ours p99 ms | 10%/20% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row_cmd, t, o in rows:
        lines.append(f"| {mode} | `{row_cmd}` | {t['rps']:.0f} | {o['rps']:.0f} | {o['rps'] / t['rps']:.2f} | "
                     f"{t['p50_ms']:.3f} | {o['p50_ms']:.3f} | {o['p50_ms'] / t['p50_ms']:.2f} | "
                     f"{t['p99_ms']:.2f} | {o['p99_ms']:.2f} | {verdict(t, o)} |")  # fmt: skip
    lines += ["", "Ours, open loop, medians: " + "; ".join(
        f"{mode.split(', ')[-1]} {cmd.split('vs')[1].strip()}: send lag p50 {o['lag_p50_ms']:.3f} ms, late "
        f"{o['late_fraction']:.1%}, min latency {o['min_ms']:.3f} ms" for mode, cmd, _, o in rows if mode.startswith("open"))]  # fmt: skip
    lines += ["", "Ours, generator CPU per request (whole step, medians): " + "; ".join(
        f"{cmd.split('vs')[1].strip()} ({mode.split(', ')[-1]}): {o['cpu_us']:.0f} us" for mode, cmd, _, o in rows)]  # fmt: skip
    for w, rows_w in ceilings.items():
        where = (
            "pinned to CPU 1" if w == 1 and pin else "unpinned, sharing the cores with the endpoint"
        )
        lines += ["", f"## Open-loop schedule keeping, {w} worker process(es), {where}", "",
                  "| offered req/s | achieved req/s | late (>2 ms) | behind warning | p50 ms | p99 ms | CPU us/req |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for rate, r in rows_w:
            lines.append(f"| {rate} | {r['rps']:.0f} | {r['late_fraction']:.1%} | {bool(r['behind'])} | "
                         f"{r['p50_ms']:.3f} | {r['p99_ms']:.2f} | {r['cpu_us']:.0f} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "loadtest_vs_hey.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
