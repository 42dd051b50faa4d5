"""PNG plots (matplotlib, Agg): latency percentiles against offered load, latency over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.histogram import PERCENTILES, percentile_key


def write_plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """`latency_vs_load.png` for runs with several steps, `latency_over_time.png` always."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in result["steps"] if s["latency_ms"]["count"]]
    written: list[Path] = []
    if len(steps) > 1:
        x_key = "offered_rate" if steps[0]["mode"] == "open" else "concurrency"
        steps_sorted = sorted(steps, key=lambda s: s[x_key])
        xs = [s[x_key] for s in steps_sorted]
        fig, ax = plt.subplots(figsize=(8, 5))
        for p in PERCENTILES:
            ax.plot(
                xs,
                [s["latency_ms"][percentile_key(p)] for s in steps_sorted],
                marker="o",
                label=f"p{p:g}",
            )
        ax.plot(
            xs, [s["latency_ms"]["max_ms"] for s in steps_sorted], marker="x", ls="--", label="max"
        )
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [s["throughput_rps"] for s in steps_sorted],
            color="grey",
            ls=":",
            label="achieved/s",
        )
        ax2.set_ylabel("achieved throughput (req/s)")
        ax.set_yscale("log")
        ax.set_xlabel(
            "offered rate (req/s)" if x_key == "offered_rate" else "concurrency (clients)"
        )
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
            ts = s["timeseries"]
            t = [offset + r["t_s"] for r in ts]
            lbl = i == 0
            ax.plot(t, [r["p50_ms"] for r in ts], color="tab:blue", label="p50" if lbl else None)
            ax.plot(t, [r["p99_ms"] for r in ts], color="tab:red", label="p99" if lbl else None)
            ax2.plot(
                t,
                [r["completed"] for r in ts],
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
