"""The classify lane: `POST` to the classify routes goes straight to its handler.

FastAPI's router, dependency injection and its inner middleware (exception handling, the
exit stack) cost about 60 us of CPU per request on our 2-core machine, more than reading the
request does; on the hot path of a gateway that must keep a GPU busy that is a tenth of its
budget (benchmarks/results/gateway_ceiling.md). This innermost middleware answers
`POST /v1/classify` and `POST /v1/models/{name}/classify` itself, with the same handler
(`service.routes.classify_request`), the same checks and the same error mapping
(`service.error_responses`); it names the matched route in the scope for the metrics as the
router would. Every other request, and any other method on those paths (405), goes on to
FastAPI, whose route declarations stay the OpenAPI schema of these two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.error_responses import HANDLED, respond_in_scope

Handler = Callable[[Request, str | None], Awaitable[Response]]

_PREFIX, _SUFFIX = "/v1/models/", "/classify"


class ClassifyLane:
    """Answers the two classify routes of `router` with `handler`, past FastAPI's routing."""

    def __init__(self, app: ASGIApp, *, router: APIRouter, handler: Handler) -> None:
        self.app = app
        self.handler = handler
        by_path = {r.path: r for r in router.routes if isinstance(r, APIRoute)}
        self.plain = by_path["/v1/classify"]
        self.named = by_path["/v1/models/{name}/classify"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        name: str | None = None
        if path == "/v1/classify":
            scope["route"] = self.plain
        elif path.startswith(_PREFIX) and path.endswith(_SUFFIX) and _segment(path):
            name = path[len(_PREFIX) : -len(_SUFFIX)]
            scope["route"] = self.named
        else:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.handler(Request(scope, receive), name)
        except HANDLED as exc:  # what FastAPI's exception handlers would answer
            response = respond_in_scope(exc, scope)
        await response(scope, receive, send)


def _segment(path: str) -> bool:
    """`{name}` matches one non-empty path segment, as FastAPI's path parameter does."""
    name = path[len(_PREFIX) : -len(_SUFFIX)]
    return bool(name) and "/" not in name
