"""The one interface the batcher calls, whatever serves the model.

A backend takes a padded bucket of uint8 NHWC images and returns float32 probabilities.
It raises only `service.errors` types: BackendUnavailable (503, retry later),
DeadlineExceeded (504) or BackendError (502). A backend that talks to a remote model server
exposes its circuit breaker, so the routes fail fast and `/readyz` turns 503 while it is open.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from contract.manifest import Manifest
from service.breaker import CircuitBreaker


class Backend(Protocol):
    """A model server the gateway can send batches to."""

    name: str  # "embedded" | "tfserving"

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The breaker around the remote model server (tfserving); None in-process (embedded)."""
        ...

    @property
    def manifest(self) -> Manifest:
        """The contract of the model version this backend serves (valid after `start`)."""
        ...

    async def start(self) -> None:
        """Load or connect, check the served model against the manifest, warm up."""
        ...

    async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
        """uint8 [N,H,W,3] (N a bucket size) -> float32 probabilities [N, classes].

        Checks the batch with `Manifest.check_images` first (ImageShapeError: the caller's bug).
        """
        ...

    async def ready(self) -> bool:
        """True when the model is loaded and servable right now."""
        ...

    async def close(self) -> None:
        """Release channels, threads and models. Idempotent."""
        ...
