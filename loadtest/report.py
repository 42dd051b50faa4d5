"""A run's results on disk (`--out DIR`) and on the terminal (rich tables).

`write_outputs` runs every writer in WRITERS; each is a function `(RunResult, out_dir) ->
written paths`, so a new output format is one function and one entry there:

    result.json       everything (results.RunResult.to_json, schema results.SCHEMA)
    summary.csv       one row per step (SUMMARY_COLUMNS)
    timeseries.csv    one row per second per step (TIMESERIES_COLUMNS)
    *.png             latency against load, latency over time (plots)
    report.html       all of it on one self-contained page (html_report)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loadtest.errors import LoadTestError
from loadtest.histogram import PERCENTILES
from loadtest.html_report import write_run_report
from loadtest.results import READABLE_SCHEMAS, RunResult, StepResult, percentile_key

LATENCY_KEYS = ["min_ms", "mean_ms", *[percentile_key(p) for p in PERCENTILES], "max_ms"]
SUMMARY_COLUMNS = [
    "step", "mode", "offered_rate", "arrival", "concurrency", "window_s", "elapsed_s",
    "requests", "ok", "errors", "error_rate", "throughput_rps", *LATENCY_KEYS,
    "late_fraction", "send_lag_p99_ms", "behind",
]  # fmt: skip
TIMESERIES_COLUMNS = ["step", "offered_rate", "concurrency", "t_s", "completed", "p50_ms", "p99_ms"]
MAX_ERROR_LINES = 10  # distinct server error texts printed (all are in result.json)

Writer = Callable[[RunResult, Path], list[Path]]


def summary_row(i: int, step: StepResult) -> dict[str, Any]:
    """One summary.csv row: the step's counts, latency and schedule columns."""
    doc = step.to_json()
    row = {k: doc.get(k) for k in SUMMARY_COLUMNS}
    row.update({"step": i, **{k: doc["latency_ms"].get(k) for k in LATENCY_KEYS}})
    sched = doc["schedule"] or {}
    row.update({k: sched.get(k) for k in ("late_fraction", "send_lag_p99_ms", "behind")})
    return row


def write_json(result: RunResult, out_dir: Path) -> list[Path]:
    path = out_dir / "result.json"
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return [path]


def write_summary_csv(result: RunResult, out_dir: Path) -> list[Path]:
    path = out_dir / "summary.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(summary_row(i, step) for i, step in enumerate(result.steps))
    return [path]


def write_timeseries_csv(result: RunResult, out_dir: Path) -> list[Path]:
    path = out_dir / "timeseries.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TIMESERIES_COLUMNS)
        w.writeheader()
        for i, step in enumerate(result.steps):
            for t in step.timeseries:
                w.writerow({"step": i, "offered_rate": step.offered_rate, "concurrency": step.concurrency,
                            "t_s": t.t_s, "completed": t.completed, "p50_ms": t.p50_ms,
                            "p99_ms": t.p99_ms})  # fmt: skip
    return [path]


def write_plots_and_html(result: RunResult, out_dir: Path) -> list[Path]:
    """The PNG plots, then report.html with those plots embedded (html_report reads the
    result.json document, not these types)."""
    # matplotlib (~0.4 s to import) only when plots are written, never for `compare`.
    from loadtest.plots import write_plots

    plots = write_plots(result, out_dir)
    return [*plots, write_run_report(result.to_json(), out_dir, plots)]


WRITERS: tuple[Writer, ...] = (write_json, write_summary_csv, write_timeseries_csv,
                               write_plots_and_html)  # fmt: skip


def write_outputs(result: RunResult, out_dir: Path) -> list[Path]:
    """Every WRITERS output into `out_dir` (created); the paths written, in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [path for writer in WRITERS for path in writer(result, out_dir)]


def load_result(path: Path) -> RunResult:
    """Read a result.json (this schema or an older readable one); a one-line error otherwise."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoadTestError(f"cannot read a loadtest result from {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") not in READABLE_SCHEMAS:
        raise LoadTestError(
            f"not a loadtest result (schema {' or '.join(READABLE_SCHEMAS)} expected). "
            f"Received: {str(path)!r}"
        )
    try:
        return RunResult.from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LoadTestError(f"loadtest result {str(path)!r} is damaged ({exc!r})") from exc


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def steps_table(result: RunResult) -> Table:
    """One row per step: load, achieved rate, ok/errors, percentiles, max, late sends."""
    table = Table(title=f"latency (ms) - {escape(result.where)}")
    for col in [
        "load",
        "achieved/s",
        "ok",
        "err",
        *[f"p{p:g}" for p in PERCENTILES],
        "max",
        "late",
    ]:
        table.add_column(col, justify="right")
    for step in result.steps:
        lat = step.latency_ms
        table.add_row(
            step.label, _fmt(step.throughput_rps), str(step.ok), str(step.errors),
            *[_fmt(lat.at(p), 2) for p in PERCENTILES], _fmt(lat.max_ms, 2),
            f"{step.schedule.late_fraction:.1%}" if step.schedule else "-",
        )  # fmt: skip
    return table


def stages_table(step: StepResult) -> Table:
    """The gateway's Server-Timing stages of one step (decode, queue, backend, total)."""
    title = f"Server-Timing stages (ms), step {step.label}"
    table = Table(title=title, min_width=len(title) + 2)
    for col in ["stage", "p50", "p90", "p99", "max"]:
        table.add_column(col, justify="right")
    for name, s in step.stages_ms.items():
        table.add_row(escape(name), *[_fmt(v, 2) for v in (s.at(50), s.at(90), s.at(99), s.max_ms)])
    return table


def error_lines(result: RunResult) -> list[str]:
    """Why requests failed: each distinct server error text once, with its count over all
    steps, most frequent first."""
    texts: dict[str, int] = {}
    for step in result.steps:
        for text, n in step.error_details.items():
            texts[text] = texts.get(text, 0) + n
    ranked = sorted(texts.items(), key=lambda kv: -kv[1])
    lines = [f"{n:>8} x {text}" for text, n in ranked[:MAX_ERROR_LINES]]
    if len(ranked) > MAX_ERROR_LINES:
        lines.append(f"         ... {len(ranked) - MAX_ERROR_LINES} more in result.json")
    return lines


def print_summary(result: RunResult, console: Console) -> None:
    """The terminal report: steps, the reported step's stages, errors and why, warnings."""
    console.print(steps_table(result))
    shown = result.reported_step()
    if shown is not None and shown.stages_ms:
        console.print(stages_table(shown))
    for step in result.steps:
        if failures := step.failures():
            console.print(f"[yellow]{step.label} errors: {escape(str(failures))}[/yellow]")
    if lines := error_lines(result):
        console.print("[yellow]what the server said about failed requests:[/yellow]")
        for line in lines:
            console.print(escape(line), highlight=False)
    for step in result.steps:
        for w in step.warnings:
            console.print(f"[bold yellow]WARNING[/bold yellow] {step.label}: {escape(w)}")
    for w in result.warnings:
        console.print(f"[bold yellow]WARNING[/bold yellow] {escape(w)}")
    if result.max_rate is not None:
        m = result.max_rate
        found = "none passed" if m.rate is None else f"[bold]{m.rate:g}/s[/bold]"
        console.print(f"max rate keeping p99 <= {m.p99_target_ms:g} ms: {found}")
