"""A TF Serving double at GPU speed: real gRPC, no model, no TensorFlow. Not TF Serving.

It speaks TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus) with the messages of `contract.tfs_protos`, served through grpc's generic
handlers, and answers each Predict after `base_ms + per_image_ms * n` for a batch of `n`
images: by default 1.5 ms + 0.04 ms per image, about what an H100 takes for ResNet-50 in
bfloat16. It exists to find the gateway's own ceiling, which a CPU-run model would hide: the
benchmarks (`benchmarks/gateway_ceiling.py`) and tests run the gateway against it. It runs
where TensorFlow does not (the GPU host's gateway image has none).

What it checks, as TF Serving would refuse it (INVALID_ARGUMENT): the model name and version,
the signature, the `images` input as uint8 `[n, H, W, 3]` of the manifest's size, with
`tensor_content` of the right length. What it answers: `probabilities` float32 `[n, classes]`
in `float_val`, as TF Serving does by default (row i puts 0.9 on class i mod classes), each
reply serialised once per batch size and reused.

`concurrency` bounds the batches it serves at once (None: no bound, every batch sleeps its
own time; 1: one after another, like one GPU stream); `max_queued` bounds the batches that
wait for one of those slots, beyond which a call is answered UNAVAILABLE with TF Serving's
queue-full text (`Queue::ValidateBatchTaskQueueCapacity`, tensorflow/core/kernels/
batching_util/shared_batch_scheduler.h), so the gateway's overload path can be exercised.
Each call is its own batch, unless `batch_timeout_ms` > 0: then calls are merged the way TF
Serving's batching merges them (a batch opens with a call, closes `batch_timeout_ms` later or
at `max_batch_size` images, and its calls end together), so the effect of several calls in
flight from one gateway process can be measured. Timing: the event loop's timers wake within
about a millisecond, so replies come up to ~1 ms late.

It is NOT TF Serving: no model runs, no REST API, one model and one version, no version
lifecycle, no padding to allowed batch sizes.

    python -m testdoubles.fast_tfserving --model-base B --model-name N [--port 8500]
        [--base-ms 1.5] [--per-image-ms 0.04] [--concurrency K] [--max-queued Q]
        [--batch-timeout-ms 2 --max-batch-size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from contract import tfs_grpc
from contract.manifest import Manifest, read_manifest, version_dir
from contract.signatures import INPUT_PIXELS, OUTPUT_PROBABILITIES, SIGNATURE_PIXELS
from contract.tfs_protos import (
    DataType,
    GetModelMetadataResponse,
    GetModelStatusResponse,
    ModelVersionState,
    PredictResponse,
    SignatureDefMap,
    TensorInfo,
)
from testdoubles.errors import DoubleError

READY_LINE = "fast TF Serving double ready (not TF Serving)"
QUEUE_FULL = (
    "The batch scheduling queue to which this task was submitted is full; "
    "currently {queued} batches enqueued and max_enqueued_batches is {limit}"
)


@dataclass(frozen=True)
class Speed:
    """How the double's "GPU" behaves: time per batch, slots, a bounded queue, and optionally
    TF Serving's batching window."""

    base_ms: float = 1.5  # per batch, whatever its size
    per_image_ms: float = 0.04  # per image in it
    concurrency: int | None = None  # batches served at once; None: no bound
    max_queued: int | None = None  # batches waiting for a slot before queue-full; None: no bound
    # > 0: calls are merged as TF Serving's batching merges them: a batch opens with a call
    # and closes after this long or at max_batch_size images; its calls end together.
    batch_timeout_ms: float = 0.0
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.base_ms < 0 or self.per_image_ms < 0:
            raise ValueError(
                f"base_ms and per_image_ms must be >= 0. Received: {self.base_ms}, "
                f"{self.per_image_ms}"
            )
        if (
            (self.concurrency is not None and self.concurrency < 1)
            or (self.max_queued is not None and self.max_queued < 0)
            or self.batch_timeout_ms < 0
            or self.max_batch_size < 1
        ):
            raise ValueError(
                f"concurrency and max_batch_size must be >= 1, max_queued and "
                f"batch_timeout_ms >= 0. Received: {self.concurrency}, {self.max_batch_size}, "
                f"{self.max_queued}, {self.batch_timeout_ms}"
            )

    def seconds(self, n: int) -> float:
        return (self.base_ms + self.per_image_ms * n) / 1000.0


