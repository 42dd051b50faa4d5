"""The gateway's ASGI middleware, one module per concern, and the one place that orders them.

Outermost first (`stack` returns this list; `service.app` hands it to FastAPI as is):

    RequestContext   context.py  X-Request-ID in and out, latency and error metrics, the
                                 access log line, the last-resort 500 for a bug
    [CORS]           Starlette's CORSMiddleware, only when `cors_allow_origins` is set
    AccessGuard      access.py   `/v1/` only: API key (401; 429 after too many wrong keys
                                 from one address), per-client rate limit (429)
    BodyGuard        limits.py   the request body: over `max_upload_bytes` (413), slower than
                                 `body_timeout_s` + 1 s per `body_min_rate` bytes (408), or
                                 past the process's `max_inflight_body_bytes` (503)
    ClassifyLane     lane.py     `POST` to the classify routes: straight to their handler,
                                 past FastAPI's router (~60 us a request)
    (FastAPI)        its ExceptionMiddleware answers what routes raise, then the router

Why this order: everything inside RequestContext is timed, counted and logged with the
request id; the refusals (401, 429, 413, 408, 503) sit inside CORS so a browser can read them, and come
before the app reads a byte of the body; the lane comes last, so every guard applies to it.
AccessGuard is left out when it has nothing to check (no keys, no rate limit). Each class is pure ASGI: no BaseHTTPMiddleware, whose
`call_next` starts a task group and a memory stream per request (Kludex/starlette#1678). Each
answers its refusals through `service.error_responses`, the one mapping, and leaves what it
learns for the others in the scope's state (`request_id`, `key_id`, `error_code`). A new
middleware goes into a module named after its concern, and into `stack` where that concern
belongs, with a line in the list above.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from service import routes
from service.auth import API_KEY_HEADER, ApiKeys
from service.memory import BodyBudget, HeapTrimmer
from service.metrics import GatewayMetrics
from service.middleware.access import AccessGuard
from service.middleware.context import REQUEST_ID_HEADER, RequestContext
from service.middleware.lane import ClassifyLane
from service.middleware.limits import BodyGuard
from service.ratelimit import RateLimiter
from service.settings import Settings

__all__ = ["AccessGuard", "BodyGuard", "ClassifyLane", "RequestContext", "stack"]


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
    failures = (
        RateLimiter(
            rate_per_s=settings.auth_failures_per_min / 60.0,
            burst=settings.auth_failures_per_min,
        )
        if settings.auth_failures_per_min > 0
        else None
    )
    access = (
        [
            Middleware(
                AccessGuard, keys=ApiKeys(settings.api_keys), limiter=limiter, failures=failures
            )
        ]
        if settings.api_keys or limiter is not None  # wrong-key throttling needs keys
        else []
    )
    return [
        Middleware(RequestContext, metrics=metrics),
        *cors,
        *access,
        Middleware(
            BodyGuard,
            max_bytes=settings.max_upload_bytes,
            budget=BodyBudget(
                settings.max_inflight_body_bytes,
                retry_after_s=settings.retry_after_s,
                trimmer=HeapTrimmer(),
            ),
            timeout_s=settings.body_timeout_s,
            min_rate=settings.body_min_rate,
        ),
        Middleware(
            ClassifyLane,
            router=routes.router,
            handler=routes.classify_request,
            params=routes.query_params_of,
        ),
    ]
