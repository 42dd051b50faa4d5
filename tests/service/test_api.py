"""The HTTP API over real uvicorn + httpx, with a Backend double where failures must be staged.

The double is the only fake: decode, batcher, middleware, metrics and routing are real. The
real backends are exercised in test_integration.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from prometheus_client.parser import text_string_to_metric_families

from contract.manifest import InputSpec, Manifest
from service.app import create_app
from service.errors import BackendUnavailable
from service.routes import top_k_indices
from service.schemas import ClassifyResponse, json_bytes_response
from service.settings import Settings
from service.state import state_of
from tests.service.conftest import LABELS, MODEL_NAME, SIDE, OneVersion, gateway_settings, png
from tests.service.conftest import serving as serve_app

MANIFEST = Manifest(
    model_name=MODEL_NAME,
    model_version=3,
    architecture="double",
    input=InputSpec(height=SIDE, width=SIDE),
    labels=LABELS,
)


@dataclass
class DoubleBackend(OneVersion):
    """Answers a fixed distribution per image: class = first pixel's red value mod classes."""

    name: str = "double"
    breaker: None = None  # in-process, like the embedded backend
    gate: threading.Event = field(default_factory=threading.Event)
    fail: BaseException | None = None
    is_ready: bool = True
    calls: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def manifest(self) -> Manifest:
        return MANIFEST

    async def start(self) -> None: ...

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        self.gate.set()

    async def predict(self, images: np.ndarray, *, timeout_s: float, **_: object) -> np.ndarray:
        self.calls += 1
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 10)
        if self.fail is not None:
            raise self.fail
        out = np.full((images.shape[0], len(LABELS)), 0.01, np.float32)
        out[np.arange(len(images)), images[:, 0, 0, 0] % len(LABELS)] = 0.91
        return out


@pytest.fixture(scope="module")
def double() -> DoubleBackend:
    return DoubleBackend()


@pytest.fixture(scope="module")
def api(double: DoubleBackend) -> Iterator[httpx.Client]:
    settings = gateway_settings(Path("unused"), max_wait_ms=1.0, request_timeout_s=1.0)
    with (
        serve_app(create_app(settings, backend=double)) as live,
        httpx.Client(base_url=live.url, timeout=10) as client,
    ):
        yield client


@pytest.fixture(autouse=True)
def _reset(double: DoubleBackend) -> Iterator[None]:
    yield
    double.fail, double.is_ready = None, True
    double.gate.set()


def pixel(value: int) -> bytes:
    return png(np.full((SIDE, SIDE, 3), value, np.uint8))


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["detail"], body
    assert body["request_id"] == r.headers["x-request-id"]
    return body


@pytest.mark.parametrize(
    ("kwargs", "expected_classes"),
    [
        ({"files": [("image", ("a.png", pixel(3), "image/png"))]}, [3]),
        (
            {"files": [("images", (f"{v}.png", pixel(v), "image/png")) for v in (1, 22, 5)]},
            [1, 2, 5],
        ),
        ({"content": pixel(7), "headers": {"content-type": "image/png"}}, [7]),
        (
            {"json": {"images": [base64.b64encode(pixel(v)).decode() for v in (4, 9)]}},
            [4, 9],
        ),
        (
            {"json": {"images": ["data:image/png;base64," + base64.b64encode(pixel(8)).decode()]}},
            [8],
        ),
    ],
    ids=["multipart-one", "multipart-many", "raw-body", "json-base64", "json-data-url"],
)
def test_classify_every_input_kind(
    api: httpx.Client, kwargs: dict[str, Any], expected_classes: list[int]
) -> None:
    r = api.post("/v1/classify", **kwargs)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": MODEL_NAME, "version": 3}
    assert [p["top_k"][0]["class_id"] for p in body["predictions"]] == expected_classes
    first = body["predictions"][0]["top_k"]
    assert len(first) == 5  # settings.default_top_k
    assert first[0]["label"] == LABELS[expected_classes[0]]
    assert first[0]["score"] == pytest.approx(0.91)
    assert set(body["timing_ms"]) == {"decode", "queue", "backend", "total"}
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", r.headers["server-timing"]))
    assert set(timing) == {"decode", "queue", "backend", "total"}


