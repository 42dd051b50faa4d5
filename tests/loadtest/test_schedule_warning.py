"""Acceptance: when the generator cannot keep its schedule, the report says so."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadtest.engine import run_step
from loadtest.plan import StepSpec
from loadtest.recorder import LATE_THRESHOLD_MS, StepRecorder, StepTotals
from loadtest.targets import HttpTarget
from testdoubles.echo_server import EchoServer


async def test_impossible_rate_warns_generator_behind(
    make_target: Callable[..., HttpTarget],
) -> None:
    server = EchoServer()
    port = await server.start()
    target = make_target(port, max_connections=200)
    try:
        # 500k req/s is far beyond one Python process; bounded to 1 s and 20k requests.
        step = await run_step(
            target, StepSpec(rate=500_000, duration_s=1.0, requests=20_000, timeout_s=10.0)
        )
    finally:
        await target.close()
        await server.stop()
    sched = step.schedule
    assert sched is not None and sched.behind is True
    assert sched.late_fraction > 0.5
    assert any("fell behind its schedule" in w for w in step.warnings)


async def test_easy_rate_has_a_schedule_block(make_target: Callable[..., HttpTarget]) -> None:
    server = EchoServer()
    port = await server.start()
    target = make_target(port)
    try:
        step = await run_step(target, StepSpec(rate=50, duration_s=1.0, timeout_s=5.0))
    finally:
        await target.close()
        await server.stop()
    assert step.ok == 50
    assert step.schedule is not None
    assert set(step.to_json()["schedule"]) >= {"late", "late_fraction", "send_lag_p99_ms", "behind"}


@pytest.mark.parametrize(
    ("lags_ms", "behind"),
    [
        ([0.5] * 200, False),  # on time (timer granularity is not lateness)
        ([0.5] * 199 + [40.0], False),  # one stall in 200: 0.5% late, p99 still on time
        ([0.5] * 198 + [LATE_THRESHOLD_MS + 0.1] * 2, False),  # 1%: the limit is inclusive
        ([0.5] * 197 + [40.0] * 3, True),  # 1.5% of sends late
        ([LATE_THRESHOLD_MS + 1.0] * 200, True),  # every send a little late
    ],
    ids=["on-time", "one-stall", "one-percent", "late-sends", "all-late"],
)
def test_behind_is_said_exactly_when_sends_were_late(lags_ms: list[float], behind: bool) -> None:
    """The rule on recorded sends (a real step's lateness depends on the machine's load)."""
    rec = StepRecorder(0.0, open_loop=True)
    for i, lag_ms in enumerate(lags_ms):
        due = 1.0 + i * 0.01
        rec.record(due, due + lag_ms / 1000, due + 0.005, 200, True, None, None)
    totals = StepTotals()
    totals.add(rec.partial())
    sched, warnings = totals.schedule()
    assert sched.behind is behind, sched
    assert sched.late == sum(lag > LATE_THRESHOLD_MS for lag in lags_ms)
    assert bool(warnings) is behind and all("fell behind its schedule" in w for w in warnings)
