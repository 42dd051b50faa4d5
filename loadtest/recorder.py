"""Collect the outcome of every request of one step and summarise it.

Latency is `done - due`: in open loop `due` is the request's *scheduled* send time, so a
stalled server (or a stalled generator) cannot hide time by delaying later sends
(coordinated omission); in closed loop `due` is when the client started the request.
Requests due during the warm-up are dropped; the measured window starts right after it.

Each process (the CLI itself, or each `--workers` process) fills a `StepRecorder`, whose hot
path only appends floats and bumps counters, then turns it into a picklable `Partial`
(encoded HdrHistograms, counters, per-second histograms). `StepTotals` adds partials up and
makes the step's `StepResult`. Times are `perf_counter()` seconds, one clock for every
process on the machine (CLOCK_MONOTONIC), so partials from several processes line up by
second. A failed request's server text (gRPC status details, the gateway's JSON error) is
kept once per distinct text, with a count, so the summary can say *why* requests failed.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from loadtest.histogram import LatencyHistogram, WireHistogram
from loadtest.plan import StepSpec
from loadtest.results import Generator, Schedule, StepResult, TimePoint
from loadtest.servertiming import parse_server_timing

# A send more than this after its due time is late. Event-loop timers tick in whole
# milliseconds (libuv, epoll), so up to ~1 ms of lag is timer granularity, not falling behind.
LATE_THRESHOLD_MS = 2.0
LATE_FRACTION_WARN = 0.01  # warn when more than 1% of sends were late (i.e. p99 lag > threshold)
LATE_P99_WARN_MS = LATE_THRESHOLD_MS
MAX_ERROR_TEXTS = 20  # distinct error texts kept per process and step; the rest are pooled
MAX_ERROR_TEXT_CHARS = 240
OTHER_ERRORS = "(other error texts)"

Status = int | str  # HTTP status code, or a gRPC code name


def error_text(status: Status | None, detail: bytes | str) -> str:
    """One line saying why a request failed: `INVALID_ARGUMENT: <details>` for gRPC,
    `HTTP 413 image_too_large: <detail>` for the gateway's JSON errors (its request id
    dropped, so equal errors count together), else the start of the body."""
    if isinstance(detail, bytes):
        text = detail.decode("utf-8", "replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "error" in doc:
            text = f"{doc['error']}: {doc['detail']}" if doc.get("detail") else str(doc["error"])
    else:
        text = detail
    text = " ".join(text.split())[:MAX_ERROR_TEXT_CHARS] or "(empty)"
    if isinstance(status, int):
        return f"HTTP {status} {text}"
    return f"{status}: {text}" if status else text


@dataclass(frozen=True)
class Partial:
    """What one process measured in one step, picklable for the parent to add up."""

    sent: int
    ok: int
    late: int
    conn_waits: int
    cpu_s: float
    issued: int
    last_done_s: float
    last_s: float  # the last measured due/start time, relative to the window
    status_counts: dict[str, int]
    transport_errors: dict[str, int]
    error_details: dict[str, int]
    latency: WireHistogram
    send_lag: WireHistogram
    stages: dict[str, WireHistogram]
    by_due: dict[int, WireHistogram]
    completed: dict[int, int]


class StepRecorder:
    """Everything one process measured in one step (one rate or one concurrency level)."""

    def __init__(self, window_start: float, *, open_loop: bool) -> None:
        self.window_start = window_start
        self.open_loop = open_loop
        self.status_counts: dict[Status, int] = {}
        self.transport_errors: dict[str, int] = {}
        self.timings: dict[bytes | str, int] = {}
        self.error_details: dict[str, int] = {}
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
               error: str | None, timing: bytes | str | None,
               detail: bytes | str | None = None) -> None:  # fmt: skip
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
            if detail is not None:
                self._error_text(status, detail)
            return
        self._due.append(due - self.window_start)
        self._lat.append(done - due)
        self._done.append(done - self.window_start)
        if timing is not None:
            self.timings[timing] = self.timings.get(timing, 0) + 1

    def _error_text(self, status: Status | None, detail: bytes | str) -> None:
        texts = self.error_details
        key = error_text(status, detail)
        if key not in texts and len(texts) >= MAX_ERROR_TEXTS:
            key = OTHER_ERRORS
        texts[key] = texts.get(key, 0) + 1

    @property
    def ok(self) -> int:
        return len(self._lat)

    def partial(self, last_s: float = 0.0) -> Partial:
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
        by_due: dict[int, WireHistogram] = {}
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
        return Partial(
            sent=self.sent, ok=self.ok, late=int(np.count_nonzero(lag * 1000.0 > LATE_THRESHOLD_MS)),
            conn_waits=self.conn_waits, cpu_s=self.cpu_s, issued=self.issued,
            last_done_s=self.last_done - self.window_start, last_s=last_s,
            status_counts={str(k): v for k, v in self.status_counts.items()},
            transport_errors=dict(self.transport_errors), error_details=dict(self.error_details),
            latency=latency.to_wire(), send_lag=send_lag.to_wire(),
            stages={name: h.to_wire() for name, h in stages.items()}, by_due=by_due,
            completed=completed,
        )  # fmt: skip


K = TypeVar("K", str, int)


def _add_counts(mine: dict[K, int], theirs: dict[K, int]) -> None:
    for k, v in theirs.items():
        mine[k] = mine.get(k, 0) + v


class StepTotals:
    """The sum of one step's partials (one per process), and its StepResult."""

    def __init__(self) -> None:
        self.sent = self.ok = self.late = self.conn_waits = self.issued = 0
        self.cpu_s = 0.0
        self.last_done_s = 0.0
        self.last_s = 0.0
        self.status_counts: dict[str, int] = {}
        self.transport_errors: dict[str, int] = {}
        self.error_details: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.send_lag = LatencyHistogram()
        self.stages: dict[str, LatencyHistogram] = {}
        self.by_due: dict[int, LatencyHistogram] = {}
        self.completed: dict[int, int] = {}

    def add(self, part: Partial) -> None:
        self.sent += part.sent
        self.ok += part.ok
        self.late += part.late
        self.conn_waits += part.conn_waits
        self.cpu_s += part.cpu_s
        self.issued += part.issued
        self.last_done_s = max(self.last_done_s, part.last_done_s)
        self.last_s = max(self.last_s, part.last_s)
        _add_counts(self.status_counts, part.status_counts)
        _add_counts(self.transport_errors, part.transport_errors)
        _add_counts(self.error_details, part.error_details)
        _add_counts(self.completed, part.completed)
        self.latency.merge_wire(part.latency)
        self.send_lag.merge_wire(part.send_lag)
        for name, wire in part.stages.items():
            self.stages.setdefault(name, LatencyHistogram()).merge_wire(wire)
        for sec, wire in part.by_due.items():
            self.by_due.setdefault(sec, LatencyHistogram()).merge_wire(wire)

    def timeseries(self) -> tuple[TimePoint, ...]:
        """Per second of the window: p50/p99 by due time, completions by done time."""
        if not self.ok:
            return ()
        n_sec = max(max(self.by_due), max(self.completed)) + 1
        rows = []
        for s in range(n_sec):
            h = self.by_due.get(s)
            pct = h.percentiles_ms((50.0, 99.0)) if h is not None else None
            rows.append(TimePoint(s, self.completed.get(s, 0),
                                  round(pct[50.0], 3) if pct else None,
                                  round(pct[99.0], 3) if pct else None))  # fmt: skip
        return tuple(rows)

    def schedule(self) -> tuple[Schedule, list[str]]:
        """Open loop: how late the sends were, and the warning when the generator fell behind."""
        lag = self.send_lag.summary()
        late_fraction = self.late / self.sent if self.sent else 0.0
        p99_lag = lag.p99_ms or 0.0
        behind = late_fraction > LATE_FRACTION_WARN or p99_lag > LATE_P99_WARN_MS
        warnings = []
        if behind:
            warnings.append(
                f"generator fell behind its schedule: {late_fraction:.1%} of requests sent "
                f">{LATE_THRESHOLD_MS:g} ms late, send-lag p99 {p99_lag:.2f} ms; latencies "
                "include the generator's own delay and the offered rate was not really offered"
            )
        sched = Schedule(LATE_THRESHOLD_MS, self.late, round(late_fraction, 4), lag.p50_ms,
                         lag.p99_ms, lag.max_ms, self.conn_waits, behind)  # fmt: skip
        return sched, warnings

    def result(self, spec: StepSpec, started_at: float) -> StepResult:
        """The step's StepResult. The window is --duration, or (bounded by --requests) the
        span up to the last measured send."""
        window_s = spec.duration_s if spec.duration_s is not None else max(self.last_s, 1e-3)
        elapsed = max(window_s, self.last_done_s, 1e-9)
        errors = self.sent - self.ok
        schedule, warnings = self.schedule() if spec.open_loop else (None, [])
        per_request = round(self.cpu_s / self.issued * 1e6, 1) if self.issued else None
        return StepResult(
            mode="open" if spec.open_loop else "closed", offered_rate=spec.rate,
            arrival=spec.arrival if spec.open_loop else None, concurrency=spec.concurrency,
            warmup_s=spec.warmup_s, started_at=round(started_at, 3), window_s=round(window_s, 3),
            elapsed_s=round(elapsed, 3), requests=self.sent, ok=self.ok, errors=errors,
            error_rate=round(errors / self.sent, 4) if self.sent else 0.0,
            throughput_rps=round(self.ok / elapsed, 2), latency_ms=self.latency.summary(),
            status_counts=dict(sorted(self.status_counts.items())),
            transport_errors=dict(sorted(self.transport_errors.items())),
            error_details=dict(sorted(self.error_details.items(), key=lambda kv: -kv[1])),
            stages_ms={name: h.summary() for name, h in sorted(self.stages.items())},
            schedule=schedule, timeseries=self.timeseries(),
            generator=Generator(round(self.cpu_s, 3), per_request), warnings=tuple(warnings),
        )  # fmt: skip
