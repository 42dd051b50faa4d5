"""Collect the outcome of every request of one step and summarise it.

Latency is `done - due`: in open loop `due` is the request's *scheduled* send time, so a
stalled server (or a stalled generator) cannot hide time by delaying later sends
(coordinated omission); in closed loop `due` is when the client started the request.
Requests due during the warm-up are dropped; the measured window starts right after it.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.histogram import LatencyHistogram
from loadtest.servertiming import parse_server_timing

# A send more than this after its due time is late. Event-loop timers tick in whole
# milliseconds (libuv, epoll), so up to ~1 ms of lag is timer granularity, not falling behind.
LATE_THRESHOLD_MS = 2.0
LATE_FRACTION_WARN = 0.01  # warn when more than 1% of sends were late (i.e. p99 lag > threshold)
LATE_P99_WARN_MS = LATE_THRESHOLD_MS


@dataclass(slots=True)
class Outcome:
    """What happened to one request. `status` is the HTTP status (or gRPC code name)."""

    sent: float  # loop time the request bytes were handed to the transport
    done: float  # loop time the response (or the error) arrived
    status: str | None = None
    ok: bool = False
    error: str | None = None  # transport error kind when there is no status
    server_timing: str | None = None


class StepRecorder:
    """Everything measured in one step (one rate or one concurrency level)."""

    def __init__(self, window_start: float) -> None:
        self.window_start = window_start
        self.latency = LatencyHistogram()
        self.stages: dict[str, LatencyHistogram] = {}
        self.status_counts: Counter[str] = Counter()
        self.transport_errors: Counter[str] = Counter()
        self.send_lag = LatencyHistogram()
        self.late = 0
        self.conn_waits = 0
        self.sent = 0
        self.last_done = window_start
        # Per request (measured only): due offset, latency, done offset -> time series.
        self._due = array("d")
        self._lat = array("d")
        self._done = array("d")
        self._lag = array("d")
        self._timings: list[str] = []
        self._filled = False

    def record(self, due: float, out: Outcome, *, open_loop: bool) -> None:
        """Record one finished request; ignored if it was due during the warm-up."""
        if due < self.window_start:
            return
        self.sent += 1
        if open_loop:
            self._lag.append(max(0.0, out.sent - due))
        self.last_done = max(self.last_done, out.done)
        if out.status is not None:
            self.status_counts[out.status] += 1
        if out.error is not None:
            self.transport_errors[out.error] += 1
        if not out.ok:
            return
        # Histograms are filled in `_fill()` after the step: the hot path only appends.
        self._due.append(due - self.window_start)
        self._lat.append(out.done - due)
        self._done.append(out.done - self.window_start)
        if out.server_timing:
            self._timings.append(out.server_timing)

    def _fill(self) -> None:
        """Move the raw samples into the HdrHistograms (once, after the step)."""
        if self._filled:
            return
        self._filled = True
        for v in self._lat:
            self.latency.record(v)
        for v in self._lag:
            self.send_lag.record(v)
        self.late = sum(1 for v in self._lag if v * 1000.0 > LATE_THRESHOLD_MS)
        parsed: dict[str, dict[str, float]] = {}
        for header in self._timings:
            stages = parsed.get(header)
            if stages is None:
                stages = parsed[header] = parse_server_timing(header)
            for name, ms in stages.items():
                hist = self.stages.get(name)
                if hist is None:
                    hist = self.stages[name] = LatencyHistogram()
                hist.record_ms(ms)

    @property
    def ok(self) -> int:
        return len(self._lat)

    def timeseries(self) -> list[dict[str, Any]]:
        """Per second of the window: p50/p99 by due time, completions by done time."""
        if not self._lat:
            return []
        due = np.frombuffer(self._due, dtype=np.float64)
        lat = np.frombuffer(self._lat, dtype=np.float64) * 1000.0
        done = np.frombuffer(self._done, dtype=np.float64)
        n_sec = math.floor(max(due.max(), done.max())) + 1
        due_sec = np.clip(due.astype(np.int64), 0, n_sec - 1)
        done_counts = np.bincount(np.clip(done.astype(np.int64), 0, n_sec - 1), minlength=n_sec)
        rows: list[dict[str, Any]] = []
        for s in range(n_sec):
            sel = lat[due_sec == s]
            rows.append(
                {
                    "t_s": s,
                    "completed": int(done_counts[s]),
                    "p50_ms": round(float(np.percentile(sel, 50)), 3) if sel.size else None,
                    "p99_ms": round(float(np.percentile(sel, 99)), 3) if sel.size else None,
                }
            )
        return rows

    def summary(self, *, window_s: float, open_loop: bool) -> dict[str, Any]:
        """The step's numbers as plain JSON-able data (see report.STEP_KEYS)."""
        self._fill()
        elapsed = max(window_s, self.last_done - self.window_start, 1e-9)
        errors = self.sent - self.ok
        schedule: dict[str, Any] | None = None
        warnings: list[str] = []
        if open_loop:
            lag = self.send_lag.summary()
            late_fraction = self.late / self.sent if self.sent else 0.0
            p99_lag = lag["p99_ms"] or 0.0
            behind = late_fraction > LATE_FRACTION_WARN or p99_lag > LATE_P99_WARN_MS
            schedule = {
                "late_threshold_ms": LATE_THRESHOLD_MS,
                "late": self.late,
                "late_fraction": round(late_fraction, 4),
                "send_lag_p50_ms": lag["p50_ms"],
                "send_lag_p99_ms": lag["p99_ms"],
                "send_lag_max_ms": lag["max_ms"],
                "waited_for_connection": self.conn_waits,
                "behind": behind,
            }
            if behind:
                warnings.append(
                    f"generator fell behind its schedule: {late_fraction:.1%} of requests sent "
                    f">{LATE_THRESHOLD_MS:g} ms late, send-lag p99 {p99_lag:.2f} ms; latencies "
                    "include the generator's own delay and the offered rate was not really offered"
                )
        return {
            "window_s": round(window_s, 3),
            "elapsed_s": round(elapsed, 3),
            "requests": self.sent,
            "ok": self.ok,
            "errors": errors,
            "error_rate": round(errors / self.sent, 4) if self.sent else 0.0,
            "throughput_rps": round(self.ok / elapsed, 2),
            "latency_ms": self.latency.summary(),
            "status_counts": dict(sorted(self.status_counts.items())),
            "transport_errors": dict(sorted(self.transport_errors.items())),
            "stages_ms": {name: h.summary() for name, h in sorted(self.stages.items())},
            "schedule": schedule,
            "timeseries": self.timeseries(),
            "warnings": warnings,
        }
