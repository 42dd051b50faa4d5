"""The classify lane answers exactly as FastAPI's router would, for every classify URL.

Two real gateways on uvicorn over the same kind of backend: one as `create_app` builds it,
one with `ClassifyLane` taken out of its middleware (every request through the router). Each
row of the table goes to both; status, the headers a client acts on and the JSON body
(request id and timings aside) must be equal. The lane's handler is counted, so the rows it
must answer (valid query, its two paths, POST) are shown to go through it and the rest
(invalid query, other paths and methods) to go on to FastAPI. Versions, labels, a second model
with fewer classes and every error the classify routes have are in the table.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response

from contract.manifest import InputSpec, Manifest
from service.app import create_app
from service.backends.base import ModelVersions
from service.errors import VersionGone
from service.middleware import ClassifyLane
from tests.service.conftest import LABELS, MODEL_NAME, SIDE, gateway_settings, png
from tests.service.conftest import serving as serve_app


def _manifest(name: str, version: int, labels: tuple[str, ...]) -> Manifest:
    return Manifest(
        model_name=name, model_version=version, architecture="double",
        input=InputSpec(height=SIDE, width=SIDE), labels=labels, top_k=3,
    )  # fmt: skip


OTHER_LABELS = ("x", "y", "z")
CONTRACTS = {
    (MODEL_NAME, 1): _manifest(MODEL_NAME, 1, LABELS),
    (MODEL_NAME, 2): _manifest(MODEL_NAME, 2, LABELS),
    (MODEL_NAME, 3): _manifest(MODEL_NAME, 3, LABELS),
    ("other", 1): _manifest("other", 1, OTHER_LABELS),
}
# gw: v1 stable, v2 canary, v3 newest (served, no label); the label `old` is not followed.
MODEL_LABELS = {MODEL_NAME: {"stable": 1, "canary": 2}, "other": {}}


@dataclass
class VersionsBackend:
    """Serves CONTRACTS; an answer's best class is (first red value + version) mod classes,
    so a body shows which version computed it."""

    name: str = "double"
    breaker: None = None
    calls: list[tuple[str | None, int | None]] = field(default_factory=list)

    async def start(self) -> None: ...

    async def ready(self) -> bool:
        return True

    async def close(self) -> None: ...

    async def versions(self, model: str, labels: tuple[str, ...] = ()) -> ModelVersions:
        states = {v: "AVAILABLE" for (m, v) in CONTRACTS if m == model}
        named = {k: v for k, v in MODEL_LABELS.get(model, {}).items() if k in labels}
        return ModelVersions(states, labels=named)

    async def contract(self, model: str, version: int) -> Manifest:
        return CONTRACTS[(model, version)]

    async def predict(
        self, images: np.ndarray, *, timeout_s: float, model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        self.calls.append((model, version))
        if (model or MODEL_NAME, version or 0) not in CONTRACTS:
            raise VersionGone(f"no {model} v{version}")
        classes = CONTRACTS[(model or MODEL_NAME, version or 1)].num_classes
        out = np.full((images.shape[0], classes), 0.01, np.float32)
        best = (images[:, 0, 0, 0].astype(int) + (version or 0)) % classes
        out[np.arange(len(images)), best] = 0.9
        return out


IMAGE = png(np.full((SIDE, SIDE, 3), 5, np.uint8))
RAW = {"content": IMAGE, "headers": {"content-type": "image/png"}}
B64 = base64.b64encode(IMAGE).decode()
MULTIPART = {"files": {"image": ("a.png", IMAGE)}}

# (id, method, url, request kwargs, answered by the lane)
ROWS: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("plain", "POST", "/v1/classify", RAW, True),
    ("top-k", "POST", "/v1/classify?top_k=3", RAW, True),
    ("top-k-repeated", "POST", "/v1/classify?top_k=2&top_k=4", RAW, True),
    ("top-k-spaces", "POST", "/v1/classify?top_k=%202%20", RAW, True),
    ("top-k-plus", "POST", "/v1/classify?top_k=%2B2", RAW, True),
    ("top-k-float", "POST", "/v1/classify?top_k=2.0", RAW, True),
    ("top-k-zero", "POST", "/v1/classify?top_k=0", RAW, False),
    ("top-k-text", "POST", "/v1/classify?top_k=abc", RAW, False),
    ("top-k-empty", "POST", "/v1/classify?top_k=", RAW, False),
    ("top-k-2.5", "POST", "/v1/classify?top_k=2.5", RAW, False),
    ("top-k-over-classes", "POST", "/v1/classify?top_k=11", RAW, True),
    ("unknown-param", "POST", "/v1/classify?colour=red", RAW, True),
    ("version-1", "POST", "/v1/classify?version=1", RAW, True),
    ("version-2", "POST", "/v1/classify?version=2", RAW, True),
    ("version-3", "POST", "/v1/classify?version=3&top_k=1", RAW, True),
    ("version-not-served", "POST", "/v1/classify?version=9", RAW, True),
    ("version-zero", "POST", "/v1/classify?version=0", RAW, False),
    ("version-text", "POST", "/v1/classify?version=two", RAW, False),
    ("label-stable", "POST", "/v1/classify?label=stable", RAW, True),
    ("label-canary", "POST", "/v1/classify?label=canary", RAW, True),
    ("label-not-followed", "POST", "/v1/classify?label=old", RAW, True),
    ("label-empty", "POST", "/v1/classify?label=", RAW, False),
    ("label-too-long", "POST", "/v1/classify?label=" + "a" * 65, RAW, False),
    ("version-and-label", "POST", "/v1/classify?version=1&label=stable", RAW, True),
    ("three-bad-params", "POST", "/v1/classify?top_k=0&version=x&label=", RAW, False),
    ("named", "POST", f"/v1/models/{MODEL_NAME}/classify", RAW, True),
    ("named-label", "POST", f"/v1/models/{MODEL_NAME}/classify?label=canary", RAW, True),
    ("named-version", "POST", f"/v1/models/{MODEL_NAME}/classify?version=3", RAW, True),
    ("other", "POST", "/v1/models/other/classify", RAW, True),
    ("other-top-k-over", "POST", "/v1/models/other/classify?top_k=5", RAW, True),
    ("other-version-gone", "POST", "/v1/models/other/classify?version=2", RAW, True),
    ("other-no-canary", "POST", "/v1/models/other/classify?label=canary", RAW, True),
    ("unknown-model", "POST", "/v1/models/nope/classify", RAW, True),
    ("unknown-model-bad-k", "POST", "/v1/models/nope/classify?top_k=0", RAW, False),
    ("empty-name", "POST", "/v1/models//classify", RAW, False),
    ("slash-in-name", "POST", "/v1/models/a%2Fb/classify", RAW, False),
    ("trailing-slash", "POST", "/v1/classify/", RAW, False),
    ("get", "GET", "/v1/classify", {}, False),
    ("put-named", "PUT", f"/v1/models/{MODEL_NAME}/classify", RAW, False),
    ("not-an-image", "POST", "/v1/classify", {**RAW, "content": b"junk"}, True),
    ("media-type", "POST", "/v1/classify?top_k=2", {**RAW, "headers": {}}, True),
    ("json-bad", "POST", "/v1/classify", {"json": {"images": [1]}}, True),
    ("json-two", "POST", "/v1/classify?label=canary", {"json": {"images": [B64, B64]}}, True),
    ("multipart", "POST", "/v1/models/other/classify", MULTIPART, True),
]

HEADERS = ("content-type", "retry-after", "allow", "location")


def _comparable(r: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict):
        body.pop("request_id", None)
        body.pop("timing_ms", None)
    headers = {h: r.headers.get(h) for h in HEADERS}
    if headers["location"]:  # a redirect names the server it came from
        headers["location"] = headers["location"].removeprefix(str(r.url.copy_with(path="/")))
    return {
        "status": r.status_code,
        "headers": headers,
        "body": body,
    }


@contextlib.contextmanager
def _gateway(*, lane: bool, handled: list[str]) -> Iterator[httpx.Client]:
    settings = gateway_settings(
        Path("unused"), models=("other",), max_wait_ms=0.0, request_timeout_s=5.0
    )
    app = create_app(settings, backend=VersionsBackend())
    (entry,) = [m for m in app.user_middleware if m.cls is ClassifyLane]
    if lane:  # count what the lane answers itself
        handler: Callable[..., Awaitable[Response]] = entry.kwargs["handler"]

        async def counted(request: Request, name: str | None, params: dict[str, Any]) -> Response:
            handled.append(request.url.path)
            return await handler(request, name, params)

        entry.kwargs["handler"] = counted
    else:  # the router answers everything (the stack is built at the first request)
        app.user_middleware.remove(entry)
    with (
        serve_app(app) as live,
        httpx.Client(base_url=live.url, timeout=10, follow_redirects=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[httpx.Client, httpx.Client, list[str]]]:
    handled: list[str] = []
    with (
        _gateway(lane=True, handled=handled) as with_lane,
        _gateway(lane=False, handled=[]) as router_only,
    ):
        yield with_lane, router_only, handled


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "in_lane"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_the_lane_answers_as_the_router(
    pair: tuple[httpx.Client, httpx.Client, list[str]],
    method: str,
    url: str,
    kwargs: dict[str, Any],
    in_lane: bool,
) -> None:
    with_lane, router_only, handled = pair
    handled.clear()
    ours = with_lane.request(method, url, **kwargs)
    theirs = router_only.request(method, url, **kwargs)
    assert _comparable(ours) == _comparable(theirs), (ours.text, theirs.text)
    assert bool(handled) == in_lane, f"lane answered: {handled}"


def test_every_row_is_answered_and_counted_alike(
    pair: tuple[httpx.Client, httpx.Client, list[str]],
) -> None:
    """The table covers successes and errors of both routes, and the request metrics (route
    template, method, status) and per-version metrics come out the same either way."""
    with_lane, router_only, _ = pair
    statuses = set()
    for _, method, url, kwargs, _ in ROWS:
        statuses.add(with_lane.request(method, url, **kwargs).status_code)
        router_only.request(method, url, **kwargs)
    assert {200, 400, 404, 405, 415, 422} <= statuses, statuses

    def counts(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for s in family.samples:
                if s.name in (
                    "gateway_request_duration_seconds_count",
                    "gateway_errors_total",
                    "gateway_model_requests_total",
                    "gateway_model_top1_total",
                ):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    ours, theirs = counts(with_lane), counts(router_only)
    assert any("/v1/models/{name}/classify" in str(k) for k in ours), ours
    assert ours == theirs
