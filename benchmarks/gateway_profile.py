"""Where one gateway process spends its CPU per request: py-spy samples, sorted into stages.

One gateway process (tfserving backend) against the GPU-speed TF Serving double, the demo
model's contract (32x32, 10 classes), one 451x300 JPEG per request, an open-loop load at
`--rate` from our load tester. The gateway's CPU per request comes from /proc; py-spy
(`pip install py-spy`; not a dependency) samples the process without stopping it, and each
sample is put in the stage of its innermost frame that belongs to one:

    decode          Pillow, service.decode, service.jpeg_markers
    gRPC client     grpc, service.backends.tfserving, contract.wire
    HTTP server     uvicorn, httptools, service.connections
    framework       FastAPI, Starlette (routing, requests, responses, their middleware)
    our middleware  service.middleware
    route+batcher   service.routes, models, traffic, batcher, admission, schemas, state
    metrics         prometheus_client
    asyncio         asyncio's Python parts (tasks, timeouts, futures)
    threads         the decode pool's hand-offs (concurrent.futures, threading, queue)
    event loop (C)  no Python frame above the loop: uvloop, sockets, grpc's core callbacks
    other           everything else (logging, json, numpy, ...)

`--compare PATH` (another checkout, its own `.venv`) profiles the code there first, so the
code before a change is profiled in the same run. `--ceiling` profiles the shape
`benchmarks/gateway_ceiling.py` measures instead: the ResNet-50 contract (224x224, 1,000 classes)
and 640x480 JPEGs (`--size` to change it).

    python -m benchmarks.gateway_profile [--rate 600] [--seconds 8] [--compare PATH]
        [--ceiling [--size 640x480]]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import gateway_ceiling as ceiling
from benchmarks.gateway_ceiling import CpuSampler, steps_of
from benchmarks.gateway_proc import ROOT, free_port, machine_line, now_utc
from benchmarks.preprocess import make_photo
from contract.manifest import InputSpec, Manifest, write_manifest
from testdoubles.fast_tfserving import spawn

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "demo_contract"
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("decode", ("PIL/", "service/decode.py", "service/jpeg_markers.py")),
    ("gRPC client", ("grpc/", "service/backends/tfserving.py", "contract/wire.py")),
    ("HTTP server", ("uvicorn/", "httptools", "service/connections.py")),
    ("framework", ("fastapi/", "starlette/")),
    ("our middleware", ("service/middleware/",)),
    (
        "route+batcher",
        (
            "service/routes.py",
            "service/models.py",
            "service/traffic.py",
            "service/batcher.py",
            "service/admission.py",
            "service/schemas.py",
            "service/state.py",
        ),
    ),
    ("metrics", ("prometheus_client/",)),
    ("asyncio", ("asyncio/",)),
    ("threads", ("concurrent/futures/", "threading.py", "queue.py", "anyio/")),
]
LOOP_FRAMES = ("Runner.run", "asyncio_run", "Server.run", "run_until_complete")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def stage_of(stack: list[str]) -> str:
    """The stage of a sample: its innermost frame that belongs to one (see the docstring);
    a sample whose innermost Python frame is the event loop's own runner is C code the loop
    called (uvloop's I/O, grpc's core), not asyncio's Python."""
    leaf = _FRAME.match(stack[-1]) if stack else None
    if leaf is not None and leaf.group("func") in LOOP_FRAMES:
        return "event loop (C)"
    for frame in reversed(stack):
        m = _FRAME.match(frame)
        file = m.group("file") if m else frame
        for name, parts in STAGES:
            if any(p in file for p in parts):
                return name
    return "other"


def profile(raw: Path) -> dict[str, int]:
    """Samples per stage in py-spy's raw (collapsed) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")[1:]  # the first is the thread
        counts[stage_of(frames)] += int(n)
    return dict(counts)


def write_contract(base: Path) -> None:
    """The demo model's contract, manifest only (the tfserving backend reads nothing else)."""
    write_manifest(
        Manifest(model_name=MODEL, model_version=1, architecture="resnet_cifar",
                 input=InputSpec(height=32, width=32),
                 labels=tuple(f"class_{i}" for i in range(10))),
        base / MODEL / "1",
    )  # fmt: skip


