"""The gateway's one settings object. Every field can be set as `RESNET_SERVING_<FIELD>`.

Library code never reads the environment itself: `Settings()` is built once at start-up
(`service.app.create_app`) and passed down.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.manifest import MODEL_NAME_PATTERN

ENV_PREFIX = "RESNET_SERVING_"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, lowered to a container's CPU quota
    (cgroup v2 `cpu.max`, what `docker run --cpus` and a Kubernetes CPU limit set), which
    `os.cpu_count()` does not see. At least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or not the expected two numbers
        pass
    return max(1, cores)


class Settings(BaseSettings):
    """Gateway configuration, validated at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # Where the models come from.
    backend: Literal["embedded", "tfserving"] = "embedded"
    # <base>/<name>/<version>/: the embedded backend's models; the tfserving backend reads a
    # manifest here only for exports without the `serving_manifest` signature.
    model_base_path: Path = Path("models")
    model_name: str = "demo"  # the default model: /v1/classify
    # Every model served (/v1/models/{name}/classify), as listed in models.config; empty: only
    # model_name. model_name is always served, first.
    models: tuple[str, ...] = ()
    model_version: int | None = None  # serve only this version of model_name; None: follow
    tfserving_address: str = "localhost:8500"  # host:port of TF Serving's gRPC API

    # Versions that change while serving (service.models).
    version_poll_interval_s: float = Field(default=1.0, gt=0.0)  # GetModelStatus / disk scan
    # Version labels resolved on the model server and accepted as ?label=; the gateway routes
    # by `stable` (the default version) and `canary` (canary_fraction of the default traffic).
    version_labels: tuple[str, ...] = ("stable", "canary")
    canary_fraction: float = Field(default=0.0, ge=0.0, le=1.0)  # changed at run time: /admin
    # Keys for /admin/... (the canary fraction); empty: the admin API answers 403.
    admin_keys: tuple[str, ...] = ()
    # Run-time state every worker process of one host shares (the canary fraction set through
    # /admin); None: each process keeps its own (fine for one process).
    shared_state_dir: Path | None = None

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Proxies whose X-Forwarded-For / -Proto are believed (uvicorn's forwarded_allow_ips):
    # empty by default, so no client can pick the address its rate limit is counted under.
    forwarded_allow_ips: tuple[str, ...] = ()

    # Connections and request heads, enforced before any app code (service.connections).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # request line + headers
    max_headers: int = Field(default=100, ge=8)
    header_timeout_s: float = Field(default=5.0, gt=0.0)  # open/first byte -> end of head
    max_connections: int = Field(default=2048, ge=1)  # per process, within the fd limit
    # Requests one connection may pipeline behind the one being answered; past it, those are
    # answered and the connection closes (uvicorn alone would queue without bound).
    max_pipelined_requests: int = Field(default=16, ge=1)

    # Processes behind the one port (uvicorn's supervisor restarts any that dies). None: one
    # per available core (`available_cpus`: affinity and container CPU quota) for the
    # tfserving backend; 1 for the embedded one, which loads the model and runs TensorFlow in
    # every process (N copies in memory, N sets of TF threads).
    workers: int | None = Field(default=None, ge=1, le=256)
    # With several workers: the folder their metric files live in, summed by /metrics (wiped
    # at start; a tmpfs is best). None: a temporary folder, removed at exit.
    metrics_dir: Path | None = None

    # Micro-batching.
    max_batch_size: int = Field(default=32, ge=1)  # capped at the manifest's largest bucket
    # How long the oldest queued image may wait for company once a backend slot is free. 0:
    # sent at once, so batches form only while every slot is busy (the model server is).
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    # Backend calls in flight per process. 1 measured best for tfserving: each gRPC call costs
    # ~0.2 ms of CPU, so a second slot halves batches at a given load for no latency gain when
    # TF Serving batches (benchmarks/results/gateway_ceiling.md); the embedded backend runs
    # calls in turn on one TensorFlow thread anyway.
    max_inflight_batches: int = Field(default=1, ge=1, le=64)
    max_queue_images: int = Field(default=512, ge=1)  # beyond this: 503 + Retry-After
    # Shed (503 + Retry-After) when the estimated queue wait exceeds this or the time left of
    # the request's budget, instead of accepting work that would finish late. 0: off.
    max_queue_wait_s: float = Field(default=1.0, ge=0.0)

    # Limits on input.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # A body must arrive within body_timeout_s plus one second per body_min_rate bytes.
    body_timeout_s: float = Field(default=10.0, gt=0.0)
    body_min_rate: float = Field(default=1024 * 1024, gt=0.0)  # bytes/s, a slow mobile link
    # Request bodies held at once by one process; beyond it, 503 memory_full + Retry-After.
    max_inflight_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    # A progressive JPEG costs one full-resolution pass per scan; encoders write 6-10.
    max_jpeg_scans: int = Field(default=64, ge=1)
    max_images_per_request: int = Field(default=32, ge=1)
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    default_top_k: int = Field(default=5, ge=1)

    # Time.
    request_timeout_s: float = Field(default=10.0, gt=0.0)  # whole budget of one request
    backend_connect_timeout_s: float = Field(default=5.0, gt=0.0)
    startup_timeout_s: float = Field(default=120.0, gt=0.0)  # wait for the model to be ready
    drain_timeout_s: float = Field(default=20.0, ge=0.0)  # graceful shutdown bound
    retry_after_s: int = Field(default=1, ge=1)

    # Decoding. A pool of threads per process decodes images off the event loop; None: the
    # process's share of the cores, and at least 2.
    decode_workers: int | None = Field(default=None, ge=1)
    # Decodes one request may run at once; None: all workers but one, so a request full of
    # costly images always leaves a worker for the others.
    max_decodes_per_request: int | None = Field(default=None, ge=1)
    # Small images are decoded on the event loop itself, skipping two thread hops (~80 us of
    # CPU each): a request's images while their declared pixels add up to at most this, and
    # each file is at most 2 bytes per allowed pixel. 0: always the pool. None: 500 000 when
    # there is a process per core (the pool's threads could only take turns with the loop),
    # else 0 (the pool is how one process decodes on several cores).
    inline_decode_max_pixels: int | None = Field(default=None, ge=0)

    # Circuit breaker (tfserving backend).
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0.0)

    # Access.
    api_keys: tuple[str, ...] = ()  # empty: no key needed
    # Wrong keys per client address and minute before 429 + Retry-After (a valid key is never
    # refused for it). 0 disables.
    auth_failures_per_min: int = Field(default=30, ge=0)
    rate_limit_per_s: float = Field(default=0.0, ge=0.0)  # per key; 0 disables
    rate_limit_burst: int = Field(default=20, ge=1)
    cors_allow_origins: tuple[str, ...] = ()  # empty: CORS off
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The browser demo page at `/` (service/page.py); off: `/` is a 404 like any unknown path.
    demo_page: bool = True

    def worker_count(self) -> int:
        """Gateway processes to run: `workers`, or the backend's default."""
        if self.workers is not None:
            return self.workers
        return available_cpus() if self.backend == "tfserving" else 1

    def decode_threads(self) -> int:
        """Decode threads per process: `decode_workers`, or this process's share of the cores."""
        if self.decode_workers is not None:
            return self.decode_workers
        return max(2, available_cpus() // self.worker_count())

    def decode_slots_per_request(self) -> int:
        """How many of one request's images may decode at the same time."""
        threads = self.decode_threads()
        if self.max_decodes_per_request is not None:
            return min(self.max_decodes_per_request, threads)
        return max(1, threads - 1)

    def inline_decode_pixels(self) -> int:
        """Declared pixels per request decoded on the event loop (0: none)."""
        if self.inline_decode_max_pixels is not None:
            return self.inline_decode_max_pixels
        return 500_000 if self.worker_count() >= available_cpus() else 0

    def served_models(self) -> tuple[str, ...]:
        """model_name first, then the other names of `models`, each once."""
        return tuple(dict.fromkeys((self.model_name, *self.models)))

    @field_validator("model_name", "models")
    @classmethod
    def _names(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for name in (v,) if isinstance(v, str) else v:
            if not re.fullmatch(MODEL_NAME_PATTERN, name):
                raise ValueError(f"model names must match {MODEL_NAME_PATTERN}, got {name!r}")
        return v

    @field_validator("tfserving_address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"must be host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_inflight_body_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be >= "
                f"max_upload_bytes ({self.max_upload_bytes}), or no upload of the largest "
                "allowed size could ever be taken"
            )
        if self.max_queue_images < self.max_batch_size:
            raise ValueError(
                f"max_queue_images ({self.max_queue_images}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        return self
