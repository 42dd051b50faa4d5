"""service.state: readiness answers and the drain budget, on the state alone (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.decode import DecodeLimits
from service.errors import NotReady, ShuttingDown
from service.metrics import GatewayMetrics
from service.state import GatewayState
from tests.service.conftest import gateway_settings
from tests.service.test_api import DoubleBackend

DRAIN_S = 20.0


def make_state() -> GatewayState:
    settings = gateway_settings(Path("unused"), drain_timeout_s=DRAIN_S)
    return GatewayState(
        settings=settings,
        backend=DoubleBackend(),
        metrics=GatewayMetrics(),
        decode_limits=DecodeLimits.from_settings(settings),
    )


@pytest.mark.parametrize(
    ("began_at", "now", "budget"),
    [
        (None, 500.0, DRAIN_S),  # no signal: the lifespan shutdown gets the whole budget
        (100.0, 100.0, DRAIN_S),
        (100.0, 107.5, 12.5),  # uvicorn waited 7.5 s for requests in flight
        (100.0, 120.0, 0.0),
        (100.0, 180.0, 0.0),  # never negative
        (100.0, 90.0, DRAIN_S),  # never more than drain_timeout_s
    ],
)
def test_drain_budget_counts_from_the_signal(
    began_at: float | None, now: float, budget: float
) -> None:
    state = make_state()
    if began_at is not None:
        state.begin_drain(began_at)
    assert state.drain_budget(now) == pytest.approx(budget)


def test_the_first_begin_drain_wins() -> None:
    state = make_state()
    assert state.begin_drain(100.0) is True
    assert state.begin_drain(110.0) is False  # a second signal, or the lifespan after one
    assert state.drain_deadline == 100.0 + DRAIN_S


def test_serving_says_why_not() -> None:
    state = make_state()
    with pytest.raises(NotReady, match="still starting") as starting:
        state.serving()
    assert starting.value.retry_after_s == state.settings.retry_after_s
    state.start_error = "backend failed to start: no model"
    with pytest.raises(NotReady, match="no model"):
        state.serving()
    state.begin_drain(0.0)
    with pytest.raises(ShuttingDown):
        state.serving()
