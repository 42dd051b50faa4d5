"""Limits before the app: head size and count, the head deadline, the connection cap.

Each test speaks raw HTTP/1.1 to a real uvicorn on 127.0.0.1 running the gateway's protocol,
so it sees exactly what a hostile client sees. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from service.connections import ConnectionLimits, GatewayServerConfig

OK_REQUEST = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"


async def tiny_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Answers 200 "ok" to any HTTP request (lifespan ignored)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def server(**limits: object) -> Iterator[int]:
    """uvicorn with the gateway's connection limits, on an ephemeral port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = GatewayServerConfig(
        tiny_app, connection_limits=ConnectionLimits(**limits),  # type: ignore[arg-type]
        lifespan="off", log_level="warning", timeout_keep_alive=5,
    )  # fmt: skip
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_response(s: socket.socket, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One whole response: status, lower-case headers, body (by content-length)."""
    s.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        body += s.recv(65536)
    return status, headers, body


def closed_within(s: socket.socket, timeout_s: float) -> bool:
    s.settimeout(timeout_s)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_normal_request_passes() -> None:
    with server() as port, connect(port) as s:
        s.sendall(OK_REQUEST)
        assert read_response(s)[0] == 200


def test_a_huge_header_is_refused_at_the_first_bytes_over_the_limit() -> None:
    with server(max_header_bytes=16 * 1024) as port, connect(port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: ")
        t0 = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(64):  # 4 MB offered; the answer comes after ~16 KB
                s.sendall(b"a" * 65536)
        status, headers, body = read_response(s)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"] == "headers_too_large"
        assert "16384 bytes (max_header_bytes)" in json.loads(body)["detail"]
        assert time.monotonic() - t0 < 5
        # The server is still there for everyone else.
        with connect(port) as other:
            other.sendall(OK_REQUEST)
            assert read_response(other)[0] == 200


def test_too_many_header_fields_are_refused() -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    with server(max_headers=20) as port, connect(port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        status, _, body = read_response(s)
        assert status == 431
        assert "more than 20 header fields (max_headers)" in json.loads(body)["detail"]


def test_a_connection_that_sends_nothing_is_closed() -> None:
    with server(header_timeout_s=0.5) as port, connect(port) as s:
        assert closed_within(s, 3.0)


def test_a_half_sent_head_gets_408() -> None:
    with server(header_timeout_s=0.5) as port, connect(port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n")
        status, headers, body = read_response(s, timeout_s=3.0)
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body)["error"] == "request_timeout"


def test_trickling_a_head_does_not_extend_its_deadline() -> None:
    with server(header_timeout_s=0.6) as port, connect(port) as s:
        t0 = time.monotonic()
        for byte in b"GET /ok HTTP/1.1\r\nHost: t\r\n":  # one byte every 0.1 s: 2.8 s in all
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - t0 > 1.5:
                break
        status, _, _ = read_response(s, timeout_s=3.0)
        assert status == 408
        assert time.monotonic() - t0 < 2.0


def test_a_kept_alive_connection_may_idle_between_requests() -> None:
    with server(header_timeout_s=0.3) as port, connect(port) as s:
        s.sendall(OK_REQUEST)
        assert read_response(s)[0] == 200
        time.sleep(0.6)  # longer than the head deadline, shorter than keep-alive (5 s)
        s.sendall(OK_REQUEST)
        assert read_response(s)[0] == 200


def test_connections_beyond_the_cap_are_refused_with_503_and_retry_after() -> None:
    with server(max_connections=3, header_timeout_s=5) as port:
        held = [connect(port) for _ in range(3)]
        time.sleep(0.2)  # let the server accept them
        try:
            with connect(port) as extra:
                status, headers, body = read_response(extra)
                assert status == 503 and headers["retry-after"] == "1"
                assert json.loads(body)["error"] == "too_many_connections"
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        with connect(port) as s:  # room again
            s.sendall(OK_REQUEST)
            assert read_response(s)[0] == 200


def read_until_closed(s: socket.socket, timeout_s: float = 5.0) -> list[tuple[int, dict[str, str]]]:
    """Every response on `s` until the server closes it: each one's status and lower-case
    headers (bodies here are short and never contain a status line)."""
    s.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    out = []
    for block in data.split(b"HTTP/1.1 ")[1:]:
        lines = block.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        out.append((int(lines[0].split()[0]), headers))
    return out


CLOSE_REQUEST = b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def test_a_few_pipelined_requests_are_all_answered_on_a_kept_alive_connection() -> None:
    with server(max_pipelined_requests=4) as port, connect(port) as s:
        s.sendall(OK_REQUEST * 4 + CLOSE_REQUEST)  # one answered, four queued behind it
        assert [status for status, _ in read_until_closed(s)] == [200] * 5


def test_pipelining_past_the_depth_answers_what_was_queued_then_closes() -> None:
    """A client that writes requests without reading answers must not grow the server's
    queue: uvicorn alone parses and queues all of them (~1 KB each), reading on after every
    answer. Past the depth the rest is dropped and the connection closes after the queued."""
    with server(max_pipelined_requests=4) as port, connect(port) as s:
        s.sendall(OK_REQUEST * 2000)
        heads = [headers for _, headers in read_until_closed(s)]
    assert len(heads) == 5, len(heads)  # the one in flight and the four queued
    assert heads[-1]["connection"] == "close"
    assert all("connection" not in h for h in heads[:-1])


WS_HEAD = (b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")  # fmt: skip
H2C_HEAD = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQC\r\n"
)


@pytest.mark.parametrize("upgrade", [WS_HEAD, H2C_HEAD], ids=["websocket", "h2c"])
def test_an_upgrade_without_a_body_is_answered_as_plain_http(upgrade: bytes) -> None:
    """The gateway has no WebSocket route and speaks HTTP/1.1 only: the request is answered,
    and the one pipelined after it too (uvicorn's default: 403 with an empty body for a
    websocket, and the bytes after an h2c head dropped)."""
    with server() as port, connect(port) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nHost: t\r\n" + upgrade + b"\r\n" + CLOSE_REQUEST)
        assert [status for status, _ in read_until_closed(s)] == [200, 200]


@pytest.mark.parametrize("upgrade", [WS_HEAD, H2C_HEAD], ids=["websocket", "h2c"])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
    ids=["content-length", "chunked"],
)  # fmt: skip
def test_an_upgrade_with_a_body_gets_a_json_400(upgrade: bytes, framing: bytes) -> None:
    """llhttp takes the bytes after an upgrade head for the new protocol, never for the body:
    the request would lose its body (a classify got 400 `empty_image`, or no answer at all)."""
    with server() as port, connect(port) as s:
        s.sendall(b"POST /ok HTTP/1.1\r\nHost: t\r\n" + upgrade + framing)
        status, headers, body = read_response(s)
        assert status == 400 and headers["connection"] == "close"
        assert "Upgrade" in json.loads(body)["detail"]


def test_a_malformed_request_gets_a_json_400() -> None:
    with server() as port, connect(port) as s:
        s.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 400 and json.loads(body)["error"] == "bad_request"


@pytest.mark.parametrize("soft", [100, 5000])
def test_the_cap_never_exceeds_what_file_descriptors_allow(
    monkeypatch: pytest.MonkeyPatch, soft: int
) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))
    limits = ConnectionLimits(max_connections=2048)
    assert limits.effective_max_connections() == min(2048, soft - 64)
