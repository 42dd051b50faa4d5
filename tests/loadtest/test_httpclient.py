"""The keep-alive pool under a burst: connection attempts are capped, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from loadtest import httpclient
from loadtest.httpclient import HttpPool
from loadtest.targets import HttpTarget
from testdoubles.echo_server import EchoServer


async def test_burst_opens_at_most_max_connecting_at_once(
    make_target: Callable[..., HttpTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EchoServer()
    port = await server.start()
    target = make_target(port, max_connections=500)
    pool = target.pool
    state = {"now": 0, "peak": 0}
    connect = HttpPool._connect

    async def counting(self: HttpPool) -> Any:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            return await connect(self)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(HttpPool, "_connect", counting)
    outcomes: list[tuple[Any, bool]] = []
    finished = asyncio.Event()
    burst = 300

    def done(due: float, sent: float, t: float, status: Any, ok: bool, *_: Any) -> None:
        outcomes.append((status, ok))
        if len(outcomes) == burst:
            finished.set()

    try:
        for _ in range(burst):  # all due at once, as after a generator stall
            target.start(0.0, 1e18, done)
        await asyncio.wait_for(finished.wait(), 20)
    finally:
        await target.close()
        await server.stop()
    assert all(ok for _, ok in outcomes)
    assert 1 < state["peak"] <= httpclient.MAX_CONNECTING
    assert pool.waits > 0  # requests beyond the cap waited, and were counted
