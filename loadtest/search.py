"""The highest rate meeting a p99 target (`--find-max-rate`), and the rule that says whether
one step met it (shared with `sweep`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loadtest.plan import MaxRateSearch
from loadtest.results import StepResult


def step_passes(step: StepResult, p99_target_ms: float, max_error_rate: float) -> bool:
    """A rate is sustained if p99 <= target, errors are rare and throughput kept up.

    A generator that fell behind does not fail the step by itself: its latencies count from
    each request's due time, so the lag is already in p99 (the step carries a warning)."""
    p99 = step.latency_ms.p99_ms
    kept_up = step.offered_rate is None or step.throughput_rps >= 0.9 * step.offered_rate
    return (
        p99 is not None and p99 <= p99_target_ms and step.error_rate <= max_error_rate and kept_up
    )


async def find_max_rate(
    run: Callable[[float], Awaitable[StepResult]], search: MaxRateSearch
) -> float | None:
    """Double the rate from `start_rate` until a step fails, then bisect between the last
    pass and the first failure `bisect_steps` times. Returns the highest passing rate (None
    if none passed); `run(rate)` runs and records one step."""

    async def passes(rate: float) -> bool:
        step = await run(rate)
        return step_passes(step, search.p99_target_ms, search.max_error_rate)

    good: float | None = None
    bad: float | None = None
    rate = search.start_rate
    while rate <= search.max_rate:
        if await passes(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is None:
        return good
    lo = good if good is not None else 0.0
    for _ in range(search.bisect_steps):
        mid = round((lo + bad) / 2, 1)
        if mid <= lo or mid >= bad:
            break
        if await passes(mid):
            lo = good = mid
        else:
            bad = mid
    return good
