"""MicroBatcher against a recording Backend double: batching, padding, order, limits, failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from contract.errors import ImageShapeError
from contract.manifest import InputSpec, Manifest
from service.batcher import BatchRecord, MicroBatcher
from service.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    QueueFull,
    ShuttingDown,
)

H = W = 4
CLASSES = 8
MANIFEST = Manifest(
    model_name="double",
    model_version=1,
    architecture="double",
    input=InputSpec(height=H, width=W),
    labels=tuple(f"c{i}" for i in range(CLASSES)),
    batch_buckets=(1, 2, 4, 8, 16),
)


def image(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, dtype=np.uint8)


@dataclass
class RecordingBackend:
    """Backend double: row i of the answer encodes image i's pixel value, calls are recorded."""

    name: str = "double"
    breaker: None = None
    calls: list[tuple[int, float]] = field(default_factory=list)  # (rows, timeout_s)
    batches: list[np.ndarray] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set: each call waits for it
    fail_with: list[BaseException] = field(default_factory=list)  # raised by the next calls
    delay_s: float = 0.0  # each call takes at least this long

    @property
    def manifest(self) -> Manifest:
        return MANIFEST

    async def start(self) -> None: ...

    async def ready(self) -> bool:
        return True

    async def close(self) -> None: ...

    async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
        self.calls.append((images.shape[0], timeout_s))
        self.batches.append(images.copy())
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with:
            raise self.fail_with.pop(0)
        out = np.zeros((images.shape[0], CLASSES), np.float32)
        out[:, 0] = images[:, 0, 0, 0]  # the pixel value travels back in column 0
        return out


def make(backend: RecordingBackend, **kw: float) -> MicroBatcher:
    opts: dict[str, float] = {"max_batch_size": 8, "max_wait_ms": 20.0, "max_queue_images": 64}
    opts.update(kw)
    return MicroBatcher(
        backend,
        MANIFEST,
        max_batch_size=int(opts["max_batch_size"]),
        max_wait_ms=opts["max_wait_ms"],
        max_queue_images=int(opts["max_queue_images"]),
        retry_after_s=3,
    )


def later(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    backend = RecordingBackend()
    records: list[BatchRecord] = []
    batcher = MicroBatcher(
        backend, MANIFEST, max_batch_size=16, max_wait_ms=50, max_queue_images=64,
        on_batch=records.append,
    )  # fmt: skip
    await batcher.start()
    results = await asyncio.gather(
        *(batcher.submit([image(v)], deadline=later()) for v in range(40))
    )
    await batcher.close()
    assert [r[0].probabilities[0] for r in results] == list(range(40))
    assert len(backend.calls) < 40 / 4
    assert all(rows in MANIFEST.batch_buckets for rows, _ in backend.calls)
    assert batcher.stats.images == 40 and batcher.stats.backend_calls == len(backend.calls)
    assert sum(r.images for r in records) == 40


async def test_multi_image_request_spans_batches_in_order() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=8)
    await batcher.start()
    out = await batcher.submit([image(v) for v in range(20)], deadline=later())
    await batcher.close()
    assert [r.probabilities[0] for r in out] == list(range(20))
    assert [rows for rows, _ in backend.calls] == [8, 8, 4]


async def test_pads_to_the_nearest_bucket_with_zeros() -> None:
    backend = RecordingBackend()
    batcher = make(backend)
    await batcher.start()
    out = await batcher.submit([image(7), image(9), image(11)], deadline=later())
    await batcher.close()
    assert [r.batch_size for r in out] == [3, 3, 3]
    (batch,) = backend.batches
    assert batch.shape == (4, H, W, 3)
    assert batch[3].max() == 0 and batch[2].min() == 11
    assert batcher.stats.padded == 1


def test_max_batch_is_capped_at_the_largest_bucket() -> None:
    assert make(RecordingBackend(), max_batch_size=1000).max_batch_size == 16


async def test_full_queue_answers_queue_full_at_once() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=4, max_wait_ms=0, max_queue_images=4)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)] * 4, deadline=later()))
    while not backend.calls:  # the first batch is at the (blocked) backend
        await asyncio.sleep(0.001)
    queued = asyncio.create_task(batcher.submit([image(2)] * 4, deadline=later()))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as info:
        await batcher.submit([image(3)], deadline=later())
    assert info.value.retry_after_s == 3 and info.value.status == 503
    backend.gate.set()  # type: ignore[union-attr]
    assert len(await first) == 4 and len(await queued) == 4
    await batcher.close()


async def test_expired_items_never_reach_the_backend() -> None:
    """Two ways an item's budget ends before the model could answer it: it runs out while the
    item waits in the queue (its caller gives up), or what is left of it when its turn comes
    is shorter than a call takes (the batch fails it then). Neither takes a row of a call."""
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    for _ in range(8):
        batcher.wait_estimate.observe(1, 5.0)  # as if calls took 5 s (one fast call: still 5 s)
    await batcher.start()
    slow = asyncio.create_task(batcher.submit([image(1)], deadline=later(30.0)))
    while not backend.calls:
        await asyncio.sleep(0.001)
    with pytest.raises(DeadlineExceeded, match="waiting for the model"):
        await batcher.submit([image(2)], deadline=later(0.05))
    doomed = asyncio.create_task(batcher.submit([image(3)], deadline=later(3.0)))
    while batcher.queue_depth == 0:
        await asyncio.sleep(0.001)
    backend.gate.set()  # type: ignore[union-attr]
    with pytest.raises(DeadlineExceeded, match="while queued for the model"):
        await doomed  # 3 s left when its turn came, a call takes ~5 s: failed at once
    assert (await slow)[0].probabilities[0] == 1
    await batcher.close()
    assert [int(batch[0].max()) for batch in backend.batches] == [1]
    assert batcher.stats.expired == 1


