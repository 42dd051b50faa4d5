"""Collect the outcome of every request of one step and summarise it.

Latency is `done - due`: in open loop `due` is the request's *scheduled* send time, so a
stalled server (or a stalled generator) cannot hide time by delaying later sends
(coordinated omission); in closed loop `due` is when the client started the request.
Requests due during the warm-up are dropped; the measured window starts right after it.

Each process (the CLI itself, or each `--workers` process) fills a `StepRecorder`, whose hot
path only appends floats and bumps counters, then turns it into a picklable *partial*
(encoded HdrHistograms, counters, per-second histograms). `StepTotals` adds partials up and
writes the step's summary. Times are `perf_counter()` seconds, one clock for every process
on the machine (CLOCK_MONOTONIC), so partials from several processes line up by second.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from loadtest.histogram import LatencyHistogram
from loadtest.servertiming import parse_server_timing

# A send more than this after its due time is late. Event-loop timers tick in whole
# milliseconds (libuv, epoll), so up to ~1 ms of lag is timer granularity, not falling behind.
LATE_THRESHOLD_MS = 2.0
LATE_FRACTION_WARN = 0.01  # warn when more than 1% of sends were late (i.e. p99 lag > threshold)
LATE_P99_WARN_MS = LATE_THRESHOLD_MS

Status = int | str  # HTTP status code, or a gRPC code name


class StepRecorder:
    """Everything one process measured in one step (one rate or one concurrency level)."""

    def __init__(self, window_start: float, *, open_loop: bool) -> None:
        self.window_start = window_start
        self.open_loop = open_loop
        self.status_counts: dict[Status, int] = {}
        self.transport_errors: dict[str, int] = {}
        self.timings: dict[bytes | str, int] = {}
        self.conn_waits = 0
        self.cpu_s = 0.0  # this process's CPU time over the whole step (warm-up included)
        self.issued = 0  # requests it sent over the whole step
        self.sent = 0
        self.last_done = window_start
        # Per measured request: due offset, latency, done offset (ok ones), send lag (all).
        self._due = array("d")
        self._lat = array("d")
        self._done = array("d")
        self._lag = array("d")

    def record(self, due: float, sent: float, done: float, status: Status | None, ok: bool,
               error: str | None, timing: bytes | str | None) -> None:  # fmt: skip
        """Record one finished request; ignored if it was due during the warm-up."""
        if due < self.window_start:
            return
        self.sent += 1
        if self.open_loop:
            self._lag.append(sent - due if sent > due else 0.0)
        if done > self.last_done:
            self.last_done = done
        if status is not None:
            self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if error is not None:
            self.transport_errors[error] = self.transport_errors.get(error, 0) + 1
        if not ok:
            return
        self._due.append(due - self.window_start)
        self._lat.append(done - due)
        self._done.append(done - self.window_start)
        if timing is not None:
            self.timings[timing] = self.timings.get(timing, 0) + 1

    @property
    def ok(self) -> int:
        return len(self._lat)

    def partial(self) -> dict[str, Any]:
        """Everything measured, as picklable data for `StepTotals.add` (histograms encoded)."""
        lat = np.frombuffer(self._lat, dtype=np.float64)
        lag = np.frombuffer(self._lag, dtype=np.float64)
        latency, send_lag = LatencyHistogram(), LatencyHistogram()
        latency.record_many(lat)
        send_lag.record_many(lag)
        values: dict[str, list[float]] = {}
        for header, n in self.timings.items():
            text = header.decode("latin-1") if isinstance(header, bytes) else header
            for name, ms in parse_server_timing(text).items():
                values.setdefault(name, []).extend([ms / 1000.0] * n)
        stages = {name: LatencyHistogram() for name in values}
        for name, vals in values.items():
            stages[name].record_many(np.array(vals, dtype=np.float64))
        by_due: dict[int, dict[str, Any]] = {}
        completed: dict[int, int] = {}
        if lat.size:
            due_sec = np.frombuffer(self._due, dtype=np.float64).astype(np.int64)
            done_sec = np.frombuffer(self._done, dtype=np.float64).astype(np.int64)
            for s in np.unique(due_sec):
                h = LatencyHistogram()
                h.record_many(lat[due_sec == s])
                by_due[int(s)] = h.to_wire()
            secs, counts = np.unique(done_sec, return_counts=True)
            completed = {int(s): int(c) for s, c in zip(secs, counts, strict=True)}
        return {
            "sent": self.sent,
            "ok": self.ok,
            "late": int(np.count_nonzero(lag * 1000.0 > LATE_THRESHOLD_MS)),
            "conn_waits": self.conn_waits,
            "cpu_s": self.cpu_s,
            "issued": self.issued,
            "last_done_s": self.last_done - self.window_start,
            "status_counts": {str(k): v for k, v in self.status_counts.items()},
            "transport_errors": dict(self.transport_errors),
            "latency": latency.to_wire(),
            "send_lag": send_lag.to_wire(),
            "stages": {name: h.to_wire() for name, h in stages.items()},
            "by_due": by_due,
            "completed": completed,
        }


class StepTotals:
    """The sum of one step's partials (one per process), and its summary."""

    def __init__(self) -> None:
        self.sent = self.ok = self.late = self.conn_waits = self.issued = 0
        self.cpu_s = 0.0
        self.last_done_s = 0.0
        self.status_counts: dict[str, int] = {}
        self.transport_errors: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.send_lag = LatencyHistogram()
        self.stages: dict[str, LatencyHistogram] = {}
        self.by_due: dict[int, LatencyHistogram] = {}
        self.completed: dict[int, int] = {}

    def add(self, part: dict[str, Any]) -> None:
        for key in ("sent", "ok", "late", "conn_waits", "cpu_s", "issued"):
            setattr(self, key, getattr(self, key) + part[key])
        self.last_done_s = max(self.last_done_s, part["last_done_s"])
        for mine, theirs in ((self.status_counts, part["status_counts"]),
                             (self.transport_errors, part["transport_errors"]),
                             (self.completed, part["completed"])):  # fmt: skip
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.latency.merge_wire(part["latency"])
        self.send_lag.merge_wire(part["send_lag"])
        for name, wire in part["stages"].items():
            self.stages.setdefault(name, LatencyHistogram()).merge_wire(wire)
        for sec, wire in part["by_due"].items():
            self.by_due.setdefault(sec, LatencyHistogram()).merge_wire(wire)

    def timeseries(self) -> list[dict[str, Any]]:
        """Per second of the window: p50/p99 by due time, completions by done time."""
        if not self.ok:
            return []
        n_sec = max(max(self.by_due), max(self.completed)) + 1
        rows: list[dict[str, Any]] = []
        for s in range(n_sec):
            h = self.by_due.get(s)
            pct = h.percentiles_ms((50.0, 99.0)) if h is not None else None
            rows.append({"t_s": s, "completed": self.completed.get(s, 0),
                         "p50_ms": round(pct[50.0], 3) if pct else None,
                         "p99_ms": round(pct[99.0], 3) if pct else None})  # fmt: skip
        return rows

    def summary(self, *, window_s: float, open_loop: bool) -> dict[str, Any]:
        """The step's numbers as plain JSON-able data (see report.STEP_KEYS)."""
        elapsed = max(window_s, self.last_done_s, 1e-9)
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
            "generator": {  # CPU the generator spent per request: its ceiling is ~1e6 / this per core
                "cpu_s": round(self.cpu_s, 3),
                "cpu_us_per_request": round(self.cpu_s / self.issued * 1e6, 1)
                if self.issued
                else None,
            },
            "warnings": warnings,
        }
