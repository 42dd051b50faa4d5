"""service.error_responses: every kind of exception -> status, code, headers and the JSON body."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from contract.errors import ImageShapeError
from service.error_responses import as_gateway_error, error_response, respond_in_scope
from service.errors import (
    BackendError,
    CircuitOpen,
    ImageTooLarge,
    NotReady,
    QueueFull,
    RateLimited,
    Unauthorized,
)

_TOP_K_INVALID = RequestValidationError(
    [{"loc": ("query", "top_k"), "msg": "Input should be greater than or equal to 1", "input": "0"}]
)


@pytest.mark.parametrize(
    ("exc", "status", "code", "headers"),
    [
        (ImageTooLarge("image too large: 9x9"), 413, "image_too_large", {}),
        (Unauthorized("missing API key"), 401, "unauthorized", {}),
        (BackendError("the model failed"), 502, "backend_error", {}),
        # Every 429 and 503 says when to come back: the value given, else the default of 1 s.
        (QueueFull("full", retry_after_s=4), 503, "queue_full", {"retry-after": "4"}),
        (CircuitOpen("down", retry_after_s=2), 503, "circuit_open", {"retry-after": "2"}),
        (NotReady("starting"), 503, "not_ready", {"retry-after": "1"}),
        (RateLimited("slow down", retry_after_s=3), 429, "rate_limited", {"retry-after": "3"}),
        # FastAPI's and Starlette's own exceptions map to our codes.
        (_TOP_K_INVALID, 422, "invalid_parameter", {}),
        (HTTPException(404, "Not Found"), 404, "not_found", {}),
        (
            HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"}),
            405,
            "method_not_allowed",
            {"allow": "POST"},
        ),
        (HTTPException(400, "Invalid boundary"), 400, "bad_request", {}),
        # A client that left before its body was read (e.g. timed out while we were
        # overloaded): not a bug, no traceback; nobody reads the answer, logs and metrics do.
        (ClientDisconnect(), 499, "client_closed_request", {}),
        # Anything else is our bug.
        (HTTPException(418, "teapot"), 500, "internal_error", {}),
        (ImageShapeError("images must be uint8 [N,8,8,3]"), 500, "internal_error", {}),
        (KeyError("secret internals"), 500, "internal_error", {}),
    ],
)
def test_every_exception_maps_to_one_status_code_and_headers(
    exc: Exception, status: int, code: str, headers: dict[str, str]
) -> None:
    response = error_response(exc, "rid-1")
    body = json.loads(response.body)
    assert response.status_code == status
    assert body["error"] == code and body["request_id"] == "rid-1" and body["detail"]
    assert set(body) == {"error", "detail", "request_id"}
    assert response.headers["content-type"] == "application/json"
    for name, value in headers.items():
        assert response.headers[name] == value
    if not headers:
        assert "retry-after" not in response.headers and "allow" not in response.headers


def test_validation_error_names_the_parameter_and_the_value() -> None:
    err = as_gateway_error(_TOP_K_INVALID)
    assert err.detail == ("top_k: Input should be greater than or equal to 1. Received: top_k='0'")


def test_a_bug_is_logged_with_its_traceback_but_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="service")
    try:
        raise KeyError("secret internals")
    except KeyError as exc:
        response = error_response(exc, "rid-bug")
    assert b"secret internals" not in response.body and b"Traceback" not in response.body
    (record,) = [r for r in caplog.records if r.name == "service"]
    assert "request_id=rid-bug" in record.getMessage() and record.exc_info is not None


def test_client_errors_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="service")
    error_response(QueueFull("full"), "rid")
    error_response(ClientDisconnect(), "rid")
    assert not [r for r in caplog.records if r.name == "service"]


def test_respond_in_scope_uses_the_request_id_and_records_the_code() -> None:
    scope = {"type": "http", "state": {"request_id": "rid-scope"}}
    response = respond_in_scope(Unauthorized("invalid API key"), scope)
    assert json.loads(response.body)["request_id"] == "rid-scope"
    assert scope["state"]["error_code"] == "unauthorized"  # what the metrics count


def test_no_request_id_no_field() -> None:
    assert "request_id" not in json.loads(respond_in_scope(NotReady("x"), {}).body)
