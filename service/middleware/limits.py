"""ASGI middleware that bounds a request body: its size, the time it takes, the memory it holds.

- **Size**: a declared `Content-Length` over `max_bytes` is refused before any body is read;
  chunked or lying uploads are counted chunk by chunk as the app pulls them from `receive`,
  and refused at the first byte over (413 `upload_too_large`).
- **Time**: the body must arrive by `timeout_s` after the request began plus one second per
  `min_rate` bytes received, so a large upload on a slow link is fine and a client that
  trickles or stops is not: 408 `request_timeout`, saying how much arrived.
- **Memory**: the declared length (or, for a chunked body, each chunk) is reserved in the
  process-wide `BodyBudget` before it is read, and released when the request ends: past the
  budget, 503 `memory_full` + Retry-After.

A refusal before the body is read is answered here (inside CORS, like AccessGuard's); one
while streaming is raised as a `GatewayError` into the app reading the body, whose exception
handler answers it. Both go through the one error mapping (`service.error_responses`), with
`connection: close`, since the rest of the body is never read.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.error_responses import respond_in_scope
from service.errors import BadRequest, GatewayError, RequestTimeout, UploadTooLarge
from service.memory import BodyBudget


class BodyGuard:
    """Refuse request bodies that are too large, too slow, or that memory cannot hold now."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        budget: BodyBudget,
        timeout_s: float,
        min_rate: float,
    ) -> None:
        if max_bytes < 1 or timeout_s <= 0 or min_rate <= 0:
            raise ValueError(
                "max_bytes, timeout_s and min_rate must be positive. "
                f"Received: {max_bytes=}, {timeout_s=}, {min_rate=}"
            )
        self.app = app
        self.max_bytes = max_bytes
        self.budget = budget
        self.timeout_s = timeout_s
        self.min_rate = min_rate

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
            if declared:
                self.budget.reserve(declared)
        except GatewayError as exc:
            await respond_in_scope(exc, scope)(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        reserved = declared or 0
        seen = 0
        done = False

        async def guarded_receive() -> Message:
            nonlocal seen, reserved, done
            if done:  # body complete: later calls wait for a disconnect, unbounded by us
                return await receive()
            deadline = started + self.timeout_s + seen / self.min_rate
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                expected = f" of {declared}" if declared is not None else ""
                raise RequestTimeout(
                    f"the request body did not arrive in time: {seen}{expected} bytes in "
                    f"{loop.time() - started:.1f} s (body_timeout_s={self.timeout_s:g} plus one "
                    f"second per {self.min_rate:g} bytes)"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise UploadTooLarge(
                        f"upload exceeds the limit of {self.max_bytes} bytes "
                        f"(received {seen} so far)"
                    )
                if seen > reserved:  # chunked, or more than declared: reserve as it comes
                    self.budget.reserve(seen - reserved)
                    reserved = seen
                done = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.budget.release(reserved)


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
