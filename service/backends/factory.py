"""Pick the backend named in the settings."""

from __future__ import annotations

from service.backends.base import Backend
from service.settings import Settings


def make_backend(settings: Settings) -> Backend:
    """`embedded` (in-process TF) or `tfserving` (gRPC); nothing is loaded until `start()`."""
    # Only the backend in use is imported: the embedded one brings TensorFlow with it.
    if settings.backend == "embedded":
        from service.backends.embedded import EmbeddedBackend

        return EmbeddedBackend.from_settings(settings)
    if settings.backend == "tfserving":
        from service.backends.tfserving import TFServingBackend

        return TFServingBackend.from_settings(settings)
    raise ValueError(f"backend must be 'embedded' or 'tfserving'. Received: {settings.backend!r}")
