"""Prometheus metrics of one gateway app, on a registry of its own (several apps per process in tests).

Exposed at `GET /metrics`: request latency by route and status, errors by status and code,
decode / queue / backend time, batch size, queue depth, backend calls in flight, processes.

**Several worker processes** (`serve --workers N`) share one `/metrics`: prometheus_client's
multiprocess mode, which it turns on by itself at import when `PROMETHEUS_MULTIPROC_DIR` is
set (`service.server` sets it for the workers it starts). Every process then writes its values
to files in that folder, and a scrape of any worker sums them all (`MultiProcessCollector` on
a fresh registry, never on the one the metrics live on, which would report them twice;
prometheus.github.io/client_python/multiprocess). Counters and histograms of a process that
ended still count (they never go down); its gauges are live ones (`livesum`) and are dropped:
at its own shutdown, or at the next scrape once its pid is gone (a killed worker). Gauges
are therefore set when their value changes, never read by a callback at scrape time, which
multiprocess mode does not support.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.batcher import BatchRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from sub-millisecond decodes to the 10 s request budget.
_TIME_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The folder prometheus_client keeps this process's values in, or None (in memory).

    prometheus_client chose its storage once, at import, from its own environment variable;
    this reads back that choice, so the two can never disagree."""
    if values.ValueClass is values.MutexValue:
        return None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


class GatewayMetrics:
    """Every metric the gateway records, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        r = self.registry
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency, by route template, method and status.",
            ["route", "method", "status"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors_total",
            "Error responses, by HTTP status and error code.",
            ["status", "code"],
            registry=r,
        )
        self.images = Counter("gateway_images_total", "Images classified successfully.", registry=r)
        self.decode_seconds = Histogram(
            "gateway_decode_seconds",
            "Time to decode and resize one image.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "gateway_queue_seconds",
            "Time an image waited in the batcher before its backend call.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.backend_seconds = Histogram(
            "gateway_backend_seconds",
            "Duration of one backend call (one batch).",
            ["backend"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Real images per backend call (before padding to a bucket).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.padded_images = Counter(
            "gateway_padded_images_total",
            "Zero images added to reach a batch bucket.",
            registry=r,
        )
        self.backend_calls = Counter(
            "gateway_backend_calls_total",
            "Backend calls, by backend and outcome.",
            ["backend", "outcome"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Images waiting in the batcher queues (all processes).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.processes = Gauge(
            "gateway_processes",
            "Gateway processes serving (workers alive).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.processes.set(1)
        # Label children looked up once: `labels()` costs a lock and a dict per call.
        self._route_children: dict[tuple[str, str, int], Histogram] = {}

    def batch_observer(self, backend: str) -> Callable[[BatchRecord], None]:
        """The batcher's `on_batch` callback for `backend`."""
        seconds = self.backend_seconds.labels(backend)
        ok = self.backend_calls.labels(backend, "ok")
        failed = self.backend_calls.labels(backend, "error")

        def observe(rec: BatchRecord) -> None:
            self.batch_size.observe(rec.images)
            if rec.bucket > rec.images:
                self.padded_images.inc(rec.bucket - rec.images)
            seconds.observe(rec.backend_s)
            (ok if rec.ok else failed).inc()

        return observe

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None:
        key = (route, method, status)
        child = self._route_children.get(key)
        if child is None:
            child = self.request_seconds.labels(route, method, str(status))
            if len(self._route_children) < 1024:  # routes x methods x statuses: small, bounded
                self._route_children[key] = child
        child.observe(seconds)
        if status >= 400:
            self.errors.labels(str(status), code or "unknown").inc()

    def render(self) -> bytes:
        """The exposition text: this app's registry, or every process's files summed."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        _forget_dead_processes(self.shared_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared_dir))
        return generate_latest(registry)

    def close(self) -> None:
        """This process stops serving: its live gauges leave the sum (multiprocess mode)."""
        if self.shared_dir is not None:
            mark_process_dead(os.getpid(), path=str(self.shared_dir))


def _forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of worker processes that no longer exist (killed, not drained)."""
    for path in folder.glob("gauge_live*.db"):
        m = _LIVE_GAUGE_FILE.match(path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):  # another worker pruned it first
            mark_process_dead(int(m.group(1)), path=str(folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True
