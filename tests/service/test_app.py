"""service.app: what the app factory leaves alone, what the lifespan sets up, and its drain."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageFile

from service.app import create_app
from service.errors import ShuttingDown
from service.state import state_of
from tests.service.conftest import gateway_settings, serving
from tests.service.test_api import DoubleBackend, pixel
from tests.service.test_batcher import RecordingBackend, image

PILLOW_DEFAULT_MAX_PIXELS = 89_478_485


def test_process_wide_state_is_set_at_start_not_at_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_PIXELS)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    app = create_app(gateway_settings(Path("unused")), backend=DoubleBackend())
    state = state_of(app)
    assert state.decode_pool is None  # nothing started, nothing set process-wide yet
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    with serving(app) as live:
        assert Image.MAX_IMAGE_PIXELS is None and ImageFile.LOAD_TRUNCATED_IMAGES is False
        pool = state.decode_pool
        assert pool is not None
        reply = httpx.post(
            f"{live.url}/v1/classify",
            content=pixel(3),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
    assert state.decode_pool is None
    with pytest.raises(RuntimeError):  # shut down with the app
        pool.submit(int)
    # The gateway's one attribute on app.state; drain and shutdown state live in it.
    assert set(app.state._state) == {"gateway"}


async def test_shutdown_drains_within_what_is_left_of_the_budget_since_the_signal() -> None:
    """The signal came 29.8 s of a 30 s budget ago and the model never answers: shutdown ends
    ~0.2 s later, and what is queued or at the backend fails then (503 shutting_down) instead
    of holding the process up to 30 s more, or forever."""
    backend = RecordingBackend(gate=asyncio.Event())  # set only after shutdown: never answers
    settings = gateway_settings(
        Path("unused"), drain_timeout_s=30.0, max_batch_size=1, max_wait_ms=0.0
    )
    app = create_app(settings, backend=backend)  # type: ignore[arg-type]
    state = state_of(app)
    loop = asyncio.get_running_loop()
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        async with asyncio.timeout(10):
            while state.batcher is None:
                await asyncio.sleep(0.01)
            batcher = state.batcher
            at_backend = asyncio.create_task(batcher.submit([image(1)], deadline=loop.time() + 60))
            while not backend.calls:
                await asyncio.sleep(0.01)
            queued = asyncio.create_task(batcher.submit([image(2)], deadline=loop.time() + 60))
            while batcher.queue_depth == 0:
                await asyncio.sleep(0.01)
        state.begin_drain(time.monotonic() - 29.8)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(lifespan.__aexit__(None, None, None), 10)
        except TimeoutError:
            pytest.fail("shutdown overran its drain budget by more than 10 s")
        assert time.monotonic() - t0 < 2.0
        for caller in (queued, at_backend):
            with pytest.raises(ShuttingDown):
                await asyncio.wait_for(caller, 1)
    finally:
        assert backend.gate is not None
        backend.gate.set()
