"""Which event loop the generator runs on, and a timer that keeps sub-millisecond time.

Open loop needs precise timers: a request sent 0.5 ms after its due time adds 0.5 ms to a
latency that may itself be 0.3 ms. Both stock loops tick in whole milliseconds: asyncio's
epoll selector rounds every timeout *up* to a millisecond (sends up to 1 ms late), and
uvloop (libuv) rounds to the nearest millisecond from a per-iteration cached clock (sends
up to ~1 ms *early*, i.e. latencies that are too small). Spinning closes the gap but burns
the core, and on a shared core the kernel then preempts the spinner for whole time slices.

`PreciseEpollSelector` waits on the epoll fd itself with `select()`, whose timeout has
microsecond resolution (the kernel's hrtimer slack, ~50 us), then collects the events with
a zero-timeout `epoll_wait`: an idle generator sleeps, and wakes on time. Closed loop needs
no timers, so it runs on uvloop, which costs less CPU per request.
"""

from __future__ import annotations

import asyncio
import select
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class PreciseEpollSelector(selectors.EpollSelector):
    """`EpollSelector` whose timeouts are honoured to the microsecond, not the millisecond."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            # The epoll fd is readable when any registered fd has events.
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


def new_precise_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop on `PreciseEpollSelector` (the default loop elsewhere than Linux)."""
    if not hasattr(selectors, "EpollSelector"):
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(PreciseEpollSelector())


def run_loop(coro: Coroutine[Any, Any, T], *, precise_timers: bool = False) -> T:
    """Run `coro` to completion: on the precise asyncio loop for open loop, else on uvloop
    when it is installed (less CPU per request), else on asyncio's default loop."""
    if precise_timers:
        with asyncio.Runner(loop_factory=new_precise_loop) as runner:
            return runner.run(coro)
    try:
        import uvloop  # optional (not in the [loadtest] extra): asyncio's loop serves without it
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
