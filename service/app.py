"""`create_app(settings)`: the FastAPI gateway assembled from its parts, and its lifespan.

The parts: the routers (`service.routes`, `service.health`, `service.admin`), the middleware in their one
order (`service.middleware.stack`), the one error mapping (`service.error_responses`) as the
exception handler, and one `GatewayState` (`service.state`) as `app.state.gateway`.
The lifespan sets the process-wide things once at start (Pillow's switches, the decode
pool), starts the backend in the background, and on shutdown drains within what is left of
`drain_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from contract import __version__
from service import admin, api_docs, health, middleware, page, routes
from service.backends.base import Backend
from service.backends.factory import make_backend
from service.decode import DecodeLimits, configure_pillow
from service.error_responses import HANDLED, handle_exception
from service.errors import BackendStartupError
from service.metrics import GatewayMetrics
from service.models import ModelRegistry
from service.openapi_docs import name_served_model
from service.settings import Settings
from service.state import GatewayState, state_of
from service.traffic import TrafficSplit

log = logging.getLogger("service")


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    on_fatal: Callable[[str], None] | None = None,
    listen_after_ready: bool = False,
) -> FastAPI:
    """The gateway app. `backend` overrides the one `settings` would make (tests, benchmarks).

    `listen_after_ready`: the lifespan start waits for the backend (at most
    `backend_connect_timeout_s`) before uvicorn takes connections, so a worker process that
    replaces a dead one joins ready (`service.server`); past that bound it listens anyway.

    `on_fatal(reason)` is called when the embedded model cannot load: a gateway that can never
    serve should exit (the server stops and reports it) rather than stay half alive. Without it
    the failure shows on `/readyz` only. The tfserving backend keeps waiting for its server.
    Nothing is loaded, started or set process-wide until the lifespan runs.
    """
    settings = settings or Settings()
    metrics = GatewayMetrics()
    state = GatewayState(
        settings=settings,
        backend=backend if backend is not None else make_backend(settings),
        metrics=metrics,
        decode_limits=DecodeLimits.from_settings(settings),
        on_fatal=on_fatal,
        listen_after_ready=listen_after_ready,
        traffic=TrafficSplit(settings.canary_fraction, settings.shared_state_dir),
    )
    app = FastAPI(
        title="resnet-serving gateway",
        version=__version__,
        description="Image classification over HTTP with micro-batching in front of "
        "TF Serving (gRPC) or an embedded TensorFlow model.",
        lifespan=_lifespan,
        middleware=middleware.stack(settings, metrics),
        docs_url=None,  # served by service.api_docs from package data, not from a CDN
        redoc_url=None,
        # a path with a trailing slash is a JSON 404, not Starlette's 307 with an empty body
        # and a Location built from the client's Host header
        redirect_slashes=False,
    )
    app.state.gateway = state
    app.include_router(routes.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(api_docs.router)
    if settings.demo_page:
        app.include_router(page.router)
    name_served_model(app, settings.model_name)
    for exc_type in HANDLED:
        app.add_exception_handler(exc_type, handle_exception)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = state_of(app)
    configure_pillow()
    state.decode_pool = ThreadPoolExecutor(
        state.settings.decode_threads(), thread_name_prefix="decode"
    )
    # Start in the background: /livez answers at once, /readyz turns 200 once the model is warm.
    starting = asyncio.create_task(_start_backend(state), name="backend-start")
    if state.listen_after_ready:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(starting), state.settings.backend_connect_timeout_s
            )
    try:
        yield
    finally:
        # Not ready from here on; after SIGTERM the drain began already (service.server) and
        # uvicorn has waited for the requests in flight: the batcher gets what is left.
        state.begin_drain(time.monotonic())
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        if state.models is not None:
            await state.models.close(timeout_s=state.drain_budget(time.monotonic()))
        await state.backend.close()
        pool, state.decode_pool = state.decode_pool, None
        pool.shutdown(wait=False, cancel_futures=True)
        state.metrics.close()


async def _start_backend(state: GatewayState) -> None:
    s = state.settings
    try:
        await asyncio.wait_for(state.backend.start(), s.startup_timeout_s)
        models = ModelRegistry(state.backend, s, state.metrics, state.traffic)
        await models.start()
        state.models = models
        for served in models.models.values():
            current = served.current()
            log.info(
                "ready: model %s version %s on the %s backend, batches up to %s, %s in flight",
                served.name,
                current.version if current else "(none yet)",
                state.backend.name,
                current.batcher.max_batch_size if current else "-",
                current.batcher.max_inflight_batches if current else "-",
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            state.start_error = f"backend did not start within {s.startup_timeout_s:g} s"
        else:
            state.start_error = f"backend failed to start: {exc}"
        if state.on_fatal is not None and state.backend.name == "embedded":
            state.on_fatal(state.start_error)  # the caller reports it as the one error line
        elif isinstance(exc, BackendStartupError | TimeoutError):  # one clear line already
            log.error(state.start_error)
        else:
            log.exception("backend failed to start")
