"""The embedded backend: the SavedModels run inside the gateway process.

It is its own small model server, with TF Serving's lifecycle: every `poll_interval_s` it lists
`<model_base>/<name>/` and aspires versions as TF Serving would (the latest by default; the
`model_version_policy` of `<model_base>/models.config` when that file lists the model; only
`model_version` when it is set). A new version is loaded and warmed beside the serving one
(on a loader thread), then becomes AVAILABLE; only then is an old one unloaded (TF Serving's
availability-preserving policy, core/availability_preserving_policy.cc): it stops taking new
calls (VersionGone), its calls in flight finish, then it is dropped. Version labels come from
the same models.config.

Every predict runs in one dedicated TensorFlow thread, so the event loop never blocks on TF and
calls are serialised in the order the batcher sends them; loads never wait behind predicts.
TensorFlow is imported with this module, which `service.backends.factory` imports only for
the embedded backend: a gRPC-only gateway never loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from contract.errors import ConfigError
from contract.manifest import Manifest, versions_on_disk
from contract.signatures import INPUT_PIXELS, OUTPUT_PROBABILITIES, SIGNATURE_PIXELS, TensorSig
from contract.tfs_config import MODELS_CONFIG, read_models_config
from service.backends.base import AVAILABLE, ModelVersions
from service.backends.startup import (
    check_contract,
    check_served_signature,
    load_manifest,
    version_dir,
)
from service.breaker import CircuitBreaker
from service.errors import (
    BackendError,
    BackendStartupError,
    DeadlineExceeded,
    NotReady,
    VersionGone,
)
from service.settings import Settings

log = logging.getLogger(__name__)

LOADING, UNLOADING, END = "LOADING", "UNLOADING", "END"
_UNLOAD_WAIT_S = 30.0  # calls in flight on a version being unloaded get this long


def _tensor_sig(spec: Any) -> TensorSig:
    """(dtype name, shape) of a tf.TensorSpec or tf.Tensor."""
    dims = spec.shape.as_list() if spec.shape.rank is not None else []
    return spec.dtype.name, tuple(dims)


@dataclass
class _Version:
    """One version of one model and where it is in its life."""

    model: str
    version: int
    path: Path
    state: str = LOADING
    error: str = ""
    manifest: Manifest | None = None
    fn: Any = None  # the `serving_default` concrete function
    loaded: Any = None  # keeps the SavedModel's variables alive
    inflight: int = 0


class EmbeddedBackend:
    """Serves `<model_base>/<name>/<version>` of every model with `tf.saved_model.load`."""

    name = "embedded"
    breaker: CircuitBreaker | None = None  # in-process: no remote server to lose

    def __init__(
        self,
        model_base: Path,
        model_name: str,
        model_version: int | None = None,
        *,
        models: Sequence[str] = (),
        poll_interval_s: float = 1.0,
    ) -> None:
        self._model_base = Path(model_base)
        self._model_name = model_name
        self._model_version = model_version
        self._names = tuple(dict.fromkeys((model_name, *models)))
        self._poll_interval_s = poll_interval_s
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None  # predicts
        self._loader: concurrent.futures.ThreadPoolExecutor | None = None  # loads, warm-ups
        self._versions: dict[str, dict[int, _Version]] = {n: {} for n in self._names}
        self._watch: asyncio.Task[None] | None = None
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBackend:
        return cls(
            settings.model_base_path,
            settings.model_name,
            settings.model_version,
            models=settings.models,
            poll_interval_s=settings.version_poll_interval_s,
        )

    @property
    def manifest(self) -> Manifest:
        """The contract of the newest AVAILABLE version of the default model."""
        serving = self._serving(self._model_name)
        if not serving or serving[-1].manifest is None:
            raise NotReady("the embedded backend has not been started")
        return serving[-1].manifest

    def _serving(self, model: str) -> list[_Version]:
        return sorted(
            (v for v in self._versions.get(model, {}).values() if v.state == AVAILABLE),
            key=lambda v: v.version,
        )

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load, check and warm the aspired version of every model, then follow the disk."""
        if self._ready:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedded-tf")
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedded-load")
        try:
            for model in self._names:
                if self._model_version is not None and model == self._model_name:
                    path = version_dir(self._model_base, model, self._model_version)
                else:
                    path = version_dir(self._model_base, model, None)
                entry = await self._load(model, int(path.name), path)
                if entry.state != AVAILABLE:
                    raise BackendStartupError(entry.error)
                await self._sync(model)  # the policy may aspire more than the latest
        except BaseException:
            await self.close()
            raise
        self._ready = True
        if self._poll_interval_s > 0:
            self._watch = asyncio.create_task(self._follow(), name="embedded-versions")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            for model in self._names:
                try:
                    await self._sync(model)
                except Exception:  # one bad poll must not stop following
                    log.exception("embedded backend: following versions of %s failed", model)

    def _aspired(self, model: str) -> set[int]:
        """The versions TF Serving's source would aspire (file_system_storage_path_source.cc)."""
        on_disk = set(versions_on_disk(self._model_base, model))
        if self._model_version is not None and model == self._model_name:
            return on_disk & {self._model_version}
        entry = self._config_entry(model)
        policy = entry.model_version_policy.WhichOneof("policy_choice") if entry else None
        if policy == "all":
            return on_disk
        if policy == "specific":
            return on_disk & set(entry.model_version_policy.specific.versions)
        n = max(entry.model_version_policy.latest.num_versions, 1) if policy == "latest" else 1
        return set(sorted(on_disk)[-n:])

    def _config_entry(self, model: str) -> Any:
        """The model's entry of `<model_base>/models.config`, or None (no file, not listed,
        or unreadable: then the default policy and no labels, as before the file existed)."""
        path = self._model_base / MODELS_CONFIG
        if not path.is_file():
            return None
        try:
            config = read_models_config(path)
        except ConfigError as exc:
            log.warning("embedded backend: ignoring %s: %s", path, exc)
            return None
        return next((c for c in config.model_config_list.config if c.name == model), None)

    async def _sync(self, model: str) -> None:
        """One step of the manager: load the newest aspired version not loaded, then unload
        versions no longer aspired once an aspired one serves."""
        aspired = self._aspired(model)
        known = self._versions[model]
        for number in sorted(aspired - set(known), reverse=True):
            await self._load(model, number, self._model_base / model / str(number))
        serving_aspired = any(known[v].state == AVAILABLE for v in aspired if v in known)
        for entry in list(known.values()):
            if entry.version not in aspired and entry.state == AVAILABLE and serving_aspired:
                await self._unload(entry)
        for number in [v for v, e in known.items() if e.state == END and v not in aspired]:
            del known[number]  # gone from disk or policy: a later copy is loaded afresh

    async def _load(self, model: str, number: int, path: Path) -> _Version:
        entry = _Version(model, number, path)
        self._versions[model][number] = entry
        assert self._loader is not None
        loop = asyncio.get_running_loop()
        try:
            manifest = load_manifest(path)
            check_contract(manifest, model, number, where=f"SavedModel {path}")
            entry.loaded, entry.fn = await loop.run_in_executor(
                self._loader, _load_saved_model, path, manifest
            )
        except BackendStartupError as exc:
            entry.state, entry.error = END, str(exc)
            log.error("embedded backend: %s v%d failed to load: %s", model, number, exc)
            return entry
        entry.manifest, entry.state = manifest, AVAILABLE
        log.info(
            "embedded backend: %s v%d AVAILABLE from %s, buckets %s",
            model,
            number,
            path,
            list(manifest.batch_buckets),
        )
        return entry

    async def _unload(self, entry: _Version) -> None:
        """Out of service first (new calls: VersionGone), then drop once its calls are done."""
        entry.state = UNLOADING
        loop = asyncio.get_running_loop()
        end = loop.time() + _UNLOAD_WAIT_S
        while entry.inflight and loop.time() < end:
            await asyncio.sleep(0.01)
        entry.fn = entry.loaded = None
        entry.state = END
        log.info("embedded backend: %s v%d unloaded", entry.model, entry.version)

    # -- what the gateway asks --------------------------------------------------------------

    async def versions(self, model: str, labels: Sequence[str] = ()) -> ModelVersions:
        known = dict(self._versions.get(model, {}))
        states = {v: e.state for v, e in known.items()}
        errors = {v: e.error for v, e in known.items() if e.error}
        entry = self._config_entry(model)
        set_labels = dict(entry.version_labels) if entry is not None else {}
        resolved = {
            label: set_labels[label]
            for label in labels
            if label in set_labels and states.get(set_labels[label]) == AVAILABLE
        }
        return ModelVersions(states, errors, resolved)

    async def contract(self, model: str, version: int) -> Manifest:
        entry = self._versions.get(model, {}).get(version)
        if entry is None or entry.state != AVAILABLE or entry.manifest is None:
            raise VersionGone(f"model {model!r} version {version} is not loaded")
        return entry.manifest

    async def predict(
        self,
        images: np.ndarray,
        *,
        timeout_s: float,
        model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:
        """uint8 [N,H,W,3] -> float32 [N,C]; DeadlineExceeded after `timeout_s` (late result dropped)."""
        if not self._ready or self._executor is None:
            raise NotReady("the embedded backend is not ready")
        model = model or self._model_name
        serving = self._serving(model)
        if version is None:
            entry = serving[-1] if serving else None
        else:
            entry = next((e for e in serving if e.version == version), None)
        if entry is None or entry.manifest is None:
            raise VersionGone(f"model {model!r} version {version or 'latest'} is not loaded")
        entry.manifest.check_images(images)
        if timeout_s <= 0:
            raise DeadlineExceeded("no time left for the model call")
        entry.inflight += 1
        try:
            future = self._executor.submit(_run, entry.fn, images)
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
        finally:
            entry.inflight -= 1

    async def ready(self) -> bool:
        return self._ready and bool(self._serving(self._model_name))

    async def close(self) -> None:
        """Stop following, stop the TF threads (pending calls are cancelled), drop the models.
        Idempotent."""
        self._ready = False
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for pool in (self._executor, self._loader):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._executor = self._loader = None
        for known in self._versions.values():
            known.clear()


def _load_saved_model(path: Path, manifest: Manifest) -> tuple[Any, Any]:
    """Runs in the loader thread: load, check, warm up (XLA compiles once per input shape)."""
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
    return loaded, fn


def _run(fn: Any, images: np.ndarray) -> np.ndarray:
    """Runs in the TF thread."""
    out = fn(**{INPUT_PIXELS: images})
    return np.asarray(out[OUTPUT_PROBABILITIES].numpy(), dtype=np.float32)
