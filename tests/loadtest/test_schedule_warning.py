"""Acceptance: when the generator cannot keep its schedule, the report says so."""

from __future__ import annotations

from collections.abc import Callable

from loadtest.engine import run_step
from loadtest.plan import StepSpec
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
