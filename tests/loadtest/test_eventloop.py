"""Open-loop sends are never early: `wait_until` on the precise loop, uvloop and asyncio."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from time import perf_counter as now
from typing import Any

import pytest
import uvloop

from loadtest.engine import run_step, wait_until
from loadtest.eventloop import PreciseEpollSelector, new_precise_loop, run_loop
from loadtest.plan import StepSpec
from loadtest.results import StepResult
from loadtest.targets import HttpTarget
from testdoubles.echo_server import EchoServer

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
LOOPS: dict[str, Runner] = {
    "precise": lambda c: run_loop(c, precise_timers=True),
    "uvloop": uvloop.run,  # its timers round to the nearest ms from a cached clock: fire early
    "asyncio": asyncio.run,
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_wait_until_never_returns_before_due(loop: str) -> None:
    async def main() -> list[float]:
        rng = random.Random(1)
        early = []
        for _ in range(300):
            due = now() + rng.uniform(0.0, 0.003)  # sub-ms and few-ms waits
            await wait_until(due)
            early.append(due - now())
        return early

    early = LOOPS[loop](main())
    assert max(early) <= 0.0, f"woke {max(early) * 1e6:.0f} us before due on {loop}"


def test_precise_loop_uses_the_precise_selector() -> None:
    loop = new_precise_loop()
    try:
        assert isinstance(loop._selector, PreciseEpollSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


@pytest.mark.parametrize("loop", ["precise", "uvloop"])
def test_open_loop_latency_is_never_below_zero(
    loop: str, make_target: Callable[..., HttpTarget]
) -> None:
    """Latency counts from the due time; a send before it would report too little."""

    async def main() -> StepResult:
        server = EchoServer()
        port = await server.start()
        target = make_target(port)
        try:
            return await run_step(target, StepSpec(rate=1500, duration_s=0.6, timeout_s=5.0))
        finally:
            await target.close()
            await server.stop()

    step = LOOPS[loop](main())
    assert step.ok == 900
    assert step.latency_ms.min_ms is not None and step.latency_ms.min_ms > 0
    assert step.generator.cpu_us_per_request is not None and step.generator.cpu_us_per_request > 0
