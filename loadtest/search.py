"""Which rates to run: a list, a ramp, or a search for the highest rate meeting a p99 target."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.errors import LoadTestError

MAX_STEPS = 50


def parse_rates(text: str) -> list[float]:
    """`50,100,200` -> [50.0, 100.0, 200.0]; every rate > 0."""
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise LoadTestError(f"--rates must be comma-separated numbers. Received: {text!r}") from exc
    if not rates or any(r <= 0 for r in rates) or len(rates) > MAX_STEPS:
        raise LoadTestError(f"--rates needs 1..{MAX_STEPS} rates, each > 0. Received: {text!r}")
    return rates


def parse_ramp(text: str) -> list[float]:
    """`50:500:50` -> 50, 100, ..., 500 (START:STOP:STEP, STOP included)."""
    try:
        start, stop, step = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise LoadTestError(f"--ramp must be START:STOP:STEP. Received: {text!r}") from exc
    if start <= 0 or step <= 0 or stop < start or (stop - start) / step + 1 > MAX_STEPS:
        raise LoadTestError(
            f"--ramp needs 0 < START <= STOP, STEP > 0, at most {MAX_STEPS} steps. Received: {text!r}"
        )
    n = int((stop - start) / step + 1e-9) + 1
    return [round(start + i * step, 6) for i in range(n)]


def step_passes(step: dict[str, Any], p99_target_ms: float, max_error_rate: float) -> bool:
    """A rate is sustained if p99 <= target, errors are rare and throughput kept up.

    A generator that fell behind does not fail the step by itself: its latencies count from
    each request's due time, so the lag is already in p99 (the step carries a warning)."""
    p99 = step["latency_ms"].get("p99_ms")
    kept_up = step["offered_rate"] is None or step["throughput_rps"] >= 0.9 * step["offered_rate"]
    return (
        p99 is not None
        and p99 <= p99_target_ms
        and step["error_rate"] <= max_error_rate
        and kept_up
    )


async def find_max_rate(
    run: Callable[[float], Awaitable[dict[str, Any]]],
    *,
    start: float,
    max_rate: float,
    p99_target_ms: float,
    max_error_rate: float,
    bisect_steps: int,
) -> float | None:
    """Double the rate from `start` until a step fails, then bisect between the last pass and
    the first failure `bisect_steps` times. Returns the highest passing rate (None if none)."""
    good: float | None = None
    bad: float | None = None
    rate = start
    while rate <= max_rate:
        if step_passes(await run(rate), p99_target_ms, max_error_rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is None:
        return good
    lo = good if good is not None else 0.0
    for _ in range(bisect_steps):
        mid = round((lo + bad) / 2, 1)
        if mid <= lo or mid >= bad:
            break
        if step_passes(await run(mid), p99_target_ms, max_error_rate):
            lo = good = mid
        else:
            bad = mid
    return good
