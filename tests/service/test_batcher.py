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
        if self.fail_with:
            raise self.fail_with.pop(0)
        out = np.zeros((images.shape[0], CLASSES), np.float32)
        out[:, 0] = images[:, 0, 0, 0]  # the pixel value travels back in column 0
        return out


def make(backend: RecordingBackend, **kw: float) -> MicroBatcher:
    opts: dict[str, float] = {
        "max_batch_size": 8, "max_wait_ms": 20.0, "max_queue_images": 64,
        "max_inflight_batches": 1,
    }  # fmt: skip
    opts.update(kw)
    return MicroBatcher(
        backend,
        MANIFEST,
        max_batch_size=int(opts["max_batch_size"]),
        max_wait_ms=opts["max_wait_ms"],
        max_queue_images=int(opts["max_queue_images"]),
        max_inflight_batches=int(opts["max_inflight_batches"]),
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
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    slow = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    while not backend.calls:
        await asyncio.sleep(0.001)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([image(2)], deadline=later(0.05))
    backend.gate.set()  # type: ignore[union-attr]
    assert (await slow)[0].probabilities[0] == 1
    await batcher.close()
    assert len(backend.calls) == 1 and backend.batches[0][0].max() == 1


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


async def test_rejects_images_of_the_wrong_shape() -> None:
    batcher = make(RecordingBackend())
    await batcher.start()
    with pytest.raises(ImageShapeError, match=r"Received: uint8\[1, 5, 5, 3\]"):
        await batcher.submit([np.zeros((5, 5, 3), np.uint8)], deadline=later())
    await batcher.close()


# ------------------------------------------------- when a batch goes: slots, the cork, linger


@dataclass
class TimedBackend(RecordingBackend):
    """RecordingBackend that also notes how many calls were in flight at once."""

    inflight: int = 0
    most_inflight: int = 0

    async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        try:
            return await super().predict(images, timeout_s=timeout_s)
        finally:
            self.inflight -= 1


async def test_a_lone_image_goes_at_once_when_a_slot_is_free() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_wait_ms=0)
    await batcher.start()
    (result,) = await asyncio.wait_for(batcher.submit([image(4)], deadline=later()), 1.0)
    await batcher.close()
    # Sent in the event-loop turn after it arrived, not after a batching window.
    assert result.queue_s < 0.05 and result.batch_size == 1


async def test_images_that_arrive_together_go_together() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_wait_ms=0)
    await batcher.start()
    await asyncio.gather(*(batcher.submit([image(v)], deadline=later()) for v in range(5)))
    await batcher.close()
    assert [rows for rows, _ in backend.calls] == [8]  # 5 images, one call (bucket 8)


async def test_batches_form_while_every_slot_is_busy() -> None:
    """The cork: the first image goes alone; what arrives while it is at the backend waits
    and then goes in one call."""
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_wait_ms=0)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    while not backend.calls:
        await asyncio.sleep(0.001)
    rest = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in range(6)]
    await asyncio.sleep(0.05)
    assert len(backend.calls) == 1 and batcher.queue_depth == 6  # one slot, busy: they wait
    backend.gate.set()  # type: ignore[union-attr]
    await asyncio.gather(first, *rest)
    await batcher.close()
    assert [rows for rows, _ in backend.calls] == [1, 8]


async def test_several_calls_in_flight_up_to_the_limit() -> None:
    backend = TimedBackend(gate=asyncio.Event())
    batcher = make(backend, max_wait_ms=0, max_inflight_batches=2)
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit([image(1)], deadline=later()))]
    while not backend.calls:
        await asyncio.sleep(0.001)
    tasks.append(asyncio.create_task(batcher.submit([image(2)], deadline=later())))
    while len(backend.calls) < 2:  # the second slot takes the next image at once
        await asyncio.sleep(0.001)
    tasks += [asyncio.create_task(batcher.submit([image(3)], deadline=later())) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert len(backend.calls) == 2 and batcher.queue_depth == 3  # no third slot
    backend.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*tasks)
    await batcher.close()
    assert [r[0].probabilities[0] for r in results] == [1, 2, 3, 3, 3]
    assert backend.most_inflight == 2 and [rows for rows, _ in backend.calls] == [1, 1, 4]


async def test_max_wait_ms_lingers_for_company_with_a_slot_free() -> None:
    """The fixed-window policy is still there: a lone image waits up to max_wait_ms."""
    backend = RecordingBackend()
    batcher = make(backend, max_wait_ms=80)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(batcher.submit([image(2)], deadline=later()))
    (a,), (b,) = await asyncio.gather(first, second)
    await batcher.close()
    assert [rows for rows, _ in backend.calls] == [2]  # the second joined the first
    assert a.queue_s >= 0.07 and b.queue_s < a.queue_s


# --------------------------------------------- the model server says its queue is full


async def test_model_server_queue_full_sheds_its_batch_and_pauses_admission() -> None:
    """TF Serving's queue-full (QueueFull from the backend): its images get 503 queue_full,
    new work is refused for a moment, and what is already queued waits for the pause."""
    full = QueueFull("TF Serving is overloaded: The batch scheduling queue ... is full")
    backend = RecordingBackend(fail_with=[full])
    batcher = make(backend, max_wait_ms=0)
    batcher.wait_estimate.observe(1, 0.2)  # a typical call: 0.2 s, so the pause is 0.2 s
    await batcher.start()
    with pytest.raises(QueueFull, match="overloaded"):
        await batcher.submit([image(1)], deadline=later())
    assert batcher.stats.overloaded == 1 and batcher.overload.strikes == 1
    with pytest.raises(QueueFull, match="said its queue is full") as refused:
        batcher.check_admission(1, deadline=later())
    assert refused.value.retry_after_s == 3
    await asyncio.sleep(0.25)  # the pause is over: work is taken and served again
    out = await batcher.submit([image(7)], deadline=later())
    await batcher.close()
    assert out[0].probabilities[0] == 7 and batcher.overload.strikes == 0


async def test_queued_work_waits_out_the_pause_instead_of_failing() -> None:
    backend = RecordingBackend(gate=asyncio.Event(), fail_with=[QueueFull("queue is full")])
    batcher = make(backend, max_wait_ms=0)
    batcher.wait_estimate.observe(1, 0.15)
    await batcher.start()
    refused = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    while not backend.calls:
        await asyncio.sleep(0.001)
    queued = asyncio.create_task(batcher.submit([image(2)], deadline=later()))
    await asyncio.sleep(0.01)
    t0 = asyncio.get_running_loop().time()
    backend.gate.set()  # type: ignore[union-attr]
    with pytest.raises(QueueFull):
        await refused
    out = await queued
    waited = asyncio.get_running_loop().time() - t0
    await batcher.close()
    assert out[0].probabilities[0] == 2 and waited >= 0.1  # held for the pause, then served
