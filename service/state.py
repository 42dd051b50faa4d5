"""What the routes share for the lifetime of one app: settings, backend, models, pools, metrics.

`create_app` builds one `GatewayState` and keeps it as `app.state.gateway`, the only attribute
the gateway sets on `app.state`. The lifespan brings it up (decode pool, backend, the model
registry with a batcher per served version) and
down; the server's signal handler starts the drain (`begin_drain`), whose budget the lifespan
shutdown spends (`drain_budget`). Drain times are `time.monotonic()` readings: the signal
handler runs outside the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, NamedTuple

from fastapi import Depends, Request
from starlette.applications import Starlette

from contract.manifest import Manifest
from service.backends.base import Backend
from service.batcher import MicroBatcher
from service.decode import DecodeLimits
from service.errors import NotReady, ShuttingDown
from service.metrics import GatewayMetrics
from service.models import ModelRegistry
from service.settings import Settings
from service.traffic import TrafficSplit


class Serving(NamedTuple):
    """What a request needs once the gateway is up."""

    models: ModelRegistry
    decode_pool: ThreadPoolExecutor


@dataclass
class GatewayState:
    """Built by `create_app`; the decode pool, backend and batcher come alive in the lifespan."""

    settings: Settings
    backend: Backend
    metrics: GatewayMetrics
    decode_limits: DecodeLimits
    # Called with the reason when the embedded model cannot load: the server stops and reports
    # it (a gateway that can never serve exits rather than stay half alive). None: /readyz only.
    on_fatal: Callable[[str], None] | None = None
    # Wait for the backend (bounded) before taking connections (service.app.create_app).
    listen_after_ready: bool = False
    traffic: TrafficSplit = field(default_factory=TrafficSplit)  # the canary fraction
    decode_pool: ThreadPoolExecutor | None = None  # created at start-up, shut at shutdown
    models: ModelRegistry | None = None  # set once the backend has started
    start_error: str | None = None  # why the backend failed to start, if it did
    shutting_down: bool = False
    drain_deadline: float | None = None  # time.monotonic() bound of the drain (begin_drain)

    @property
    def batcher(self) -> MicroBatcher | None:
        """The batcher of the default model's default version now (None before start-up)."""
        current = self.models.default.current() if self.models is not None else None
        return current.batcher if current is not None else None

    @property
    def manifest(self) -> Manifest:
        """The contract of the default model's default version now."""
        current = self.models.default.current() if self.models is not None else None
        if current is None:
            raise NotReady("no model version is served yet")
        return current.manifest

    def serving(self) -> Serving:
        """The models and the decode pool, or the 503 that says why requests cannot be served."""
        retry = self.settings.retry_after_s
        if self.shutting_down:
            raise ShuttingDown("the gateway is shutting down", retry_after_s=retry)
        if self.models is None or self.decode_pool is None:
            why = self.start_error or "the model backend is still starting"
            raise NotReady(why, retry_after_s=retry)
        return Serving(self.models, self.decode_pool)

    def begin_drain(self, now: float) -> bool:
        """Turn not-ready and start the drain budget of `drain_timeout_s` at `now`.

        True the first time; later calls (a second signal, the lifespan shutdown after a
        signal) change nothing, so the budget always counts from the first.
        """
        if self.drain_deadline is not None:
            return False
        self.shutting_down = True  # /readyz and new requests: 503 shutting_down
        self.drain_deadline = now + self.settings.drain_timeout_s
        return True

    def drain_budget(self, now: float) -> float:
        """Seconds the drain may still take at `now` (all of `drain_timeout_s` before it began)."""
        budget = self.settings.drain_timeout_s
        if self.drain_deadline is None:
            return budget
        return max(0.0, min(budget, self.drain_deadline - now))


def state_of(app: Starlette) -> GatewayState:
    """The gateway state of an app made by `create_app`."""
    state: GatewayState = app.state.gateway
    return state


async def get_state(request: Request) -> GatewayState:
    """The app's state; async, so FastAPI calls it in the request's task (a sync dependency
    would cost a hop to a worker thread and back on every request)."""
    return state_of(request.app)


StateDep = Annotated[GatewayState, Depends(get_state)]
