"""The gateway's one settings object. Every field can be set as `RESNET_SERVING_<FIELD>`.

Library code never reads the environment itself: `Settings()` is built once at start-up
(`service.app.create_app`) and passed down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RESNET_SERVING_"


class Settings(BaseSettings):
    """Gateway configuration, validated at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # Where the model comes from.
    backend: Literal["embedded", "tfserving"] = "embedded"
    model_base_path: Path = Path("models")  # <base>/<model_name>/<version>/ (manifest is read here)
    model_name: str = "demo"
    model_version: int | None = None  # None: the highest version on disk
    tfserving_address: str = "localhost:8500"  # host:port of TF Serving's gRPC API

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Micro-batching.
    max_batch_size: int = Field(default=32, ge=1)  # capped at the manifest's largest bucket
    max_wait_ms: float = Field(default=5.0, ge=0.0, le=1000.0)
    max_queue_images: int = Field(default=512, ge=1)  # beyond this: 503 + Retry-After
    # Shed (503 + Retry-After) when the estimated queue wait exceeds this or the time left of
    # the request's budget, instead of accepting work that would finish late. 0: off.
    max_queue_wait_s: float = Field(default=1.0, ge=0.0)

    # Limits on input.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_request: int = Field(default=32, ge=1)
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    default_top_k: int = Field(default=5, ge=1)

    # Time.
    request_timeout_s: float = Field(default=10.0, gt=0.0)  # whole budget of one request
    backend_connect_timeout_s: float = Field(default=5.0, gt=0.0)
    startup_timeout_s: float = Field(default=120.0, gt=0.0)  # wait for the model to be ready
    drain_timeout_s: float = Field(default=20.0, ge=0.0)  # graceful shutdown bound
    retry_after_s: int = Field(default=1, ge=1)

    # Workers.
    decode_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)

    # Circuit breaker (tfserving backend).
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0.0)

    # Access.
    api_keys: tuple[str, ...] = ()  # empty: no key needed
    rate_limit_per_s: float = Field(default=0.0, ge=0.0)  # per key; 0 disables
    rate_limit_burst: int = Field(default=20, ge=1)
    cors_allow_origins: tuple[str, ...] = ()  # empty: CORS off
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The browser demo page at `/` (service/page.py); off: `/` is a 404 like any unknown path.
    demo_page: bool = True

    @field_validator("tfserving_address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"must be host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_queue_images < self.max_batch_size:
            raise ValueError(
                f"max_queue_images ({self.max_queue_images}) must be >= max_batch_size "
                f"({self.max_batch_size})"
            )
        return self
