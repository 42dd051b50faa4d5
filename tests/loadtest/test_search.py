"""`step_passes`: the rule sweep and find-max-rate use to call a rate sustained; and the
search itself, on scripted steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from loadtest.plan import MaxRateSearch
from loadtest.results import Schedule, StepResult
from loadtest.search import find_max_rate, step_passes

BEHIND = Schedule(2.0, 50, 0.5, 1.0, 9.0, 20.0, 0, True)


@pytest.mark.parametrize(
    "fields, passes",
    [
        ({"p99_ms": 40.0}, True),
        ({"p99_ms": 60.0}, False),  # p99 over the target
        ({"p99_ms": None}, False),  # nothing answered
        ({"error_rate": 0.05}, False),  # too many errors
        ({"throughput_rps": 80.0}, False),  # the server did not keep up with the offered rate
        # A late generator only adds to latency (counted from the due time): a warning, not a fail.
        ({"schedule": BEHIND}, True),
        ({"p99_ms": 60.0, "schedule": BEHIND}, False),
    ],
)
def test_step_passes(
    fields: dict[str, Any], passes: bool, make_step: Callable[..., StepResult]
) -> None:
    assert step_passes(make_step(**fields), p99_target_ms=50.0, max_error_rate=0.01) is passes


async def test_find_max_rate_doubles_then_bisects(make_step: Callable[..., StepResult]) -> None:
    """A server whose p99 crosses 50 ms at 300 req/s: 100, 200 pass, 400 fails, then the
    bisection closes in on 300 from both sides."""
    ran: list[float] = []

    async def run(rate: float) -> StepResult:
        ran.append(rate)
        return make_step(offered_rate=rate, throughput_rps=rate, p99_ms=rate / 6.0)

    best = await find_max_rate(run, MaxRateSearch(50.0, start_rate=100.0, bisect_steps=3))
    assert ran == [100.0, 200.0, 400.0, 300.0, 350.0, 325.0]
    assert best == 300.0