def run(root: Path, label: str, args: argparse.Namespace, tfs: str, base: Path,
        images: Path, work: Path) -> dict[str, object]:  # fmt: skip
    """One gateway process from the checkout at `root`: CPU per request and its stages."""
    python = root / ".venv" / "bin" / "python"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "RESNET_SERVING_BACKEND": "tfserving",
           "RESNET_SERVING_TFSERVING_ADDRESS": tfs, "RESNET_SERVING_MODEL_BASE_PATH": str(base),
           "RESNET_SERVING_MODEL_NAME": args.model, "RESNET_SERVING_PORT": str(port),
           "RESNET_SERVING_LOG_LEVEL": "warning", "RESNET_SERVING_WORKERS": "1",
           # as each process runs in the default deployment, one per core (older code
           # ignores the setting)
           "RESNET_SERVING_INLINE_DECODE_MAX_PIXELS": "500000"}  # fmt: skip
    log = (work / f"{label}.log").open("w")
    proc = subprocess.Popen([str(python), "-m", "resnet_serving", "serve"], env=env, cwd=root,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError((work / f"{label}.log").read_text()[-2000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        body = next(images.iterdir()).read_bytes()
        for _ in range(100):
            httpx.post(f"{url}/v1/classify", content=body, headers={"content-type": "image/jpeg"})
        out = work / f"{label}-lt"
        cmd = [sys.executable, "-m", "resnet_serving", "loadtest", "run", f"{url}/v1/classify",
               "--images", str(images), "--body", "raw", "--rate", str(args.rate), "--duration",
               str(args.seconds), "--warmup", "1", "--quiet", "--out", str(out)]  # fmt: skip
        raw = work / f"{label}.txt"
        with CpuSampler(proc.pid) as cpu:
            load = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            time.sleep(1.5)
            spy = subprocess.run(
                [args.py_spy, "record", "-p", str(proc.pid), "-d", str(int(args.seconds) - 1),
                 "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
                capture_output=True, text=True, timeout=args.seconds + 60,
            )  # fmt: skip
            load.wait(timeout=args.seconds + 120)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {spy.stderr[-1000:]}")
        step = steps_of(json.loads((out / "result.json").read_text()), cpu)[0]
    finally:
        proc.terminate()
        proc.wait(timeout=40)
        log.close()
    stages = profile(raw)
    total = sum(stages.values())
    us = 1000 * step.cpu_ms_per_image
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, args.keep / f"{label}.txt")
    return {"label": label, "root": str(root), "cpu_us_per_request": us, "p50_ms": step.p50_ms,
            "p99_ms": step.p99_ms, "requests": step.images,
            "stages_us": {k: us * v / total for k, v in sorted(stages.items(), key=lambda kv: -kv[1])}}  # fmt: skip


def to_markdown(runs: list[dict[str, object]], args: argparse.Namespace) -> str:
    names = [name for name, _ in STAGES] + ["event loop (C)", "other"]
    head = "| stage | " + " | ".join(str(r["label"]) for r in runs) + " |"
    lines = [
        "# Where a gateway process spends its CPU per request",
        "",
        f"- Date: {now_utc()}; machine: {machine_line()}",
        f"- One gateway process (`--workers 1`, tfserving backend, small images decoded on the event loop as with a process per core) against "
        f"`testdoubles.fast_tfserving` (1.5 ms + 0.04 ms per image), {args.shape}, "
        f"open loop at {args.rate:g} req/s for "
        f"{args.seconds:g} s. CPU from /proc; stages from py-spy samples (`--nonblocking`, 250 Hz) "
        "by innermost frame (benchmarks/gateway_profile.py), scaled to the measured CPU.",
        f"- Command: `python -m benchmarks.gateway_profile --rate {args.rate:g} --seconds "
        f"{args.seconds:g}{' --compare ' + str(args.compare) if args.compare else ''}"
        f"{' --ceiling --size ' + args.size if args.ceiling else ''}`",
        "",
        "us of CPU per request:",
        "",
        head,
        "|---|" + "---:|" * len(runs),
    ]
    for name in names:
        cells = [f"{r['stages_us'].get(name, 0.0):.0f}" for r in runs]  # type: ignore[attr-defined]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **total** | " + " | ".join(f"**{r['cpu_us_per_request']:.0f}**" for r in runs) + " |"
    )
    lines.append(
        "| p50 / p99 ms | "
        + " | ".join(f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" for r in runs)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--compare", type=Path, help="another checkout to profile first (before)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="the ResNet-50 contract and --size JPEGs (gateway_ceiling's shape)",
    )
    parser.add_argument("--size", default="640x480", help="JPEG size with --ceiling")
    parser.add_argument("--name", default="gateway_profile")
    parser.add_argument("--keep", type=Path, help="a folder to keep py-spy's raw samples in")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway_profile-"))
    try:
        base = work / "models"
        images = work / "images"
        if args.ceiling:
            w, h = (int(v) for v in args.size.split("x"))
            ceiling.write_contract(base)
            ceiling.write_images(images, w, h)
            args.model = ceiling.MODEL
            args.shape = (f"the ResNet-50 contract (224x224, 1,000 classes), one {w}x{h} JPEG "
                          f"per request ({ceiling.FILES_PER_SIZE} files, cycled)")  # fmt: skip
        else:
            write_contract(base)
            images.mkdir()
            (images / "photo.jpg").write_bytes(make_photo(451, 300))
            args.model = MODEL
            args.shape = (
                "the demo model's contract (32x32, 10 classes), one 451x300 JPEG per request"
            )
        runs = []
        with spawn(base, args.model) as tfs:
            if args.compare:
                runs.append(run(args.compare.resolve(), "before", args, tfs, base, images, work))
            runs.append(
                run(ROOT, "after" if args.compare else "now", args, tfs, base, images, work)
            )
        md = to_markdown(runs, args)
        print(md)
        (RESULTS / f"{args.name}.md").write_text(md, encoding="utf-8")
        (RESULTS / f"{args.name}.json").write_text(json.dumps(runs, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
