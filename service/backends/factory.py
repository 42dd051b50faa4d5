"""Pick the backend named in the settings."""

from __future__ import annotations

from service.backends.base import Backend
from service.backends.tfserving import TFServingBackend
from service.settings import Settings


def make_backend(settings: Settings) -> Backend:
    """`embedded` (in-process TF) or `tfserving` (gRPC); nothing is loaded until `start()`."""
    if settings.backend == "embedded":
        # TensorFlow comes with it: imported only for this backend, never in a gRPC gateway.
        from service.backends.embedded import EmbeddedBackend

        return EmbeddedBackend.from_settings(settings)
    if settings.backend == "tfserving":
        return TFServingBackend.from_settings(settings)
    raise ValueError(f"backend must be 'embedded' or 'tfserving'. Received: {settings.backend!r}")
