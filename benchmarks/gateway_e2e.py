"""Our gateway (embedded backend) against gateways that serve the same model the naive way.

Builds `resnet_cifar` (32x32, 10 classes, random weights), exports it with `export_model`,
then serves it through each gateway in turn, one after the other so they never share the
CPU, under the same `hey` load (after a warmup each), POSTing one 451x300 JPEG photo as a raw
body:

    ours       `resnet-serving serve --backend embedded`: decode pool, micro-batching up to 32
               (sent at once while the model is idle, batched while it is busy), XLA SavedModel
    signature  `benchmarks/naive_gateway.py --mode signature`: a FastAPI handler that decodes
               with Pillow and calls the same SavedModel's `serving_default` per request
               (the strong peer: the same compiled graph, no batching)
    keras      (`--keras`) the same handler calling Keras `model.predict` per request, the
               slowest way Keras offers
    bentoml    (`--bentoml-python PATH`, a Python with bentoml installed and our TensorFlow
               importable) BentoML's adaptive batching (`batchable=True`) over the same
               SavedModel signature: benchmarks/bento_service.py

Two loads per gateway: `hey -c 1` (lone requests: the latency of an idle server) and
`hey -c <clients>` (throughput). Writes `benchmarks/results/gateway_e2e.md`.

    python -m benchmarks.gateway_e2e [--clients 32] [--seconds 15] [--keras]
        [--bentoml-python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.gateway_proc import free_port, machine_line, now_utc
from benchmarks.preprocess import make_photo

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
    lone_p50_ms: float
    lone_p99_ms: float


def export(tmp: Path) -> tuple[Path, Path]:
    """(the exported version folder, the .keras file)."""
    import keras

    from model_builder.artifacts import RunInfo
    from model_builder.export import export_model
    from model_builder.resnet import build_model

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
    return base / NAME / "1", keras_path


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


def hey(url: str, body: Path, content_type: str, clients: int, seconds: float) -> str:
    """hey's per-request CSV (hey's own summary skips p99 when it has few samples)."""
    # -t 60: a per-request timeout far above any latency here, so slow answers are measured,
    # not cut off and dropped from the percentiles.
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(clients), "-t", "60", "-m", "POST"]
    cmd += ["-T", content_type, "-D", str(body), "-o", "csv", url]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=seconds + 120
    ).stdout


def parse(csv_text: str) -> tuple[float, float, float, int, int]:
    """Throughput until the last answer, exact p50/p99, 200s, non-200s."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    latency = np.array([float(r["response-time"]) for r in rows])
    ends = np.array([float(r["offset"]) + float(r["response-time"]) for r in rows])
    ok = sum(r["status-code"] == "200" for r in rows)
    rps = ok / float(ends.max()) if len(rows) else 0.0
    p50, p99 = (float(np.percentile(latency, q)) * 1000 for q in (50, 99))
    return rps, p50, p99, ok, len(rows) - ok


@dataclass(frozen=True)
class Peer:
    name: str
    cmd: list[str]
    ready: str
    url: str
    body: Path
    content_type: str


def run_one(peer: Peer, args: argparse.Namespace, logdir: Path) -> Result:
    with server(peer.cmd, peer.ready, logdir / f"{peer.name}.log"):
        hey(peer.url, peer.body, peer.content_type, args.clients, args.warmup)
        _, lone_p50, lone_p99, _, _ = parse(
            hey(peer.url, peer.body, peer.content_type, 1, args.lone_seconds)
        )
        rps, p50, p99, ok, errors = parse(
            hey(peer.url, peer.body, peer.content_type, args.clients, args.seconds)
        )
    result = Result(peer.name, rps, p50, p99, ok, errors, lone_p50, lone_p99)
    print(result, flush=True)
    return result


