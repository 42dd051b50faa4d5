"""The one interface the batcher calls, whatever serves the model.

A backend takes a padded bucket of uint8 NHWC images and returns float32 probabilities.
It raises only `service.errors` types: BackendUnavailable (503, retry later),
DeadlineExceeded (504) or BackendError (502).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from contract.manifest import Manifest


class Backend(Protocol):
    """A model server the gateway can send batches to."""

    name: str  # "embedded" | "tfserving"

    @property
    def manifest(self) -> Manifest:
        """The contract of the model version this backend serves (valid after `start`)."""
        ...

    async def start(self) -> None:
        """Load or connect, check the served model against the manifest, warm up."""
        ...

    async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
        """uint8 [N,H,W,3] (N a bucket size) -> float32 probabilities [N, classes]."""
        ...

    async def ready(self) -> bool:
        """True when the model is loaded and servable right now."""
        ...

    async def close(self) -> None:
        """Release channels, threads and models. Idempotent."""
        ...
