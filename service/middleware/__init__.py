"""The gateway's ASGI middleware, one module per concern, and the one place that orders them.

Outermost first (`stack` returns this list; `service.app` hands it to FastAPI as is):

    RequestContext   context.py  X-Request-ID in and out, latency and error metrics, the
                                 access log line, the last-resort 500 for a bug
    [CORS]           Starlette's CORSMiddleware, only when `cors_allow_origins` is set
    AccessGuard      access.py   `/v1/` only: API key (401), per-client rate limit (429)
    BodySizeLimit    limits.py   the request body over `max_upload_bytes` (413), declared or
                                 streamed
    (FastAPI)        its ExceptionMiddleware answers what routes raise, then the router

Why this order: everything inside RequestContext is timed, counted and logged with the
request id; the refusals (401, 429, 413) sit inside CORS so a browser can read them, and come
before the app reads a byte of the body. Each class is pure ASGI: no BaseHTTPMiddleware, whose
`call_next` starts a task group and a memory stream per request (Kludex/starlette#1678). Each
answers its refusals through `service.error_responses`, the one mapping, and leaves what it
learns for the others in the scope's state (`request_id`, `key_id`, `error_code`). A new
middleware goes into a module named after its concern, and into `stack` where that concern
belongs, with a line in the list above.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from service.auth import API_KEY_HEADER, ApiKeys
from service.metrics import GatewayMetrics
from service.middleware.access import AccessGuard
from service.middleware.context import REQUEST_ID_HEADER, RequestContext
from service.middleware.limits import BodySizeLimit
from service.ratelimit import RateLimiter
from service.settings import Settings

__all__ = ["AccessGuard", "BodySizeLimit", "RequestContext", "stack"]


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