@dataclass
class _Batch:
    """Calls merged by the batching window: they end together."""

    done: asyncio.Future[None]
    size: int = 0
    closed: bool = False


class _Invalid(Exception):
    """A request TF Serving would refuse with INVALID_ARGUMENT or NOT_FOUND."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Model:
    """The one served version: its checks and its cached replies."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        spec = manifest.input
        self.image_bytes = spec.height * spec.width * spec.channels
        self.image_shape = (spec.height, spec.width, spec.channels)
        self._replies: dict[int, bytes] = {}

    def batch_size(self, request: Any) -> int:
        """`n` of a valid Predict request for this version, or _Invalid saying why not."""
        m = self.manifest
        spec = request.model_spec
        if spec.name != m.model_name:
            raise _Invalid(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec.name}"
            )
        if spec.HasField("version") and spec.version.value != m.model_version:
            raise _Invalid(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Specific({spec.name}, {spec.version.value})",
            )
        if (spec.signature_name or SIGNATURE_PIXELS) != SIGNATURE_PIXELS:
            raise _Invalid(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature key "{spec.signature_name}" not found.',
            )
        if set(request.inputs) != {INPUT_PIXELS}:
            raise _Invalid(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input keys must be ['{INPUT_PIXELS}']. Received: {sorted(request.inputs)}",
            )
        tensor = request.inputs[INPUT_PIXELS]
        dims = tuple(d.size for d in tensor.tensor_shape.dim)
        if tensor.dtype != DataType.DT_UINT8 or len(dims) != 4 or dims[1:] != self.image_shape:
            raise _Invalid(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input must be uint8 [n,{','.join(map(str, self.image_shape))}]. "
                f"Received: dtype={tensor.dtype} shape={list(dims)}",
            )
        n = dims[0]
        if n < 1 or len(tensor.tensor_content) != n * self.image_bytes:
            raise _Invalid(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"tensor_content holds {len(tensor.tensor_content)} bytes, shape needs "
                f"{n * self.image_bytes}",
            )
        return int(n)

    def reply(self, n: int) -> bytes:
        """The serialised PredictResponse for a batch of `n` (built once per `n`)."""
        cached = self._replies.get(n)
        if cached is None:
            m = self.manifest
            classes = m.num_classes
            probs = np.full((n, classes), 0.1 / max(1, classes - 1), dtype=np.float32)
            probs[np.arange(n), np.arange(n) % classes] = 0.9
            response = PredictResponse()
            response.model_spec.name = m.model_name
            response.model_spec.version.value = m.model_version
            response.model_spec.signature_name = SIGNATURE_PIXELS
            out = response.outputs[OUTPUT_PROBABILITIES]
            out.dtype = DataType.DT_FLOAT
            out.tensor_shape.dim.add(size=n)
            out.tensor_shape.dim.add(size=classes)
            out.float_val.extend(probs.ravel().tolist())
            cached = self._replies[n] = response.SerializeToString()
        return cached

    def status(self) -> bytes:
        response = GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.manifest.model_version
        status.state = ModelVersionState.AVAILABLE
        return bytes(response.SerializeToString())

    def metadata(self) -> bytes:
        m = self.manifest
        sig_map = SignatureDefMap()
        sig = sig_map.signature_def[SIGNATURE_PIXELS]
        sig.method_name = "tensorflow/serving/predict"
        images = TensorInfo(name="serving_default_images:0", dtype=DataType.DT_UINT8)
        for size in (-1, m.input.height, m.input.width, m.input.channels):
            images.tensor_shape.dim.add(size=size)
        sig.inputs[INPUT_PIXELS].CopyFrom(images)
        probs = TensorInfo(name="StatefulPartitionedCall:0", dtype=DataType.DT_FLOAT)
        for size in (-1, m.num_classes):
            probs.tensor_shape.dim.add(size=size)
        sig.outputs[OUTPUT_PROBABILITIES].CopyFrom(probs)
        response = GetModelMetadataResponse()
        response.model_spec.name = m.model_name
        response.model_spec.version.value = m.model_version
        response.metadata["signature_def"].Pack(sig_map)
        return bytes(response.SerializeToString())


