"""Latency histograms: HdrHistogram at microsecond resolution and 3 significant digits.

How `hdrh` reports a percentile (read from its source, and tested against numpy):
it walks the buckets until the running count reaches `round(p/100 * N)` (at least 1), i.e.
the nearest-rank sample, and returns the *highest* value equivalent to that bucket. So a
reported percentile is never below the true nearest-rank sample and exceeds it by less than
1/1024 of its value (3 digits -> 2048 sub-buckets per power of two). We ask for all
percentiles in one pass (`get_percentile_to_value_dict`), because each single query walks
the whole counts array. Min and max are kept exactly beside the histogram.
"""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything longer is clamped (and is a timeout anyway)
SIGNIFICANT_DIGITS = 3


def percentile_key(p: float) -> str:
    """`50.0` -> `p50_ms`, `99.9` -> `p99.9_ms` (the names used in JSON, CSV and tables)."""
    return f"p{p:g}_ms"


class LatencyHistogram:
    """Durations recorded in microseconds; summaries reported in milliseconds."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.count = 0
        self._min_s = math.inf
        self._max_s = 0.0

    def record(self, seconds: float) -> None:
        """Record one duration given in seconds (clamped into the trackable range)."""
        us = min(max(LOWEST_US, round(seconds * 1e6)), HIGHEST_US)
        self._h.record_value(us)
        self.count += 1
        self._min_s = min(self._min_s, seconds)
        self._max_s = max(self._max_s, seconds)

    def record_ms(self, ms: float) -> None:
        self.record(ms / 1000.0)

    def percentiles_ms(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[float, float]:
        """Percentile -> value in ms, all from one walk over the histogram."""
        if not self.count:
            return {p: math.nan for p in percentiles}
        raw = self._h.get_percentile_to_value_dict(list(percentiles))
        return {p: raw[p] / 1000.0 for p in percentiles}

    @property
    def max_ms(self) -> float:
        return self._max_s * 1000.0 if self.count else math.nan

    @property
    def min_ms(self) -> float:
        return self._min_s * 1000.0 if self.count else math.nan

    def summary(self) -> dict[str, Any]:
        """`{"count", "min_ms", "mean_ms", "p50_ms", ..., "p99.9_ms", "max_ms"}`; NaN-free."""
        out: dict[str, Any] = {"count": self.count}
        if not self.count:
            out.update({"min_ms": None, "mean_ms": None, "max_ms": None})
            out.update({percentile_key(p): None for p in PERCENTILES})
            return out
        out["min_ms"] = round(self.min_ms, 3)
        out["mean_ms"] = round(self._h.get_mean_value() / 1000.0, 3)
        for p, v in self.percentiles_ms().items():
            out[percentile_key(p)] = round(v, 3)
        out["max_ms"] = round(self.max_ms, 3)
        return out
