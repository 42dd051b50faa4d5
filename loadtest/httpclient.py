"""A minimal, callback-driven HTTP/1.1 keep-alive client for load generation.

General-purpose clients spend more CPU per request than the servers we measure, which makes
the generator the bottleneck. Here a request is one `transport.write` of pre-encoded bytes
on a pooled `asyncio.Protocol` connection, and the response is parsed in `data_received`
with a few byte searches (status line, `Content-Length` / chunked framing,
`Connection: close`, `Server-Timing`; bodies are skipped). Completion calls a plain callback:
no task, future or timer per request. Deadlines are enforced by `expire()`, which the engine
calls from one watchdog task.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
from collections import deque
from collections.abc import Callable
from time import perf_counter as now  # one system-wide clock (CLOCK_MONOTONIC) for all workers
from typing import Any, cast

IDLE_REUSE_S = 4.0  # servers close idle keep-alive connections (uvicorn after 5 s)
MAX_HEAD = 65536
# Connection attempts in flight at once. A generator that fell behind (preempted, or a server
# stall) has a burst of due requests; opening a connection for each at once overflows the
# server's listen backlog, dropped SYNs are retried after 1 s, and the run collapses into
# seconds-long latencies. Requests beyond this wait (counted) for a connection instead.
MAX_CONNECTING = 32

MAX_ERROR_BODY = 1024  # bytes of a non-2xx body passed on (the gateway's JSON error fits)

# done(due, sent, done, status, ok, error, server_timing, detail): `error` names a transport
# failure (error_kind), `detail` is the server's own text for a failed request (a non-2xx
# body, gRPC status details), None otherwise.
DoneFn = Callable[
    [float, float, float, Any, bool, "str | None", "bytes | None", "bytes | str | None"], None
]


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response."""


class _Closed(Exception):
    """The connection closed before the whole response arrived."""


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


