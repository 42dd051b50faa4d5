"""The embedded backend, the backend factory, and both backends agreeing on one model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import ImageShapeError
from contract.manifest import MANIFEST_RELPATH
from service.backends.base import Backend
from service.backends.embedded import EmbeddedBackend
from service.backends.factory import make_backend
from service.backends.tfserving import TFServingBackend
from service.batcher import MicroBatcher
from service.breaker import CircuitBreaker
from service.errors import BackendStartupError, DeadlineExceeded, NotReady
from service.settings import Settings
from testdoubles.standin import StandIn


@pytest.fixture(scope="module")
def embedded(exported_model: Any) -> Iterator[EmbeddedBackend]:
    """Started once: loading and warming every bucket is the expensive part."""
    backend = EmbeddedBackend(exported_model.model_base, exported_model.name)
    assert not asyncio.run(backend.ready())
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


def _images(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


async def test_embedded_matches_the_keras_model(
    exported_model: Any, embedded: EmbeddedBackend
) -> None:
    assert await embedded.ready()
    assert embedded.manifest.batch_buckets == (1, 2, 4, 8)
    for n in (1, 2, 4, 8):
        images = _images(n)
        probs = await embedded.predict(images, timeout_s=10)
        assert probs.dtype == np.float32 and probs.shape == (n, 3)
        np.testing.assert_allclose(probs, exported_model.reference(images), atol=1e-5)


@pytest.mark.parametrize(
    "images",
    [np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 9, 8, 3), np.uint8), np.zeros((8, 8, 3))],
)
async def test_embedded_rejects_wrong_images(embedded: EmbeddedBackend, images: np.ndarray) -> None:
    with pytest.raises(ImageShapeError, match=r"must be uint8 \[N,8,8,3\]"):
        await embedded.predict(images, timeout_s=5)


async def test_embedded_deadline_while_the_tf_thread_is_busy(embedded: EmbeddedBackend) -> None:
    release = threading.Event()
    assert embedded._executor is not None
    embedded._executor.submit(release.wait, 10)  # occupy the one TF thread
    try:
        with pytest.raises(DeadlineExceeded, match=r"within 0\.200 s"):
            await embedded.predict(_images(1), timeout_s=0.2)
    finally:
        release.set()
    assert (await embedded.predict(_images(1), timeout_s=10)).shape == (1, 3)


def _copy(exported_model: Any, dest: Path) -> Path:
    shutil.copytree(exported_model.model_base, dest, dirs_exist_ok=True)
    return dest / "tiny" / "1"


def _drop_manifest(version: Path) -> None:
    (version / MANIFEST_RELPATH).unlink()


def _taller_manifest(version: Path) -> None:
    path = version / MANIFEST_RELPATH
    raw = json.loads(path.read_text())
    raw["input"]["height"] = 16
    path.write_text(json.dumps(raw))


def _more_labels(version: Path) -> None:
    path = version / MANIFEST_RELPATH
    raw = json.loads(path.read_text())
    raw["labels"] = ["a", "b", "c", "d"]
    path.write_text(json.dumps(raw))


def _no_saved_model(version: Path) -> None:
    (version / "saved_model.pb").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_manifest, r"no manifest at .*tiny/1/assets.extra/manifest.json"),
        (_taller_manifest, r"input 'images' does not match the manifest.*uint8\[\?,16,8,3\]"),
        (_more_labels, r"output 'probabilities' does not match.*float32\[\?,4\]"),
        (_no_saved_model, r"cannot load SavedModel .*tiny/1"),
    ],
)
async def test_embedded_start_errors_name_the_path_and_reason(
    exported_model: Any, tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(_copy(exported_model, tmp_path))
    backend = EmbeddedBackend(tmp_path, "tiny")
    with pytest.raises(BackendStartupError, match=message) as info:
        await backend.start()
    assert "\n" not in str(info.value)
    assert not await backend.ready()
    assert backend._executor is None  # nothing half-alive left behind


@pytest.mark.parametrize(
    ("version", "message"),
    [(None, "no numeric version directories"), (3, r"tiny/3 does not exist")],
)
async def test_embedded_missing_model(tmp_path: Path, version: int | None, message: str) -> None:
    with pytest.raises(BackendStartupError, match=message):
        await EmbeddedBackend(tmp_path, "tiny", version).start()


async def test_embedded_close_is_idempotent(exported_model: Any) -> None:
    backend = EmbeddedBackend(exported_model.model_base, exported_model.name)
    await backend.close()
    with pytest.raises(NotReady):
        await backend.predict(_images(1), timeout_s=1)


@pytest.mark.parametrize(
    ("name", "cls"), [("embedded", EmbeddedBackend), ("tfserving", TFServingBackend)]
)
def test_factory_picks_the_backend(name: str, cls: type) -> None:
    backend: Backend = make_backend(Settings(backend=name, model_name="tiny"))  # type: ignore[arg-type]
    assert isinstance(backend, cls) and backend.name == name
    # Only the remote backend has a server to lose, so only it has a circuit breaker.
    assert (
        isinstance(backend.breaker, CircuitBreaker)
        if name == "tfserving"
        else backend.breaker is None
    )


@contextlib.asynccontextmanager
async def remote_backend(exported_model: Any) -> AsyncIterator[Backend]:
    """The tfserving backend, started against a stand-in serving the same export."""
    with StandIn(exported_model.model_base, exported_model.name) as standin:
        settings = Settings(
            backend="tfserving",
            model_base_path=exported_model.model_base,
            model_name="tiny",
            tfserving_address=standin.address,
        )
        remote = make_backend(settings)
        await remote.start()
        try:
            yield remote
        finally:
            await remote.close()


async def test_batcher_and_both_backends_refuse_wrong_images_with_one_message(
    exported_model: Any, embedded: EmbeddedBackend
) -> None:
    """One check (`Manifest.check_images`) guards every hand-over of pixels to the model."""
    wrong = np.zeros((1, 9, 8, 3), np.uint8)
    with pytest.raises(ImageShapeError) as expected:
        embedded.manifest.check_images(wrong)
    batcher = MicroBatcher(
        embedded, embedded.manifest, max_batch_size=8, max_wait_ms=1, max_queue_images=8
    )
    await batcher.start()
    try:
        async with remote_backend(exported_model) as remote:
            deadline = asyncio.get_running_loop().time() + 5
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: embedded.predict(wrong, timeout_s=5),
                lambda: remote.predict(wrong, timeout_s=5),
                lambda: batcher.submit([wrong[0]], deadline=deadline),
            ]
            for attempt in attempts:
                with pytest.raises(ImageShapeError) as info:
                    await attempt()
                assert str(info.value) == str(expected.value)
    finally:
        await batcher.close()


async def test_both_backends_give_the_same_probabilities(
    exported_model: Any, embedded: EmbeddedBackend
) -> None:
    images = _images(8, seed=4)
    async with remote_backend(exported_model) as remote:
        got = await remote.predict(images, timeout_s=10)
    np.testing.assert_allclose(got, await embedded.predict(images, timeout_s=10), atol=1e-5)
