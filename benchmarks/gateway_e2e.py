"""Our gateway (embedded backend, micro-batching) vs a naive tutorial gateway, same model, same load.

Builds `resnet_cifar` (32x32, 10 classes, random weights), exports it with `export_model`,
then serves it twice, one after the other so they never share the CPU: our gateway
(`resnet-serving serve --backend embedded`) and `benchmarks/naive_gateway.py`. Each gets
`hey -c <clients> -z <seconds>` after a warmup, POSTing the same PNG as a raw body. Writes
`benchmarks/results/gateway_e2e.md`.

    python -m benchmarks.gateway_e2e [--clients 32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import keras
import numpy as np
from PIL import Image

from model_builder.artifacts import RunInfo
from model_builder.export import export_model
from model_builder.resnet import build_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gateway_e2e.md"
NAME, SIZE, CLASSES = "bench", 32, 10


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export(tmp: Path) -> tuple[Path, Path]:
    """(model_base with the export, the .keras file the naive gateway loads)."""

    keras.utils.set_random_seed(0)
    model = build_model("resnet_cifar", input_size=SIZE, num_classes=CLASSES)
    keras_path = tmp / "model.keras"
    model.save(keras_path)
    info = RunInfo(
        architecture="resnet_cifar",
        input_height=SIZE,
        input_width=SIZE,
        labels=tuple(f"class_{i}" for i in range(CLASSES)),
    )
    base = tmp / "models"
    export_model(
        model, model_base=base, name=NAME, version=1, run_info=info, buckets=(1, 2, 4, 8, 16, 32)
    )
    return base, keras_path


@contextlib.contextmanager
def server(cmd: list[str], ready_url: str, log: Path) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        end = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"server not ready: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hey(url: str, body: Path, clients: int, seconds: int) -> str:
    """hey's per-request CSV (hey's own summary skips p99 when it has few samples)."""
    # -t 60: a per-request timeout far above any latency here, so slow answers are measured,
    # not cut off and dropped from the percentiles.
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(clients), "-t", "60", "-m", "POST"]
    cmd += ["-T", "image/png", "-D", str(body), "-o", "csv", url]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=seconds + 120
    ).stdout


def parse(name: str, csv_text: str) -> Result:
    """Throughput over the whole run (until the last answer), exact p50/p99, non-200 count."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    latency = np.array([float(r["response-time"]) for r in rows])
    ends = np.array([float(r["offset"]) + float(r["response-time"]) for r in rows])
    ok = sum(r["status-code"] == "200" for r in rows)
    return Result(
        name=name,
        rps=ok / float(ends.max()) if len(rows) else 0.0,
        p50_ms=float(np.percentile(latency, 50)) * 1000,
        p99_ms=float(np.percentile(latency, 99)) * 1000,
        ok=ok,
        errors=len(rows) - ok,
    )


def run_one(name: str, cmd: list[str], ready: str, url: str, args: argparse.Namespace,
            body: Path, logdir: Path) -> Result:  # fmt: skip
    with server(cmd, ready, logdir / f"{name}.log"):
        hey(url, body, args.clients, args.warmup)
        text = hey(url, body, args.clients, args.seconds)
    return parse(name, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("needs `hey` on PATH (apt-get install -y hey)")
    tmp = Path(tempfile.mkdtemp(prefix="gateway_e2e-"))
    base, keras_path = export(tmp)
    body = tmp / "image.png"
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
    body.write_bytes(buf.getvalue())

    py = sys.executable
    ours_port, naive_port = free_port(), free_port()
    ours_cmd = [py, "-m", "resnet_serving", "serve", "--backend", "embedded",
                "--model-base", str(base), "--model-name", NAME, "--port", str(ours_port),
                "--max-batch-size", "32", "--log-level", "warning"]  # fmt: skip
    naive_cmd = [py, str(ROOT / "benchmarks" / "naive_gateway.py"), "--model", str(keras_path),
                 "--size", str(SIZE), "--labels", str(CLASSES), "--port", str(naive_port)]  # fmt: skip
    ours = run_one("ours", ours_cmd, f"http://127.0.0.1:{ours_port}/readyz",
                   f"http://127.0.0.1:{ours_port}/v1/classify", args, body, tmp)  # fmt: skip
    naive = run_one("naive", naive_cmd, f"http://127.0.0.1:{naive_port}/health",
                    f"http://127.0.0.1:{naive_port}/predict", args, body, tmp)  # fmt: skip
    write(ours, naive, args)
    print(RESULTS.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def write(ours: Result, naive: Result, args: argparse.Namespace) -> None:
    ratio = ours.rps / naive.rps if naive.rps else float("inf")
    p99_ok = ours.p99_ms <= naive.p99_ms
    rows = "\n".join(
        f"| {r.name} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.ok} | {r.errors} |"
        for r in (ours, naive)
    )
    RESULTS.write_text(
        f"""# Gateway end to end: ours vs a naive tutorial gateway

- Date: {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, CPU-only TensorFlow. **Shared** with other engineers running TensorFlow at the same time: absolute numbers are noisy; the two servers ran one after the other in the same run.
- Model: `resnet_cifar` (ResNet-20), 32x32x3 -> {CLASSES} classes, random weights; same weights in both.
- Load: `hey -c {args.clients} -z {args.seconds}s -t 60 -o csv` POSTing one 128x96 PNG as a raw body, after a {args.warmup} s warmup each; one uvicorn worker each.
- Ours: `resnet-serving serve --backend embedded` (XLA SavedModel, micro-batching up to 32, buckets 1..32, decode in a thread pool).
- Naive: `benchmarks/naive_gateway.py` (Keras `model.predict` per request inside the async handler, plain Pillow decode, no batching).
- Command: `python -m benchmarks.gateway_e2e --clients {args.clients} --seconds {args.seconds}`

Throughput counts 200s until the last answer arrived; p50/p99 from every request's latency.

| gateway | throughput (req/s) | p50 (ms) | p99 (ms) | 200 OK | errors |
|---|---|---|---|---|---|
{rows}

Throughput ratio ours / naive: **{ratio:.1f}x** (target >= 5x); p99 ours {"<=" if p99_ok else ">"} naive.
"""
    )


if __name__ == "__main__":
    main()
