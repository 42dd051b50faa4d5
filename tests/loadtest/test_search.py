"""`step_passes`: the rule sweep and find-max-rate use to call a rate sustained."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.search import step_passes


def _step(
    p99: float | None, *, errors: float = 0.0, rps: float = 100.0, behind: bool = False
) -> dict[str, Any]:
    return {
        "latency_ms": {"p99_ms": p99},
        "offered_rate": 100.0,
        "throughput_rps": rps,
        "error_rate": errors,
        "schedule": {"behind": behind},
    }


@pytest.mark.parametrize(
    "step, passes",
    [
        (_step(40.0), True),
        (_step(60.0), False),  # p99 over the target
        (_step(None), False),  # nothing answered
        (_step(40.0, errors=0.05), False),  # too many errors
        (_step(40.0, rps=80.0), False),  # the server did not keep up with the offered rate
        # A late generator only adds to latency (counted from the due time): a warning, not a fail.
        (_step(40.0, behind=True), True),
        (_step(60.0, behind=True), False),
    ],
)
def test_step_passes(step: dict[str, Any], passes: bool) -> None:
    assert step_passes(step, p99_target_ms=50.0, max_error_rate=0.01) is passes
