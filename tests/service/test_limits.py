"""Request bodies: a deadline with a minimum rate, and a memory budget across requests.

Attacks from the hardening review, reproduced with raw sockets against the real app on a real
uvicorn (a Backend double behind it): a trickled body, a Content-Length that never arrives,
and many half-sent large uploads holding the process's memory. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.app import create_app
from service.memory import BodyBudget, HeapTrimmer
from tests.service.conftest import gateway_settings
from tests.service.conftest import serving as serve_app
from tests.service.test_api import DoubleBackend, pixel
from tests.service.test_connections import read_response

BOUNDARY = "b0undary"


def multipart_head(port: int, length: int) -> bytes:
    return (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


PART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


def multipart_body(image: bytes) -> bytes:
    return PART_HEAD + image + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    settings = gateway_settings(
        tmp_path_factory.mktemp("limits"), max_upload_bytes=256 * 1024,
        max_inflight_body_bytes=300 * 1024, body_timeout_s=1.0, body_min_rate=1024 * 1024,
    )  # fmt: skip
    with serve_app(create_app(settings, backend=DoubleBackend())) as live:
        yield int(live.url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_trickled_body_gets_408_at_its_deadline(gateway: int) -> None:
    with connect(gateway) as s:
        s.sendall(multipart_head(gateway, 200_000) + PART_HEAD)
        t0 = time.monotonic()
        s.settimeout(0.05)
        answer = b""
        while time.monotonic() - t0 < 4 and not answer:
            try:
                s.sendall(b"x" * 1000)  # 10 KB/s: the whole body would take 20 s
                answer = s.recv(65536)
            except TimeoutError:
                pass
            except OSError:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        status, headers, body = _parse(answer or s.recv(65536))
    assert status == 408 and headers["connection"] == "close", body
    detail = json.loads(body)["detail"]
    assert "request body did not arrive in time" in detail and "of 200000 bytes" in detail
    assert elapsed < 2.5  # 1 s + 1 s per MiB received (~20 KB): well before the 20 s trickle


def test_a_body_that_never_comes_gets_408(gateway: int) -> None:
    with connect(gateway) as s:
        s.sendall(multipart_head(gateway, 200_000) + PART_HEAD)
        t0 = time.monotonic()
        status, _, body = read_response(s, timeout_s=4)
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert 0.9 < time.monotonic() - t0 < 3


def test_bodies_past_the_memory_budget_get_503_until_it_frees(gateway: int) -> None:
    holder = connect(gateway)
    try:
        holder.sendall(multipart_head(gateway, 200_000) + PART_HEAD)  # reserves 200 of 300 KB
        time.sleep(0.2)
        with connect(gateway) as s:  # another 200 KB would pass the budget: refused at once
            s.sendall(multipart_head(gateway, 200_000))
            status, headers, body = read_response(s)
        assert status == 503 and headers["retry-after"] == "1", body
        assert json.loads(body)["error"] == "memory_full"
        with connect(gateway) as s:  # a small upload still fits beside the held one
            s.sendall(multipart_head(gateway, len(multipart_body(pixel(1)))))
            s.sendall(multipart_body(pixel(1)))
            assert read_response(s)[0] == 200
    finally:
        holder.close()
    time.sleep(1.5)  # the holder's deadline passed and its reservation was released
    with connect(gateway) as s:
        body = multipart_body(pixel(2) + b"\0" * 150_000)  # big, but the budget is free again
        s.sendall(multipart_head(gateway, len(body)) + body)
        assert read_response(s)[0] in (200, 400)  # 400: the padded PNG may be refused as an image


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_the_budget_counts_and_refuses_without_taking() -> None:
    budget = BodyBudget(100)
    budget.reserve(60)
    with pytest.raises(Exception, match="max_inflight_body_bytes=100"):
        budget.reserve(41)
    assert budget.held == 60
    budget.release(60)
    budget.reserve(100)
    assert budget.held == 100


def test_a_drained_budget_that_held_a_lot_trims_the_heap_at_most_once_a_second() -> None:
    now = [0.0]
    trimmer = HeapTrimmer(min_interval_s=1.0, clock=lambda: now[0])
    budget = BodyBudget(1 << 30, trimmer=trimmer)
    for _ in range(3):
        budget.reserve(64 << 20)
        budget.release(64 << 20)
    assert trimmer.trims == (1 if trimmer._trim is not None else 0)
    now[0] = 2.0
    budget.reserve(64 << 20)
    budget.release(64 << 20)
    assert trimmer.trims == (2 if trimmer._trim is not None else 0)


def test_settings_refuse_a_budget_smaller_than_one_upload(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_inflight_body_bytes"):
        gateway_settings(tmp_path, max_upload_bytes=1 << 20, max_inflight_body_bytes=1 << 19)


def test_a_slow_upload_is_blamed_on_the_upload_not_on_decoding(tmp_path: Path) -> None:
    """Issue: a slow upload got 504 'request budget ran out while decoding'. The request's
    budget (1 s here) runs out while its body is still arriving: 408, naming the body."""
    settings = gateway_settings(tmp_path, request_timeout_s=1.0, body_timeout_s=30.0,
                                max_upload_bytes=256 * 1024)  # fmt: skip
    with serve_app(create_app(settings, backend=DoubleBackend())) as live:
        port = int(live.url.rsplit(":", 1)[1])
        with connect(port) as s:
            s.sendall(multipart_head(port, 200_000) + PART_HEAD)
            status, _, body = read_response(s, timeout_s=5)
    assert status == 408, body
    detail = json.loads(body)["detail"]
    assert "request body was not received within the request budget" in detail
    assert "decod" not in detail