def _header(head: bytes, low: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (b"\\r\\nname:", lower case), or None; repeats joined."""
    i = low.find(name)
    if i < 0:
        return None
    values = []
    while i >= 0:
        j = low.find(b"\r\n", i + len(name))
        values.append(head[i + len(name) : j if j >= 0 else len(head)].strip())
        i = low.find(name, j) if j >= 0 else -1
    return values[0] if len(values) == 1 else b", ".join(values)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.dropped = False  # counted out of the pool already
        self.keep_alive = True
        self.idle_since = 0.0
        self.cb: DoneFn | None = None
        self.due = self.sent = 0.0
        self.deadline = math.inf
        self._head_end = -1
        self._status = 0
        self._timing: bytes | None = None
        self._length: int | None = None
        self._chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.cb is not None:
            if self._head_end >= 0 and self._length is None and not self._chunked:
                self._finish(len(self.buf))  # body delimited by close
            else:
                self.fail(error_kind(exc if isinstance(exc, OSError) else _Closed()))

    def begin(self, payload: bytes, due: float, deadline: float, cb: DoneFn) -> None:
        assert self.transport is not None
        self.cb, self.due, self.deadline = cb, due, deadline
        self._head_end = -1
        self.sent = now()
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.cb is None:
            return
        try:
            self._parse()
        except (ProtocolError, ValueError):
            self.fail("protocol_error")

    def _parse(self) -> None:
        buf = self.buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                return
            self._read_head(bytes(buf[:end]))
            self._head_end = end + 4
        if self._chunked:
            end = self._chunked_end()
            if end >= 0:
                self._finish(end)
        elif self._length is not None and len(buf) >= self._head_end + self._length:
            self._finish(self._head_end + self._length)

    def _read_head(self, head: bytes) -> None:
        if head[:7] != b"HTTP/1." or head[8:9] != b" " or not head[9:12].isdigit():
            raise ProtocolError(f"bad status line {head[:60]!r}")
        self._status = int(head[9:12])
        low = head.lower()
        length = _header(head, low, b"\r\ncontent-length:")
        self._length = int(length) if length is not None else None
        te = _header(head, low, b"\r\ntransfer-encoding:")
        self._chunked = te is not None and b"chunked" in te.lower()
        self._timing = _header(head, low, b"\r\nserver-timing:")
        conn = _header(head, low, b"\r\nconnection:")
        self.keep_alive = head[7:8] == b"1" and (conn is None or b"close" not in conn.lower())
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
        done = now()
        ok = 200 <= self._status < 300
        detail = (
            None
            if ok
            else bytes(self.buf[self._head_end : min(end, self._head_end + MAX_ERROR_BODY)])
        )
        if end >= len(self.buf):
            self.buf.clear()
        else:
            del self.buf[:end]
        cb, due, sent, status = self.cb, self.due, self.sent, self._status
        assert cb is not None
        self.cb = None
        self.pool.release(self)  # may start the next waiting request on this connection
        cb(due, sent, done, status, ok, None, self._timing, detail)

    def fail(self, kind: str) -> None:
        """End the request in flight with a transport error and drop the connection."""
        cb, due, sent = self.cb, self.due, self.sent
        self.cb = None
        self.pool.discard(self)
        if cb is not None:
            cb(due, sent, now(), None, False, kind, None, None)


class HttpPool:
    """Keep-alive connections to one host:port, at most `max_connections` at a time.

    A request that finds every connection busy waits in a FIFO; it is counted in `waits`
    because in open loop that waiting is part of its (due-based) latency.
    """

    def __init__(self, host: str, port: int, *, max_connections: int, connect_timeout: float):
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()
        self._pending: deque[tuple[bytes, float, float, float, DoneFn]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0
        self._connecting = 0
        self.waits = 0

    async def _connect(self) -> _Conn:
        async with asyncio.timeout(self.connect_timeout):
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return conn

    async def check(self) -> None:
        """Open and close one connection: raises OSError/TimeoutError if unreachable."""
        conn = await self._connect()
        assert conn.transport is not None
        conn.transport.close()

    def request(self, payload: bytes, due: float, deadline: float, cb: DoneFn) -> None:
        """Send `payload` now, or as soon as a connection is free; `cb` gets the outcome."""
        t = now()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or t - conn.idle_since > IDLE_REUSE_S:
                self.discard(conn, reopen=False)
                continue
            self._busy.add(conn)
            conn.begin(payload, due, deadline, cb)
            return
        self._pending.append((payload, due, deadline, t, cb))
        if not self._grow():
            self.waits += 1

    def _grow(self) -> bool:
        """Open one more connection if requests wait for one and both caps allow it."""
        if (len(self._pending) <= self._connecting or self._open >= self.max_connections
                or self._connecting >= MAX_CONNECTING):  # fmt: skip
            return False
        self._open += 1
        self._connecting += 1
        task = asyncio.ensure_future(self._connect_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _connect_one(self) -> None:
        try:
            conn = await self._connect()
        except (OSError, TimeoutError) as exc:
            self._open -= 1
            self._connecting -= 1
            if self._pending:  # the request that asked for this connection fails
                _, due, _, queued, cb = self._pending.popleft()
                cb(due, queued, now(), None, False, error_kind(exc), None, None)
            self._grow()
            return
        self._connecting -= 1
        self.release(conn)
        while self._grow():  # a burst still waiting: keep opening, MAX_CONNECTING at a time
            pass

    def release(self, conn: _Conn) -> None:
        """A connection became free: give it to the oldest waiting request, or park it."""
        if conn.closed or not conn.keep_alive:
            self.discard(conn)
            return
        t = now()
        pending = self._pending
        while pending:
            payload, due, deadline, queued, cb = pending.popleft()
            if deadline <= t:
                cb(due, queued, t, None, False, "timeout", None, None)
                continue
            self._busy.add(conn)
            conn.begin(payload, due, deadline, cb)
            return
        self._busy.discard(conn)
        conn.idle_since = t
        self._idle.append(conn)

    def discard(self, conn: _Conn, *, reopen: bool = True) -> None:
        self._busy.discard(conn)
        if conn.dropped:
            return
        conn.dropped = True
        if conn.transport is not None:
            conn.transport.close()
        conn.closed = True
        self._open -= 1
        if reopen:
            self._grow()

    def expire(self, t: float) -> None:
        """Fail every request whose deadline has passed (in flight or still waiting)."""
        for conn in [c for c in self._busy if c.deadline <= t and c.cb is not None]:
            conn.fail("timeout")
        pending = self._pending
        while pending and pending[0][2] <= t:
            _, due, _, queued, cb = pending.popleft()
            cb(due, queued, t, None, False, "timeout", None, None)

    def close(self) -> None:
        for conn in [*self._idle, *self._busy]:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        self._busy.clear()
        for task in self._tasks:
            task.cancel()


async def get_once(host: str, port: int, path: str, *, timeout_s: float,
                   limit: int = 1 << 20) -> tuple[int, bytes]:  # fmt: skip
    """One `GET path` on a fresh connection: (status, body), within `timeout_s`.

    For the sweep's `/readyz` and `/v1/models`, not for measuring: HTTP/1.0 with
    `Connection: close`, so the response is never chunked; the body is `Content-Length`
    bytes, or what came before the close (at most `limit` bytes). OSError, TimeoutError or
    ProtocolError when there is no such response.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode(
                    "latin-1"
                )
            )
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = head.split(b" ", 2)
                if not head.startswith(b"HTTP/1.") or len(fields) < 2 or not fields[1].isdigit():
                    raise ProtocolError(f"not an HTTP response: {head[:60]!r}")
                length = _header(head, head.lower(), b"\r\ncontent-length:")
                if length is not None and length.isdigit() and int(length) <= limit:
                    body = await reader.readexactly(int(length))
                else:  # delimited by the close
                    body = b""
                    while len(body) < limit and (chunk := await reader.read(limit - len(body))):
                        body += chunk
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise ProtocolError("the response ended early or its head is too large") from exc
        finally:
            writer.close()
    return int(fields[1]), body
