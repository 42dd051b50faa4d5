"""Results on disk (JSON + CSV) and on the terminal (rich tables).

`result.json` holds everything; `summary.csv` is one row per step; `timeseries.csv` is one
row per second per step. SCHEMA names the format so `compare` can refuse other files.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.errors import LoadTestError
from loadtest.histogram import PERCENTILES, percentile_key

SCHEMA = "resnet-serving.loadtest/1"
LATENCY_KEYS = ["min_ms", "mean_ms", *[percentile_key(p) for p in PERCENTILES], "max_ms"]
SUMMARY_COLUMNS = [
    "step", "mode", "offered_rate", "arrival", "concurrency", "window_s", "elapsed_s",
    "requests", "ok", "errors", "error_rate", "throughput_rps", *LATENCY_KEYS,
    "late_fraction", "send_lag_p99_ms", "behind",
]  # fmt: skip
TIMESERIES_COLUMNS = ["step", "offered_rate", "concurrency", "t_s", "completed", "p50_ms", "p99_ms"]


def machine() -> dict[str, Any]:
    import os

    return {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform()}  # fmt: skip


def new_result(target: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "target": target,
        "options": options,
        "steps": [],
        "max_rate": None,
        "warnings": [],
    }


def summary_row(i: int, step: dict[str, Any]) -> dict[str, Any]:
    sched = step.get("schedule") or {}
    row = {k: step.get(k) for k in SUMMARY_COLUMNS}
    row.update({"step": i, **{k: step["latency_ms"].get(k) for k in LATENCY_KEYS}})
    row.update({k: sched.get(k) for k in ("late_fraction", "send_lag_p99_ms", "behind")})
    return row


def write_outputs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write result.json, summary.csv, timeseries.csv, the plots and report.html into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "result.json", out_dir / "summary.csv", out_dir / "timeseries.csv"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    with paths[1].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for i, step in enumerate(result["steps"]):
            w.writerow(summary_row(i, step))
    with paths[2].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TIMESERIES_COLUMNS)
        w.writeheader()
        for i, step in enumerate(result["steps"]):
            for row in step["timeseries"]:
                w.writerow({"step": i, "offered_rate": step["offered_rate"],
                            "concurrency": step["concurrency"], **row})  # fmt: skip
    from loadtest.html_report import write_run_report
    from loadtest.plots import write_plots

    plots = write_plots(result, out_dir)
    return [*paths, *plots, write_run_report(result, out_dir, plots)]


def load_result(path: Path) -> dict[str, Any]:
    """Read a result.json, refusing files that are not one (one-line error)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoadTestError(f"cannot read a loadtest result from {str(path)!r}: {exc}") from exc
    if (
        not isinstance(doc, dict)
        or doc.get("schema") != SCHEMA
        or not isinstance(doc.get("steps"), list)
    ):
        raise LoadTestError(
            f"not a loadtest result (schema {SCHEMA!r} expected). Received: {str(path)!r}"
        )
    return doc


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def step_label(step: dict[str, Any]) -> str:
    if step["mode"] == "open":
        return f"{step['offered_rate']:g}/s"
    return f"c={step['concurrency']}"


def print_summary(result: dict[str, Any], console: Console) -> None:
    """The terminal report: one row per step, stage timings, warnings."""
    table = Table(
        title=f"latency (ms) - {result['target'].get('url') or result['target'].get('address')}"
    )
    for col in [
        "load",
        "achieved/s",
        "ok",
        "err",
        "p50",
        "p90",
        "p95",
        "p99",
        "p99.9",
        "max",
        "late",
    ]:
        table.add_column(col, justify="right")
    for step in result["steps"]:
        lat = step["latency_ms"]
        sched = step.get("schedule") or {}
        table.add_row(
            step_label(step), _fmt(step["throughput_rps"]), str(step["ok"]), str(step["errors"]),
            *[_fmt(lat[percentile_key(p)], 2) for p in PERCENTILES], _fmt(lat["max_ms"], 2),
            f"{sched['late_fraction']:.1%}" if sched else "-",
        )  # fmt: skip
    console.print(table)
    last = result["steps"][-1] if result["steps"] else None
    if last and last["stages_ms"]:
        stages = Table(title=f"Server-Timing stages (ms), step {step_label(last)}")
        for col in ["stage", "p50", "p90", "p99", "max"]:
            stages.add_column(col, justify="right")
        for name, s in last["stages_ms"].items():
            stages.add_row(name, *[_fmt(s[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")])
        console.print(stages)
    for step in result["steps"]:
        bad = {**step["status_counts"], **step["transport_errors"]}
        bad = {k: v for k, v in bad.items() if not (k.startswith("2") or k == "OK")}
        if bad:
            console.print(f"[yellow]{step_label(step)} errors: {bad}[/yellow]")
        for w in step["warnings"]:
            console.print(f"[bold yellow]WARNING[/bold yellow] {step_label(step)}: {w}")
    for w in result["warnings"]:
        console.print(f"[bold yellow]WARNING[/bold yellow] {w}")
    if result.get("max_rate"):
        m = result["max_rate"]
        console.print(
            f"max rate keeping p99 <= {m['p99_target_ms']:g} ms: [bold]{m['rate']:g}/s[/bold]"
        )
