"""THE mapping from any exception to the gateway's JSON error response.

    exception --as_gateway_error--> GatewayError --error_response--> JSONResponse
                                                                     status   = err.status
                                                                     headers  = Retry-After on
                                                                                429/503, Allow on 405
                                                                     body     = {"error", "detail",
                                                                                 "request_id"}

Every place that answers an error uses it: the app's exception handlers (errors raised by
routes, request validation and routing), and the middleware (refusals before the app runs,
and the last-resort 500 for a bug). A `GatewayError` maps to itself; FastAPI's and Starlette's
own exceptions map to the matching code; anything else is a bug: 500 `internal_error`, logged
with its traceback under the request id, never shown to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from service.errors import (
    BadRequest,
    ClientClosedRequest,
    GatewayError,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
)

log = logging.getLogger("service")

# The exception types the app registers `handle_exception` for (a route's, validation's and
# routing's errors); the middleware catches everything else that escapes.
HANDLED: tuple[type[Exception], ...] = (
    GatewayError,
    RequestValidationError,
    StarletteHTTPException,
    ClientDisconnect,
)


def as_gateway_error(exc: BaseException) -> GatewayError:
    """The `GatewayError` an exception stands for (a bare GatewayError, 500, for a bug)."""
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


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    """The response for `exc`: status, headers (Retry-After, Allow) and the JSON error body."""
    return _response(exc, as_gateway_error(exc), request_id)


def respond_in_scope(exc: BaseException, scope: Scope) -> JSONResponse:
    """`error_response` for the request in `scope`; records the error code for the metrics.

    The request id and the error code live in the ASGI scope's state (set and read by
    `service.middleware.context.RequestContext`), so a refusal anywhere is counted and logged once.
    """
    err = as_gateway_error(exc)
    ctx = scope.setdefault("state", {})
    ctx["error_code"] = err.code
    return _response(exc, err, ctx.get("request_id"))


def _response(exc: BaseException, err: GatewayError, request_id: str | None) -> JSONResponse:
    if type(err) is GatewayError:  # a bug, not the client's fault: log it, show no traceback
        log.error("unhandled error (request_id=%s)", request_id, exc_info=exc)
    headers = err.headers()
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        headers = {**exc.headers, **headers}  # e.g. Allow on 405
    return JSONResponse(err.body(request_id), status_code=err.status, headers=headers)


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    """The app's exception handler for every type in `HANDLED`."""
    return respond_in_scope(exc, request.scope)
