"""Prometheus metrics of one gateway app, on a registry of its own (several apps per process in tests).

Exposed at `GET /metrics`: request latency by route and status, errors by status and code,
decode / queue / backend time, batch size, queue depth and backend calls; and per model
version (`gateway_model_*`, labels `model` and `version`): requests by outcome, latency and the
top-1 class mix, which `resnet-serving rollout` compares between a canary and stable.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

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


class GatewayMetrics:
    """Every metric the gateway records, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
            "gateway_queue_depth", "Images waiting in the batcher queue.", registry=r
        )

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

    def observe_version(
        self, model: str, version: int, *, ok: bool, seconds: float | None = None
    ) -> None:
        """One request answered (ok) or failed with a 5xx by `model` `version`."""
        v = str(version)
        self.model_requests.labels(model, v, "ok" if ok else "error").inc()
        if seconds is not None:
            self.model_request_seconds.labels(model, v).observe(seconds)

    def observe_top1(self, model: str, version: int, labels: list[str]) -> None:
        """The top-1 label of each image one version classified."""
        for label in labels:
            self.model_top1.labels(model, str(version), label).inc()

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth live at scrape time."""
        self.queue_depth.set_function(depth)

    def batch_observer(self, backend: str) -> Callable[[BatchRecord], None]:
        """The batcher's `on_batch` callback for `backend`."""

        def observe(rec: BatchRecord) -> None:
            self.batch_size.observe(rec.images)
            self.padded_images.inc(rec.bucket - rec.images)
            self.backend_seconds.labels(backend).observe(rec.backend_s)
            self.backend_calls.labels(backend, "ok" if rec.ok else "error").inc()

        return observe

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None:
        self.request_seconds.labels(route, method, str(status)).observe(seconds)
        if status >= 400:
            self.errors.labels(str(status), code or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
