"""Memory the gateway holds for request bodies: a budget across requests, and giving it back.

An upload is buffered while it arrives (uvicorn appends each chunk, Starlette joins them),
so many large uploads at once, or many connections that declare 20 MB and send a byte, can
take the process's memory before a single image is decoded. `BodyBudget` counts the body
bytes held by all requests of this process; a request whose declared (or, for chunked
bodies, received) size would take the total past `max_inflight_body_bytes` is refused with
503 `memory_full` + Retry-After before its bytes are read.

Freed bodies go back to glibc's allocator, which keeps much of it (per-thread arenas, a
heap that only shrinks from the top) unless asked: after the budget drains from a large
total, `HeapTrimmer` calls `malloc_trim(0)` (at most once per `min_interval_s`), which
returns free pages in every arena to the operating system. On a platform without glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

from service.errors import MemoryFull

log = logging.getLogger(__name__)

_TRIM_AFTER_BYTES = 32 << 20  # a drained budget that had held this much is worth a trim


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


class HeapTrimmer:
    """Returns freed heap pages to the OS, at most once per `min_interval_s`."""

    def __init__(self, min_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._trim = _malloc_trim()
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last = -float("inf")
        self.trims = 0

    def maybe_trim(self) -> bool:
        """Trim now unless one ran within `min_interval_s`; True if it ran."""
        now = self._clock()
        if self._trim is None or now - self._last < self._min_interval_s:
            return False
        self._last = now
        self._trim(0)
        self.trims += 1
        return True


class BodyBudget:
    """Body bytes held by every request of this process, against one limit.

    Used from the event loop only (no locks). `reserve` raises MemoryFull when the bytes
    would not fit; every reservation is given back with `release`, whatever happened.
    """

    def __init__(
        self, max_bytes: int, *, retry_after_s: int = 1, trimmer: HeapTrimmer | None = None
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1. Received: max_bytes={max_bytes}")
        self.max_bytes = max_bytes
        self.held = 0
        self._retry_after_s = retry_after_s
        self._trimmer = trimmer
        self._high_water = 0  # most held since the budget last drained

    def reserve(self, n: int) -> None:
        """Take `n` more bytes, or raise MemoryFull (503 + Retry-After) and take nothing."""
        if self.held + n > self.max_bytes:
            raise MemoryFull(
                f"the gateway holds {self.held} bytes of request bodies; {n} more would pass "
                f"max_inflight_body_bytes={self.max_bytes}",
                retry_after_s=self._retry_after_s,
            )
        self.held += n
        self._high_water = max(self._high_water, self.held)

    def release(self, n: int) -> None:
        """Give back `n` bytes; when the budget drains after holding a lot, trim the heap."""
        self.held = max(0, self.held - n)
        if self.held == 0 and self._high_water >= _TRIM_AFTER_BYTES and self._trimmer:
            self._high_water = 0
            if self._trimmer.maybe_trim():
                log.debug("returned freed request-body memory to the OS (malloc_trim)")
