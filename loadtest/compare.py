"""Two result files side by side: the same metrics, and B/A ratios."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from loadtest.histogram import PERCENTILES, percentile_key
from loadtest.report import step_label

METRICS = [
    "throughput_rps",
    "error_rate",
    "latency.p50_ms",
    *[f"latency.{percentile_key(p)}" for p in PERCENTILES[1:]],
    "latency.max_ms",
]


def _get(step: dict[str, Any], key: str) -> float | None:
    if key.startswith("latency."):
        v = step["latency_ms"].get(key.split(".", 1)[1])
    else:
        v = step.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps paired by position; one row per (step, metric) with A, B and B/A."""
    rows: list[dict[str, Any]] = []
    for i, (sa, sb) in enumerate(zip(a["steps"], b["steps"], strict=False)):
        for m in METRICS:
            va, vb = _get(sa, m), _get(sb, m)
            ratio = vb / va if va not in (None, 0.0) and vb is not None else None
            rows.append({"step": i, "load_a": step_label(sa), "load_b": step_label(sb), "metric": m,
                         "a": va, "b": vb, "ratio": None if ratio is None else round(ratio, 3)})  # fmt: skip
    return rows


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> Table:
    table = Table(title=f"A = {name_a}   B = {name_b}")
    for col in ["step", "metric", "A", "B", "B/A"]:
        table.add_column(col, justify="right")
    for r in compare_rows(a, b):
        load = r["load_a"] if r["load_a"] == r["load_b"] else f"{r['load_a']} vs {r['load_b']}"
        fmt = [("-" if v is None else f"{v:,.3f}") for v in (r["a"], r["b"])]
        table.add_row(load, r["metric"], *fmt, "-" if r["ratio"] is None else f"{r['ratio']:.2f}x")
    return table
