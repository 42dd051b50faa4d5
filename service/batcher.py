"""Asyncio micro-batcher: many requests' images -> one padded backend call per bucket.

Requests `submit` decoded images with a deadline. One loop task collects items until
`max_batch_size` images are waiting (capped at the manifest's largest bucket) or `max_wait_ms`
has passed since the oldest one arrived, drops items whose deadline has passed (504) or whose
caller gave up, pads the rest with zeros to the nearest manifest bucket so an XLA-compiled
model never sees a new shape, makes ONE backend call and resolves each item's future with its
row. The queue is bounded twice: by length (`max_queue_images`) and by its estimated wait
(`max_queue_wait_s`, see `service.admission`); a request that would overflow either is answered
503 `queue_full` at once instead of being accepted and failing late. A failing batch fails only its own futures; the loop survives
anything and logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from contract.manifest import Manifest
from service.admission import QueueWaitEstimate
from service.backends.base import Backend
from service.errors import BackendError, DeadlineExceeded, GatewayError, QueueFull, ShuttingDown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    """One image's probabilities and where its time went."""

    probabilities: np.ndarray  # float32 [classes]
    queue_s: float  # submit -> its batch went to the backend
    backend_s: float  # duration of the backend call that served it
    batch_size: int  # real images in that backend call


@dataclass(frozen=True)
class BatchRecord:
    """What one backend call looked like (for metrics)."""

    images: int
    bucket: int
    backend_s: float
    ok: bool


@dataclass
class BatcherStats:
    """Running totals since start; `queue_depth` is live."""

    backend_calls: int = 0
    images: int = 0  # real images sent to the backend
    padded: int = 0  # zero images added to reach a bucket
    expired: int = 0  # dropped before the backend call: deadline passed
    rejected: int = 0  # refused at submit: queue full
    failed_batches: int = 0
    queue_depth: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.backend_calls if self.backend_calls else 0.0


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[ImageResult]
    deadline: float  # loop.time() after which the answer is useless
    enqueued: float  # time.perf_counter() at submit (uvloop's loop.time() ticks in whole ms)


