"""The per-request timeout: a server that never answers cannot hang a step.

The HTTP client sets no timer per request; the engine's watchdog task calls `expire()` a few
times per timeout and fails every request past its deadline, whether it is at the server
or still waiting for a connection. Without it, a step against a silent server never ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from loadtest.engine import run_step
from loadtest.httpclient import DoneFn
from loadtest.plan import StepSpec
from loadtest.results import StepResult
from loadtest.targets import HttpTarget

TIMEOUT_S = 0.3
MAX_OVERRUN_S = 0.5  # generous for a loaded machine; the watchdog ticks every 15 ms here
BOUND_S = 15.0  # the test's own bound: a step that never ends fails here instead of hanging


class SilentServer:
    """Accepts connections and reads every request, answers none (a hung backend)."""

    def __init__(self) -> None:
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while chunk := await reader.read(65536):
            self.requests += chunk.count(b"POST ")

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


async def bounded_step(target: HttpTarget, spec: StepSpec) -> tuple[StepResult, list[float]]:
    """Run `spec` within BOUND_S; also how long after its deadline each request ended."""
    overrun: list[float] = []
    start = target.start

    def start_watched(due: float, deadline: float, done: DoneFn) -> None:
        def watched(d: float, sent: float, t: float, *rest: Any) -> None:
            overrun.append(t - deadline)
            done(d, sent, t, *rest)

        start(due, deadline, watched)

    target.start = start_watched  # type: ignore[method-assign]
    try:
        step = await asyncio.wait_for(run_step(target, spec), BOUND_S)
    except TimeoutError:
        pytest.fail(f"the step did not end within {BOUND_S} s: requests never timed out")
    finally:
        await target.close()
    return step, overrun


@pytest.mark.parametrize(
    ("spec", "max_connections", "requests"),
    [
        (StepSpec(rate=20, requests=6, timeout_s=TIMEOUT_S), 100, 6),  # open loop
        (StepSpec(concurrency=2, requests=4, timeout_s=TIMEOUT_S), 100, 4),  # closed loop
        # One connection: the first request holds it, the rest time out still waiting for it.
        (StepSpec(rate=50, requests=5, timeout_s=TIMEOUT_S), 1, 5),
    ],
    ids=["open-loop", "closed-loop", "waiting-for-a-connection"],
)
async def test_requests_to_a_server_that_never_answers_time_out(
    make_target: Callable[..., HttpTarget],
    spec: StepSpec,
    max_connections: int,
    requests: int,
) -> None:
    server = SilentServer()
    port = await server.start()
    try:
        step, overrun = await bounded_step(make_target(port, max_connections=max_connections), spec)
    finally:
        await server.stop()
    assert step.requests == requests and step.ok == 0
    assert step.transport_errors == {"timeout": requests}, step.transport_errors
    assert server.requests >= 1  # they reached the server: this is not a connect failure
    # Each ends at its own deadline (the watchdog ticks every timeout/20), not at a later sweep.
    print(sorted(overrun))
    assert len(overrun) == requests
    assert all(0 <= s < MAX_OVERRUN_S for s in overrun), overrun
