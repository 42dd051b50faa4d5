"""HdrHistogram percentiles against numpy on known data, within the histogram's precision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.histogram import PERCENTILES, LatencyHistogram

REL = 1 / 1024  # 3 significant digits -> 2048 sub-buckets per power of two


@pytest.mark.parametrize(
    "name, data_ms",
    [
        ("uniform", np.random.default_rng(1).uniform(0.2, 50.0, 10_000)),
        ("lognormal", np.random.default_rng(2).lognormal(1.0, 1.2, 20_000)),
        ("bimodal", np.concatenate([np.full(950, 2.0), np.full(50, 1000.0)])),
        ("small", np.array([1.0, 2.0, 3.0, 4.0, 5.0])),
    ],
)
def test_percentiles_match_numpy_nearest_rank(name: str, data_ms: np.ndarray) -> None:
    h = LatencyHistogram()
    for v in data_ms:
        h.record_ms(float(v))
    got = h.percentiles_ms()
    s = np.sort(data_ms)
    for p in PERCENTILES:
        # hdrh uses nearest rank round(p/100*N), then the bucket's highest equivalent value.
        rank = max(1, int(p / 100 * len(s) + 0.5))
        truth = s[rank - 1]
        assert truth - 1e-3 <= got[p] <= truth * (1 + REL) + 1e-3, (name, p, got[p], truth)
        # and close to numpy's own definition where the data is dense
        lo = np.percentile(data_ms, p, method="lower")
        hi = np.percentile(data_ms, p, method="higher")
        assert lo - 1e-3 <= got[p] <= hi * (1 + REL) + 1e-3 or name == "small", (name, p)
    assert h.max_ms == pytest.approx(float(s[-1]))
    assert h.min_ms == pytest.approx(float(s[0]))
    assert h.summary()["mean_ms"] == pytest.approx(float(np.mean(data_ms)), rel=2e-3)


def test_empty_histogram_summary_has_nulls() -> None:
    summary = LatencyHistogram().summary()
    assert summary["count"] == 0
    assert summary["p99_ms"] is None and summary["max_ms"] is None
    assert all(math.isnan(v) for v in LatencyHistogram().percentiles_ms().values())


def test_values_beyond_range_are_clamped_not_lost() -> None:
    h = LatencyHistogram()
    h.record(0.0)
    h.record(10_000.0)  # longer than an hour
    assert h.count == 2
    assert h.percentiles_ms()[99.0] >= 3_600_000 * (1 - REL)
