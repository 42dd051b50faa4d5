"""How long a new image would wait in the micro-batcher's queue: the basis of load shedding.

A queue bounded only by its length lets latency grow to `max_queue_images` / throughput, which
for a slow model is far beyond any request budget: requests are accepted, wait, and then fail
with 504 (or succeed too late to matter). Instead the batcher asks `QueueWaitEstimate` how long
the images already queued plus the new ones would take to get through the backend, and refuses
the request at once (503 `queue_full` + Retry-After) when that exceeds `max_queue_wait_s` or
what is left of the request's budget. The estimate is learnt from the batches served: per
bucket size, an EWMA of the backend time and of its deviation (as TCP estimates its retransmit
timeout), extrapolated linearly to buckets not seen yet. Admission uses mean + 2 deviations:
under CPU contention call times spread widely, and the mean alone admits work that ends late.
"""

from __future__ import annotations

from collections.abc import Callable

_ALPHA = 0.2  # EWMA weight of the newest batch: adapts within a handful of batches
_DEVIATIONS = 2.0  # how far above the mean admission plans for


class QueueWaitEstimate:
    """EWMA backend seconds per bucket, and the wait they imply for a queue of n images."""

    def __init__(self, max_batch_size: int, bucket_for: Callable[[int], int]) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1. Received: {max_batch_size}")
        self.max_batch_size = max_batch_size
        self._bucket_for = bucket_for
        self._seconds: dict[int, tuple[float, float]] = {}  # bucket -> EWMA (mean, deviation)

    def observe(self, bucket: int, backend_s: float) -> None:
        """Record one backend call over a padded batch of `bucket` images."""
        old = self._seconds.get(bucket)
        if old is None:
            self._seconds[bucket] = (backend_s, 0.0)
            return
        mean, dev = old
        err = backend_s - mean
        self._seconds[bucket] = (mean + _ALPHA * err, dev + _ALPHA * (abs(err) - dev))

    def batch_seconds(self, bucket: int, *, conservative: bool = False) -> float | None:
        """Expected backend time of one call at `bucket` (mean, or mean + 2 deviations when
        `conservative`); None before any call was seen."""
        if not self._seconds:
            return None
        # Unseen bucket: scale the nearest seen one linearly (per-call overhead makes this an
        # over-estimate for larger buckets, i.e. errs on the side of shedding).
        nearest = min(self._seconds, key=lambda b: abs(b - bucket))
        mean, dev = self._seconds[nearest]
        seconds = mean + _DEVIATIONS * dev if conservative else mean
        return seconds * bucket / nearest

    def wait_s(self, queued_images: int) -> float:
        """Seconds until `queued_images` images (FIFO) are all through the backend, planning for
        slow calls (mean + 2 deviations each); 0 if nothing was learnt yet."""
        if queued_images <= 0:
            return 0.0
        full, rest = divmod(queued_images, self.max_batch_size)
        total = 0.0
        if full:
            per_call = self.batch_seconds(self._bucket_for(self.max_batch_size), conservative=True)
            total += full * (per_call or 0.0)
        if rest:
            total += self.batch_seconds(self._bucket_for(rest), conservative=True) or 0.0
        return total
