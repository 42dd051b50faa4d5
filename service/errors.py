"""The gateway's one error tree, and its one mapping to HTTP status + JSON body.

    GatewayError (500 internal_error)
     +-- BadRequest (400)
     |    +-- EmptyImage          empty_image
     |    +-- NotAnImage          not_an_image
     |    +-- TruncatedImage      truncated_image
     |    +-- ZeroSizedImage      zero_sized_image
     |    +-- UnsupportedFormat   unsupported_format
     |    +-- TooManyImages       too_many_images
     |    +-- BadBase64           bad_base64
     +-- Unauthorized (401)       unauthorized
     +-- Forbidden (403)          forbidden             (the admin API is off: no admin_keys)
     +-- RequestTimeout (408)     request_timeout       (head or body not received in time)
     +-- NotFound (404)           not_found
     |    +-- ModelNotFound       model_not_found
     |    +-- VersionNotFound     version_not_found     (?version=N not served now)
     |    +-- LabelNotFound       label_not_found       (?label=L not set on the model server)
     +-- MethodNotAllowed (405)   method_not_allowed
     +-- PayloadTooLarge (413)
     |    +-- UploadTooLarge      upload_too_large     (bytes, checked while streaming)
     |    +-- ImageTooLarge       image_too_large      (pixels, checked before decoding)
     |    +-- ImageTooComplex     image_too_complex    (decode cost, e.g. JPEG scans, ditto)
     +-- UnsupportedMediaType (415) unsupported_media_type
     +-- InvalidParameter (422)   invalid_parameter
     +-- RateLimited (429)        rate_limited          (+ Retry-After)
     +-- HeadersTooLarge (431)    headers_too_large     (request line + headers, or their count)
     +-- Unavailable (503)        (+ Retry-After)
     |    +-- QueueFull           queue_full
     |    +-- BackendUnavailable  backend_unavailable
     |    +-- CircuitOpen         circuit_open
     |    +-- NotReady            not_ready
     |    +-- VersionGone         version_unloaded      (the version a batch was sent to went
     |                                                   away; retried once on the current one)
     |    +-- ShuttingDown        shutting_down
     |    +-- TooManyConnections  too_many_connections (max_connections, refused on accept)
     |    +-- MemoryFull          memory_full           (request bodies held past the budget)
     +-- DeadlineExceeded (504)   deadline_exceeded
     +-- BackendError (502)       backend_error         (the model server answered with an error)
     +-- BackendStartupError (500) backend_startup      (the model cannot be served: reported on
     |                                                   /readyz and in the log, not to clients)
     +-- ClientClosedRequest (499) client_closed_request (the client left before its body was read;
                                                          nobody reads the answer, logs and metrics do)

Body: `{"error": "<code>", "detail": "<one line>", "request_id": "<id>"}`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from contract.errors import ResnetServingError

DEFAULT_RETRY_AFTER_S = 1  # for a 429/503 raised where the settings' retry_after_s is not known


class GatewayError(ResnetServingError):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    # Refused before its body was read: the connection cannot carry another request.
    closes_connection: ClassVar[bool] = False

    def __init__(self, detail: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if request_id:
            out["request_id"] = request_id
        return out

    def headers(self) -> dict[str, str]:
        retry = self.retry_after_s
        if retry is None and self.status in (429, 503):
            retry = DEFAULT_RETRY_AFTER_S  # every 429 and 503 tells the client when to come back
        headers = {"Retry-After": str(retry)} if retry is not None else {}
        if self.closes_connection:
            headers["Connection"] = "close"
        return headers


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class EmptyImage(BadRequest):
    code = "empty_image"


class NotAnImage(BadRequest):
    code = "not_an_image"


class TruncatedImage(BadRequest):
    code = "truncated_image"


class ZeroSizedImage(BadRequest):
    code = "zero_sized_image"


class UnsupportedFormat(BadRequest):
    code = "unsupported_format"


class TooManyImages(BadRequest):
    code = "too_many_images"


class BadBase64(BadRequest):
    code = "bad_base64"


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"
    closes_connection = True


class NotFound(GatewayError):
    status, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class LabelNotFound(NotFound):
    code = "label_not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status, code = 413, "payload_too_large"


class UploadTooLarge(PayloadTooLarge):
    code = "upload_too_large"
    closes_connection = True


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


class ImageTooComplex(PayloadTooLarge):
    code = "image_too_complex"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(GatewayError):
    status, code = 422, "invalid_parameter"


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"


class HeadersTooLarge(GatewayError):
    status, code = 431, "headers_too_large"


class Unavailable(GatewayError):
    status, code = 503, "unavailable"


class QueueFull(Unavailable):
    code = "queue_full"


class BackendUnavailable(Unavailable):
    code = "backend_unavailable"


class CircuitOpen(Unavailable):
    code = "circuit_open"


class NotReady(Unavailable):
    code = "not_ready"


class VersionGone(Unavailable):
    """The model server no longer serves the version a call was pinned to (TF Serving:
    NOT_FOUND `Servable not found for request: Specific(name, v)`, after it unloaded it)."""

    code = "version_unloaded"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class TooManyConnections(Unavailable):
    code = "too_many_connections"


class MemoryFull(Unavailable):
    code = "memory_full"
    closes_connection = True


class DeadlineExceeded(GatewayError):
    status, code = 504, "deadline_exceeded"


class BackendError(GatewayError):
    status, code = 502, "backend_error"


class ClientClosedRequest(GatewayError):
    status, code = 499, "client_closed_request"  # nginx's code: not our error, nor the client's bug


class BackendStartupError(GatewayError):
    """The backend cannot serve: model missing, unloadable, or not matching its manifest."""

    code = "backend_startup"
