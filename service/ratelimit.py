"""Per-client token buckets: `rate_per_s` sustained, `burst` at once; 429 + Retry-After beyond.

The table of buckets is bounded (least recently used clients are forgotten) so a flood of
distinct client ids cannot grow memory without bound.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from service.errors import RateLimited


class RateLimiter:
    """Token bucket per key; use from one event loop (not thread-safe)."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1. Received: {rate_per_s}, {burst}")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens for `key` or raise RateLimited saying when to come back."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            self._evict()
            return
        self._buckets[key] = (tokens, now)
        self._evict()
        wait = (cost - tokens) / self.rate
        raise RateLimited(
            f"rate limit of {self.rate:g} requests/s (burst {self.burst:g}) exceeded",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def _evict(self) -> None:
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