def _unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _urlsafe_unpadded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: base64.encodebytes(d).decode(),  # MIME: lines of 76 characters
        lambda d: base64.b64encode(d).decode().replace("A", "A\r\n", 3),  # CRLF anywhere
        lambda d: base64.urlsafe_b64encode(d).decode(),
        _unpadded,
        _urlsafe_unpadded,
    ],
    ids=["mime-lines", "crlf", "urlsafe", "unpadded", "urlsafe-unpadded"],
)
def test_json_base64_is_read_in_the_forms_clients_send(
    api: httpx.Client, encode: Callable[[bytes], str]
) -> None:
    """Wrapped, URL-safe or unpadded base64 is what `base64` tools and URL-minded clients send;
    each decodes to the same image (the strict form is test_classify_every_input_kind's)."""
    noise = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    noise[0, 0, 0] = 6  # the double's class: the first pixel's red value
    meta = PngInfo()
    meta.add_text("k", "vv")  # 16 bytes more: a length base64 pads
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG", pnginfo=meta)
    data = buf.getvalue()
    strict = base64.b64encode(data)
    text = encode(data)
    assert text != strict.decode()  # each case exercises its own path
    assert len(data) % 3 and b"+" in strict and b"/" in strict and len(strict) > 76
    r = api.post("/v1/classify", json={"images": [text]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["top_k"][0]["class_id"] == 6


def test_top_k_and_named_model_route(api: httpx.Client) -> None:
    r = api.post(
        f"/v1/models/{MODEL_NAME}/classify",
        params={"top_k": 10},
        content=pixel(2),
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    scores = [s["score"] for s in r.json()["predictions"][0]["top_k"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)


def test_unknown_model_and_route_are_404_json(api: httpx.Client) -> None:
    r = api.post(
        "/v1/models/nope/classify", content=pixel(1), headers={"content-type": "image/png"}
    )
    assert "nope" in assert_error(r, 404, "model_not_found")["detail"]
    assert_error(api.get("/v2/whatever"), 404, "not_found")
    assert_error(api.get("/v1/classify"), 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/v1/classify/", f"/v1/models/{MODEL_NAME}/classify/", "/livez/"])
def test_a_trailing_slash_is_a_json_404_not_a_redirect(api: httpx.Client, path: str) -> None:
    """Starlette would answer 307 with an empty body and a Location built from the client's own
    Host header; an API client gets the gateway's JSON error instead."""
    r = api.request(
        "POST" if "classify" in path else "GET", path, content=pixel(1),
        headers={"content-type": "image/png", "host": "evil.example"},
    )  # fmt: skip
    assert "location" not in r.headers
    assert_error(r, 404, "not_found")


def test_request_id_is_echoed_when_sane_and_generated_otherwise(api: httpx.Client) -> None:
    assert api.get("/livez", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == (
        "abc-123"
    )
    generated = api.get("/livez", headers={"x-request-id": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", api.get("/livez").headers["x-request-id"])


def test_models_health_docs(api: httpx.Client, double: DoubleBackend) -> None:
    (model,) = api.get("/v1/models").json()["models"]
    assert model["name"] == MODEL_NAME and model["version"] == 3
    assert model["backend"] == "double" and model["num_labels"] == len(LABELS)
    assert model["input"]["height"] == SIDE and model["batch_buckets"][-1] == 64
    assert api.get("/livez").json() == {"status": "alive"}
    assert api.get("/readyz").status_code == 200
    double.is_ready = False
    r = api.get("/readyz")
    assert_error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    assert api.get("/livez").status_code == 200  # alive is not ready
    assert api.get("/docs").status_code == 200
    assert "/v1/classify" in api.get("/openapi.json").json()["paths"]


def metric_values(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of `/metrics`, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def test_metrics_count_requests_batches_and_errors(api: httpx.Client) -> None:
    """The counters move by what was done: one image classified, one request refused."""
    before = metric_values(api)
    ok = api.post("/v1/classify", content=pixel(1), headers={"content-type": "image/png"})
    refused = api.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"})
    assert (ok.status_code, refused.status_code) == (200, 415)
    after = metric_values(api)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = {"method": "POST", "route": "/v1/classify"}
    assert moved("gateway_request_duration_seconds_count", **route, status="200") == 1
    assert moved("gateway_request_duration_seconds_count", **route, status="415") == 1
    assert moved("gateway_errors_total", code="unsupported_media_type", status="415") == 1
    assert moved("gateway_images_total") == 1
    assert moved("gateway_batch_size_count") == 1 and moved("gateway_batch_size_sum") == 1
    assert moved("gateway_backend_calls_total", backend="double", outcome="ok") == 1
    assert moved("gateway_queue_seconds_count") == 1
    assert moved("gateway_decode_seconds_count") == 1  # the refused body was never decoded
    assert moved("gateway_backend_seconds_count", backend="double") == 1
    assert moved("gateway_backend_seconds_sum", backend="double") > 0
    assert after[("gateway_queue_depth", frozenset())] == 0


def test_backend_unavailable_is_503_with_retry_after(
    api: httpx.Client, double: DoubleBackend
) -> None:
    double.fail = BackendUnavailable("model server down", retry_after_s=7)
    r = api.post("/v1/classify", content=pixel(1), headers={"content-type": "image/png"})
    assert_error(r, 503, "backend_unavailable")
    assert r.headers["retry-after"] == "7"


def test_backend_bug_is_502_and_a_gateway_bug_is_500_without_traceback(
    api: httpx.Client, double: DoubleBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    double.fail = ZeroDivisionError("secret internals")
    r = api.post("/v1/classify", content=pixel(1), headers={"content-type": "image/png"})
    assert "secret" not in assert_error(r, 502, "backend_error")["detail"]

    def bug(*args: object) -> None:
        raise RuntimeError("manifest exploded: secret internals")

    monkeypatch.setattr("service.routes._model_info", bug)
    r = api.get("/v1/models")
    body = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text and body["request_id"]


def test_budget_passed_is_504(api: httpx.Client, double: DoubleBackend) -> None:
    double.gate.clear()  # the backend hangs past request_timeout_s (1 s)
    r = api.post("/v1/classify", content=pixel(1), headers={"content-type": "image/png"})
    assert_error(r, 504, "deadline_exceeded")


def test_full_queue_is_503_at_once_and_others_still_served() -> None:
    double = DoubleBackend()
    settings = gateway_settings(
        Path("unused"), max_batch_size=1, max_queue_images=1, max_wait_ms=0.0, retry_after_s=2
    )
    app = create_app(settings, backend=double)
    with serve_app(app) as live:
        double.gate.clear()
        img = {"content": pixel(1), "headers": {"content-type": "image/png"}}
        batcher = state_of(app).batcher
        assert batcher is not None

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=live.url, timeout=20) as client:
                at_backend = asyncio.create_task(client.post("/v1/classify", **img))
                while double.calls == 0:
                    await asyncio.sleep(0.01)
                queued = asyncio.create_task(client.post("/v1/classify", **img))
                async with asyncio.timeout(10):
                    while batcher.queue_depth == 0:  # it reached the queue
                        await asyncio.sleep(0.01)
                refused = await client.post("/v1/classify", **img)
                double.gate.set()
                return [refused, await at_backend, await queued]

        refused, *served = asyncio.run(scenario())
    assert_error(refused, 503, "queue_full")
    assert refused.headers["retry-after"] == "2"
    assert [r.status_code for r in served] == [200, 200]


def test_not_ready_while_the_backend_starts() -> None:
    class SlowStart(DoubleBackend):
        async def start(self) -> None:
            await asyncio.sleep(30)

    with serve_app(
        create_app(gateway_settings(Path("unused")), backend=SlowStart()), ready=False
    ) as live:
        assert httpx.get(f"{live.url}/livez").status_code == 200
        assert_error(httpx.get(f"{live.url}/readyz"), 503, "not_ready")
        r = httpx.post(
            f"{live.url}/v1/classify", content=pixel(1), headers={"content-type": "image/png"}
        )
        assert_error(r, 503, "not_ready")


# --------------------------------------------------------------- the hot path, kept honest


def test_the_classify_lane_keeps_fastapis_routing_answers(api: httpx.Client) -> None:
    """`service.middleware.lane` answers the two classify routes; FastAPI still answers the
    rest of those paths as before, and the metrics name the route templates."""
    img = {"content": pixel(1), "headers": {"content-type": "image/png"}}
    assert api.post(f"/v1/models/{MODEL_NAME}/classify", **img).status_code == 200
    assert_error(api.post(f"/v1/models/{MODEL_NAME}/x/classify", **img), 404, "not_found")
    assert_error(api.post("/v1/models//classify", **img), 404, "not_found")
    wrong = api.put("/v1/classify", **img)
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    text = api.get("/metrics").text
    assert 'route="/v1/models/{name}/classify",status="200"' in text


def test_a_lone_request_is_not_held_for_a_batching_window(double: DoubleBackend) -> None:
    """The default policy sends an image as soon as a backend call slot is free: a request at
    an idle gateway spends well under the old 5 ms window in the queue (Server-Timing)."""
    default_wait = Settings.model_fields["max_wait_ms"].default
    settings = gateway_settings(Path("unused"), max_wait_ms=default_wait)
    with (
        serve_app(create_app(settings, backend=double)) as live,
        httpx.Client(base_url=live.url, timeout=10) as client,
    ):
        queue_ms = []
        for v in range(7):
            r = client.post("/v1/classify", content=pixel(v), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            queue_ms.append(float(re.search(r"queue;dur=([\d.]+)", r.headers["server-timing"])[1]))
    assert default_wait == 0.0
    assert sorted(queue_ms)[3] < 2.5, queue_ms  # the median; the old policy waited >= 5 ms


@pytest.mark.parametrize("seed", range(20))
def test_top_k_indices_are_a_stable_sort_of_the_best(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.choice([3, 10, 100, 1000]))
    probs = rng.random(n).astype(np.float32)
    if seed % 3 == 0:  # many ties, some of them across the k-th place
        probs = np.round(probs * 4) / 4
    if seed % 7 == 0:
        probs[rng.integers(0, n)] = np.nan
    for k in (1, 5, min(n, 20), n):
        expected = np.argsort(-probs, kind="stable")[:k]
        np.testing.assert_array_equal(top_k_indices(probs, k), expected)


def test_the_classify_answer_is_the_schema_serialised() -> None:
    """The route builds the answer as plain dicts for orjson: the bytes are exactly what the
    pydantic model `ClassifyResponse` would send, so the schema stays the truth."""
    body = {
        "model": {"name": "demo", "version": 3},
        "predictions": [
            {"top_k": [{"label": "star", "class_id": 7, "score": 0.9123456789}]},
            {"top_k": [{"label": "ring", "class_id": 1, "score": 1e-07},
                       {"label": "star", "class_id": 7, "score": 0.0}]},
        ],
        "timing_ms": {"decode": 1.234, "queue": 0.0, "backend": 12.5, "total": 14.001},
    }  # fmt: skip
    ours = json_bytes_response(body, headers={"Server-Timing": "x"}).body
    assert ours == ClassifyResponse.model_validate(body).model_dump_json().encode()
