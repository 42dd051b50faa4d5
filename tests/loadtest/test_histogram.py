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
    h.record_many(data_ms / 1000.0)
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
    assert h.summary().mean_ms == pytest.approx(float(np.mean(data_ms)), rel=2e-3)


def test_empty_histogram_summary_has_nulls() -> None:
    summary = LatencyHistogram().summary()
    assert summary.count == 0
    assert summary.p99_ms is None and summary.max_ms is None
    assert summary.to_json()["p99.9_ms"] is None
    assert all(math.isnan(v) for v in LatencyHistogram().percentiles_ms().values())


def test_values_beyond_range_are_clamped_not_lost() -> None:
    h = LatencyHistogram()
    h.record_many(np.array([0.0, 10_000.0]))  # nothing, and longer than an hour
    assert h.count == 2
    assert h.percentiles_ms()[99.0] >= 3_600_000 * (1 - REL)


def test_bulk_recording_matches_hdrh_own_walk() -> None:
    """record_many + numpy percentiles give exactly what hdrh's record_value + walk give."""
    from hdrh.histogram import HdrHistogram

    data_s = np.random.default_rng(3).lognormal(-6.0, 1.5, 5_000)
    ours = LatencyHistogram()
    ours.record_many(data_s)
    ref = HdrHistogram(1, 3_600_000_000, 3)
    for v in data_s:
        ref.record_value(max(1, round(float(v) * 1e6)))
    want = ref.get_percentile_to_value_dict(list(PERCENTILES))
    got = ours.percentiles_ms()
    for p in PERCENTILES:
        assert got[p] == pytest.approx(want[p] / 1000.0, abs=1e-9), p


def test_wire_merge_equals_one_histogram() -> None:
    data = np.random.default_rng(4).uniform(0.0005, 0.2, 3_000)
    whole, merged = LatencyHistogram(), LatencyHistogram()
    whole.record_many(data)
    for part in np.array_split(data, 3):
        h = LatencyHistogram()
        h.record_many(part)
        merged.merge_wire(h.to_wire())
    merged.merge_wire(LatencyHistogram().to_wire())  # an idle worker adds nothing
    assert merged.summary() == whole.summary()
