"""PNG plots (matplotlib, Agg): latency percentiles against offered load, latency over time."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt

from loadtest.histogram import PERCENTILES
from loadtest.results import RunResult, StepResult


def _x(step: StepResult) -> float:
    """Where a step sits on the load axis: its offered rate, or its concurrency."""
    return float((step.offered_rate if step.mode == "open" else step.concurrency) or 0)


def _ys(values: Iterable[float | None]) -> list[float]:
    """Values to plot, a missing one as NaN (a gap in the line)."""
    return [math.nan if v is None else v for v in values]


def write_plots(result: RunResult, out_dir: Path) -> list[Path]:
    """`latency_vs_load.png` for runs with several steps, `latency_over_time.png` always."""
    steps = [s for s in result.steps if s.latency_ms.count]
    written: list[Path] = []
    if len(steps) > 1:
        open_loop = steps[0].mode == "open"
        steps_sorted = sorted(steps, key=_x)
        xs = [_x(s) for s in steps_sorted]
        fig, ax = plt.subplots(figsize=(8, 5))
        for p in PERCENTILES:
            ax.plot(xs, _ys(s.latency_ms.at(p) for s in steps_sorted), marker="o", label=f"p{p:g}")
        ax.plot(
            xs, _ys(s.latency_ms.max_ms for s in steps_sorted), marker="x", ls="--", label="max"
        )
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [s.throughput_rps for s in steps_sorted],
            color="grey",
            ls=":",
            label="achieved/s",
        )
        ax2.set_ylabel("achieved throughput (req/s)")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s)" if open_loop else "concurrency (clients)")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("latency percentiles vs load (the knee is where p99 turns up)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left")
        path = out_dir / "latency_vs_load.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if steps:
        fig, ax = plt.subplots(figsize=(10, 5))
        ax2 = ax.twinx()
        offset = 0.0
        for i, s in enumerate(steps):
            ts = s.timeseries
            t = [offset + r.t_s for r in ts]
            lbl = i == 0
            ax.plot(t, _ys(r.p50_ms for r in ts), color="tab:blue", label="p50" if lbl else None)
            ax.plot(t, _ys(r.p99_ms for r in ts), color="tab:red", label="p99" if lbl else None)
            ax2.plot(
                t,
                [r.completed for r in ts],
                color="grey",
                ls=":",
                label="completed/s" if lbl else None,
            )
            offset += len(ts)
            if i + 1 < len(steps):
                ax.axvline(offset, color="black", alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("seconds into the measured windows (steps back to back)")
        ax.set_ylabel("latency by due time (ms, log scale)")
        ax2.set_ylabel("completed requests per second")
        ax.set_title("latency over time")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
        path = out_dir / "latency_over_time.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
