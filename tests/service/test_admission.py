"""Load shedding by estimated queue wait: the estimate itself, and the batcher refusing at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from service.admission import QueueWaitEstimate
from service.app import create_app
from service.batcher import MicroBatcher
from service.errors import QueueFull
from tests.service.conftest import gateway_settings
from tests.service.conftest import serving as serve_app
from tests.service.test_api import DoubleBackend, pixel
from tests.service.test_batcher import MANIFEST, RecordingBackend, image, later


def bucket_for(n: int) -> int:
    return MANIFEST.bucket_for(n)  # buckets 1, 2, 4, 8, 16


@pytest.mark.parametrize(
    ("observed", "queued", "expected_s"),
    [
        ({}, 100, 0.0),  # nothing learnt yet: no basis for shedding
        ({8: 0.1}, 0, 0.0),
        ({8: 0.1}, 8, 0.1),
        ({8: 0.1}, 16, 0.2),
        ({8: 0.1}, 20, 0.25),  # 2 full batches + bucket 4, scaled from bucket 8: 0.1 * 4/8
        ({8: 0.1, 4: 0.08}, 20, 0.28),  # a seen bucket is used as measured
        ({1: 0.01}, 8, 0.08),  # unseen larger bucket: linear from the nearest seen one
    ],
)
def test_wait_estimate(observed: dict[int, float], queued: int, expected_s: float) -> None:
    est = QueueWaitEstimate(8, bucket_for)
    for bucket, seconds in observed.items():
        est.observe(bucket, seconds)
    assert est.wait_s(queued) == pytest.approx(expected_s)


def test_estimate_is_an_ewma_of_calls_and_their_spread() -> None:
    est = QueueWaitEstimate(8, bucket_for)
    est.observe(8, 0.1)
    est.observe(8, 0.6)  # one slow call moves the mean by a fifth of the difference...
    assert est.batch_seconds(8) == pytest.approx(0.2)
    # ...and the deviation from 0 to 0.1, so admission plans for 0.2 + 2 * 0.1 per call.
    assert est.batch_seconds(8, conservative=True) == pytest.approx(0.4)
    assert est.wait_s(16) == pytest.approx(0.8)


def make(backend: RecordingBackend, max_queue_wait_s: float) -> MicroBatcher:
    batcher = MicroBatcher(
        backend, MANIFEST, max_batch_size=8, max_wait_ms=0, max_queue_images=64,
        retry_after_s=3, max_queue_wait_s=max_queue_wait_s,
    )  # fmt: skip
    batcher.wait_estimate.observe(8, 1.0)  # as if full batches had taken 1 s each
    return batcher


async def blocked_with_16_queued(batcher: MicroBatcher, backend: RecordingBackend) -> list:
    """8 images at the (blocked) backend, 16 more queued behind them."""
    await batcher.start()
    tasks = [asyncio.create_task(batcher.submit([image(1)] * 8, deadline=later()))]
    while not backend.calls:
        await asyncio.sleep(0.001)
    tasks.append(asyncio.create_task(batcher.submit([image(2)] * 16, deadline=later())))
    while batcher.queue_depth < 16:
        await asyncio.sleep(0.001)
    return tasks


@pytest.mark.parametrize(
    ("max_queue_wait_s", "budget_s", "more", "refused"),
    [
        # Estimated wait = what is left of the 1 s call at the backend + the queue behind it.
        (3.5, 10.0, 1, False),  # 17 queued: 1 + 2 + 1/8 (bucket 1, scaled) = 3.125 s <= 3.5 s
        (3.5, 10.0, 8, True),  # 24 queued: 1 + 3 = 4 s > max_queue_wait_s
        (100.0, 2.5, 1, True),  # 3.125 s > the 2.5 s left of this request's budget
        (0.0, 10.0, 40, False),  # off: only max_queue_images (64) bounds the queue
    ],
)
async def test_refuses_work_that_would_wait_too_long(
    max_queue_wait_s: float, budget_s: float, more: int, refused: bool
) -> None:
    backend = RecordingBackend(gate=asyncio.Event())
    batcher = make(backend, max_queue_wait_s)
    tasks = await blocked_with_16_queued(batcher, backend)
    if refused:
        with pytest.raises(QueueFull, match="estimated queue wait") as info:
            await batcher.submit([image(3)] * more, deadline=later(budget_s))
        assert info.value.retry_after_s == 3 and info.value.status == 503
        assert batcher.queue_depth == 16  # nothing of the refused request was queued
    else:
        tasks.append(asyncio.create_task(batcher.submit([image(3)] * more, deadline=later())))
        while batcher.queue_depth < 16 + more:
            await asyncio.sleep(0.001)
    backend.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*tasks)
    assert [len(r) for r in results] == [8, 16] + ([] if refused else [more])
    await batcher.close()


async def test_an_idle_queue_always_takes_work() -> None:
    backend = RecordingBackend()
    batcher = make(backend, max_queue_wait_s=0.001)
    batcher.wait_estimate.observe(8, 60.0)  # a very slow model...
    await batcher.start()
    # ...still takes work when idle (budget long enough for the call itself).
    out = await batcher.submit([image(5)] * 8, deadline=later(120.0))
    assert len(out) == 8
    await batcher.close()


def test_an_overloaded_gateway_sheds_before_reading_the_body() -> None:
    """Over HTTP: with the model busy and a queue whose estimated wait exceeds
    `max_queue_wait_s`, a new request gets 503 queue_full + Retry-After at once; the
    requests already accepted are still served."""
    double = DoubleBackend()
    settings = gateway_settings(
        Path("unused"), max_batch_size=1, max_wait_ms=0.0, max_queue_wait_s=0.5, retry_after_s=2
    )
    app = create_app(settings, backend=double)
    img = {"content": pixel(1), "headers": {"content-type": "image/png"}}
    with serve_app(app) as live:
        batcher = app.state.gateway.batcher
        batcher.wait_estimate.observe(1, 5.0)  # as if each call took 5 s
        double.gate.clear()

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=live.url, timeout=20) as client:
                at_backend = asyncio.create_task(client.post("/v1/classify", **img))
                while double.calls == 0:
                    await asyncio.sleep(0.01)
                queued = asyncio.create_task(client.post("/v1/classify", **img))  # idle queue
                while batcher.queue_depth == 0:
                    await asyncio.sleep(0.01)
                refused = await client.post("/v1/classify", **img)
                double.gate.set()
                return [refused, await at_backend, await queued]

        refused, *served = asyncio.run(scenario())
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "queue_full"
    assert "estimated queue wait" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "2"
    assert [r.status_code for r in served] == [200, 200]
    registry = app.state.gateway.metrics.registry
    assert registry.get_sample_value("gateway_decode_seconds_count") == 2  # refused: not decoded
