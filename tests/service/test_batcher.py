"""MicroBatcher against a recording Backend double: batching, padding, order, limits, failures."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
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
from tests.service.conftest import OneVersion

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
class RecordingBackend(OneVersion):
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

    async def predict(self, images: np.ndarray, *, timeout_s: float, **_: object) -> np.ndarray:
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


async def test_concurrent_requests_share_calls_and_get_their_own_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.batcher")
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
    assert not caplog.records, "the loop logged trouble in normal operation"


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
    await batcher.submit([image(1)] * 5, deadline=later())  # bucket 8: 3 more zero images
    assert batcher.stats.padded == 4
    await batcher.close()
    assert [r.batch_size for r in out] == [3, 3, 3]
    batch = backend.batches[0]
    assert batch.shape == (4, H, W, 3) and batch.dtype == np.uint8
    assert batch[3].max() == 0 and batch[2].min() == 11


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
    assert batcher.queue_depth == batcher.stats.queue_depth == 4
    with pytest.raises(QueueFull) as info:
        await batcher.submit([image(3)], deadline=later())
    assert info.value.retry_after_s == 3 and info.value.status == 503
    with pytest.raises(QueueFull, match="queue holds 4 of 4 images; cannot take 2 more"):
        await batcher.submit([image(3)] * 2, deadline=later())
    assert batcher.stats.rejected == 3  # images refused, over both requests
    backend.gate.set()  # type: ignore[union-attr]
    assert len(await first) == 4 and len(await queued) == 4
    assert batcher.stats.queue_depth == 0
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


async def test_a_burst_after_lone_requests_is_not_dropped_on_a_guess() -> None:
    """Only lone calls were timed (0.3 s each): a batch of 8 is not known to take 8 x 0.3 s
    (batches cost far less than linearly), so a burst with 1.5 s left is sent, not dropped as
    late on a linear guess; the batch really takes 0.3 s and every image is answered."""
    backend = RecordingBackend(delay_s=0.3)
    batcher = make(backend)
    batcher.wait_estimate.observe(1, 0.3)
    await batcher.start()
    results = await batcher.submit([image(i) for i in range(8)], deadline=later(1.5))
    await batcher.close()
    assert [r.probabilities[0] for r in results] == list(range(8))
    assert [rows for rows, _ in backend.calls] == [8]
    assert batcher.stats.expired == 0


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (BackendUnavailable("model server down", retry_after_s=1), BackendUnavailable),
        (RuntimeError("bug in a backend"), BackendError),
    ],
    ids=["unavailable", "bug"],
)
async def test_backend_failure_fails_only_its_batch(
    raised: BaseException, expected: type[Exception]
) -> None:
    backend = RecordingBackend(fail_with=[raised])
    batcher = make(backend, max_wait_ms=0)
    await batcher.start()
    with pytest.raises(expected) as info:
        await batcher.submit([image(1), image(2)], deadline=later())
    if isinstance(raised, RuntimeError):  # the class is named, its text (internals) is not
        assert str(info.value) == "backend call failed: RuntimeError"
    out = await batcher.submit([image(5)], deadline=later())  # the loop survived
    backend.fail_with.append(raised)
    with pytest.raises(expected):
        await batcher.submit([image(6)], deadline=later())
    await batcher.close()
    assert out[0].probabilities[0] == 5
    assert batcher.stats.failed_batches == 2 and batcher.stats.backend_calls == 3


async def test_close_with_drain_flushes_the_queue_then_refuses() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=2, max_wait_ms=0)
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in range(6)]
    while not backend.calls:
        await asyncio.sleep(0.001)
    closing = asyncio.create_task(batcher.close())  # drains by default
    await asyncio.sleep(0.01)
    backend.gate.set()  # type: ignore[union-attr]
    await closing
    assert [(await t)[0].probabilities[0] for t in tasks] == list(range(6))
    with pytest.raises(ShuttingDown) as info:
        await batcher.submit([image(1)], deadline=later())
    assert info.value.retry_after_s == 3


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
    with pytest.raises(ShuttingDown, match="the gateway is shutting down"):
        await queued
    assert batcher.queue_depth == batcher.stats.queue_depth == 0
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
        with pytest.raises(ShuttingDown, match="the gateway is shutting down"):
            await asyncio.wait_for(caller, 1)
    assert len(backend.calls) == 1  # the queued image never reached the model
    with pytest.raises(ShuttingDown):
        await batcher.submit([image(3)], deadline=later())
    await asyncio.wait_for(batcher.close(timeout_s=0.3), 2)  # idempotent after an overrun too


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


@pytest.mark.parametrize(
    "kwargs",
    [{"max_batch_size": 0}, {"max_queue_images": 0}, {"max_inflight_batches": 0}],
    ids=["max_batch_size", "max_queue_images", "max_inflight_batches"],
)
def test_refuses_limits_below_one(kwargs: dict[str, int]) -> None:
    limits = {"max_batch_size": 1, "max_queue_images": 1, "max_inflight_batches": 1, **kwargs}
    with pytest.raises(ValueError, match=r"must be >= 1\. Received: .*=0"):
        MicroBatcher(RecordingBackend(), MANIFEST, max_wait_ms=0, **limits)
    MicroBatcher(RecordingBackend(), MANIFEST, max_wait_ms=0, **{k: 1 for k in limits})


async def test_a_batch_waits_max_wait_for_more_images() -> None:
    """Images arriving within max_wait of the first share its call; max_wait is in ms."""
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=8, max_wait_ms=300)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit([image(2)], deadline=later()))
    await asyncio.gather(first, second)
    await batcher.close()
    assert [rows for rows, _ in backend.calls] == [2]


async def test_each_result_says_where_its_time_went() -> None:
    backend = RecordingBackend(delay_s=0.1)
    batcher = make(backend, max_batch_size=2, max_wait_ms=0)
    await batcher.start()
    (result,) = await batcher.submit([image(1)], deadline=later())
    await batcher.close()
    assert 0.1 <= result.backend_s < 5.0
    assert 0.0 <= result.queue_s < 5.0 and result.batch_size == 1


async def test_the_backend_call_ends_with_the_callers_budget() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    await batcher.submit([image(1)], deadline=later(0.5))
    await batcher.close()
    ((_, timeout_s),) = backend.calls
    assert 0 < timeout_s <= 0.5


async def test_on_batch_sees_every_call_and_its_outcome() -> None:
    backend = RecordingBackend(
        fail_with=[BackendUnavailable("down", retry_after_s=1)], delay_s=0.01
    )
    records: list[BatchRecord] = []
    batcher = MicroBatcher(backend, MANIFEST, max_batch_size=8, max_wait_ms=0,
                           max_queue_images=64, on_batch=records.append)  # fmt: skip
    await batcher.start()
    with pytest.raises(BackendUnavailable):
        await batcher.submit([image(1)] * 3, deadline=later())
    await batcher.submit([image(2)] * 5, deadline=later())
    await batcher.close()
    assert [(r.images, r.bucket, r.ok) for r in records] == [(3, 4, False), (5, 8, True)]
    assert all(r.backend_s >= 0.01 for r in records)


async def test_a_backend_answer_of_the_wrong_shape_fails_the_batch() -> None:
    class Flat(RecordingBackend):
        async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
            return np.zeros(images.shape[0], np.float32)  # 1-D: not [rows, classes]

    batcher = make(Flat(), max_wait_ms=0)
    await batcher.start()
    with pytest.raises(BackendError, match=r"backend returned shape \(2,\) for a batch of 2"):
        await batcher.submit([image(1), image(2)], deadline=later())
    await batcher.close()


async def test_a_request_that_failed_early_takes_no_more_rows() -> None:
    """A 20-image request whose first batch fails: its other 12 images are dropped, not sent."""
    backend = RecordingBackend(fail_with=[BackendUnavailable("down", retry_after_s=1)])
    batcher = make(backend, max_batch_size=8, max_wait_ms=0)
    await batcher.start()
    with pytest.raises(BackendUnavailable):
        await batcher.submit([image(v) for v in range(20)], deadline=later())
    await batcher.submit([image(99)], deadline=later())
    await batcher.close()
    assert [int(b[0].max()) for b in backend.batches] == [0, 99]


async def test_a_caller_who_gave_up_does_not_hold_up_the_rest_of_its_batch() -> None:
    """In one batch, the first caller gives up while queued, and again while at the backend:
    the callers after it in the batch are still answered at once."""
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=3, max_wait_ms=1000)
    await batcher.start()
    quitter = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    await asyncio.sleep(0.01)
    quitter.cancel()  # gave up while queued
    patient = asyncio.create_task(batcher.submit([image(2)], deadline=later(30.0)))
    another = asyncio.create_task(batcher.submit([image(3)], deadline=later(30.0)))
    while not backend.calls:
        await asyncio.sleep(0.001)
    patient.cancel()  # gave up while at the backend
    backend.gate.set()  # type: ignore[union-attr]
    (result,) = await asyncio.wait_for(another, 5)
    await batcher.close()
    assert result.probabilities[0] == 3
    ((rows, _),) = backend.calls
    assert rows == 2 and backend.batches[0][:2, 0, 0, 0].tolist() == [2, 3]  # no quitter row


async def test_an_expired_item_first_in_its_batch_does_not_hold_up_the_rest() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=4, max_wait_ms=50)
    for _ in range(8):
        batcher.wait_estimate.observe(4, 0.5)  # calls of 4 take ~0.5 s
    await batcher.start()
    late, ok, also_late = await asyncio.gather(
        batcher.submit([image(1)], deadline=later(0.3)),  # cannot be answered in 0.3 s
        batcher.submit([image(2)], deadline=later(30.0)),
        batcher.submit([image(3)], deadline=later(0.3)),
        return_exceptions=True,
    )
    await batcher.close()
    assert isinstance(late, DeadlineExceeded) and isinstance(also_late, DeadlineExceeded)
    assert ok[0].probabilities[0] == 2  # type: ignore[index]
    assert batcher.stats.expired == 2


async def test_batches_in_flight_at_once_are_all_answered() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = MicroBatcher(backend, MANIFEST, max_batch_size=1, max_wait_ms=0,
                           max_queue_images=64, max_inflight_batches=2)  # fmt: skip
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in (1, 2)]
    while len(backend.calls) < 2:  # both calls are at the backend together
        await asyncio.sleep(0.001)
    backend.gate.set()  # type: ignore[union-attr]
    assert [(await t)[0].probabilities[0] for t in tasks] == [1, 2]
    await batcher.close()


async def test_a_long_running_batcher_keeps_no_finished_batches() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    for v in range(200):
        await batcher.submit([image(v % 250)], deadline=later())
    gc.collect()
    finished = sum(isinstance(o, asyncio.Task) and o.done() for o in gc.get_objects())
    await batcher.close()
    assert finished < 50, f"{finished} finished tasks still referenced after 200 batches"


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


# --------------------------------------------- what callers and metrics see along the way


async def test_submit_before_start_is_refused() -> None:
    batcher = make(RecordingBackend())
    assert not batcher.running
    with pytest.raises(ShuttingDown):
        await batcher.submit([image(1)], deadline=later())


async def test_a_two_image_request_gets_both_rows() -> None:
    batcher = make(RecordingBackend(), max_wait_ms=0)
    await batcher.start()
    out = await asyncio.wait_for(batcher.submit([image(3), image(5)], deadline=later()), 5)
    await batcher.close()
    assert [r.probabilities[0] for r in out] == [3, 5]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` every millisecond; fail the test if it is not true in `timeout_s`."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


async def test_queue_depth_and_inflight_are_reported_live() -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    depths: list[int] = []
    batcher = MicroBatcher(
        backend, MANIFEST, max_batch_size=2, max_wait_ms=0, max_queue_images=64,
        max_inflight_batches=2, on_queue_depth=depths.append,
    )  # fmt: skip
    await batcher.start()
    callers = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in range(6)]
    await until(lambda: len(backend.calls) == 2)
    await asyncio.sleep(0.01)
    assert batcher.stats.inflight == 2  # both slots busy, the rest queued
    assert depths[-1] == batcher.queue_depth == batcher.stats.queue_depth == 6 - 4
    assert max(depths) >= 2
    backend.gate.set()  # type: ignore[union-attr]
    out = await asyncio.wait_for(asyncio.gather(*callers), 5)
    await batcher.close()
    assert [r[0].probabilities[0] for r in out] == list(range(6))
    assert batcher.stats.inflight == 0 and depths[-1] == 0


async def test_overloads_and_refusals_are_counted_each_time() -> None:
    """Two batches answered queue-full count two overloads; refusals count every image."""
    backend = RecordingBackend(
        gate=asyncio.Event(), fail_with=[QueueFull("queue is full"), QueueFull("queue is full")]
    )
    batcher = make(backend, max_batch_size=1, max_wait_ms=0, max_inflight_batches=2)
    batcher.wait_estimate.observe(1, 0.5)  # the pause after a queue-full: about 0.5 s
    await batcher.start()
    shed = [asyncio.create_task(batcher.submit([image(v)], deadline=later())) for v in (1, 2)]
    await until(lambda: len(backend.calls) == 2)
    backend.gate.set()  # type: ignore[union-attr]
    for caller in shed:
        with pytest.raises(QueueFull):
            await asyncio.wait_for(caller, 5)
    assert batcher.stats.overloaded == 2 and batcher.stats.failed_batches == 2
    for n in (2, 3):
        with pytest.raises(QueueFull, match="said its queue is full"):
            batcher.check_admission(n, deadline=later())
    assert batcher.stats.rejected == 5
    await batcher.close(drain=False)


async def test_the_wait_estimate_counts_free_slots_and_shares_the_queue() -> None:
    """Two free slots, full batches of 0.3 s: 16 images wait about 0.3 s (two calls side by
    side), under a 0.5 s limit; 40 images (five calls, 0.75 s) are refused."""
    batcher = MicroBatcher(
        RecordingBackend(), MANIFEST, max_batch_size=8, max_wait_ms=0, max_queue_images=64,
        max_inflight_batches=2, max_queue_wait_s=0.5,
    )  # fmt: skip
    for _ in range(4):
        batcher.wait_estimate.observe(8, 0.3)
    await batcher.start()
    batcher.check_admission(16, deadline=later())
    with pytest.raises(QueueFull, match="estimated queue wait"):
        batcher.check_admission(40, deadline=later())
    assert batcher.stats.rejected == 40
    await batcher.close()


# --------------------------------------------- the linger: waits for company, never longer


async def test_a_lone_image_is_sent_when_its_linger_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.batcher")
    batcher = make(RecordingBackend(), max_wait_ms=30)
    await batcher.start()
    out = await asyncio.wait_for(batcher.submit([image(4)], deadline=later()), 2)
    await batcher.close()
    assert out[0].probabilities[0] == 4
    assert not caplog.records, "the loop logged trouble in normal operation"


async def test_a_batch_that_fills_up_goes_before_its_linger_ends() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_batch_size=4, max_wait_ms=5000)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    await asyncio.sleep(0.01)  # lingering: one image of four
    rest = await asyncio.wait_for(
        batcher.submit([image(2), image(3), image(4)], deadline=later()), 2
    )
    assert (await first)[0].probabilities[0] == 1 and len(rest) == 3
    assert [rows for rows, _ in backend.calls] == [4]
    await batcher.close()


async def test_close_sends_a_lingering_batch_at_once() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_wait_ms=5000)
    await batcher.start()
    lone = asyncio.create_task(batcher.submit([image(6)], deadline=later()))
    await asyncio.sleep(0.01)
    assert not backend.calls  # lingering
    await asyncio.wait_for(batcher.close(), 2)
    assert lone.done() and lone.result()[0].probabilities[0] == 6


async def test_a_linger_sleeps_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a batch lingers the loop is idle: a timer, not a dispatch on every loop turn."""
    batcher = make(RecordingBackend(), max_wait_ms=200)
    dispatches = 0
    real = batcher._dispatch

    def counting() -> None:
        nonlocal dispatches
        dispatches += 1
        real()

    monkeypatch.setattr(batcher, "_dispatch", counting)
    await batcher.start()
    await asyncio.wait_for(batcher.submit([image(1)], deadline=later()), 5)
    await batcher.close()
    assert dispatches <= 5


