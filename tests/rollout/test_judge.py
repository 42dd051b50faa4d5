"""rollout.judge: numbers read from the gateway's own /metrics, and the verdict on them."""

from __future__ import annotations

import pytest

from rollout.errors import RolloutError
from rollout.judge import CountersWentBack, Limits, Stats, judge, quantile, scrape, window
from service.metrics import GatewayMetrics


def render(metrics: GatewayMetrics) -> str:
    return metrics.render().decode()


def test_window_reads_what_the_gateway_records() -> None:
    """Requests by outcome and the p99 of one version, between two scrapes of the real
    metrics the gateway renders (so the names and labels cannot drift apart)."""
    metrics = GatewayMetrics()
    metrics.observe_version("demo", 1, ok=True, seconds=0.5)  # before the window
    before = scrape([render(metrics)])
    for i in range(99):
        metrics.observe_version("demo", 2, ok=True, seconds=0.010 + i * 0.0001)
    metrics.observe_version("demo", 2, ok=True, seconds=2.0)  # the slowest 1 %
    metrics.observe_version("demo", 2, ok=False)
    metrics.observe_version("other", 2, ok=False)  # another model: not counted
    after = scrape([render(metrics)])
    canary = window(before, after, "demo", 2)
    assert (canary.ok, canary.errors, canary.requests) == (100, 1, 101)
    assert canary.p99_s is not None and 0.010 <= canary.p99_s <= 0.025  # buckets grow 1.25x
    stable = window(before, after, "demo", 1)
    assert (stable.requests, stable.p99_s) == (0, None)


def test_several_gateways_are_summed_and_a_reset_is_caught() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observe_version("demo", 1, ok=True, seconds=0.01)
    b.observe_version("demo", 1, ok=False)
    both = scrape([render(a), render(b)])
    assert window({}, both, "demo", 1).requests == 2
    with pytest.raises(CountersWentBack):
        window(both, scrape([render(GatewayMetrics())]), "demo", 1)


def test_unreadable_metrics_are_a_rollout_error() -> None:
    with pytest.raises(RolloutError, match="/metrics"):
        scrape(["gateway_model_requests_total{model= 1\n"])


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.5, 0.1),
        ([(0.1, 0.0), (0.2, 100.0), (float("inf"), 100.0)], 0.99, 0.199),
        ([(0.1, 10.0), (float("inf"), 100.0)], 0.99, 0.1),  # past the last bound
        ([(0.1, 0.0), (float("inf"), 0.0)], 0.99, None),
    ],
)
def test_quantile_reads_buckets_as_histogram_quantile(
    buckets: list[tuple[float, float]], q: float, expected: float | None
) -> None:
    got = quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


LIMITS = Limits(min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5, p99_slack_s=0.01)


@pytest.mark.parametrize(
    ("canary", "stable", "ok", "reason"),
    [
        (Stats(2, 100, 0, 0.050), Stats(1, 300, 0, 0.045), True, "canary v2: 100 requests"),
        (Stats(2, 40, 0, 0.050), Stats(1, 300, 0, 0.045), False, "too little traffic"),
        (Stats(2, 95, 5, 0.050), Stats(1, 300, 3, 0.045), False, "error rate 5.0 % > stable's 1.0 %"),
        (Stats(2, 99, 1, 0.050), Stats(1, 300, 3, 0.045), True, "1.0 % errors"),
        (Stats(2, 100, 0, 0.090), Stats(1, 300, 0, 0.045), False, "p99 90 ms > 1.5 x stable p99 45 ms + 10 ms"),
        (Stats(2, 100, 0, 0.075), Stats(1, 300, 0, 0.045), True, "p99 75 ms"),
        (Stats(2, 100, 0, 0.300), None, True, "no stable p99 to compare with"),
        (Stats(2, 90, 10, 0.010), None, False, "error rate 10.0 % > stable's 0.0 %"),
    ],
)  # fmt: skip
def test_verdicts_and_their_reasons(
    canary: Stats, stable: Stats | None, ok: bool, reason: str
) -> None:
    verdict = judge(canary, stable, LIMITS)
    assert verdict.ok is ok and reason in verdict.reason, verdict.reason
