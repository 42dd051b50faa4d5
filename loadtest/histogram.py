"""Latency histograms: HdrHistogram at microsecond resolution and 3 significant digits.

How a percentile is reported (hdrh's own rule, which we reproduce with numpy because
hdrh's pure-Python bucket walk takes ~0.1 s per query): walk the buckets until the running
count reaches `round(p/100 * N)` (at least 1), i.e. the nearest-rank sample, and report the
*highest* value equivalent to that bucket. So a reported percentile is never below the true
nearest-rank sample and exceeds it by less than 1/1024 of its value (3 digits -> 2048
sub-buckets per power of two). Samples are recorded in bulk from numpy arrays, after a
step, so the hot path only appends floats. Min, max and the sum (for the mean) are kept
exactly beside the histogram. `to_wire()`/`merge_wire()` carry a histogram between
processes in hdrh's compressed encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

from loadtest.results import Latency

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything longer is clamped (and is a timeout anyway)
SIGNIFICANT_DIGITS = 3


@dataclass(frozen=True)
class WireHistogram:
    """A histogram between processes: hdrh's compressed encoding plus the exact extras."""

    hdr: bytes | None
    count: int
    min_s: float
    max_s: float
    sum_s: float


class LatencyHistogram:
    """Durations recorded in microseconds; summaries reported in milliseconds."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._counts = np.ctypeslib.as_array(self._h.counts)  # a view: writes land in _h
        self.count = 0
        self._min_s = math.inf
        self._max_s = 0.0
        self._sum_s = 0.0

    def record_many(self, seconds: np.ndarray) -> None:
        """Record many durations (seconds) at once: hdrh's bucket index, vectorised."""
        if seconds.size == 0:
            return
        h = self._h
        us = np.clip(np.rint(seconds * 1e6), LOWEST_US, HIGHEST_US).astype(np.int64)
        # bit_length(us | sub_bucket_mask), exact through frexp because us < 2**53.
        bits = np.frexp((us | h.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
        bucket = bits - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
        sub = us >> (bucket + h.unit_magnitude)
        index = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub - h.sub_bucket_half_count
        self._counts += np.bincount(index, minlength=h.counts_len)[: h.counts_len].astype(
            self._counts.dtype
        )
        h.total_count += int(us.size)
        h.min_value = min(h.min_value, int(us.min()))
        h.max_value = max(h.max_value, int(us.max()))
        self.count += int(seconds.size)
        self._min_s = min(self._min_s, float(seconds.min()))
        self._max_s = max(self._max_s, float(seconds.max()))
        self._sum_s += float(seconds.sum())

    def to_wire(self) -> WireHistogram:
        """A picklable, compact form (hdrh encoding plus the exact extras)."""
        return WireHistogram(self._h.encode() if self.count else None, self.count,
                             self._min_s, self._max_s, self._sum_s)  # fmt: skip

    def merge_wire(self, wire: WireHistogram) -> None:
        """Add a histogram sent by `to_wire()` (e.g. from a worker process)."""
        if not wire.count:
            return
        self._h.add(HdrHistogram.decode(wire.hdr))
        self.count += wire.count
        self._min_s = min(self._min_s, wire.min_s)
        self._max_s = max(self._max_s, wire.max_s)
        self._sum_s += wire.sum_s

    def percentiles_ms(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[float, float]:
        """Percentile -> value in ms, hdrh's nearest-rank rule, from one cumulative sum."""
        if not self.count:
            return {p: math.nan for p in percentiles}
        h = self._h
        cum = np.cumsum(self._counts)
        out: dict[float, float] = {}
        for p in percentiles:
            target = max(1, int(min(p, 100.0) * h.total_count / 100 + 0.5))
            index = int(np.searchsorted(cum, target, side="left"))
            value = h.get_highest_equivalent_value(h.get_value_from_index(index))
            out[p] = value / 1000.0
        return out

    @property
    def max_ms(self) -> float:
        return self._max_s * 1000.0 if self.count else math.nan

    @property
    def min_ms(self) -> float:
        return self._min_s * 1000.0 if self.count else math.nan

    def summary(self) -> Latency:
        """count, min, mean, PERCENTILES and max in ms (rounded to the µs); None-filled when
        empty, never NaN."""
        if not self.count:
            return Latency(0, None, None, dict.fromkeys(PERCENTILES), None)
        pct = {p: round(v, 3) for p, v in self.percentiles_ms().items()}
        mean = round(self._sum_s / self.count * 1000.0, 3)
        return Latency(self.count, round(self.min_ms, 3), mean, pct, round(self.max_ms, 3))
