"""Prometheus metrics of one gateway app, on a registry of its own (several apps per process in tests).

Exposed at `GET /metrics`: request latency by route and status, errors by status and code,
decode / queue / backend time, batch size, queue depth, backend calls in flight, processes;
and per model version (`gateway_model_*`, labels `model` and `version`): requests by outcome,
latency and the top-1 class mix, which `resnet-serving rollout` compares between a canary and
stable.

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
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.batcher import BatchRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from sub-millisecond decodes to the 10 s request budget.
_TIME_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Per-version latency, fine enough to estimate a p99 from (each bound 1.25x the last, 1 ms to
# ~30 s): a canary is judged on it.
MODEL_TIME_BUCKETS = tuple(round(0.001 * 1.25**k, 6) for k in range(47))
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
_MAX_CACHED_CHILDREN = 4096  # label children kept (routes, statuses, versions, classes)
_M = TypeVar("_M", bound=MetricWrapperBase)


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

        # Per model version (service.models), what a canary is judged by.
        self.model_requests = Counter(
            "gateway_model_requests_total",
            "Classify requests by the model version that answered (ok) or failed them with a "
            "5xx of its own (error).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.model_request_seconds = Histogram(
            "gateway_model_request_duration_seconds",
            "Latency of classify requests answered by each model version.",
            ["model", "version"],
            buckets=MODEL_TIME_BUCKETS,
            registry=r,
        )
        self.model_top1 = Counter(
            "gateway_model_top1_total",
            "Images by their top-1 class, per model version (the class mix).",
            ["model", "version", "label"],
            registry=r,
        )
        self.canary_fallbacks = Counter(
            "gateway_canary_fallbacks_total",
            "Requests the canary failed and the stable version answered.",
            ["model"],
            registry=r,
        )
        # Label children looked up once: `labels()` costs a lock and a dict per call.
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}

    def _child(self, metric: _M, *labels: str) -> _M:
        """`metric.labels(*labels)`, cached (bounded: routes, versions and classes are few)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < _MAX_CACHED_CHILDREN:
                self._children[key] = child
        return child  # type: ignore[return-value]  # keyed by the metric it came from

    def observe_version(
        self, model: str, version: int, *, ok: bool, seconds: float | None = None
    ) -> None:
        """One request answered (ok) or failed with a 5xx by `model` `version`."""
        v = str(version)
        self._child(self.model_requests, model, v, "ok" if ok else "error").inc()
        if seconds is not None:
            self._child(self.model_request_seconds, model, v).observe(seconds)

    def observe_top1(self, model: str, version: int, labels: list[str]) -> None:
        """The top-1 label of each image one version classified."""
        v = str(version)
        for label in labels:
            self._child(self.model_top1, model, v, label).inc()

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
        self._child(self.request_seconds, route, method, str(status)).observe(seconds)
        if status >= 400:
            self._child(self.errors, str(status), code or "unknown").inc()

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
