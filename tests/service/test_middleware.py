"""service.middleware: the order, and each class on its own as a pure ASGI app.

The behaviour through a whole gateway (keys, rate limits, CORS, limits on every input path,
request ids, the access log) is in test_security.py and test_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from service.app import create_app
from service.auth import ApiKeys
from service.errors import UploadTooLarge
from service.memory import BodyBudget
from service.metrics import GatewayMetrics
from service.middleware import AccessGuard, BodyGuard, ClassifyLane, RequestContext, stack
from tests.service.conftest import LiveServer, gateway_settings, serving
from tests.service.test_api import DoubleBackend

ORIGIN = "https://app.example"


@pytest.mark.parametrize(
    ("cors", "keys", "rate", "order"),
    [
        ((), ("k",), 0.0, [RequestContext, AccessGuard, BodyGuard, ClassifyLane]),
        (
            (ORIGIN,),
            ("k",),
            0.0,
            [RequestContext, CORSMiddleware, AccessGuard, BodyGuard, ClassifyLane],
        ),
        ((), (), 5.0, [RequestContext, AccessGuard, BodyGuard, ClassifyLane]),
        # Nothing for AccessGuard to check: it is left out.
        ((), (), 0.0, [RequestContext, BodyGuard, ClassifyLane]),
    ],
)
def test_the_app_uses_the_one_order(
    cors: tuple[str, ...], keys: tuple[str, ...], rate: float, order: list[type]
) -> None:
    settings = gateway_settings(
        Path("unused"), cors_allow_origins=cors, api_keys=keys, rate_limit_per_s=rate
    )
    assert [m.cls for m in stack(settings, GatewayMetrics())] == order
    app = create_app(settings, backend=DoubleBackend())
    assert [m.cls for m in app.user_middleware] == order


# ----------------------------------------------------------- each class as a plain ASGI app


async def _reads_body(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


async def _call(
    app: Any, *, headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/v1/x"
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request through `app` (the body sent in `chunks`); status, headers, body."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "client": ("203.0.113.7", 4711),
        "state": {"request_id": "rid-mw"},
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    head = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


def _guard(app: Any, *, max_bytes: int) -> BodyGuard:
    return BodyGuard(app, max_bytes=max_bytes, budget=BodyBudget(1 << 20), timeout_s=5,
                     min_rate=1 << 20)  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "chunks", "status", "code"),
    [
        ([(b"content-length", b"10")], [b"x" * 10], 200, None),
        ([(b"content-length", b"11")], [b"x" * 11], 413, "upload_too_large"),  # declared
        ([(b"content-length", b"1x")], [b""], 400, "bad_request"),
        ([], [b"x" * 6, b"x" * 4], 200, None),  # chunked, at the limit
    ],
)
async def test_body_size_limit_answers_what_it_can_see_before_the_body(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], status: int, code: str | None
) -> None:
    got, _, body = await _call(_guard(_reads_body, max_bytes=10), headers=headers, chunks=chunks)
    assert got == status
    if code is not None:
        reply = json.loads(body)
        assert reply["error"] == code and reply["request_id"] == "rid-mw"


async def test_body_size_limit_stops_a_streamed_body_at_the_first_byte_over() -> None:
    # Past the limit the refusal is raised into the app reading the body (the gateway's
    # exception handler answers it); the rest of the body is never read.
    limited = _guard(_reads_body, max_bytes=10)
    with pytest.raises(UploadTooLarge, match="received 12 so far"):
        await _call(limited, headers=[], chunks=[b"x" * 6, b"x" * 6, b"never read"])


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/classify", [], 401),
        ("/v1/classify", [(b"x-api-key", b"k1")], 200),
        ("/v1/classify", [(b"authorization", b"Bearer k1")], 200),
        ("/readyz", [], 200),  # probes, metrics and docs need no key
        ("/metrics", [], 200),
    ],
)
async def test_access_guard_checks_the_api_only(
    path: str, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    guard = AccessGuard(_reads_body, keys=ApiKeys(("k1",)), limiter=None)
    got, _, _ = await _call(guard, headers=headers, chunks=[b""], path=path)
    assert got == status


# ------------------------------------------------------------------------- through a gateway


@pytest.fixture(scope="module")
def with_cors() -> Iterator[LiveServer]:
    settings = gateway_settings(Path("unused"), cors_allow_origins=(ORIGIN,))
    with serving(create_app(settings, backend=DoubleBackend())) as live:
        yield live


def test_a_body_refused_on_its_declared_size_is_readable_by_an_allowed_page(
    with_cors: LiveServer,
) -> None:
    """The 413 is answered inside the CORS middleware, like 401 and 429."""
    r = httpx.post(
        f"{with_cors.url}/v1/classify",
        content=b"\0" * (300 * 1024),
        headers={"content-type": "image/png", "origin": ORIGIN},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
    assert r.headers.get("access-control-allow-origin") == ORIGIN
    assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_a_bug_in_the_app_is_a_500_with_the_request_id_and_is_counted() -> None:
    metrics = GatewayMetrics()

    async def buggy(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("secret internals")

    status, head, body = await _call(
        RequestContext(buggy, metrics=metrics), headers=[], chunks=[b""]
    )
    reply = json.loads(body)
    assert status == 500 and reply["error"] == "internal_error"
    assert reply["request_id"] == head["x-request-id"] and b"secret" not in body
    count = metrics.registry.get_sample_value(
        "gateway_errors_total", {"status": "500", "code": "internal_error"}
    )
    assert count == 1
