"""The outermost middleware: request ids, latency and error metrics, the access log line.

`RequestContext` gives every HTTP request an id (the client's `X-Request-ID` if it is sane,
else a new one), sends it back on the response, times the request, counts it in the metrics
by route, status and error code, writes the access log line, and answers with a 500 when an
exception escaped everything inside it (a bug: logged with its traceback, never shown).

`access_log` writes one line per request on the `service.access` logger: method, path, status,
duration, request id and key id. Never the key itself, never the body.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_responses import respond_in_scope
from service.metrics import GatewayMetrics

log = logging.getLogger("service")
access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
_MAX_LOGGED_PATH = 200  # a hostile path must not make one log line arbitrarily long


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


def access_log(
    scope: Scope, status: int, duration_s: float, request_id: str, key_id: str | None
) -> None:
    """One INFO line per HTTP request (no query string: it is the client's, not ours to keep).

    Successful probes and scrapes (`/livez`, `/readyz`, `/metrics`) log at DEBUG: an
    orchestrator polls them every few seconds and would drown the real traffic."""
    path = scope.get("path", "")
    level = logging.DEBUG if status < 400 and path in _QUIET_PATHS else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
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
