"""Gateway test fixtures: a real uvicorn on 127.0.0.1 (ephemeral port) in a thread, and models.

`serving(app)` runs any app; the session fixtures export one small model with the default
batch buckets and run the gateway over it on the embedded backend.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from contract.manifest import Manifest
from service.backends.base import ModelVersions
from service.decode import configure_pillow
from service.settings import Settings

MODEL_NAME = "gw"
SIDE = 16  # input height = width of the test model
LABELS = tuple(f"class_{i}" for i in range(10))


@pytest.fixture(scope="session", autouse=True)
def _pillow_as_the_gateway_sets_it() -> None:
    """Tests that decode without a gateway get the Pillow settings the gateway sets at start."""
    configure_pillow()


class OneVersion:
    """What the gateway's model registry asks of a backend, for doubles that serve one
    manifest (`self.manifest`) as the one AVAILABLE version of whatever model is asked for."""

    manifest: Manifest

    async def versions(self, model: str, labels: tuple[str, ...] = ()) -> ModelVersions:
        return ModelVersions({self.manifest.model_version: "AVAILABLE"})

    async def contract(self, model: str, version: int) -> Manifest:
        return self.manifest


class LiveServer(NamedTuple):
    url: str
    app: FastAPI
    server: uvicorn.Server


@contextlib.contextmanager
def serving(
    app: FastAPI,
    *,
    ready: bool = True,
    timeout_s: float = 60.0,
    settings: Settings | None = None,
) -> Iterator[LiveServer]:
    """Run `app` on uvicorn in a background thread; wait until it listens (and /readyz is 200).

    With `settings`, uvicorn runs as `resnet-serving serve` configures it (connection limits,
    forwarded headers: `service.server.server_config`); without, with uvicorn's defaults."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if settings is not None:
        from service.server import server_config

        config: uvicorn.Config = server_config(settings, app)
        config.log_level, config.timeout_graceful_shutdown = "warning", 5
    else:
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", timeout_graceful_shutdown=5
        )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if ready:
            wait_ready(url, end)
        yield LiveServer(url, app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_ready(url: str, end: float) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            if client.get("/readyz").status_code == 200:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"gateway not ready: {client.get('/readyz').text}")
            time.sleep(0.05)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def random_images(n: int, seed: int, side: int = SIDE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


class GatewayModel(NamedTuple):
    """The test model as exported (default buckets up to 64), and its Keras original."""

    model_base: Path
    model: Any

    def reference(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        from contract.manifest import Normalization
        from model_builder.preprocess import normalize

        logits = self.model(normalize(tf.constant(images), Normalization()), training=False)
        return np.asarray(tf.nn.softmax(logits, axis=-1), dtype=np.float32)


@pytest.fixture(scope="session")
def gateway_model(tmp_path_factory: pytest.TempPathFactory) -> GatewayModel:
    import keras

    from model_builder.artifacts import RunInfo
    from model_builder.export import export_model

    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS))(x))
    info = RunInfo(architecture="tiny_conv", input_height=SIDE, input_width=SIDE, labels=LABELS)
    base = tmp_path_factory.mktemp("gateway_models")
    export_model(model, model_base=base, name=MODEL_NAME, version=1, run_info=info, top_k=3)
    return GatewayModel(base, model)


def gateway_settings(model_base: Path, **overrides: Any) -> Settings:
    """Test settings: small limits so the limit tests stay cheap, generous batching wait."""
    values: dict[str, Any] = {
        "backend": "embedded",
        "model_base_path": model_base,
        "model_name": MODEL_NAME,
        "max_batch_size": 64,
        "max_wait_ms": 200.0,  # generous: requests trickle in on a busy 2-core machine
        "max_queue_images": 256,
        "max_upload_bytes": 256 * 1024,
        "max_image_pixels": 1_000_000,
        "max_images_per_request": 8,
        "decode_workers": 2,
        "request_timeout_s": 30.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def embedded_gateway(gateway_model: GatewayModel) -> Iterator[LiveServer]:
    """The gateway on the embedded backend over the test model (shared by the whole session)."""
    from service.app import create_app

    with serving(create_app(gateway_settings(gateway_model.model_base))) as live:
        yield live
