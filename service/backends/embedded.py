"""The embedded backend: the SavedModel runs inside the gateway process.

Every TensorFlow call (load, warm-up, predict) runs in one dedicated thread, so the event
loop never blocks on TF and calls are serialised in the order the batcher sends them.
TensorFlow is imported with this module, which `service.backends.factory` imports only for
the embedded backend: a gRPC-only gateway never loads it, and the import happens at start-up
in the main thread, before the server logs anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from contract.manifest import Manifest
from contract.signatures import INPUT_PIXELS, OUTPUT_PROBABILITIES, SIGNATURE_PIXELS, TensorSig
from service.backends.startup import check_served_signature, load_manifest, version_dir
from service.breaker import CircuitBreaker
from service.errors import BackendError, BackendStartupError, DeadlineExceeded, NotReady
from service.settings import Settings

log = logging.getLogger(__name__)


def _tensor_sig(spec: Any) -> TensorSig:
    """(dtype name, shape) of a tf.TensorSpec or tf.Tensor."""
    dims = spec.shape.as_list() if spec.shape.rank is not None else []
    return spec.dtype.name, tuple(dims)


class EmbeddedBackend:
    """Serves `<model_base>/<model_name>/<version>` with `tf.saved_model.load` in-process."""

    name = "embedded"
    breaker: CircuitBreaker | None = None  # in-process: no remote server to lose

    def __init__(self, model_base: Path, model_name: str, model_version: int | None = None) -> None:
        self._model_base = Path(model_base)
        self._model_name = model_name
        self._model_version = model_version
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._fn: Any = None  # the `serving_default` concrete function
        self._loaded: Any = None  # keeps the SavedModel's variables alive
        self._manifest: Manifest | None = None
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBackend:
        return cls(settings.model_base_path, settings.model_name, settings.model_version)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise NotReady("the embedded backend has not been started")
        return self._manifest

    async def start(self) -> None:
        """Load, check the signature against the manifest, compile every bucket shape."""
        if self._ready:
            return
        path = version_dir(self._model_base, self._model_name, self._model_version)
        manifest = load_manifest(path)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="embedded-tf"
            )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load, path, manifest)
        except BaseException:
            await self.close()
            raise
        self._manifest = manifest
        self._ready = True
        log.info(
            "embedded backend ready: %s v%d from %s, buckets %s",
            manifest.model_name,
            manifest.model_version,
            path,
            list(manifest.batch_buckets),
        )

    def _load(self, path: Path, manifest: Manifest) -> None:
        """Runs in the TF thread: load, check, warm up (XLA compiles once per input shape)."""
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types (OSError, NotFoundError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendStartupError(f"cannot load SavedModel {path}: {first}") from None
        if SIGNATURE_PIXELS not in loaded.signatures:
            raise BackendStartupError(
                f"SavedModel {path} has no signature {SIGNATURE_PIXELS!r}. "
                f"Received: signatures={sorted(loaded.signatures)}"
            )
        fn = loaded.signatures[SIGNATURE_PIXELS]
        _, in_specs = fn.structured_input_signature
        inputs = {k: _tensor_sig(v) for k, v in in_specs.items()}
        outputs = {k: _tensor_sig(v) for k, v in fn.structured_outputs.items()}
        check_served_signature(manifest, inputs, outputs, where=f"SavedModel {path}")
        h, w = manifest.input.height, manifest.input.width
        for bucket in manifest.batch_buckets:
            out = fn(**{INPUT_PIXELS: tf.zeros((bucket, h, w, 3), tf.uint8)})
            got = tuple(out[OUTPUT_PROBABILITIES].shape)
            if got != (bucket, manifest.num_classes):
                raise BackendStartupError(
                    f"SavedModel {path}: warm-up of bucket {bucket} returned probabilities "
                    f"of shape {got}, expected {(bucket, manifest.num_classes)}"
                )
        self._loaded, self._fn = loaded, fn

    def _run(self, images: np.ndarray) -> np.ndarray:
        """Runs in the TF thread."""
        out = self._fn(**{INPUT_PIXELS: images})
        return np.asarray(out[OUTPUT_PROBABILITIES].numpy(), dtype=np.float32)

    async def predict(self, images: np.ndarray, *, timeout_s: float) -> np.ndarray:
        """uint8 [N,H,W,3] -> float32 [N,C]; DeadlineExceeded after `timeout_s` (late result dropped)."""
        if not self._ready or self._executor is None:
            raise NotReady("the embedded backend is not ready")
        self.manifest.check_images(images)
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left for the model call")
        future = self._executor.submit(self._run, images)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=timeout_s)
        except TimeoutError:
            # The TF thread cannot be interrupted; its result is discarded when it finishes.
            raise DeadlineExceeded(
                f"the embedded model did not answer within {timeout_s:.3f} s"
            ) from None
        except (BackendError, DeadlineExceeded, NotReady):
            raise
        except Exception as exc:
            raise BackendError(f"the embedded model failed: {type(exc).__name__}: {exc}") from None

    async def ready(self) -> bool:
        return self._ready

    async def close(self) -> None:
        """Stop the TF thread (pending calls are cancelled) and drop the model. Idempotent."""
        self._ready = False
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._fn = self._loaded = None
