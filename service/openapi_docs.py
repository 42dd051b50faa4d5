"""What the OpenAPI schema says about bodies the routes read by hand, and about errors.

The classify routes read their body themselves (multipart, one raw image, or JSON base64), so
FastAPI cannot infer it; `CLASSIFY_REQUEST_BODY` documents all three. Every error is the one
JSON body of `service.errors` (`ErrorBody`), documented per status with `error_responses`,
including the `Retry-After` header that every 429 and 503 carries. Schemathesis checks the
running gateway against this schema (tests/service/test_schema_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

# A 1x1 RGB PNG: a valid example image for any model (the gateway resizes to the model's input).
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="Machine-readable code, e.g. `queue_full`.")
    detail: str = Field(description="One line: the rule and the value received.")
    request_id: str | None = Field(
        default=None, description="The X-Request-ID of this request (also in the header)."
    )


_WHEN: dict[int, str] = {
    400: "Not an image, truncated, empty, bad base64, too many images, or a malformed body.",
    401: "An API key is required and none or a wrong one was sent.",
    403: "The admin API is off (no `admin_keys` set).",
    404: "No such model, version or label (or path).",
    413: "The upload is over `max_upload_bytes`, or an image over `max_image_pixels`.",
    415: "A Content-Type other than multipart/form-data, image/* or application/json.",
    422: "A query parameter is out of range (e.g. `top_k`).",
    429: "Over this client's rate limit; retry after `Retry-After` seconds.",
    500: "A bug; the server log has the details under the request id.",
    502: "The model server answered with an error.",
    503: "Overloaded (queue full), not ready, draining, or the model server is down; "
    "retry after `Retry-After` seconds.",
    504: "The request budget (`request_timeout_s`) ran out.",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` entries: `ErrorBody` for each status (and Retry-After on 429/503)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _WHEN[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


# Statuses a classify call can answer besides 200 (404: an unknown ?version= or ?label=).
CLASSIFY_ERRORS = (400, 401, 404, 413, 415, 422, 429, 500, 502, 503, 504)
# Statuses of the other /v1/ routes (key check, rate limit, readiness).
API_ERRORS = (401, 429, 500, 503)

_IMAGES_JSON_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "string",
                "description": "base64, standard or URL-safe, padded or not, line breaks ignored (a data: URL prefix is accepted)",
            },
        }
    },
}

CLASSIFY_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "description": "One or more images, in one of three encodings.",
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "image": {"type": "string", "format": "binary"},
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": _IMAGES_JSON_SCHEMA,
                "example": {"images": [EXAMPLE_PNG_BASE64]},
            },
        },
    }
}


def name_served_model(app: FastAPI, model_name: str) -> None:
    """Make `/openapi.json` give the served model's name as the example of every `{name}`.

    The routes are declared once for any model; only the running app knows which one it
    serves, so the example (which clients and schemathesis use) is filled in here.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            for item in doc.get("paths", {}).values():
                for operation in item.values():
                    for param in operation.get("parameters", ()):
                        if param.get("in") == "path" and param.get("name") == "name":
                            param["example"] = model_name
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