def multipart(path: Path, field: str) -> tuple[Path, str]:
    """A multipart body file with one image, and its content type (for BentoML's API)."""
    boundary = "benchboundary7f3a"
    data = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    out = path.with_suffix(".multipart")
    out.write_bytes(data)
    return out, f"multipart/form-data; boundary={boundary}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--lone-seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keras", action="store_true", help="also the model.predict gateway")
    parser.add_argument("--bentoml-python", help="a Python with bentoml (and TensorFlow)")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("needs `hey` on PATH (apt-get install -y hey)")
    tmp = Path(tempfile.mkdtemp(prefix="gateway_e2e-"))
    version_dir, keras_path = export(tmp)
    body = tmp / "photo.jpg"
    body.write_bytes(make_photo(451, 300))

    py = sys.executable
    ours_port, naive_port, keras_port, bento_port = (free_port() for _ in range(4))
    peers = [
        Peer("ours", [py, "-m", "resnet_serving", "serve", "--backend", "embedded",
                      "--model-base", str(version_dir.parents[1]), "--model-name", NAME,
                      "--port", str(ours_port), "--max-batch-size", "32", "--log-level",
                      "warning"],
             f"http://127.0.0.1:{ours_port}/readyz", f"http://127.0.0.1:{ours_port}/v1/classify",
             body, "image/jpeg"),
        Peer("signature", [py, "-m", "benchmarks.naive_gateway", "--mode", "signature",
                           "--model", str(version_dir), "--size", str(SIZE), "--labels",
                           str(CLASSES), "--port", str(naive_port)],
             f"http://127.0.0.1:{naive_port}/health", f"http://127.0.0.1:{naive_port}/predict",
             body, "image/jpeg"),
    ]  # fmt: skip
    if args.keras:
        peers.append(Peer(
            "keras", [py, "-m", "benchmarks.naive_gateway", "--mode", "keras", "--model",
                      str(keras_path), "--size", str(SIZE), "--labels", str(CLASSES), "--port",
                      str(keras_port)],
            f"http://127.0.0.1:{keras_port}/health", f"http://127.0.0.1:{keras_port}/predict",
            body, "image/jpeg",
        ))  # fmt: skip
    if args.bentoml_python:
        mp, mp_type = multipart(body, "images")
        peers.append(Peer(
            "bentoml", [args.bentoml_python, str(ROOT / "benchmarks" / "bento_service.py"),
                        "--model", str(version_dir), "--size", str(SIZE), "--port",
                        str(bento_port), "--site-packages", site.getsitepackages()[0]],
            f"http://127.0.0.1:{bento_port}/readyz", f"http://127.0.0.1:{bento_port}/classify",
            mp, mp_type,
        ))  # fmt: skip
    results = [run_one(peer, args, tmp) for peer in peers]
    write(results, args)
    print(RESULTS.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def write(results: list[Result], args: argparse.Namespace) -> None:
    by = {r.name: r for r in results}
    ours, peer = by["ours"], by["signature"]
    ratio = ours.rps / peer.rps if peer.rps else float("inf")
    rows = "\n".join(
        f"| {r.name} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.ok} | {r.errors} | "
        f"{r.lone_p50_ms:.2f} | {r.lone_p99_ms:.2f} |"
        for r in results
    )
    others = "; ".join(
        f"ours / {r.name}: **{ours.rps / r.rps:.1f}x** throughput, lone p50 "
        f"{ours.lone_p50_ms:.2f} vs {r.lone_p50_ms:.2f} ms"
        for r in results
        if r.name not in ("ours", "signature") and r.rps
    )
    cmd = f"python -m benchmarks.gateway_e2e --clients {args.clients} --seconds {args.seconds}"
    cmd += " --keras" * args.keras + " --bentoml-python PATH" * bool(args.bentoml_python)
    RESULTS.write_text(
        f"""# Gateway end to end: ours against naive gateways over the same model

- Date: {now_utc()}
- Machine: {machine_line()}. The gateways ran one after the other in the same run.
- Model: `resnet_cifar` (ResNet-20), 32x32x3 -> {CLASSES} classes, random weights, one export.
- Input: one 451x300 photo-like JPEG (benchmarks.preprocess.make_photo, q90) per request, raw
  body (multipart for BentoML, whose API takes a file).
- Load: lone requests `hey -c 1 -z {args.lone_seconds}s`, then throughput `hey -c {args.clients} -z {args.seconds}s -t 60`,
  after a {args.warmup} s warmup each; one process per gateway.
- ours: `resnet-serving serve --backend embedded` (decode pool, micro-batching up to 32, sent at
  once while the model is idle). signature: `benchmarks/naive_gateway.py --mode signature`
  (Pillow decode and the SavedModel's `serving_default` per request in the async handler).
  keras: the same with Keras `model.predict`. bentoml: `benchmarks/bento_service.py`
  (BentoML's adaptive batching over the same signature).
- Command: `{cmd}`

Throughput counts 200s until the last answer arrived; p50/p99 from every request's latency.

| gateway | throughput (req/s) | p50 (ms) | p99 (ms) | 200 OK | errors | lone p50 (ms) | lone p99 (ms) |
|---|---|---|---|---|---|---|---|
{rows}

Ours / the SavedModel signature called per request: **{ratio:.1f}x** throughput, p99
{ours.p99_ms:.0f} vs {peer.p99_ms:.0f} ms, lone-request p50 {ours.lone_p50_ms:.2f} vs
{peer.lone_p50_ms:.2f} ms.{" " + others + "." if others else ""}
"""
    )


if __name__ == "__main__":
    main()
