"""testdoubles.fast_tfserving: a GPU-speed TF Serving double over real gRPC, as a child process.

The gateway's own tfserving backend is the client: it must start against the double (model
status, metadata, signature check), get each image's row back, and meet TF Serving's
queue-full answer as overload (503 queue_full) that leaves the circuit breaker closed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from contract import tfs_grpc, wire
from contract.manifest import InputSpec, Manifest, write_manifest
from contract.signatures import INPUT_PIXELS, SIGNATURE_PIXELS
from contract.tfs_protos import PredictResponse
from service.backends.tfserving import TFServingBackend
from service.breaker import State
from service.errors import BackendStartupError, QueueFull
from testdoubles.fast_tfserving import Speed, spawn, spawn_process

NAME, SIDE, CLASSES = "fast", 8, 12


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest-only version folder: all the double and the tfserving backend read."""
    base = tmp_path_factory.mktemp("fast_models")
    manifest = Manifest(
        model_name=NAME, model_version=3, architecture="double",
        input=InputSpec(height=SIDE, width=SIDE), labels=tuple(f"c{i}" for i in range(CLASSES)),
    )  # fmt: skip
    write_manifest(manifest, base / NAME / "3")
    return base


@pytest.fixture(scope="module")
def double(model_base: Path) -> Iterator[str]:
    with spawn(model_base, NAME, speed=Speed(base_ms=20.0, per_image_ms=1.0)) as address:
        yield address


def test_spawn_process_yields_the_pid_of_the_child_that_serves(model_base: Path) -> None:
    """Benchmarks count the double's CPU by this pid: it must be the double, gone after."""
    with spawn_process(model_base, NAME) as double:
        cmdline = Path(f"/proc/{double.pid}/cmdline").read_bytes().split(b"\0")
        assert b"testdoubles.fast_tfserving" in cmdline
        port = int(double.address.rsplit(":", 1)[1])
        held = {
            link.readlink().name for link in Path(f"/proc/{double.pid}/fd").iterdir()
            if link.readlink().name.startswith("socket:[")
        }  # fmt: skip
        assert _listening_inodes(port) & {name[8:-1] for name in held}
    assert not Path(f"/proc/{double.pid}").exists()


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (/proc/net/tcp and tcp6, where gRPC may listen
    on an IPv4-mapped address; state 0A is LISTEN)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def backend(address: str, model_base: Path) -> TFServingBackend:
    return TFServingBackend(address=address, model_name=NAME, model_base=model_base)


def images(n: int) -> np.ndarray:
    return np.zeros((n, SIDE, SIDE, 3), np.uint8)


async def test_the_tfserving_backend_starts_and_each_image_gets_its_row(
    double: str, model_base: Path
) -> None:
    b = backend(double, model_base)
    await b.start()  # GetModelStatus AVAILABLE, GetModelMetadata, signature vs manifest
    try:
        t0 = time.perf_counter()
        probs = await b.predict(images(16), timeout_s=5)
        took = time.perf_counter() - t0
    finally:
        await b.close()
    assert probs.shape == (16, CLASSES) and probs.dtype == np.float32
    assert list(probs.argmax(axis=1)) == [i % CLASSES for i in range(16)]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert took >= (20.0 + 16 * 1.0) / 1000  # base + per image, never faster


async def test_it_refuses_what_tf_serving_would_refuse(double: str, model_base: Path) -> None:
    async with grpc.aio.insecure_channel(double) as channel:
        predict = tfs_grpc.unary_unary(channel, tfs_grpc.PREDICT, serialized=True)
        wrong_size = wire.predict_request_bytes(
            NAME,
            signature=SIGNATURE_PIXELS,
            inputs={INPUT_PIXELS: np.zeros((1, 4, 4, 3), np.uint8)},
        )
        with pytest.raises(grpc.aio.AioRpcError) as shape:
            await predict(wrong_size, timeout=5)
        wrong_model = wire.predict_request_bytes(
            "other", signature=SIGNATURE_PIXELS, inputs={INPUT_PIXELS: images(1)}
        )
        with pytest.raises(grpc.aio.AioRpcError) as model:
            await predict(wrong_model, timeout=5)
        good = wire.predict_request_bytes(
            NAME, signature=SIGNATURE_PIXELS, inputs={INPUT_PIXELS: images(2)}, version=3
        )
        reply: PredictResponse = await predict(good, timeout=5)
    assert shape.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uint8 [n,8,8,3]" in (shape.value.details() or "")
    assert model.value.code() == grpc.StatusCode.NOT_FOUND
    assert reply.model_spec.version.value == 3


async def test_queue_full_is_overload_not_an_outage(model_base: Path) -> None:
    """One batch at a time and no room to wait: the second call in flight is answered with TF
    Serving's queue-full text, which the backend maps to QueueFull; the breaker stays closed."""
    slow = Speed(base_ms=400.0, per_image_ms=0.0, concurrency=1, max_queued=0)
    with spawn(model_base, NAME, speed=slow) as address:
        b = backend(address, model_base)
        await b.start()
        try:
            first = asyncio.create_task(b.predict(images(1), timeout_s=5))
            await asyncio.sleep(0.1)  # the first holds the one slot
            with pytest.raises(QueueFull, match=r"batch scheduling queue .* is full"):
                await b.predict(images(1), timeout_s=5)
            assert (await first).shape == (1, CLASSES)
            assert b.breaker.state is State.CLOSED
        finally:
            await b.close()


async def test_with_a_batching_window_calls_are_merged_and_end_together(
    model_base: Path,
) -> None:
    windowed = Speed(base_ms=50.0, per_image_ms=0.0, batch_timeout_ms=150.0, max_batch_size=4)
    with spawn(model_base, NAME, speed=windowed) as address:
        b = backend(address, model_base)
        await b.start()
        loop = asyncio.get_running_loop()

        async def call(n: int, delay_s: float) -> float:
            await asyncio.sleep(delay_s)
            assert (await b.predict(images(n), timeout_s=5)).shape == (n, CLASSES)
            return loop.time()

        try:
            t0 = loop.time()
            # Two calls 50 ms apart share one window; a third that would overfill the batch
            # (4 images) opens the next one, which is full at once and does not wait.
            first, second, full = await asyncio.gather(call(1, 0.0), call(1, 0.05), call(4, 0.1))
        finally:
            await b.close()
    assert abs(second - first) < 0.03  # the merged calls ended together...
    assert first - t0 >= 0.15 + 0.05  # ...after the window and the batch's own time
    assert full - t0 < first - t0  # the full batch did not wait for a window


async def test_an_unknown_model_fails_the_start_with_tf_servings_words(
    double: str, tmp_path: Path
) -> None:
    b = TFServingBackend(
        address=double, model_name="other", model_base=tmp_path, startup_timeout_s=0.6
    )
    with pytest.raises(BackendStartupError, match="Could not find any versions of model other"):
        await b.start()


def test_it_runs_without_tensorflow() -> None:
    """The GPU host's gateway image has no TensorFlow: neither may the double."""
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import testdoubles.fast_tfserving, service.backends.tfserving\n"
        "assert 'tensorflow_serving' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
