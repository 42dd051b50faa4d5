"""How long a new image would wait in the micro-batcher's queue: the basis of load shedding.

A queue bounded only by its length lets latency grow to `max_queue_images` / throughput, which
for a slow model is far beyond any request budget: requests are accepted, wait, and then fail
with 504 (or succeed too late to matter). Instead the batcher asks `QueueWaitEstimate` how long
the images already queued plus the new ones would take to get through the backend, and refuses
the request at once (503 `queue_full` + Retry-After) when that exceeds `max_queue_wait_s` or
what is left of the request's budget.

The estimate comes from the last `WINDOW` successful backend calls of each bucket size (failed
calls say nothing about speed and are never recorded), extrapolated linearly to buckets not
seen yet. It uses order statistics, not a running mean: the typical call is the median of the
window, and admission plans for the 75th percentile, because under CPU contention call times
spread widely and the median alone admits work that ends late. One stalled call (a model
server pausing for seconds) is a single sample at the top of the window: it moves neither
statistic, so the gateway does not keep shedding after the server is healthy again, while a
real slowdown (most recent calls slow) shows within a few calls. An estimate only moves when
calls complete, so the batcher also always admits work that fits in the next batch: the
queue can never shed its way into never learning again.

The model server can also say it is overloaded: TF Serving answers UNAVAILABLE "The batch
scheduling queue to which this task was submitted is full" when its batching queue holds
`max_enqueued_batches` (the tfserving backend raises QueueFull for it, and its circuit breaker
counts it as an answer, not an outage). That is the one signal the estimate cannot see, since
it is shared by every gateway process and client of that server. `OverloadPause` turns it into
a short pause: the batcher admits and sends nothing until it ends. The first pause lasts one
typical call (the time the server needs to take a batch off its queue); each further queue-full
answer in a row doubles it, up to `max_pause_s` (the Retry-After the shed clients were given);
any successful call ends the streak. A pause is bounded in time, so the gateway is back to full
speed the moment the server is, without having to learn it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

WINDOW = 8  # recent calls per bucket the estimate looks at
MIN_PAUSE_S = 0.005  # shortest pause after a queue-full answer (before any call was timed)
_TYPICAL = 0.5  # quantile used as "the" call time
_PLANNED = 0.75  # quantile admission plans for


def _quantile(sorted_values: list[float], q: float) -> float:
    """The sample at quantile `q`, rounded down to a sample: never interpolated towards (or,
    with more than one sample, equal to) a lone slowest call."""
    return sorted_values[int(q * (len(sorted_values) - 1))]


class QueueWaitEstimate:
    """Recent backend seconds per bucket, and the wait they imply for a queue of n images."""

    def __init__(self, max_batch_size: int, bucket_for: Callable[[int], int]) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1. Received: {max_batch_size}")
        self.max_batch_size = max_batch_size
        self._bucket_for = bucket_for
        self._recent: dict[int, deque[float]] = {}  # bucket -> last WINDOW call seconds

    def observe(self, bucket: int, backend_s: float) -> None:
        """Record one successful backend call over a padded batch of `bucket` images."""
        self._recent.setdefault(bucket, deque(maxlen=WINDOW)).append(backend_s)

    def batch_seconds(self, bucket: int, *, conservative: bool = False) -> float | None:
        """Expected backend time of one call at `bucket` (the median of recent calls, or their
        75th percentile when `conservative`); None before any call was seen."""
        if not self._recent:
            return None
        # Unseen bucket: scale the nearest seen one linearly (per-call overhead makes this an
        # over-estimate for larger buckets, i.e. errs on the side of shedding).
        nearest = min(self._recent, key=lambda b: abs(b - bucket))
        seconds = _quantile(sorted(self._recent[nearest]), _PLANNED if conservative else _TYPICAL)
        return seconds * bucket / nearest

    def batch_seconds_at_least(self, bucket: int) -> float | None:
        """A lower bound on one call at `bucket`: the median of the largest seen bucket not
        above it (a bigger batch never runs faster), None if no such bucket was seen. Dropping
        an item as too late uses this, so only work that surely cannot make it is dropped;
        admission plans with the (over-)estimate of `batch_seconds` instead."""
        smaller = [b for b in self._recent if b <= bucket]
        if not smaller:
            return None
        return _quantile(sorted(self._recent[max(smaller)]), _TYPICAL)

    def wait_s(self, queued_images: int) -> float:
        """Seconds until `queued_images` images (FIFO) are all through the backend, planning for
        slow calls (75th percentile each); 0 if nothing was learnt yet."""
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


class OverloadPause:
    """A pause after the model server said its queue is full; doubles while it keeps saying so."""

    def __init__(self, *, max_pause_s: float = 1.0, min_pause_s: float = MIN_PAUSE_S) -> None:
        if not 0 < min_pause_s <= max_pause_s:
            raise ValueError(
                f"need 0 < min_pause_s <= max_pause_s. Received: {min_pause_s=}, {max_pause_s=}"
            )
        self.min_pause_s = min_pause_s
        self.max_pause_s = max_pause_s
        self.strikes = 0  # queue-full answers since the last successful call
        self.until = 0.0  # clock reading the pause ends at

    def hit(self, now: float, typical_call_s: float | None) -> float:
        """Record a queue-full answer at `now`; returns how long new work is now held back."""
        self.strikes += 1
        base = max(self.min_pause_s, typical_call_s or 0.0)
        pause = min(self.max_pause_s, base * 2 ** min(self.strikes - 1, 30))
        self.until = max(self.until, now + pause)
        return self.until - now

    def clear(self) -> None:
        """A call succeeded: the next queue-full starts a new streak (the pause runs out)."""
        self.strikes = 0

    def left(self, now: float) -> float:
        """Seconds of pause left at `now` (0: none)."""
        return self.until - now if self.until > now else 0.0