class MicroBatcher:
    """Collects images from concurrent requests into bucket-sized backend calls."""

    def __init__(
        self,
        backend: Backend,
        manifest: Manifest,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_images: int,
        retry_after_s: int = 1,
        max_inflight_batches: int = 1,
        max_queue_wait_s: float = 0.0,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        """`max_queue_wait_s` > 0 refuses work whose estimated queue wait exceeds it (0: off)."""
        if max_batch_size < 1 or max_queue_images < 1 or max_inflight_batches < 1:
            raise ValueError(
                "max_batch_size, max_queue_images and max_inflight_batches must be >= 1. "
                f"Received: {max_batch_size=}, {max_queue_images=}, {max_inflight_batches=}"
            )
        self._backend = backend
        self._manifest = manifest
        self.max_batch_size = min(max_batch_size, manifest.max_batch)
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_queue = max_queue_images
        self._max_queue_wait_s = max_queue_wait_s
        self.wait_estimate = QueueWaitEstimate(self.max_batch_size, manifest.bucket_for)
        # loop.time() each backend call in flight is expected to end by (planned estimate).
        self._busy_until: dict[int, float] = {}
        self._retry_after_s = retry_after_s
        self._on_batch = on_batch
        self._shape = (manifest.input.height, manifest.input.width, manifest.input.channels)
        self._pending: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight_batches)
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = BatcherStats()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Start the loop task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def submit(self, images: Sequence[np.ndarray], *, deadline: float) -> list[ImageResult]:
        """Queue `images` (uint8 [H,W,3] each) and wait for their results, in order.

        `deadline` is on the event loop's clock (`loop.time()`). Raises QueueFull at once when
        the queue cannot take all of them, DeadlineExceeded when the deadline passes first,
        ImageShapeError (`Manifest.check_images`) for an image that is not the model's input.
        """
        loop = asyncio.get_running_loop()
        if self._closing or self._task is None:
            raise ShuttingDown("the gateway is shutting down", retry_after_s=self._retry_after_s)
        for img in images:
            self._manifest.check_images(img[np.newaxis])  # ImageShapeError: the caller's bug
        self.check_admission(len(images), deadline=deadline)
        now = time.perf_counter()
        items = [_Item(img, loop.create_future(), deadline, now) for img in images]
        self._pending.extend(items)
        self.stats.queue_depth = len(self._pending)
        self._arrived.set()
        futures = [it.future for it in items]
        try:
            async with asyncio.timeout_at(deadline):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise DeadlineExceeded("request budget ran out waiting for the model") from None
        finally:
            # Cancelled or failed early: release what is still queued so the loop skips it.
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def check_admission(self, n_images: int, *, deadline: float) -> None:
        """Raise QueueFull (503 + Retry-After) unless `n_images` more fit in the queue now.

        They fit if the queue has room for them and the estimated time for everything queued
        plus them to get through the backend stays within `max_queue_wait_s` and the time left
        to `deadline`. Cheap: routes call it before reading a body, `submit` again after decode.
        """
        queued = len(self._pending)
        if queued + n_images > self._max_queue:
            self.stats.rejected += n_images
            raise QueueFull(
                f"queue holds {queued} of {self._max_queue} images; cannot take {n_images} more",
                retry_after_s=self._retry_after_s,
            )
        # Work that fits in the next batch is always taken: the estimate only learns from calls
        # that complete, so a queue that shed everything after one slow call would never
        # find out the backend is fast again. The request's own deadline still bounds it.
        if self._max_queue_wait_s <= 0 or queued + n_images <= self.max_batch_size:
            return
        now = asyncio.get_running_loop().time()
        # The queue moves once the calls at the backend return: count what is left of them.
        busy = max(self._busy_until.values(), default=now)
        wait = max(0.0, busy - now) + self.wait_estimate.wait_s(queued + n_images)
        left = deadline - now
        limit = min(self._max_queue_wait_s, left)
        if wait > limit:
            self.stats.rejected += n_images
            raise QueueFull(
                f"estimated queue wait {wait:.2f} s for {queued} queued images exceeds "
                f"{limit:.2f} s (max_queue_wait_s or the time left to the deadline)",
                retry_after_s=self._retry_after_s,
            )

    async def close(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop taking work; with `drain`, flush everything queued first. Idempotent.

        Bounded by `timeout_s` (None: unbounded): what is still queued or at the backend then
        fails with ShuttingDown (503), so a backend that never answers cannot hold it longer.
        """
        self._closing = True
        self._arrived.set()
        if self._task is None:
            return
        if not drain:
            self._fail_pending(ShuttingDown("the gateway is shutting down"))
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            log.warning("batcher drain did not finish in %.1f s; failing the rest", timeout_s)
            self._fail_pending(ShuttingDown("the gateway is shutting down"))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            # Batches still at the backend are abandoned too (their callers get 503): a model
            # that never answers must not hold the process past its drain budget.
            for task in list(self._inflight):
                task.cancel()
        for task in list(self._inflight):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fail_pending(self, exc: GatewayError) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(exc)
        self.stats.queue_depth = 0

    async def _loop(self) -> None:
        while True:
            try:
                if not self._pending:
                    if self._closing:
                        break
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                # Fill up to max_batch_size or until the oldest item has waited max_wait.
                fill_by = self._pending[0].enqueued + self._max_wait_s
                while len(self._pending) < self.max_batch_size and not self._closing:
                    remaining = fill_by - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                await self._slots.acquire()
                take = min(self.max_batch_size, len(self._pending))
                batch = [self._pending.popleft() for _ in range(take)]
                self.stats.queue_depth = len(self._pending)
                task = asyncio.create_task(self._run_batch(batch))
                self._inflight.add(task)
                task.add_done_callback(self._batch_done)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any bug in one iteration
                log.exception("micro-batcher loop iteration failed; continuing")
                await asyncio.sleep(0.01)
        # Drained: wait for the batches still at the backend.
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("micro-batch task failed", exc_info=task.exception())

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # An item that cannot be answered before its deadline (the call is expected to take
        # `expected` s) fails now instead of taking a row of the model's time for nothing.
        expected = self.wait_estimate.batch_seconds(self._manifest.bucket_for(len(batch))) or 0.0
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up (cancelled / timed out)
                continue
            if item.deadline <= now + expected:
                self.stats.expired += 1
                item.future.set_exception(
                    DeadlineExceeded("request budget ran out while queued for the model")
                )
                continue
            live.append(item)
        if not live:
            return
        n = len(live)
        bucket = self._manifest.bucket_for(n)
        pixels = np.zeros((bucket, *self._shape), dtype=np.uint8)
        for i, item in enumerate(live):
            pixels[i] = item.image
        # The LATEST deadline bounds the call: each caller already stops waiting at its own
        # deadline (submit), and one nearly expired item must not fail the whole batch.
        timeout_s = max(max(item.deadline for item in live) - now, 1e-3)
        t0 = time.perf_counter()  # durations: fine-grained clock; deadlines stay on loop.time()
        call = id(live)
        planned = self.wait_estimate.batch_seconds(bucket, conservative=True) or 0.0
        self._busy_until[call] = now + planned
        error: GatewayError | None = None
        probs: np.ndarray | None = None
        try:
            probs = np.asarray(await self._backend.predict(pixels, timeout_s=timeout_s))
            if probs.ndim != 2 or probs.shape[0] < n:
                raise BackendError(
                    f"backend returned shape {probs.shape} for a batch of {bucket} images"
                )
        except asyncio.CancelledError:  # close() gave up on this call: the drain ran out
            for item in live:
                if not item.future.done():
                    item.future.set_exception(
                        ShuttingDown(
                            "the gateway is shutting down; the model did not answer in time"
                        )
                    )
            raise
        except GatewayError as exc:
            error = exc
        except Exception as exc:
            log.exception("backend call failed")
            error = BackendError(f"backend call failed: {type(exc).__name__}")
        finally:
            del self._busy_until[call]
        backend_s = time.perf_counter() - t0
        if error is None:
            self.wait_estimate.observe(bucket, backend_s)
        self.stats.backend_calls += 1
        self.stats.images += n
        self.stats.padded += bucket - n
        if error is not None:
            self.stats.failed_batches += 1
        if self._on_batch is not None:
            try:
                self._on_batch(BatchRecord(n, bucket, backend_s, error is None))
            except Exception:
                log.exception("on_batch observer failed")
        for i, item in enumerate(live):
            if item.future.done():
                continue
            if error is not None or probs is None:
                item.future.set_exception(error or BackendError("backend returned nothing"))
            else:
                item.future.set_result(
                    ImageResult(probs[i].copy(), t0 - item.enqueued, backend_s, n)
                )
