"""What the routes share for the lifetime of one app: settings, backend, batcher, pools, metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from contract.manifest import Manifest
from service.backends.base import Backend
from service.batcher import MicroBatcher
from service.decode import DecodeLimits
from service.errors import NotReady, ShuttingDown
from service.metrics import GatewayMetrics
from service.settings import Settings


@dataclass
class GatewayState:
    """Built by `create_app`; the backend and batcher come alive in the lifespan."""

    settings: Settings
    backend: Backend
    metrics: GatewayMetrics
    decode_pool: ThreadPoolExecutor
    decode_limits: DecodeLimits
    batcher: MicroBatcher | None = None  # set once the backend has started
    start_error: str | None = None  # why the backend failed to start, if it did
    shutting_down: bool = False

    @property
    def manifest(self) -> Manifest:
        return self.backend.manifest

    def serving(self) -> tuple[MicroBatcher, Manifest]:
        """The batcher and contract, or the 503 that says why requests cannot be served yet."""
        retry = self.settings.retry_after_s
        if self.shutting_down:
            raise ShuttingDown("the gateway is shutting down", retry_after_s=retry)
        if self.batcher is None:
            why = self.start_error or "the model backend is still starting"
            raise NotReady(why, retry_after_s=retry)
        return self.batcher, self.backend.manifest


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]
