"""ASGI middleware for access: API keys, per-client rate limits, and the access log line.

`AccessGuard` checks the API (`/v1/...`) only: health, readiness, metrics and the OpenAPI docs
stay open so probes and scrapers need no key. A refused request is answered here, before its
body is read, through the app's one error mapping (so it carries the request id and, being
inside the CORS middleware, the CORS headers a browser needs to read a 401 or 429).

`access_log` writes one line per request on the `service.access` logger: method, path, status,
duration, request id and key id. Never the key itself, never the body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import API_KEY_HEADER, ApiKeys, bearer_or_header
from service.errors import GatewayError
from service.ratelimit import RateLimiter

access_logger = logging.getLogger("service.access")
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})

PROTECTED_PREFIX = "/v1/"
_MAX_LOGGED_PATH = 200  # a hostile path must not make one log line arbitrarily long

ErrorResponder = Callable[[BaseException, str | None], Response]


class AccessGuard:
    """401 without a valid key (when keys are configured); 429 past the client's rate."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        limiter: RateLimiter | None,
        respond: ErrorResponder,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        ctx = scope.setdefault("state", {})
        try:
            headers = _headers(scope)
            key = bearer_or_header(
                headers.get("authorization"), headers.get(API_KEY_HEADER.lower())
            )
            kid = self.keys.authenticate(key)
            ctx["key_id"] = kid
            if self.limiter is not None:
                # Per key when keys are on; per client address otherwise.
                self.limiter.check(kid or f"ip:{_client_host(scope)}")
        except GatewayError as exc:
            ctx["error_code"] = exc.code
            await self.respond(exc, ctx.get("request_id"))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def access_log(
    scope: Scope, status: int, duration_s: float, request_id: str, key_id: str | None
) -> None:
    """One INFO line per HTTP request (no query string: it is the client's, not ours to keep).

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


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
