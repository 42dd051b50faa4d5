"""Our gateway (embedded backend) against gateways that serve the same model the naive way.

Builds `resnet_cifar` (32x32, 10 classes, random weights), exports it with `export_model`,
then serves it through each gateway in turn, one after the other so they never share the
CPU, under the same load from our load tester (closed loop, after a warmup each), POSTing one
451x300 JPEG photo as a raw body:

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

Two loads per gateway: one client (lone requests: the latency of an idle server) and
`--clients` clients back to back (throughput). Writes `benchmarks/results/gateway_e2e.md`.

    python -m benchmarks.gateway_e2e [--clients 32] [--seconds 15] [--keras]
        [--bentoml-python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
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

from benchmarks import gateway_proc
from benchmarks.gateway_proc import free_port, machine_line, now_utc
from benchmarks.preprocess import make_photo

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gateway_e2e.md"
NAME, SIZE, CLASSES = "bench", 32, 10


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float | None  # None: no request succeeded
    p99_ms: float | None
    ok: int
    errors: int
    lone_p50_ms: float | None
    lone_p99_ms: float | None


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


def load(url: str, images: Path, body: str, clients: int, seconds: float, warmup: float,
         out: Path) -> tuple[float, float, float, int, int]:  # fmt: skip
    """Our load tester, closed loop with `clients` back to back: (req/s, p50 ms, p99 ms, 200s,
    failures). Latency percentiles are over the 200s; the 60 s timeout never cuts one short."""
    result = gateway_proc.loadtest(
        url, out, "--images", str(images), "--body", body, "--concurrency", str(clients),
        "--duration", str(seconds), "--warmup", str(warmup), "--timeout", "60",
        timeout_s=seconds + warmup + 300, path="",
    )  # fmt: skip
    step = result["steps"][0]
    lat = step["latency_ms"]
    return step["throughput_rps"], lat["p50_ms"], lat["p99_ms"], step["ok"], step["errors"]


@dataclass(frozen=True)
class Peer:
    name: str
    cmd: list[str]
    ready: str
    url: str
    body: str  # how the load tester sends the image: raw, or multipart (field `image`)


def run_one(peer: Peer, args: argparse.Namespace, images: Path, logdir: Path) -> Result:
    with server(peer.cmd, peer.ready, logdir / f"{peer.name}.log"):
        run = logdir / peer.name
        _, lone_p50, lone_p99, _, _ = load(
            peer.url, images, peer.body, 1, args.lone_seconds, args.warmup, run / "lone"
        )
        rps, p50, p99, ok, errors = load(
            peer.url, images, peer.body, args.clients, args.seconds, args.warmup, run / "many"
        )
    result = Result(peer.name, rps, p50, p99, ok, errors, lone_p50, lone_p99)
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--lone-seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keras", action="store_true", help="also the model.predict gateway")
    parser.add_argument("--bentoml-python", help="a Python with bentoml (and TensorFlow)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway_e2e-"))
    version_dir, keras_path = export(tmp)
    images = tmp / "images"
    images.mkdir()
    (images / "photo.jpg").write_bytes(make_photo(451, 300))

    py = sys.executable
    ours_port, naive_port, keras_port, bento_port = (free_port() for _ in range(4))
    peers = [
        Peer("ours", [py, "-m", "resnet_serving", "serve", "--backend", "embedded",
                      "--model-base", str(version_dir.parents[1]), "--model-name", NAME,
                      "--port", str(ours_port), "--max-batch-size", "32", "--log-level",
                      "warning"],
             f"http://127.0.0.1:{ours_port}/readyz", f"http://127.0.0.1:{ours_port}/v1/classify",
             "raw"),
        Peer("signature", [py, "-m", "benchmarks.naive_gateway", "--mode", "signature",
                           "--model", str(version_dir), "--size", str(SIZE), "--labels",
                           str(CLASSES), "--port", str(naive_port)],
             f"http://127.0.0.1:{naive_port}/health", f"http://127.0.0.1:{naive_port}/predict",
             "raw"),
    ]  # fmt: skip
    if args.keras:
        peers.append(Peer(
            "keras", [py, "-m", "benchmarks.naive_gateway", "--mode", "keras", "--model",
                      str(keras_path), "--size", str(SIZE), "--labels", str(CLASSES), "--port",
                      str(keras_port)],
            f"http://127.0.0.1:{keras_port}/health", f"http://127.0.0.1:{keras_port}/predict",
            "raw",
        ))  # fmt: skip
    if args.bentoml_python:
        peers.append(Peer(
            "bentoml", [args.bentoml_python, str(ROOT / "benchmarks" / "bento_service.py"),
                        "--model", str(version_dir), "--size", str(SIZE), "--port",
                        str(bento_port), "--site-packages", site.getsitepackages()[0]],
            f"http://127.0.0.1:{bento_port}/readyz", f"http://127.0.0.1:{bento_port}/classify",
            "multipart",
        ))  # fmt: skip
    results = [run_one(peer, args, images, tmp) for peer in peers]
    write(results, args)
    print(RESULTS.read_text())
    shutil.rmtree(tmp, ignore_errors=True)


def _ms(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def write(results: list[Result], args: argparse.Namespace) -> None:
    by = {r.name: r for r in results}
    ours, peer = by["ours"], by["signature"]
    ratio = ours.rps / peer.rps if peer.rps else float("inf")
    rows = "\n".join(
        f"| {r.name} | {r.rps:.1f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {r.ok} | {r.errors} | "
        f"{_ms(r.lone_p50_ms, '.2f')} | {_ms(r.lone_p99_ms, '.2f')} |"
        for r in results
    )
    others = "; ".join(
        f"ours / {r.name}: **{ours.rps / r.rps:.1f}x** throughput, lone p50 "
        f"{_ms(ours.lone_p50_ms, '.2f')} vs {_ms(r.lone_p50_ms, '.2f')} ms"
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
  body (multipart field `image` for BentoML, whose API takes a file).
- Load: our load tester, closed loop: lone requests `--concurrency 1` for {args.lone_seconds} s, then
  `--concurrency {args.clients}` for {args.seconds} s (timeout 60 s), each after a {args.warmup} s warmup;
  one process per gateway.
- ours: `resnet-serving serve --backend embedded` (decode pool, micro-batching up to 32, sent at
  once while the model is idle). signature: `benchmarks/naive_gateway.py --mode signature`
  (Pillow decode and the SavedModel's `serving_default` per request in the async handler).
  keras: the same with Keras `model.predict`. bentoml: `benchmarks/bento_service.py`
  (BentoML's adaptive batching over the same signature).
- Command: `{cmd}`

Throughput: 200s per second of the measured window; p50/p99 over the 200s.

| gateway | throughput (req/s) | p50 (ms) | p99 (ms) | 200 OK | errors | lone p50 (ms) | lone p99 (ms) |
|---|---|---|---|---|---|---|---|
{rows}

Ours / the SavedModel signature called per request: **{ratio:.1f}x** throughput, p99
{_ms(ours.p99_ms, ".0f")} vs {_ms(peer.p99_ms, ".0f")} ms, lone-request p50 {_ms(ours.lone_p50_ms, ".2f")} vs
{_ms(peer.lone_p50_ms, ".2f")} ms.{" " + others + "." if others else ""}
"""
    )


if __name__ == "__main__":
    main()
