"""How a canary is judged: each version's requests, errors and p99 over a window, compared.

The numbers come from the gateway's `/metrics` (service.metrics): `gateway_model_requests_total`
(outcome ok, or error: a 5xx of the version's own) and the histogram
`gateway_model_request_duration_seconds`, both labelled by model and version. A window is the
difference between two scrapes. The p99 is read from the histogram's buckets as Prometheus'
`histogram_quantile` reads them (linear within the bucket that holds the quantile); the
gateway's buckets grow by 1.25x, so it is within that of the true value.

The canary fails a step when, over the window:
  * it answered fewer than `min_requests` (too little traffic to judge: roll back, safely);
  * its error rate exceeds stable's by more than `max_error_rate_increase`;
  * its p99 exceeds `max_p99_ratio` x stable's p99 + `p99_slack_s`.
Stable's numbers come from the same window, or, when stable got too little traffic in it (at
100 %), from the last window in which it had enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from rollout.errors import RolloutError

REQUESTS = "gateway_model_requests_total"
LATENCY = "gateway_model_request_duration_seconds_bucket"

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


def scrape(texts: Iterable[str]) -> dict[Key, float]:
    """The samples of one or more `/metrics` texts (several gateways: summed)."""
    out: dict[Key, float] = {}
    for text in texts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise RolloutError(f"cannot read the gateway's /metrics: {exc}") from None
        for family in families:
            for sample in family.samples:
                if sample.name in (REQUESTS, LATENCY):
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass(frozen=True)
class Stats:
    """One version's numbers over one window."""

    version: int
    ok: float
    errors: float
    p99_s: float | None  # None: no answered request in the window

    @property
    def requests(self) -> float:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def describe(self) -> str:
        p99 = f"p99 {self.p99_s * 1000:.0f} ms" if self.p99_s is not None else "no p99"
        return (
            f"v{self.version}: {self.requests:.0f} requests, "
            f"{self.error_rate * 100:.1f} % errors, {p99}"
        )


class CountersWentBack(RolloutError):
    """A counter is lower than at the window's start: a gateway restarted, or /metrics came
    from another worker process that does not share its numbers."""


def window(
    before: Mapping[Key, float], after: Mapping[Key, float], model: str, version: int
) -> Stats:
    """`model` `version`'s numbers between two scrapes."""
    v = str(version)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model": model, "version": v, **labels}.items())))
        change = after.get(key, 0.0) - before.get(key, 0.0)
        if change < 0:
            raise CountersWentBack(f"{name}{labels} of {model} v{version} went down")
        return change

    buckets = sorted(
        (_bound(dict(labels)["le"]), delta(LATENCY, le=dict(labels)["le"]))
        for name, labels in after
        if name == LATENCY
        and dict(labels).get("model") == model
        and dict(labels).get("version") == v
    )
    return Stats(
        version,
        delta(REQUESTS, outcome="ok"),
        delta(REQUESTS, outcome="error"),
        quantile(0.99, buckets),
    )


def _bound(le: str) -> float:
    return float("inf") if le in ("+Inf", "inf") else float(le)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative (upper bound, count) buckets, as histogram_quantile."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # past the largest finite bound: that bound is all we know
            return lower + (bound - lower) * (rank - below) / (count - below or 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class Limits:
    """When a canary fails a step."""

    min_requests: int = 100
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    p99_slack_s: float = 0.010


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def judge(canary: Stats, stable: Stats | None, limits: Limits) -> Verdict:
    """Pass or fail one step, with the one-line reason either way."""
    if canary.requests < limits.min_requests:
        return Verdict(
            False,
            f"too little traffic to judge: canary {canary.describe()} "
            f"(fewer than {limits.min_requests} requests)",
        )
    base_rate = stable.error_rate if stable is not None else 0.0
    if canary.error_rate > base_rate + limits.max_error_rate_increase:
        return Verdict(
            False,
            f"canary error rate {canary.error_rate * 100:.1f} % > stable's "
            f"{base_rate * 100:.1f} % + {limits.max_error_rate_increase * 100:.1f} points "
            f"(canary {canary.describe()}"
            + (f"; stable {stable.describe()})" if stable is not None else ")"),
        )
    if stable is None or stable.p99_s is None or canary.p99_s is None:
        return Verdict(True, f"canary {canary.describe()}; no stable p99 to compare with")
    bound = stable.p99_s * limits.max_p99_ratio + limits.p99_slack_s
    if canary.p99_s > bound:
        return Verdict(
            False,
            f"canary p99 {canary.p99_s * 1000:.0f} ms > {limits.max_p99_ratio:g} x stable p99 "
            f"{stable.p99_s * 1000:.0f} ms + {limits.p99_slack_s * 1000:.0f} ms "
            f"(canary {canary.describe()}; stable {stable.describe()})",
        )
    return Verdict(True, f"canary {canary.describe()}; stable {stable.describe()}")
