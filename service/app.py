"""`create_app(settings)`: the FastAPI gateway, its middleware, its one error mapping, its lifespan.

Middleware, outermost first: RequestContext (X-Request-ID, latency metrics, access log,
last-resort 500) -> [CORS] -> AccessGuard (API keys 401, rate limit 429, `/v1/` only)
-> BodySizeLimit (413 while streaming) -> FastAPI. Every error, whether raised by a
route, by request validation, by routing (404/405) or by a bug, becomes
`{"error", "detail", "request_id"}` through `error_response`, the one mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract import __version__
from service import health, page, routes
from service.auth import ApiKeys
from service.backends.base import Backend
from service.batcher import MicroBatcher
from service.decode import DecodeLimits
from service.errors import (
    BackendStartupError,
    BadRequest,
    ClientClosedRequest,
    GatewayError,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
)
from service.limits import BodySizeLimit
from service.metrics import GatewayMetrics
from service.middleware import AccessGuard, access_log
from service.openapi_docs import name_served_model
from service.ratelimit import RateLimiter
from service.settings import Settings
from service.state import GatewayState

log = logging.getLogger("service")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """The gateway app. `backend` overrides the one `settings` would make (tests, benchmarks).

    `on_fatal(reason)` is called when the embedded model cannot load: a gateway that can never
    serve should exit (the server stops and reports it) rather than stay half alive. Without it
    the failure shows on `/readyz` only. The tfserving backend keeps waiting for its server.
    """
    settings = settings or Settings()
    if backend is None:
        from service.backends.factory import make_backend

        backend = make_backend(settings)
    metrics = GatewayMetrics()
    state = GatewayState(
        settings=settings,
        backend=backend,
        metrics=metrics,
        decode_pool=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode"),
        decode_limits=DecodeLimits.from_settings(settings),
    )
    app = FastAPI(
        title="resnet-serving gateway",
        version=__version__,
        description="Image classification over HTTP with micro-batching in front of "
        "TF Serving (gRPC) or an embedded TensorFlow model.",
        lifespan=_lifespan,
    )
    app.state.gateway = state
    app.state.on_fatal = on_fatal
    app.state.drain_deadline = None  # loop.time() bound for the drain, set on SIGTERM (server.py)
    app.include_router(routes.router)
    app.include_router(health.router)
    if settings.demo_page:
        app.include_router(page.router)
    name_served_model(app, settings.model_name)
    for exc_type in (
        GatewayError,
        RequestValidationError,
        StarletteHTTPException,
        ClientDisconnect,
    ):
        app.add_exception_handler(exc_type, _handle_error)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    limiter = (
        RateLimiter(rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
        if settings.rate_limit_per_s > 0
        else None
    )
    app.add_middleware(
        AccessGuard, keys=ApiKeys(settings.api_keys), limiter=limiter, respond=error_response
    )
    if settings.cors_allow_origins:  # off unless an allow-list is set; never a wildcard default
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Server-Timing", "Retry-After"],
        )
    app.add_middleware(RequestContext, metrics=metrics)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: GatewayState = app.state.gateway
    app.state.loop = asyncio.get_running_loop()  # for the signal handler's drain deadline
    # Start in the background: /livez answers at once, /readyz turns 200 once the model is warm.
    starting = asyncio.create_task(_start_backend(state, app.state.on_fatal), name="backend-start")
    try:
        yield
    finally:
        state.shutting_down = True  # /readyz -> 503 so balancers stop sending
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        if state.batcher is not None:
            # What is left of the drain budget since SIGTERM (uvicorn already waited for the
            # requests in flight), so the whole shutdown stays within drain_timeout_s.
            budget = state.settings.drain_timeout_s
            deadline = app.state.drain_deadline
            if deadline is not None:
                budget = max(0.0, min(budget, deadline - asyncio.get_running_loop().time()))
            await state.batcher.close(drain=True, timeout_s=budget)
        await state.backend.close()
        state.decode_pool.shutdown(wait=False, cancel_futures=True)


async def _start_backend(state: GatewayState, on_fatal: Callable[[str], None] | None) -> None:
    s = state.settings
    try:
        await asyncio.wait_for(state.backend.start(), s.startup_timeout_s)
        manifest = state.backend.manifest
        batcher = MicroBatcher(
            state.backend,
            manifest,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_images=s.max_queue_images,
            max_queue_wait_s=s.max_queue_wait_s,
            retry_after_s=s.retry_after_s,
            on_batch=state.metrics.batch_observer(state.backend.name),
        )
        await batcher.start()
        state.metrics.track_queue(lambda: batcher.queue_depth)
        state.batcher = batcher
        log.info(
            "ready: model %s version %d on the %s backend, batches up to %d",
            manifest.model_name,
            manifest.model_version,
            state.backend.name,
            batcher.max_batch_size,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            state.start_error = f"backend did not start within {s.startup_timeout_s:g} s"
        else:
            state.start_error = f"backend failed to start: {exc}"
        if on_fatal is not None and state.backend.name == "embedded":
            on_fatal(state.start_error)  # the caller reports it as the one error line
        elif isinstance(exc, BackendStartupError | TimeoutError):  # one clear line already
            log.error(state.start_error)
        else:
            log.exception("backend failed to start")


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    """THE mapping from any exception to our JSON error response."""
    err = _as_gateway_error(exc)
    if type(err) is GatewayError:  # a bug, not the client's fault: log it, show no traceback
        log.error("unhandled error (request_id=%s)", request_id, exc_info=exc)
    headers = err.headers()
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        headers = {**exc.headers, **headers}  # e.g. Allow on 405
    return JSONResponse(err.body(request_id), status_code=err.status, headers=headers)


def _as_gateway_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestValidationError):
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return InvalidParameter(
            f"{where or 'request'}: {first.get('msg', 'invalid')}. "
            f"Received: {where}={first.get('input')!r}"
        )
    if isinstance(exc, ClientDisconnect):  # e.g. a client timed out while we were overloaded
        return ClientClosedRequest("the client closed the connection before sending its body")
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return NotFound(f"no such endpoint: {exc.detail}")
        if exc.status_code == 405:
            return MethodNotAllowed(f"method not allowed: {exc.detail}")
        if exc.status_code == 400:
            return BadRequest(str(exc.detail))
    return GatewayError("internal error; the server log has the details under this request_id")


async def _handle_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    request.state.error_code = _as_gateway_error(exc).code
    return error_response(exc, request_id)


class RequestContext:
    """Request id in and out, latency and error metrics, and the last-resort error response."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        request_id = _request_id(scope)
        ctx = scope.setdefault("state", {})
        ctx["request_id"] = request_id
        ctx["started"] = loop.time()
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:  # too late for an error response; the connection is cut
                log.exception("error after the response started (request_id=%s)", request_id)
                raise
            ctx["error_code"] = _as_gateway_error(exc).code
            await error_response(exc, request_id)(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                route, scope["method"], status, loop.time() - ctx["started"], ctx.get("error_code")
            )
            access_log(scope, status, time.perf_counter() - t0, request_id, ctx.get("key_id"))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex
