"""ASGI middleware for access to the API: API keys and per-client rate limits.

`AccessGuard` checks the API (`/v1/...`) only: health, readiness, metrics and the OpenAPI docs
stay open so probes and scrapers need no key. A refused request is answered here, before its
body is read, through the one error mapping (so it carries the request id and, being inside
the CORS middleware, the CORS headers a browser needs to read a 401 or 429). The key id (never
the key) is left in the scope's state for the access log.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import API_KEY_HEADER, ApiKeys, bearer_or_header
from service.error_responses import respond_in_scope
from service.errors import GatewayError
from service.ratelimit import RateLimiter

PROTECTED_PREFIX = "/v1/"


class AccessGuard:
    """401 without a valid key (when keys are configured); 429 past the client's rate."""

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


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
