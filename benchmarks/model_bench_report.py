"""The `bench` report: one JSON-able dict, shown as rich tables or written as Markdown.

Kept apart from the measuring code so the report format can be read (and reused by the
results files in `benchmarks/results/`) without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import keras
import tensorflow as tf
from rich.console import Group
from rich.table import Table

from benchmarks.machine import machine_info

WHAT = "exported SavedModel serving_default called in-process (no HTTP, not TF Serving)"
_RESULT_COLS = ("precision", "xla", "fold", "batch", "calls", "images/s", "median ms", "p99 ms",
                "images/cpu-s", "1st call s")  # fmt: skip
_RATIO_COLS = ("ratio", "batch", "held fixed", "images/s", "per round", "median ms",
               "images/cpu-s")  # fmt: skip
_PARITY_COLS = ("folded", "unfolded", "top-1 agree", "max abs prob diff", "max rel prob diff",
                "max prob")  # fmt: skip


def make_report(
    model: str,
    size: tuple[int, int],
    buckets: Sequence[int],
    seconds: float,
    rounds: int,
    points: Sequence[dict[str, Any]],
    ratio_rows: Sequence[dict[str, Any]],
    parity: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The whole result of one `bench` run, with machine, date and framework versions."""

    return {
        "what": WHAT,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "config": {
            "model": model,
            "input": list(size),
            "buckets": list(buckets),
            "seconds_per_point": seconds,
            "rounds": rounds,
        },
        "results": list(points),
        "ratios": list(ratio_rows),
        "fold_parity": list(parity),
    }


def _rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Formatted cells of the three tables: results, ratios, parity."""
    onoff = {True: "on", False: "off"}
    results = [
        [p["precision"], onoff[p["xla"]], onoff[p["fold"]], str(p["batch"]), str(p["calls"]),
         f"{p['images_per_s']:.1f}", f"{p['median_ms']:.2f}", f"{p['p99_ms']:.2f}",
         f"{p['images_per_cpu_s']:.1f}", f"{p['first_call_s']:.1f}"]
        for p in report["results"]
    ]  # fmt: skip
    ratios = [
        [r["ratio"], str(r["batch"]), r["held_fixed"], f"{r['images_per_s']:.2f}",
         "{:.2f}-{:.2f}".format(*r["images_per_s_rounds"]), f"{r['median_ms']:.2f}",
         f"{r['images_per_cpu_s']:.2f}"]
        for r in report["ratios"]
    ]  # fmt: skip
    parity = [
        [r["folded"], r["unfolded"], f"{r['top1_agree']}/{r['images']}",
         f"{r['max_abs_prob_diff']:.2e}", f"{r['max_rel_prob_diff']:.2e}",
         f"{r['max_prob']:.3f}"]
        for r in report["fold_parity"]
    ]  # fmt: skip
    return results, ratios, parity


def _title(report: dict[str, Any]) -> str:
    cfg = report["config"]
    return f"{cfg['model']} {cfg['input'][0]}x{cfg['input'][1]}: {report['what']}"


def render(report: dict[str, Any]) -> Any:
    """The report as rich tables (results, ratios, parity) in one renderable."""

    results, ratios, parity = _rows(report)
    tables: list[Any] = []
    for title, cols, rows in (
        (_title(report), _RESULT_COLS, results),
        ("ratios, same run (images/s > 1: numerator faster)", _RATIO_COLS, ratios),
        ("folded BatchNorm parity (fixed seeded uint8 inputs)", _PARITY_COLS, parity),
    ):
        if not rows:
            continue
        table = Table(title=title)
        for col in cols:
            table.add_column(col, justify="right" if col in _NUMERIC else "left")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return Group(*tables)


_NUMERIC = {"batch", "calls", "images/s", "median ms", "p99 ms", "images/cpu-s", "1st call s"}


def to_markdown(report: dict[str, Any]) -> str:
    """The three tables as GitHub Markdown (for `benchmarks/results/*.md`)."""
    results, ratios, parity = _rows(report)
    out: list[str] = []
    for title, cols, rows in (
        (_title(report), _RESULT_COLS, results),
        (
            "Ratios (same run; images/s ratio > 1 means the numerator is faster)",
            _RATIO_COLS,
            ratios,
        ),
        ("Folded BatchNorm parity (fixed seeded uint8 inputs)", _PARITY_COLS, parity),
    ):
        if not rows:
            continue
        out += [f"**{title}**", "", "| " + " | ".join(cols) + " |"]
        out.append("|" + "|".join("---:" if c in _NUMERIC else "---" for c in cols) + "|")
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    return "\n".join(out)
