"""The classify lane: `POST` to the classify routes goes straight to its handler.

FastAPI's router, dependency injection and its inner middleware (exception handling, the
exit stack) cost about 60 us of CPU per request on our 2-core machine, more than reading the
request does; on the hot path of a gateway that must keep a GPU busy that is a tenth of its
budget (benchmarks/README.md, "Where a gateway request's CPU went"). This innermost middleware
answers `POST /v1/classify` and `POST /v1/models/{name}/classify` itself, with the same
handler (`service.routes.classify_request` runs the routes' own `_classify`), the query
parameters read by FastAPI's own validation on the routes' own declarations
(`service.routes.query_params_of`), and the same error mapping (`service.error_responses`);
it names the matched route and its path parameters in the scope as the router would.

It must never answer differently from the router, so whatever it is not sure of goes on to
FastAPI: any other path or method (404, 405), a query parameter that fails validation (FastAPI
answers the 422 with its own words), an app mounted under a `root_path`. FastAPI's route
declarations stay the OpenAPI schema of these two; tests/service/test_lane.py compares the two
paths' answers, status and body, over a table of classify URLs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.error_responses import HANDLED, respond_in_scope

Handler = Callable[[Request, str | None, dict[str, Any]], Awaitable[Response]]
Params = Callable[[APIRoute, Request], dict[str, Any] | None]

_PREFIX, _SUFFIX = "/v1/models/", "/classify"


class ClassifyLane:
    """Answers the two classify routes of `router` with `handler`, past FastAPI's routing."""

    def __init__(
        self, app: ASGIApp, *, router: APIRouter, handler: Handler, params: Params
    ) -> None:
        self.app = app
        self.handler = handler
        self.params = params
        by_path = {r.path: r for r in router.routes if isinstance(r, APIRoute)}
        self.plain = by_path["/v1/classify"]
        self.named = by_path["/v1/models/{name}/classify"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        name: str | None = None
        if path == "/v1/classify":
            route = self.plain
        elif path.startswith(_PREFIX) and path.endswith(_SUFFIX) and _segment(path):
            name = path[len(_PREFIX) : -len(_SUFFIX)]
            route = self.named
        else:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        params = self.params(route, request)
        if params is None:  # invalid query: FastAPI's validation answers it
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {"name": name} if name is not None else {}
        try:
            response = await self.handler(request, name, params)
        except HANDLED as exc:  # what FastAPI's exception handlers would answer
            response = respond_in_scope(exc, scope)
        await response(scope, receive, send)


def _segment(path: str) -> bool:
    """`{name}` matches one non-empty path segment, as FastAPI's path parameter does."""
    name = path[len(_PREFIX) : -len(_SUFFIX)]
    return bool(name) and "/" not in name
