"""The gateway's ASGI middleware, and the one place that puts them in order.

Outermost first (`stack` returns this list; `service.app` hands it to FastAPI as is):

    RequestContext   X-Request-ID in and out, latency and error metrics, the access log line,
                     and the last-resort 500 for an exception nothing else answered
    [CORS]           Starlette's CORSMiddleware, only when `cors_allow_origins` is set
    AccessGuard      `/v1/` only: API key (401), per-client rate limit (429)
    BodySizeLimit    the request body over `max_upload_bytes` (413), declared or streamed
    (FastAPI)        its ExceptionMiddleware maps what routes raise, then the router

Why this order: everything inside RequestContext is timed, counted and logged with the
request id; the refusals (401, 429, 413) sit inside CORS so a browser can read them, and run
before the app reads a byte of the body. Each class is pure ASGI: no BaseHTTPMiddleware, whose
`call_next` starts a task group and a memory stream per request (Kludex/starlette#1678).
Each answers its refusals through `service.error_responses`, the one mapping. A new
middleware goes into `stack` where its concern belongs, with a line in the list above; it
leaves what it learns for the others in the scope's state (`request_id`, `key_id`,
`error_code`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import API_KEY_HEADER, ApiKeys, bearer_or_header
from service.error_responses import respond_in_scope
from service.errors import BadRequest, GatewayError, UploadTooLarge
from service.metrics import GatewayMetrics
from service.ratelimit import RateLimiter
from service.settings import Settings

log = logging.getLogger("service")
access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
PROTECTED_PREFIX = "/v1/"  # what AccessGuard checks; probes, metrics and docs stay open

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
_MAX_LOGGED_PATH = 200  # a hostile path must not make one log line arbitrarily long


def stack(settings: Settings, metrics: GatewayMetrics) -> list[Middleware]:
    """The gateway's middleware, outermost first, configured from the settings."""
    limiter = (
        RateLimiter(rate_per_s=settings.rate_limit_per_s, burst=settings.rate_limit_burst)
        if settings.rate_limit_per_s > 0
        else None
    )
    cors = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allow_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type", "Authorization", API_KEY_HEADER, REQUEST_ID_HEADER],
                expose_headers=[REQUEST_ID_HEADER, "Server-Timing", "Retry-After"],
            )
        ]
        if settings.cors_allow_origins  # off unless an allow-list is set; never a wildcard
        else []
    )
    return [
        Middleware(RequestContext, metrics=metrics),
        *cors,
        Middleware(AccessGuard, keys=ApiKeys(settings.api_keys), limiter=limiter),
        Middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes),
    ]


class RequestContext:
    """Request id in and out, latency and error metrics, access log, last-resort error response.

    Puts `request_id` and `started` (loop time) in the scope's state for everything inside;
    reads back `error_code` and `key_id` that the error mapping and AccessGuard leave there.
    """

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
            await respond_in_scope(exc, scope)(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(
                route, scope["method"], status, loop.time() - ctx["started"], ctx.get("error_code")
            )
            access_log(scope, status, time.perf_counter() - t0, request_id, ctx.get("key_id"))


class AccessGuard:
    """401 without a valid key (when keys are configured); 429 past the client's rate.

    Checks the API (`/v1/...`) only: health, readiness, metrics and the OpenAPI docs stay open
    so probes and scrapers need no key. A refused request is answered here, before its body
    is read.
    """

    def __init__(self, app: ASGIApp, *, keys: ApiKeys, limiter: RateLimiter | None) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            headers = _headers(scope)
            key = bearer_or_header(
                headers.get("authorization"), headers.get(API_KEY_HEADER.lower())
            )
            kid = self.keys.authenticate(key)
            scope.setdefault("state", {})["key_id"] = kid
            if self.limiter is not None:
                # Per key when keys are on; per client address otherwise.
                self.limiter.check(kid or f"ip:{_client_host(scope)}")
        except GatewayError as exc:
            await respond_in_scope(exc, scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Refuse HTTP request bodies larger than `max_bytes` (413 `upload_too_large`).

    A declared `Content-Length` over the cap is answered here before any body is read;
    chunked or lying uploads are counted chunk by chunk as the app pulls them from `receive`,
    and refused at the first byte over the cap (raised into the app, whose exception handler
    answers). Either way the rest is never buffered.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1. Received: max_bytes={max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_bytes:
                raise UploadTooLarge(
                    f"upload is {declared} bytes; the limit is {self.max_bytes} bytes"
                )
        except GatewayError as exc:
            await respond_in_scope(exc, scope)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge(
                        f"upload exceeds the limit of {self.max_bytes} bytes "
                        f"(received {seen} so far)"
                    )
            return message

        await self.app(scope, limited_receive, send)


def access_log(
    scope: Scope, status: int, duration_s: float, request_id: str, key_id: str | None
) -> None:
    """One line per HTTP request on `service.access`: method, path, status, duration, ids.

    No query string (it is the client's, not ours to keep), never the key nor the body.
    Successful probes and scrapes (`/livez`, `/readyz`, `/metrics`) log at DEBUG: an
    orchestrator polls them every few seconds and would drown the real traffic."""
    path = scope.get("path", "")
    level = logging.DEBUG if status < 400 and path in _QUIET_PATHS else logging.INFO
    if len(path) > _MAX_LOGGED_PATH:
        path = path[:_MAX_LOGGED_PATH] + "..."
    access_logger.log(
        level,
        "%s %s %d %.1fms request_id=%s key_id=%s",
        scope.get("method", "-"),
        path.encode("unicode_escape").decode("ascii"),  # no control characters in the log
        status,
        duration_s * 1000,
        request_id,
        key_id or "-",
    )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                raise BadRequest(
                    f"Content-Length must be a non-negative integer. Received: {text!r}"
                )
            return int(text)
    return None
