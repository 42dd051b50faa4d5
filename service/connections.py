"""The HTTP connection layer: the limits uvicorn does not have, applied before any app code.

uvicorn's httptools protocol accepts request heads of any size (httptools even joins a long
header value by repeated concatenation, so its cost grows with the square of the size), lets
a connection that never finishes its head stay open for ever (the keep-alive timer only runs
between requests, and any byte cancels it), and accepts every connection the kernel hands it
until the process runs out of file descriptors. `GuardedHttpToolsProtocol` is that protocol
with three limits, each answered with the gateway's JSON error body and `connection: close`:

- **head size and count** (`max_header_bytes`, `max_headers`): counted as bytes arrive,
  before httptools joins them; 431 `headers_too_large` at the first byte over.
- **head deadline** (`header_timeout_s`): from the moment a connection opens, or a new
  request's first byte arrives, to the end of its head; a client that sent nothing is closed
  quietly, one that sent part of a head gets 408 `request_timeout`.
- **connection cap** (`max_connections`, per process, lowered to what the file-descriptor
  limit allows): a connection beyond it gets 503 `too_many_connections` + Retry-After at once.
- **pipeline depth** (`max_pipelined_requests`): uvicorn parses every request a client has
  pipelined into the bytes it read and queues each one (~1 KB apiece), and reads on after every
  answer, so a client that writes requests without reading answers grows the queue without
  bound (40 MB of `GET`s on 4 connections took a process from 1.1 to 4.1 GB). Past the depth,
  the rest of what the connection sent is dropped unparsed, the requests already queued are
  answered, and the connection closes after the last of them (RFC 9112 9.3.2: a client
  retries pipelined requests a closed connection left unanswered).

The gateway speaks HTTP/1.1 only (`ws="none"`: it has no WebSocket route, so no handshake code
runs). A request asking to `Upgrade` (websocket, h2c) is answered as the plain request it also
is, except one with a body: llhttp treats the bytes after an upgrade head as the new protocol,
never as the body, so such a request would lose its body (uvicorn's default answered a
classify with `Upgrade: h2c` 400 `empty_image`, one with `Upgrade: websocket` never): it gets
400 `bad_request` saying to drop the header.

The limits travel on `GatewayServerConfig`, a `uvicorn.Config` that also pickles to worker
processes. Body deadlines and memory admission are ASGI-level and live in `service.middleware`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import uuid
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import (
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    TooManyConnections,
)

log = logging.getLogger(__name__)

_FD_RESERVE = 64  # descriptors kept for gRPC channels, files, pipes, the listener


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-process limits on connections and request heads (see the module docstring)."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 5.0
    max_connections: int = 2048
    retry_after_s: int = 1
    max_pipelined_requests: int = 16  # queued behind the one being answered, per connection

    def effective_max_connections(self) -> int:
        """`max_connections`, lowered to what this process's file-descriptor limit allows."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - _FD_RESERVE))


class GatewayServerConfig(uvicorn.Config):
    """uvicorn's Config carrying the gateway's connection limits to every worker process."""

    def __init__(self, app: Any, *, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpToolsProtocol, ws="none", **kwargs)
        self.connection_limits = connection_limits


def raw_error(err: GatewayError) -> bytes:
    """A whole HTTP/1.1 error response for `err` with our JSON body, closing the connection."""
    body = json.dumps(err.body(uuid.uuid4().hex), separators=(",", ":")).encode()
    head = [STATUS_LINE[err.status]]
    for name, value in err.headers().items():
        if name.lower() != "connection":  # always closed below
            head.append(f"{name.lower()}: {value}\r\n".encode("latin-1"))
    head.append(b"content-type: application/json\r\n")
    head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(head) + body


class _TooManyHeaders(Exception):
    """Raised from the parser callback; httptools hands it back as the error's context."""


class _UpgradeWithBody(Exception):
    """Raised from the parser callback: an Upgrade request whose body llhttp would drop."""


