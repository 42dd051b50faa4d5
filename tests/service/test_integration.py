"""End to end over both real paths, against the Keras model on the same pixels.

httpx -> uvicorn gateway -> embedded backend (TF SavedModel in-process)
httpx -> uvicorn gateway -> tfserving backend -> gRPC -> local stand-in server -> SavedModel
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from contract.manifest import latest_version_dir, read_manifest
from service.decode import DecodeLimits, decode_image
from tests.service.conftest import (
    MODEL_NAME,
    GatewayModel,
    LiveServer,
    gateway_settings,
    png,
    random_images,
    serving,
)

TOP_K = 3


@pytest.fixture(scope="module")
def tfserving_gateway(gateway_model: GatewayModel) -> Iterator[LiveServer]:
    from service.app import create_app
    from testdoubles.standin import StandIn

    with StandIn(gateway_model.model_base, MODEL_NAME) as standin:
        settings = gateway_settings(
            gateway_model.model_base, backend="tfserving", tfserving_address=standin.address
        )
        with serving(create_app(settings)) as live:
            yield live


@pytest.fixture(params=["embedded", "tfserving"])
def gateway(request: pytest.FixtureRequest) -> LiveServer:
    live: LiveServer = request.getfixturevalue(f"{request.param}_gateway")
    return live


def expected_top_k(model: GatewayModel, blobs: list[bytes]) -> list[list[tuple[int, float]]]:
    """Decode as the gateway does, run the Keras model + softmax, take the top k."""
    manifest = read_manifest(latest_version_dir(model.model_base, MODEL_NAME))
    limits = DecodeLimits(max_image_pixels=1_000_000, allowed_formats=("PNG", "JPEG"))
    pixels = np.stack(
        [
            decode_image(
                b, input_spec=manifest.input, preprocessing=manifest.preprocessing, limits=limits
            )
            for b in blobs
        ]
    )
    probs = model.reference(pixels)
    out = []
    for row in probs:
        ids = np.argsort(-row, kind="stable")[:TOP_K]
        out.append([(int(i), float(row[i])) for i in ids])
    return out


def got_top_k(prediction: dict[str, Any]) -> list[tuple[int, float]]:
    return [(s["class_id"], s["score"]) for s in prediction["top_k"]]


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)
    assert [i for i, _ in got] == [i for i, _ in want]


def test_scores_match_the_keras_model(gateway: LiveServer, gateway_model: GatewayModel) -> None:
    photo = io.BytesIO()
    Image.fromarray(random_images(1, seed=5, side=48)[0][:, :40]).save(photo, format="JPEG")
    blobs = [png(im) for im in random_images(4, seed=21)] + [photo.getvalue()]
    files = [("images", (f"{i}", b, "application/octet-stream")) for i, b in enumerate(blobs)]
    r = httpx.post(f"{gateway.url}/v1/classify?top_k={TOP_K}", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": MODEL_NAME, "version": 1}
    for got, want in zip(body["predictions"], expected_top_k(gateway_model, blobs), strict=True):
        assert_same(got_top_k(got), want)


def _batch_totals(metrics_text: str) -> tuple[float, float]:
    """(images sent to the backend, backend calls) from the batch size histogram."""
    total = re.search(r"^gateway_batch_size_sum ([\d.e+]+)$", metrics_text, re.M)
    count = re.search(r"^gateway_batch_size_count ([\d.e+]+)$", metrics_text, re.M)
    assert total and count, "batch size histogram missing from /metrics"
    return float(total.group(1)), float(count.group(1))


def test_concurrent_requests_are_batched_and_answered_in_their_own_order(
    gateway: LiveServer, gateway_model: GatewayModel
) -> None:
    n = 64
    blobs = [png(im) for im in random_images(n, seed=99)]
    want = expected_top_k(gateway_model, blobs)

    async def fire() -> tuple[list[httpx.Response], str, str]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:
            before = (await client.get("/metrics")).text
            replies = await asyncio.gather(
                *(
                    client.post(
                        f"/v1/classify?top_k={TOP_K}",
                        content=b,
                        headers={"content-type": "image/png"},
                    )
                    for b in blobs
                )
            )
            after = (await client.get("/metrics")).text
        return list(replies), before, after

    replies, before, after = asyncio.run(fire())
    assert [r.status_code for r in replies] == [200] * n
    for r, expected in zip(replies, want, strict=True):
        (prediction,) = r.json()["predictions"]
        assert_same(got_top_k(prediction), expected)
    answers = {
        tuple(round(s, 5) for _, s in got_top_k(r.json()["predictions"][0])) for r in replies
    }
    assert len(answers) > n // 2  # different images really got different answers
    images0, calls0 = _batch_totals(before)
    images1, calls1 = _batch_totals(after)
    assert images1 - images0 == n
    assert (images1 - images0) / (calls1 - calls0) >= 8, f"{calls1 - calls0} backend calls"


def test_timings_have_sub_millisecond_resolution(gateway: LiveServer) -> None:
    """uvicorn runs on uvloop, whose loop.time() ticks in whole milliseconds: the per-stage
    timings must come from a finer clock, or every stage reads 0, 1, 2 ... ms."""
    blob = png(random_images(1, seed=77)[0])
    values: list[float] = []
    for _ in range(5):
        r = httpx.post(
            f"{gateway.url}/v1/classify",
            content=blob,
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        timing = r.json()["timing_ms"]
        header = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
        assert {k: float(v) for k, v in header.items()} == timing
        values += [timing["decode"], timing["total"]]
    assert any(v != round(v) for v in values), values