async def test_a_drain_waits_for_the_queue_behind_a_busy_slot() -> None:
    """close() returns only when the image queued behind the call in flight is answered."""
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_batch_size=1, max_wait_ms=0)
    await batcher.start()
    first = asyncio.create_task(batcher.submit([image(1)], deadline=later()))
    await until(lambda: len(backend.calls) == 1)
    second = asyncio.create_task(batcher.submit([image(2)], deadline=later()))
    await until(lambda: batcher.queue_depth == 1)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    backend.gate.set()  # type: ignore[union-attr]
    await asyncio.wait_for(closing, 5)
    assert first.done() and second.done() and batcher.queue_depth == 0
    assert second.result()[0].probabilities[0] == 2


async def test_a_row_that_is_not_finite_fails_only_its_own_image() -> None:
    """A broken model (float16 overflow, bad weights) answers NaN or infinity for one image:
    that image gets 502 (its scores would be JSON `null`), the others in the batch their rows."""

    class Broken(RecordingBackend):
        async def predict(self, images: np.ndarray, *, timeout_s: float, **_: object) -> np.ndarray:
            out = await super().predict(images, timeout_s=timeout_s)
            out[images[:, 0, 0, 0] == 7, 1] = np.nan
            out[images[:, 0, 0, 0] == 8, 2] = np.inf
            return out

    backend = Broken()
    batcher = make(backend)
    await batcher.start()
    results = await asyncio.gather(
        *(batcher.submit([image(v)], deadline=later()) for v in (6, 7, 8, 9)),
        return_exceptions=True,
    )
    await batcher.close()
    assert len(backend.calls) == 1
    ok, nan, inf, ok2 = results
    assert isinstance(nan, BackendError) and "class 1 = nan" in nan.detail
    assert isinstance(inf, BackendError) and "class 2 = inf" in inf.detail
    assert [r[0].probabilities[0] for r in (ok, ok2)] == [6, 9]  # type: ignore[index]
