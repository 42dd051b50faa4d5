"""Soak: a steady open-loop rate for --seconds (default 10 minutes) against a real gateway
subprocess; does its memory stay flat and does every request succeed?

Exports `resnet_cifar` (random weights) at --size, starts `resnet-serving serve --backend
embedded`, samples the gateway's RSS (/proc/<pid>/status) every --sample-s seconds while our
load tester (`loadtest run --rate R --duration S`) drives it, and writes
`benchmarks/results/soak.md` (+ soak.json with every RSS sample). The bound: RSS growth from
the end of the warmup (--warmup-s, when caches and the allocator have settled) to the end
stays under --bound-mib, and no request fails.

    python -m benchmarks.soak [--seconds 600] [--rate 20]
    python -m benchmarks.soak --random-uploads --seconds 1000 --rate 16 --name soak_random

`--random-uploads` sends 120 different uploads instead of one small PNG: JPEG, PNG and WebP
at five sizes from 320x240 to 3000x2000, multipart, so the allocator sees every size of body
and of decoded image; the report then also gives RSS after every 1,000 requests, to tell
growth that levels off from a leak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.gateway_proc import (
    ROOT,
    Gateway,
    errors_by_status,
    export_bench_model,
    gateway,
    loadtest,
    machine_line,
    now_utc,
)

RESULTS = ROOT / "benchmarks" / "results"


class RssSampler:
    """(seconds since start, RSS MiB) every `interval_s`, in a thread, until `stop()`."""

    def __init__(self, gw: Gateway, interval_s: float) -> None:
        self.gw = gw
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self._t0, 1), self.gw.rss_mib()))
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.samples.append((round(time.monotonic() - self._t0, 1), self.gw.rss_mib()))

    def at(self, t_s: float) -> float:
        """The first sample at or after `t_s`."""
        return next((mib for t, mib in self.samples if t >= t_s), self.samples[-1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet_cifar")
    parser.add_argument("--size", type=int, default=64, help="model input side (pixels)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="growth is measured after")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--bound-mib", type=float, default=50.0)
    parser.add_argument("--random-uploads", action="store_true",
                        help="120 different JPEG/PNG/WebP uploads, 320x240 to 3000x2000")  # fmt: skip
    parser.add_argument("--name", default="soak", help="results file stem")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    base = export_bench_model(tmp / "models", args.arch, args.size)
    if args.random_uploads:
        sizes = ["320x240", "640x480", "1280x720", "1920x1080", "3000x2000"]
        images = [a for size in sizes for a in ("--gen-size", size)]
        images += ["--gen-format", "jpeg", "--gen-format", "png", "--gen-format", "webp",
                   "--gen-count", "8", "--body", "multipart"]  # fmt: skip
    else:
        images = ["--gen-size", f"{args.size}x{args.size}", "--gen-format", "png", "--body", "raw"]
    load = [*images, "--rate", f"{args.rate:g}", "--duration", f"{args.seconds:g}",
            "--warmup", "0", "--timeout", "10"]  # fmt: skip
    with gateway(base, tmp / "gateway.log", max_batch_size=32) as gw:
        idle = gw.rss_mib()
        sampler = RssSampler(gw, args.sample_s).start()
        try:
            result = loadtest(gw.url, tmp / "soak", *load, timeout_s=args.seconds + 300)
        finally:
            sampler.stop()
        peak = gw.peak_rss_mib()
    RESULTS.mkdir(parents=True, exist_ok=True)
    step = result["steps"][0]
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"rss_samples_mib": sampler.samples, "step": step, "idle_rss_mib": idle}, indent=1) + "\n")  # fmt: skip
    text = report(args, step, sampler, idle, peak)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)


def report(args: argparse.Namespace, step: dict[str, Any], rss: RssSampler, idle: float,
           peak: float) -> str:  # fmt: skip
    first, last = rss.samples[0][1], rss.samples[-1][1]
    settled = rss.at(args.warmup_s)
    growth = last - settled
    top = max(mib for _, mib in rss.samples)
    lat = step["latency_ms"]
    errors = step["errors"]
    held = growth < args.bound_mib and errors == 0
    minutes = [f"{t / 60:.0f} min: {mib:.0f}" for t, mib in rss.samples
               if t % 60 < args.sample_s or (t, mib) == rss.samples[-1]]  # fmt: skip
    per_k = [rss.at(k * 1000 / args.rate) for k in range(int(args.seconds * args.rate // 1000) + 1)]
    steps = ", ".join(f"{b - a:+.0f}" for a, b in itertools.pairwise(per_k))
    cmd = f"python -m benchmarks.soak --seconds {args.seconds:g} --rate {args.rate:g}"
    if args.random_uploads:
        cmd += f" --random-uploads --name {args.name}"
    uploads = (
        "120 different uploads (JPEG, PNG, WebP at 320x240, 640x480, 1280x720, 1920x1080 and "
        "3000x2000, 8 of each), multipart"
        if args.random_uploads
        else f"one {args.size}x{args.size} PNG per request as a raw body"
    )
    return f"""# Soak: steady load, memory and errors

- Date: {now_utc()}
- Machine: {machine_line()}. The load generator runs on the same 2 cores.
- Model: `{args.arch}` {args.size}x{args.size}x3 -> 10 classes, random weights, buckets 1..32, embedded backend.
- Gateway: `resnet-serving serve --backend embedded`, one uvicorn worker, max_batch_size 32,
  other settings default.
- Load: our load tester, open loop, constant **{args.rate:g} req/s** for **{args.seconds:g} s**,
  {uploads}; RSS of the gateway process sampled every {args.sample_s:g} s.
- Command: `{cmd}`

| measure | value |
|---|---|
| requests sent | {step["requests"]} |
| 200 OK | {step["ok"]} |
| errors by status | {errors_by_status(step)} |
| throughput (req/s) | {step["throughput_rps"]:.2f} |
| p50 / p99 / max (ms) | {lat["p50_ms"]:.1f} / {lat["p99_ms"]:.1f} / {lat["max_ms"]:.1f} |
| RSS idle, before load (MiB) | {idle:.1f} |
| RSS at start / after {args.warmup_s:g} s warmup / end (MiB) | {first:.1f} / {settled:.1f} / {last:.1f} |
| RSS max sampled / peak (VmHWM) (MiB) | {top:.1f} / {peak:.1f} |
| growth after warmup (MiB) | {growth:+.1f} (bound: < {args.bound_mib:g}) |

RSS by minute (MiB): {", ".join(minutes)}.

RSS change per 1,000 requests (MiB): {steps}.

Verdict: {"**held**" if held else "**not held**"}: growth after warmup {growth:+.1f} MiB
{"<" if growth < args.bound_mib else ">="} {args.bound_mib:g} MiB, {errors} errors.
"""


if __name__ == "__main__":
    main()
