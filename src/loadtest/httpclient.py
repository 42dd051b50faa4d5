"""A minimal HTTP/1.1 keep-alive client for load generation.

General-purpose clients spend more CPU per request than the servers we measure (httpx
especially), which makes the generator the bottleneck. This one writes pre-encoded request
bytes on a pooled `asyncio.Protocol` connection and parses only what it needs: the status,
`Content-Length` / chunked framing, `Connection: close`, `Server-Timing`. Bodies are skipped.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from time import perf_counter as now  # uvloop's loop.time() ticks in whole ms
from typing import cast

from loadtest.recorder import Outcome

IDLE_REUSE_S = 4.0  # servers close idle keep-alive connections (uvicorn after 5 s)


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response."""


class _Closed(Exception):
    """The connection closed before the whole response arrived."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self._head_end = -1
        self._status = 0
        self._timing: str | None = None
        self._length: int | None = None
        self._chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self._head_end >= 0 and self._length is None and not self._chunked:
                self._finish(len(self.buf))  # body delimited by close
            else:
                self.waiter.set_exception(exc if isinstance(exc, OSError) else _Closed())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except ProtocolError as exc:
                self.waiter.set_exception(exc)

    def send(self, payload: bytes) -> asyncio.Future[tuple[int, str | None]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._head_end = -1
        self.transport.write(payload)
        return self.waiter

    def _parse(self) -> None:
        if self._head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._read_head(bytes(self.buf[:end]).decode("latin-1"))
            self._head_end = end + 4
        if self._chunked:
            end = self._chunked_end()
            if end >= 0:
                self._finish(end)
        elif self._length is not None and len(self.buf) >= self._head_end + self._length:
            self._finish(self._head_end + self._length)

    def _read_head(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:60]!r}")
        self._status = int(parts[1])
        self._timing, self._length, self._chunked = None, None, False
        self.keep_alive = parts[0] == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                self._length = int(value)
            elif name == "transfer-encoding":
                self._chunked = "chunked" in value.lower()
            elif name == "server-timing":
                v = value.strip()
                self._timing = v if self._timing is None else f"{self._timing}, {v}"
            elif name == "connection":
                self.keep_alive = "close" not in value.lower()
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0

    def _chunked_end(self) -> int:
        pos = self._head_end
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return -1
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            except ValueError as exc:
                raise ProtocolError("bad chunk size") from exc
            if size == 0:
                if buf[eol + 2 : eol + 4] == b"\r\n":
                    return eol + 4
                end = buf.find(b"\r\n\r\n", eol + 2)
                return end + 4 if end >= 0 else -1
            pos = eol + 2 + size + 2
            if pos > len(buf):
                return -1

    def _finish(self, end: int) -> None:
        del self.buf[:end]
        assert self.waiter is not None
        self.waiter.set_result((self._status, self._timing))


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a transport failure (the key in `transport_errors`)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, _Closed):
        return "connection_closed"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"os_{errno.errorcode.get(exc.errno, exc.errno)}".lower()
    return type(exc).__name__


class HttpPool:
    """Keep-alive connections to one host:port, at most `max_connections` at a time.

    A request that finds every connection busy waits for one; it is counted in
    `waits` because in open loop that waiting is part of its (due-based) latency.
    """

    def __init__(self, host: str, port: int, *, max_connections: int, connect_timeout: float):
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._open = 0
        self.waits = 0

    async def _connect(self) -> _Conn:
        async with asyncio.timeout(self.connect_timeout):
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    async def check(self) -> None:
        """Open and close one connection: raises OSError/TimeoutError if unreachable."""
        conn = await self._connect()
        assert conn.transport is not None
        conn.transport.close()

    async def _acquire(self) -> _Conn:
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now() - conn.idle_since < IDLE_REUSE_S:
                return conn
            self._discard(conn, reopen=False)
        if self._open >= self.max_connections:
            self.waits += 1
            fut: asyncio.Future[_Conn | None] = loop.create_future()
            self._waiters.append(fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                # Cancelled (timeout) just after being handed a connection: pass it on.
                if fut.done() and not fut.cancelled():
                    handed = fut.result()
                    if handed is None:
                        self._wake_one()
                    else:
                        self._release(handed)
                raise
            if got is not None:
                return got
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # "open a connection yourself"
                return

    def _discard(self, conn: _Conn, *, reopen: bool = True) -> None:
        if conn.transport is not None:
            conn.transport.close()
        self._open -= 1
        if reopen:
            self._wake_one()

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.keep_alive:
            self._discard(conn)
            return
        conn.idle_since = asyncio.get_running_loop().time()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    async def request(self, payload: bytes, deadline: float) -> Outcome:
        """Send one pre-encoded request; never raises for network trouble (see Outcome)."""
        conn: _Conn | None = None
        sent = now()
        try:
            async with asyncio.timeout(max(0.0, deadline - now())):
                conn = await self._acquire()
                sent = now()
                status, timing = await conn.send(payload)
        except (OSError, TimeoutError, _Closed, ProtocolError) as exc:
            if conn is not None:
                self._discard(conn)
            return Outcome(sent=sent, done=now(), error=error_kind(exc))
        except BaseException:
            if conn is not None:
                self._discard(conn)
            raise
        done = now()
        self._release(conn)
        return Outcome(
            sent=sent, done=done, status=str(status), ok=200 <= status < 300, server_timing=timing
        )

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
