"""CPU per Predict call of the gateway's gRPC client, apart from the rest of the gateway.

The tfserving backend (`service.backends.tfserving.TFServingBackend.predict`: the request
framed by `contract.wire`, one grpc.aio unary call, the reply read back) against the GPU-speed
double (`testdoubles.fast_tfserving`, a child process), on uvloop as the gateway runs. `--calls`
calls per batch size, `--concurrency` of them in flight at once (the gateway's processes each
keep one in flight); CPU from `getrusage` of this process (every thread: grpc's poller too),
so the double's CPU is not counted. Two contracts: the ceiling's ResNet-50 (224x224x3, 1,000
classes: 147 KiB of pixels per image) and a 8x8 one (192 bytes), to tell the cost of a call
from the cost of its bytes.

    python -m benchmarks.grpc_call_cpu [--calls 1500] [--concurrency 2] [--batches 1,2,4,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop

from benchmarks.gateway_ceiling import write_contract
from benchmarks.gateway_proc import ROOT, machine_line, now_utc
from contract.manifest import InputSpec, Manifest, write_manifest
from service.backends.tfserving import TFServingBackend
from testdoubles.fast_tfserving import spawn

RESULTS = ROOT / "benchmarks" / "results"
TINY = "tiny_contract"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    address: str, base: Path, model: str, side: int, batch: int, calls: int, concurrency: int
) -> tuple[float, float]:
    """(us of client CPU per call, calls/s) for `calls` Predicts of `batch` images."""
    backend = TFServingBackend(address=address, model_name=model, model_base=base)
    await backend.start()
    pixels = np.random.default_rng(0).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
    try:
        for _ in range(50):  # connection, first calls, caches
            await backend.predict(pixels, timeout_s=10)

        async def worker(n: int) -> None:
            for _ in range(n):
                await backend.predict(pixels, timeout_s=10)

        cpu0, t0 = _cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        cpu, wall = _cpu_s() - cpu0, time.perf_counter() - t0
    finally:
        await backend.close()
    done = calls // concurrency * concurrency
    return 1e6 * cpu / done, done / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,32")
    parser.add_argument("--name", default="grpc_call_cpu")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="grpc_call_cpu-"))
    rows: list[dict[str, object]] = []
    try:
        big = work / "big"
        resnet = write_contract(big)
        tiny = work / "tiny"
        write_manifest(
            Manifest(model_name=TINY, model_version=1, architecture="tiny",
                     input=InputSpec(height=8, width=8), labels=tuple(f"c{i}" for i in range(10))),
            tiny / TINY / "1",
        )  # fmt: skip
        for base, model, side in ((big, resnet.model_name, 224), (tiny, TINY, 8)):
            with spawn(base, model) as address:
                for batch in batches:
                    us, rate = uvloop.run(
                        measure(address, base, model, side, batch, args.calls, args.concurrency)
                    )
                    row = {"contract": f"{side}x{side}", "batch": batch, "us_per_call": us,
                           "us_per_image": us / batch, "calls_per_s": rate}  # fmt: skip
                    print(row, flush=True)
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "# CPU per Predict call of the gateway's gRPC client",
        "",
        f"- Date: {now_utc()}; machine: {machine_line()}",
        "- `TFServingBackend.predict` (request framing, one grpc.aio unary call, the reply read "
        "back) on uvloop against `testdoubles.fast_tfserving` (not TF Serving; 1.5 ms + 0.04 ms "
        f"per image), {args.calls} calls per row, {args.concurrency} in flight; client CPU from "
        "getrusage (all its threads), the double's not counted.",
        f"- Command: `python -m benchmarks.grpc_call_cpu --calls {args.calls} --concurrency "
        f"{args.concurrency} --batches {args.batches}`",
        "",
        "| contract | images per call | us of CPU per call | us per image | calls/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['contract']} | {r['batch']} | {r['us_per_call']:.0f} | "
                     f"{r['us_per_image']:.0f} | {r['calls_per_s']:.0f} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(md, encoding="utf-8")
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