class _PipelineFull(Exception):
    """Raised from the parser callback when a connection queues too many pipelined requests."""


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request head announces a body (a non-zero Content-Length, or chunked)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
        for name, value in headers
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head size/count limits, a head deadline and a cap."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits = getattr(config, "connection_limits", None)
        self._limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._max_connections = self._limits.effective_max_connections()
        self._refused = False
        self._in_head = True  # waiting for, or reading, a request head
        self._head_bytes = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._pipeline_full = False  # past max_pipelined_requests: nothing more is parsed

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            self._refused = True
            transport.write(raw_error(TooManyConnections(
                f"the gateway holds its limit of {self._max_connections} connections "
                "(max_connections); retry shortly",
                retry_after_s=self._limits.retry_after_s,
            )))  # fmt: skip
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if not self._refused:
            super().eof_received()

    # -- bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self._pipeline_full:
            return
        if self._in_head:
            if self._head_bytes == 0 and self._head_timer is None:
                self._arm_head_timer()  # a new request on a kept-alive connection starts now
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _PipelineFull):
                self._stop_pipeline()
                return
            if isinstance(exc.__context__, _UpgradeWithBody):
                self._refuse(BadRequest(
                    "a request with a body cannot ask to Upgrade (this server speaks HTTP/1.1 "
                    "only): send it without the Upgrade header"
                ))  # fmt: skip
                return
            if isinstance(exc.__context__, _TooManyHeaders):
                self._refuse(HeadersTooLarge(
                    f"request has more than {self._limits.max_headers} header fields "
                    "(max_headers)"
                ))  # fmt: skip
                return
            self._refuse_invalid()
            return
        except httptools.HttpParserUpgrade as upgrade:
            # Not upgraded (ws="none"): the request is answered as plain HTTP, and what follows
            # its head is the next request (httptools has resumed the parser). No warning: any
            # client may send the header. Recursion is bounded by max_pipelined_requests.
            log.debug("ignored the Upgrade header of a request from %s", self.client)
            rest = data[upgrade.args[0] :]
            if rest:
                self.data_received(rest)
            return
        except httptools.HttpParserError:
            self._refuse_invalid()
            return
        if self._in_head and self._head_bytes > self._limits.max_header_bytes:
            self._refuse(HeadersTooLarge(
                f"request line and headers exceed {self._limits.max_header_bytes} bytes "
                "(max_header_bytes)"
            ))  # fmt: skip

    def send_400_response(self, msg: str) -> None:
        """uvicorn's own 400s (malformed requests) with our JSON body too."""
        self._refuse_invalid()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self._limits.max_headers:
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self.parser.should_upgrade() and _declares_body(self.headers):
            raise _UpgradeWithBody
        # uvicorn queues this request when the one before it is not answered yet.
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy and len(self.pipeline) >= self._limits.max_pipelined_requests:
            raise _PipelineFull
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._pipeline_full:
            self.flow.pause_reading()  # uvicorn resumes after every answer; nothing more is read
        elif not self.transport.is_closing():
            self._in_head = True  # the next head's clock starts with its first byte
            self._head_bytes = 0

    # -- helpers ----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_late)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing sent: an idle connection, closed quietly
            return
        self._refuse(RequestTimeout(
            f"request headers did not arrive within {self._limits.header_timeout_s:g} s "
            f"(header_timeout_s; {self._head_bytes} bytes received)"
        ))  # fmt: skip

    def _stop_pipeline(self) -> None:
        """Too many pipelined requests: read and parse nothing more, answer the queued ones,
        and close after the last (its response says `connection: close`)."""
        self._pipeline_full = True
        self.flow.pause_reading()
        self.cycle.keep_alive = False
        log.info(
            "connection from %s pipelined more than %d requests; closing after those",
            self.client, self._limits.max_pipelined_requests,
        )  # fmt: skip

    def _refuse_invalid(self) -> None:
        self._refuse(BadRequest("invalid HTTP request: the request line or headers do not parse"))

    def _refuse(self, err: GatewayError) -> None:
        self._cancel_head_timer()
        log.info("refused connection from %s: %s %s", self.client, err.status, err.code)
        if not self.transport.is_closing():
            self.transport.write(raw_error(err))
            self.transport.close()