class FastTFServing:
    """The double on `host:port` (0: a free port, see `port` after `start`), served by grpc.aio
    on the running event loop. grpc.aio servers and clients do not share a process across
    event loops well, so tests and benchmarks run it as its own process (`spawn`).

    `calls` and `images` count the Predicts answered; `queue_full` those refused as full.
    """

    def __init__(
        self, manifest: Manifest, *, speed: Speed | None = None, host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:  # fmt: skip
        self._model = _Model(manifest)
        self.speed = speed or Speed()
        self._host = host
        self._want_port = port
        self.port = 0
        self.calls = 0
        self.images = 0
        self.queue_full = 0
        self._waiting = 0
        self._open: _Batch | None = None  # the batch taking calls (batch_timeout_ms > 0)
        self._batches: set[asyncio.Task[None]] = set()
        self._server: grpc.aio.Server | None = None
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    def from_model_base(
        cls, model_base: Path, model_name: str, version: int | None = None, **kwargs: Any
    ) -> FastTFServing:
        """Serve the manifest of `<model_base>/<model_name>/<version>` (no SavedModel needed)."""
        return cls(read_manifest(version_dir(model_base, model_name, version)), **kwargs)

    @property
    def address(self) -> str:
        return self._host if self._host.startswith("unix:") else f"{self._host}:{self.port}"

    async def start(self) -> None:
        """Listen; returns once the server accepts calls."""
        self._slots = asyncio.Semaphore(self.speed.concurrency) if self.speed.concurrency else None
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 1 << 30),
                ("grpc.max_send_message_length", 1 << 30),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        if self._host.startswith("unix:"):  # a Unix socket: TF Serving's --grpc_socket_path
            self.port = server.add_insecure_port(self._host)
        else:
            self.port = server.add_insecure_port(f"{self._host}:{self._want_port}")
        if self.port == 0:
            raise DoubleError(f"cannot listen on {self._host}:{self._want_port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop at once: calls in flight are cancelled (idempotent)."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(method: tfs_grpc.Method, fn: Callable[..., Any]) -> grpc.RpcMethodHandler:
            # Replies are serialised already (cached bytes): the serializer passes them on.
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=method.request.FromString,
                response_serializer=lambda b: b,
            )  # fmt: skip

        prediction = grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService",
            {
                "Predict": unary(tfs_grpc.PREDICT, self._predict),
                "GetModelMetadata": unary(tfs_grpc.GET_MODEL_METADATA, self._metadata),
            },
        )
        status = grpc.method_handlers_generic_handler(
            "tensorflow.serving.ModelService",
            {"GetModelStatus": unary(tfs_grpc.GET_MODEL_STATUS, self._status)},
        )

        class Both(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return prediction.service(details) or status.service(details)

        return Both()

    async def _predict(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        try:
            n = self._model.batch_size(request)
        except _Invalid as exc:
            await context.abort(exc.code, str(exc))
        if self.speed.batch_timeout_ms > 0:
            batch = self._join_batch(n)
            if batch is None:
                await self._queue_full(context)
            assert batch is not None
            await asyncio.shield(batch.done)
        else:
            if self._no_room():
                await self._queue_full(context)
            await self._run(n)
        self.calls += 1
        self.images += n
        return self._model.reply(n)

    def _no_room(self) -> bool:
        """A new batch would have to wait for a slot behind `max_queued` others."""
        slots, limit = self._slots, self.speed.max_queued
        return slots is not None and slots.locked() and limit is not None and self._waiting >= limit

    async def _queue_full(self, context: grpc.aio.ServicerContext) -> None:
        self.queue_full += 1
        limit = self.speed.max_queued
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, QUEUE_FULL.format(queued=self._waiting, limit=limit)
        )

    async def _run(self, images: int) -> None:
        """One batch on the "GPU": wait for a slot (if bounded), then take its time."""
        slots = self._slots
        if slots is None:
            await asyncio.sleep(self.speed.seconds(images))
            return
        self._waiting += 1
        try:
            await slots.acquire()
        finally:
            self._waiting -= 1
        try:
            await asyncio.sleep(self.speed.seconds(images))
        finally:
            slots.release()

    def _join_batch(self, n: int) -> _Batch | None:
        """The open batch this call joins (a new one if none has room); None: queue full."""
        batch = self._open
        if batch is None or batch.size + n > self.speed.max_batch_size:
            if self._no_room():
                return None
            loop = asyncio.get_running_loop()
            batch = self._open = _Batch(loop.create_future())
            loop.call_later(self.speed.batch_timeout_ms / 1000.0, self._close, batch)
        batch.size += n
        if batch.size >= self.speed.max_batch_size:
            self._close(batch)
        return batch

    def _close(self, batch: _Batch) -> None:
        """The batch takes no more calls; it runs, and its calls end together."""
        if batch.closed:
            return
        batch.closed = True
        if self._open is batch:
            self._open = None

        async def run() -> None:
            try:
                await self._run(batch.size)
            finally:
                if not batch.done.done():
                    batch.done.set_result(None)

        task = asyncio.get_running_loop().create_task(run())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _metadata(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        await self._check_name(request.model_spec.name, context)
        return self._model.metadata()

    async def _status(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        await self._check_name(request.model_spec.name, context)
        return self._model.status()

    async def _check_name(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != self._model.manifest.model_name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; prints one ready line with the address."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500, help="0: any free port")
    parser.add_argument("--base-ms", type=float, default=Speed.base_ms)
    parser.add_argument("--per-image-ms", type=float, default=Speed.per_image_ms)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--max-queued", type=int, default=None)
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    parser.add_argument("--max-batch-size", type=int, default=Speed.max_batch_size)
    args = parser.parse_args(argv)
    speed = Speed(args.base_ms, args.per_image_ms, args.concurrency, args.max_queued,
                  args.batch_timeout_ms, args.max_batch_size)  # fmt: skip
    double = FastTFServing.from_model_base(
        args.model_base, args.model_name, args.model_version, speed=speed, host=args.host,
        port=args.port,
    )  # fmt: skip

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await double.start()
        print(f"{READY_LINE} on {double.address}", flush=True)
        await stop.wait()
        await double.stop()
        print(f"answered {double.calls} calls, {double.images} images, "
              f"{double.queue_full} queue-full", flush=True)  # fmt: skip

    asyncio.run(serve())
    return 0


@dataclass(frozen=True)
class Spawned:
    """The double running as a child process: where it listens, and its pid (benchmarks count
    its CPU apart from the gateway's)."""

    address: str
    pid: int


@contextlib.contextmanager
def spawn_process(
    model_base: Path,
    model_name: str,
    *,
    speed: Speed | None = None,
    timeout_s: float = 60.0,
    log: Path | None = None,
) -> Iterator[Spawned]:
    """Run the double as a child process on a free port; yields it once it is ready. Its
    output goes to `log` (a temporary file when None)."""
    s = speed or Speed()
    args = [sys.executable, "-m", "testdoubles.fast_tfserving", "--model-base", str(model_base),
            "--model-name", model_name, "--port", "0", "--base-ms", str(s.base_ms),
            "--per-image-ms", str(s.per_image_ms)]  # fmt: skip
    if s.concurrency is not None:
        args += ["--concurrency", str(s.concurrency)]
    if s.max_queued is not None:
        args += ["--max-queued", str(s.max_queued)]
    args += [
        "--batch-timeout-ms",
        str(s.batch_timeout_ms),
        "--max-batch-size",
        str(s.max_batch_size),
    ]
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "double.log"
        out = stack.enter_context(log.open("w"))
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            yield Spawned(_wait_ready(proc, log, timeout_s), proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def spawn(
    model_base: Path,
    model_name: str,
    *,
    speed: Speed | None = None,
    timeout_s: float = 60.0,
    log: Path | None = None,
) -> Iterator[str]:
    """`spawn_process`, yielding only the double's `host:port`."""
    with spawn_process(model_base, model_name, speed=speed, timeout_s=timeout_s, log=log) as double:
        yield double.address


def _wait_ready(proc: subprocess.Popen[str], log: Path, timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text = log.read_text()
        for line in text.splitlines():
            if line.startswith(READY_LINE):
                return line.rsplit(" on ", 1)[1].strip()
        if proc.poll() is not None:
            raise DoubleError(
                f"the fast TF Serving double exited ({proc.returncode}): {text[-2000:]}"
            )
        time.sleep(0.05)
    raise DoubleError(f"the fast TF Serving double was not ready within {timeout_s} s")


if __name__ == "__main__":
    raise SystemExit(main())
