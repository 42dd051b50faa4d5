"""ASGI middleware that caps the request body while it streams in.

A declared `Content-Length` over the cap is refused before any body is read; chunked or
lying uploads are counted chunk by chunk as the app pulls them from `receive`, and refused at
the first byte over the cap. Either way the rest is never buffered. A refusal on the declared
length is answered here (inside CORS, like AccessGuard's); one while streaming is raised as
`UploadTooLarge` into the app reading the body, whose exception handler answers it. Both go
through the one error mapping (`service.error_responses`) to the 413 response.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_responses import respond_in_scope
from service.errors import BadRequest, GatewayError, UploadTooLarge


class BodySizeLimit:
    """Refuse HTTP request bodies larger than `max_bytes` (413 `upload_too_large`)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1. Received: max_bytes={max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_bytes:
                raise UploadTooLarge(
                    f"upload is {declared} bytes; the limit is {self.max_bytes} bytes"
                )
        except GatewayError as exc:
            await respond_in_scope(exc, scope)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge(
                        f"upload exceeds the limit of {self.max_bytes} bytes "
                        f"(received {seen} so far)"
                    )
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                raise BadRequest(
                    f"Content-Length must be a non-negative integer. Received: {text!r}"
                )
            return int(text)
    return None
