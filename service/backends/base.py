"""The one interface the gateway uses, whatever serves the models.

A backend serves several models, each in one or more versions that come and go while it runs
(TF Serving loads a new version and unloads the old; the embedded backend does the same with
version directories). The gateway asks it what each model's versions are (`versions`), reads
and checks the contract of each one it will use (`contract`), and sends it padded buckets of
uint8 NHWC images pinned to a version (`predict`), getting float32 probabilities back.

It raises only `service.errors` types: BackendUnavailable (503, retry later), VersionGone (503:
the pinned version is no longer served; the caller retries on the current one),
DeadlineExceeded (504), BackendError (502) or BackendStartupError (a version whose contract
cannot be served). A backend that talks to a remote model server exposes its circuit breaker,
so the routes fail fast and `/readyz` turns 503 while it is open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.manifest import Manifest
from service.breaker import CircuitBreaker

# TF Serving's version states (apis/get_model_status.proto, ModelVersionStatus.State).
AVAILABLE = "AVAILABLE"


@dataclass(frozen=True)
class ModelVersions:
    """What the model server says about one model now."""

    states: Mapping[int, str] = field(
        default_factory=dict
    )  # version -> "LOADING", "AVAILABLE", ...
    errors: Mapping[int, str] = field(default_factory=dict)  # version -> why it ended in error
    labels: Mapping[str, int] = field(default_factory=dict)  # label -> version (labels that exist)

    @property
    def available(self) -> list[int]:
        """The versions that serve now, ascending."""
        return sorted(v for v, s in self.states.items() if s == AVAILABLE)


class Backend(Protocol):
    """A model server the gateway can send batches to."""

    name: str  # "embedded" | "tfserving"

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The breaker around the remote model server (tfserving); None in-process (embedded)."""
        ...

    async def start(self) -> None:
        """Connect or load; return once the default model has a version whose contract checks
        out (BackendStartupError when it never will, within the backend's start-up time)."""
        ...

    async def versions(self, model: str, labels: Sequence[str] = ()) -> ModelVersions:
        """Every known version of `model` and its state, and which of `labels` exist."""
        ...

    async def contract(self, model: str, version: int) -> Manifest:
        """The manifest of one AVAILABLE version, checked against what it serves
        (BackendStartupError if it does not match: that version must not get traffic)."""
        ...

    async def predict(
        self,
        images: np.ndarray,
        *,
        timeout_s: float,
        model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:
        """uint8 [N,H,W,3] (N a bucket size) -> float32 probabilities [N, classes].

        `model` None: the default model; `version` None: its latest. A pinned version that is
        not (or no longer) served raises VersionGone. Checks the batch with
        `Manifest.check_images` first (ImageShapeError: the caller's bug).
        """
        ...

    async def ready(self) -> bool:
        """True when the model server answers and the default model is servable right now."""
        ...

    async def close(self) -> None:
        """Release channels, threads and models. Idempotent."""
        ...


class PinnedBackend:
    """One model version of a backend, as the micro-batcher sees it: its `predict` always
    goes to that version, so every batch is tagged with the version it was sent to."""

    def __init__(self, backend: Backend, model: str, version: int) -> None:
        self._backend, self.model, self.version = backend, model, version
        self.name = backend.name

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._backend.breaker

    async def start(self) -> None:
        """Nothing to do: the backend behind it is already started."""

    async def versions(self, model: str, labels: Sequence[str] = ()) -> ModelVersions:
        return await self._backend.versions(model, labels)

    async def contract(self, model: str, version: int) -> Manifest:
        return await self._backend.contract(model, version)

    async def predict(
        self,
        images: np.ndarray,
        *,
        timeout_s: float,
        model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:
        return await self._backend.predict(
            images, timeout_s=timeout_s, model=self.model, version=self.version
        )

    async def ready(self) -> bool:
        return await self._backend.ready()

    async def close(self) -> None:
        """Nothing to do: the backend behind it belongs to the gateway, not to this version."""