async def test_backend_gets_the_latest_deadline_and_each_caller_its_own() -> None:
    """One nearly expired item must not fail its whole batch: the call is bounded by the latest
    deadline, while each caller still stops waiting at its own."""
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=2, max_wait_ms=1000)
    await batcher.start()
    patient = asyncio.create_task(batcher.submit([image(1)], deadline=later(30.0)))
    hurried = asyncio.create_task(batcher.submit([image(2)], deadline=later(0.3)))
    while not backend.calls:
        await asyncio.sleep(0.001)
    with pytest.raises(DeadlineExceeded):
        await hurried  # its own budget ends while the call is still at the backend
    backend.gate.set()  # type: ignore[union-attr]
    assert (await patient)[0].probabilities[0] == 1
    await batcher.close()
    ((rows, timeout_s),) = backend.calls
    assert rows == 2 and 2.0 < timeout_s <= 30.0


async def test_items_that_cannot_make_their_deadline_skip_the_backend() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=2, max_wait_ms=50)
    batcher.wait_estimate.observe(2, 0.5)  # calls take ~0.5 s
    await batcher.start()
    ok, late = await asyncio.gather(
        batcher.submit([image(1)], deadline=later(30.0)),
        batcher.submit([image(2)], deadline=later(0.3)),  # cannot be answered within 0.3 s
        return_exceptions=True,
    )
    await batcher.close()
    assert isinstance(late, DeadlineExceeded) and ok[0].probabilities[0] == 1
    assert [rows for rows, _ in backend.calls] == [1]  # the late image took no row
    assert batcher.stats.expired == 1


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (BackendUnavailable("model server down", retry_after_s=1), BackendUnavailable),
        (RuntimeError("bug in a backend"), BackendError),
    ],
)
async def test_backend_failure_fails_only_its_batch(
    raised: BaseException, expected: type[Exception]
) -> None:
    backend = RecordingBackend(fail_with=[raised])
    batcher = make(backend, max_wait_ms=0)
    await batcher.start()
    with pytest.raises(expected):
        await batcher.submit([image(1), image(2)], deadline=later())
    out = await batcher.submit([image(5)], deadline=later())  # the loop survived
    await batcher.close()
    assert out[0].probabilities[0] == 5
    assert batcher.stats.failed_batches == 1


async def test_close_with_drain_flushes_the_queue_then_refuses() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=2, max_wait_ms=0)
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in range(6)]
    while not backend.calls:
        await asyncio.sleep(0.001)
    closing = asyncio.create_task(batcher.close(drain=True))
    await asyncio.sleep(0.01)
    backend.gate.set()  # type: ignore[union-attr]
    await closing
    assert [(await t)[0].probabilities[0] for t in tasks] == list(range(6))
    with pytest.raises(ShuttingDown):
        await batcher.submit([image(1)], deadline=later())


async def test_close_without_drain_fails_what_is_queued() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    while not backend.calls:
        await asyncio.sleep(0.001)
    queued = asyncio.create_task(batcher.submit([image(2)], deadline=later()))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close(drain=False))
    with pytest.raises(ShuttingDown):
        await queued
    backend.gate.set()  # type: ignore[union-attr]
    await closing
    assert (await first)[0].probabilities[0] == 1  # what was at the backend still finishes


async def test_a_drain_that_overruns_its_timeout_fails_the_rest_and_returns() -> None:
    """The model never answers: close(timeout_s) still returns at its timeout, and every
    caller, queued or at the backend, gets 503 shutting_down then, not at its own deadline."""
    backend = RecordingBackend(gate=asyncio.Event())  # never set: the call never returns
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    at_backend = asyncio.create_task(batcher.submit([image(1)], deadline=later(60.0)))
    while not backend.calls:
        await asyncio.sleep(0.001)
    queued = asyncio.create_task(batcher.submit([image(2)], deadline=later(60.0)))
    while batcher.queue_depth == 0:
        await asyncio.sleep(0.001)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await asyncio.wait_for(batcher.close(drain=True, timeout_s=0.3), 10)
    except TimeoutError:
        pytest.fail("close() did not return: a drain that overruns must still end")
    assert loop.time() - t0 < 2.0
    for caller in (at_backend, queued):
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(caller, 1)
    assert len(backend.calls) == 1  # the queued image never reached the model
    with pytest.raises(ShuttingDown):
        await batcher.submit([image(3)], deadline=later())


async def test_failed_batches_teach_the_wait_estimate_nothing() -> None:
    """A call that failed says nothing about how fast the model is: only answered calls count,
    so a burst of slow failures (a server timing out) does not make the gateway shed later."""
    backend = RecordingBackend(
        fail_with=[BackendUnavailable("model server down", retry_after_s=1)] * 3, delay_s=0.2
    )
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await batcher.submit([image(1)], deadline=later())
    assert batcher.wait_estimate.batch_seconds(1) is None  # nothing learnt from failures
    backend.delay_s = 0.0
    await batcher.submit([image(2)], deadline=later())
    await batcher.close()
    learnt = batcher.wait_estimate.batch_seconds(1)
    assert learnt is not None and learnt < 0.15, learnt  # the answered call, not the 0.2 s failures


async def test_rejects_images_of_the_wrong_shape() -> None:
    batcher = make(RecordingBackend())
    await batcher.start()
    with pytest.raises(ImageShapeError, match=r"Received: uint8\[1, 5, 5, 3\]"):
        await batcher.submit([np.zeros((5, 5, 3), np.uint8)], deadline=later())
    await batcher.close()
