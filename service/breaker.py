"""A circuit breaker for the model server: after repeated UNAVAILABLE, fail fast.

closed --(failure_threshold consecutive failures)--> open --(reset_s elapsed)--> half-open
half-open lets ONE probe call through: success closes the circuit, failure re-opens it.
While open, calls fail at once with `CircuitOpen` (503 + Retry-After) instead of queueing
work that cannot be served.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

from service.errors import CircuitOpen


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; not thread-safe (use it from the event loop)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_s <= 0:
            raise ValueError(
                f"need failure_threshold >= 1 and reset_s > 0. Received: "
                f"failure_threshold={failure_threshold}, reset_s={reset_s}"
            )
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._state = State.CLOSED

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.reset_s:
            return State.HALF_OPEN
        return self._state

    def fail_fast(self) -> None:
        """Raise CircuitOpen while open, without claiming the half-open probe.

        For callers that are about to queue work (routes, batcher): they should not wait in a
        queue for a server that is known to be down, but must not steal the probe either.
        """
        if self.state is State.OPEN:
            raise self._open_error()

    def before_call(self) -> None:
        """Raise CircuitOpen unless a call may go through now (claims the half-open probe)."""
        state = self.state
        if state is State.CLOSED:
            return
        if state is State.HALF_OPEN and not self._probe_in_flight:
            self._state = State.HALF_OPEN
            self._probe_in_flight = True
            return
        raise self._open_error()

    def _open_error(self) -> CircuitOpen:
        wait = max(0.0, self.reset_s - (self._clock() - self._opened_at))
        return CircuitOpen(
            f"model server failed {self._failures} times in a row; failing fast until a probe "
            f"succeeds (next probe in {wait:.1f}s)",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        self._state = State.CLOSED

    def record_failure(self) -> None:
        """Count a failure that says the server is unavailable (not a bad request)."""
        self._failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self._failures >= self.failure_threshold:
            self._state = State.OPEN
            self._opened_at = self._clock()

    def record_neutral(self) -> None:
        """A call that ended without telling us anything about the server (e.g. cancelled)."""
        self._probe_in_flight = False
