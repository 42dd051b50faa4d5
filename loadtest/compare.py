"""Two result files side by side: the same metrics, and B/A ratios."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

from loadtest.histogram import PERCENTILES
from loadtest.results import RunResult, StepResult, percentile_key

Metric = Callable[[StepResult], float | None]


def _percentile(p: float) -> Metric:
    return lambda s: s.latency_ms.at(p)


METRICS: dict[str, Metric] = {
    "throughput_rps": lambda s: s.throughput_rps,
    "error_rate": lambda s: s.error_rate,
    **{f"latency.{percentile_key(p)}": _percentile(p) for p in PERCENTILES},
    "latency.max_ms": lambda s: s.latency_ms.max_ms,
}


def compare_rows(a: RunResult, b: RunResult) -> list[dict[str, Any]]:
    """Steps paired by position; one row per (step, metric) with A, B and B/A."""
    rows: list[dict[str, Any]] = []
    for i, (sa, sb) in enumerate(zip(a.steps, b.steps, strict=False)):
        for name, get in METRICS.items():
            va, vb = get(sa), get(sb)
            ratio = vb / va if va not in (None, 0.0) and vb is not None else None
            rows.append({"step": i, "load_a": sa.label, "load_b": sb.label, "metric": name,
                         "a": va, "b": vb, "ratio": None if ratio is None else round(ratio, 3)})  # fmt: skip
    return rows


def compare_table(a: RunResult, b: RunResult, name_a: str, name_b: str) -> Table:
    table = Table(title=f"A = {name_a}   B = {name_b}")
    for col in ["step", "metric", "A", "B", "B/A"]:
        table.add_column(col, justify="right")
    for r in compare_rows(a, b):
        load = r["load_a"] if r["load_a"] == r["load_b"] else f"{r['load_a']} vs {r['load_b']}"
        fmt = [("-" if v is None else f"{v:,.3f}") for v in (r["a"], r["b"])]
        table.add_row(load, r["metric"], *fmt, "-" if r["ratio"] is None else f"{r['ratio']:.2f}x")
    return table
