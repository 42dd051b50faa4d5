"""Asyncio micro-batcher: many requests' images -> one padded backend call per bucket.

Requests `submit` decoded images with a deadline. The batcher keeps up to
`max_inflight_batches` backend calls in flight and sends whatever is queued (up to
`max_batch_size` images, capped at the manifest's largest bucket) as soon as a call slot is
free: at the end of the current event-loop turn, so images that arrive together go together.
A lone image at an idle model server is therefore sent at once, and batches form by
themselves while every slot is busy, growing with the load (the "cork" of BentoML's adaptive
dispatcher, bentoml/BentoML `_internal/marshal/dispatcher.py`). `max_wait_ms` > 0 adds a
linger: with a slot free, a batch that is not full waits until its oldest image has waited
that long (the fixed-window policy this gateway had before, with one slot, is
`max_wait_ms=5, max_inflight_batches=1`).

Each call drops items whose deadline has passed (504) or whose caller gave up, pads the rest
with zeros to the nearest manifest bucket so an XLA-compiled model never sees a new shape, and
resolves each item's future with its row. The queue is bounded twice: by length
(`max_queue_images`) and by its estimated wait (`max_queue_wait_s`, see `service.admission`);
a request that would overflow either is answered 503 `queue_full` at once instead of being
accepted and failing late. When the model server answers that its own queue is full (TF
Serving's batching queue; the backend raises QueueFull), that batch's requests get 503 and the
batcher pauses: no new work is admitted or sent for a moment that doubles while the server
keeps saying so (`service.admission.OverloadPause`). A failing batch fails only its own
futures; a bug in one dispatch is logged and the next event dispatches again. A row that is
not finite (NaN or infinity: a broken model, e.g. float16 overflow) fails only its own image
with 502, never an answer whose scores would be `null`.
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
from service.admission import OverloadPause, QueueWaitEstimate
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
    """Running totals since start; `queue_depth` and `inflight` are live."""

    backend_calls: int = 0
    images: int = 0  # real images sent to the backend
    padded: int = 0  # zero images added to reach a bucket
    expired: int = 0  # dropped before the backend call: deadline passed
    rejected: int = 0  # refused at submit: queue full, or the model server overloaded
    failed_batches: int = 0
    overloaded: int = 0  # backend calls answered "queue full" by the model server
    queue_depth: int = 0
    inflight: int = 0  # backend calls in flight

    @property
    def mean_batch(self) -> float:
        return self.images / self.backend_calls if self.backend_calls else 0.0


def _not_finite(row: np.ndarray) -> BackendError:
    bad = np.flatnonzero(~np.isfinite(row))
    return BackendError(
        f"the model returned non-finite probabilities for this image: {bad.size} of "
        f"{row.size} classes, e.g. class {int(bad[0])} = {float(row[bad[0]])}"
    )


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
        on_queue_depth: Callable[[int], None] | None = None,
    ) -> None:
        """`max_queue_wait_s` > 0 refuses work whose estimated queue wait exceeds it (0: off).
        `on_batch` is called after each backend call, `on_queue_depth` when the queue changes."""
        if max_batch_size < 1 or max_queue_images < 1 or max_inflight_batches < 1:
            raise ValueError(
                "max_batch_size, max_queue_images and max_inflight_batches must be >= 1. "
                f"Received: {max_batch_size=}, {max_queue_images=}, {max_inflight_batches=}"
            )
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0. Received: {max_wait_ms=}")
        self._backend = backend
        self._manifest = manifest
        self.max_batch_size = min(max_batch_size, manifest.max_batch)
        self.max_inflight_batches = max_inflight_batches
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_queue = max_queue_images
        self._max_queue_wait_s = max_queue_wait_s
        self.wait_estimate = QueueWaitEstimate(self.max_batch_size, manifest.bucket_for)
        self.overload = OverloadPause(max_pause_s=float(retry_after_s))
        # loop.time() each backend call in flight is expected to end by (planned estimate).
        self._busy_until: dict[int, float] = {}
        self._retry_after_s = retry_after_s
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._shape = (manifest.input.height, manifest.input.width, manifest.input.channels)
        self._pending: deque[_Item] = deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._dispatch_at: float | None = None  # perf_counter() of the scheduled dispatch
        self._dispatch_handle: asyncio.Handle | None = None
        self._progress: asyncio.Event | None = None  # set when a backend call ends (close)
        self._started = False
        self._closing = False
        self.stats = BatcherStats()

    @property
    def running(self) -> bool:
        return self._started and not self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Start taking work (idempotent)."""
        self._started = True

    async def submit(self, images: Sequence[np.ndarray], *, deadline: float) -> list[ImageResult]:
        """Queue `images` (uint8 [H,W,3] each) and wait for their results, in order.

        `deadline` is on the event loop's clock (`loop.time()`). Raises QueueFull at once when
        the queue cannot take all of them (or the model server said it is overloaded),
        DeadlineExceeded when the deadline passes first, ImageShapeError
        (`Manifest.check_images`) for an image that is not the model's input.
        """
        if self._closing or not self._started:
            raise ShuttingDown("the gateway is shutting down", retry_after_s=self._retry_after_s)
        for img in images:
            self._manifest.check_images(img[np.newaxis])  # ImageShapeError: the caller's bug
        self.check_admission(len(images), deadline=deadline)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(img, loop.create_future(), deadline, now) for img in images]
        self._pending.extend(items)
        self._queue_changed()
        self._schedule_dispatch()
        futures = [it.future for it in items]
        try:
            async with asyncio.timeout_at(deadline):
                if len(futures) == 1:
                    return [await futures[0]]
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise DeadlineExceeded("request budget ran out waiting for the model") from None
        finally:
            # Cancelled or failed early: release what is still queued so dispatch skips it.
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def check_admission(self, n_images: int, *, deadline: float) -> None:
        """Raise QueueFull (503 + Retry-After) unless `n_images` more fit in the queue now.

        They fit if the model server has not just said it is overloaded, the queue has room
        for them, and the estimated time for everything queued plus them to get through the
        backend stays within `max_queue_wait_s` and the time left to `deadline`. Cheap:
        routes call it before reading a body, `submit` again after decode.
        """
        queued = len(self._pending)
        now = asyncio.get_running_loop().time()
        paused = self.overload.left(now)
        if paused > 0:
            self.stats.rejected += n_images
            raise QueueFull(
                f"the model server said its queue is full ({self.overload.strikes} time(s) "
                f"in a row); new work is refused for {paused * 1000:.0f} ms more",
                retry_after_s=self._retry_after_s,
            )
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
        # The queue moves as soon as one call slot frees: with a slot free it moves now, else
        # when the first call in flight is expected back; the slots then share the queue.
        busy = 0.0
        if len(self._busy_until) >= self.max_inflight_batches:
            busy = max(0.0, min(self._busy_until.values()) - now)
        slots = self.max_inflight_batches
        wait = busy + self.wait_estimate.wait_s(queued + n_images) / slots
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
        """Stop taking work; with `drain`, send everything queued first. Idempotent.

        Bounded by `timeout_s` (None: unbounded): what is still queued or at the backend then
        fails with ShuttingDown (503), so a backend that never answers cannot hold it longer.
        """
        self._closing = True
        if not self._started:
            return
        if not drain:
            self._fail_pending(ShuttingDown("the gateway is shutting down"))
        self._schedule_dispatch()  # a linger or a pause no longer holds anything back
        try:
            await asyncio.wait_for(self._drained(), timeout_s)
        except TimeoutError:
            log.warning("batcher drain did not finish in %.1f s; failing the rest", timeout_s)
            self._fail_pending(ShuttingDown("the gateway is shutting down"))
            if self._dispatch_handle is not None:
                self._dispatch_handle.cancel()
                self._dispatch_handle = self._dispatch_at = None
            # Batches still at the backend are abandoned too (their callers get 503): a model
            # that never answers must not hold the process past its drain budget.
            for task in list(self._inflight):
                task.cancel()
        for task in list(self._inflight):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drained(self) -> None:
        """Return once nothing is queued or at the backend."""
        self._progress = self._progress or asyncio.Event()
        while self._pending or self._inflight:
            self._progress.clear()
            await self._progress.wait()

    def _fail_pending(self, exc: GatewayError) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(exc)
        self._queue_changed()

    def _queue_changed(self) -> None:
        depth = self.stats.queue_depth = len(self._pending)
        if self._on_queue_depth is not None:
            try:
                self._on_queue_depth(depth)
            except Exception:
                log.exception("on_queue_depth observer failed")

    # -- dispatch -------------------------------------------------------------------------

    def _schedule_dispatch(self, delay_s: float = 0.0) -> None:
        """Dispatch at the end of this event-loop turn (or in `delay_s`); one is ever pending,
        the earliest wins."""
        at = time.perf_counter() + delay_s
        if self._dispatch_handle is not None:
            if self._dispatch_at is not None and self._dispatch_at <= at:
                return
            self._dispatch_handle.cancel()
        loop = asyncio.get_running_loop()
        self._dispatch_at = at
        self._dispatch_handle = (
            loop.call_later(delay_s, self._dispatch)
            if delay_s > 0
            else loop.call_soon(self._dispatch)
        )

    def _dispatch(self) -> None:
        """Start backend calls for what is queued, while call slots are free."""
        self._dispatch_handle = self._dispatch_at = None
        try:
            loop = asyncio.get_running_loop()
            while self._pending and len(self._inflight) < self.max_inflight_batches:
                paused = self.overload.left(loop.time())
                if paused > 0 and not self._closing:
                    self._schedule_dispatch(paused)  # the model server asked for a moment
                    return
                if self._max_wait_s > 0 and not self._closing:
                    linger = self._pending[0].enqueued + self._max_wait_s - time.perf_counter()
                    if linger > 0 and len(self._pending) < self.max_batch_size:
                        self._schedule_dispatch(linger)
                        return
                take = min(self.max_batch_size, len(self._pending))
                batch = [self._pending.popleft() for _ in range(take)]
                self._queue_changed()
                task = loop.create_task(self._run_batch(batch))
                self._inflight.add(task)
                self.stats.inflight = len(self._inflight)
                task.add_done_callback(self._batch_done)
        except Exception:  # a bug here must not strand the queue: the next event dispatches
            log.exception("micro-batcher dispatch failed; continuing")

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.stats.inflight = len(self._inflight)
        if not task.cancelled() and task.exception() is not None:
            log.error("micro-batch task failed", exc_info=task.exception())
        if self._progress is not None:
            self._progress.set()
        if self._pending:
            self._schedule_dispatch()  # a slot is free

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # An item that cannot be answered before its deadline (the call takes at least
        # `expected` s) fails now instead of taking a row of the model's time for nothing. A
        # lower bound, not the estimate: a bucket never seen is not guessed at (a burst after
        # lone requests would be dropped on a linear guess from batches of one).
        expected = (
            self.wait_estimate.batch_seconds_at_least(self._manifest.bucket_for(len(batch))) or 0.0
        )
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
        pixels = np.empty((bucket, *self._shape), dtype=np.uint8)
        for i, item in enumerate(live):
            pixels[i] = item.image
        if bucket > n:
            pixels[n:] = 0
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
            self.overload.clear()
        elif isinstance(error, QueueFull):  # the model server's own queue is full: back off
            self.stats.overloaded += 1
            self.overload.hit(loop.time(), self.wait_estimate.batch_seconds(bucket))
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
            elif not np.isfinite(probs[i]).all():  # orjson would answer `null` scores
                item.future.set_exception(_not_finite(probs[i]))
            else:
                item.future.set_result(
                    ImageResult(probs[i].copy(), t0 - item.enqueued, backend_s, n)
                )
