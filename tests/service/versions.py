"""Exports for the tests of versions that change while serving: more versions of the 8x8 tiny
model (each with its own weights, so an answer shows which version computed it), an export
as releases before `serving_manifest` wrote it, and one whose served contract is wrong."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np

from contract.manifest import Manifest, read_manifest
from contract.signatures import CLIENT_CALLS, MANIFEST_CALL, SIGNATURE_BYTES, SIGNATURE_PIXELS
from contract.tfs_config import BATCHING_CONFIG
from service.app import create_app
from service.decode import DecodeLimits, decode_image
from service.settings import Settings
from testdoubles.standin import ServerOptions, StandIn
from tests.service.conftest import LiveServer, png, serving
from tests.testdoubles.standin_support import write_config

LABELS = ("a", "b", "c")
BUCKETS = (1, 2, 4, 8)


def run_info() -> Any:
    from model_builder.artifacts import RunInfo

    return RunInfo(architecture="tiny", input_height=8, input_width=8, labels=LABELS)


class Version(NamedTuple):
    """One exported version and the Keras model it came from."""

    path: Path
    model: Any

    def reference(self, images: np.ndarray) -> np.ndarray:
        """Probabilities straight from the Keras model (normalised as the export does)."""
        import tensorflow as tf

        from contract.manifest import Normalization
        from model_builder.preprocess import normalize

        logits = self.model(normalize(tf.constant(images), Normalization()), training=False)
        return np.asarray(tf.nn.softmax(logits, axis=-1), dtype=np.float32)


def tiny_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(LABELS))(x))


def export_version(base: Path, version: int, *, seed: int, name: str = "tiny") -> Version:
    """`<base>/<name>/<version>` exported as the product exports it (its own weights)."""
    from model_builder.export import export_model

    model = tiny_model(seed)
    path = export_model(
        model, model_base=base, name=name, version=version, run_info=run_info(),
        buckets=BUCKETS, top_k=2,
    )  # fmt: skip
    return Version(path, model)


def export_without_manifest_signature(base: Path, version: int, *, seed: int) -> Version:
    """What releases before `serving_manifest` exported: the contract on disk only (written
    beside and renamed into place, as the export does)."""
    import tensorflow as tf

    from contract.manifest import write_manifest
    from model_builder.export import _build_manifest, build_serving_module
    from model_builder.warmup import write_warmup_requests

    model = tiny_model(seed)
    info = run_info()
    target = base / "tiny" / str(version)
    tmp = base / "tiny" / f".tmp-old-{version}-{os.getpid()}"
    module = build_serving_module(model, info, top_k=2)
    tf.saved_model.save(
        module,
        str(tmp),
        signatures={
            SIGNATURE_PIXELS: module.serve_pixels.get_concrete_function(),
            SIGNATURE_BYTES: module.serve_bytes.get_concrete_function(),
        },
    )
    manifest = _build_manifest(
        info, name="tiny", version=version, precision="float32", buckets=BUCKETS, top_k=2,
        fold_batchnorm=False,
    )  # fmt: skip
    write_manifest(manifest, tmp)
    calls = [c for c in CLIENT_CALLS if c != MANIFEST_CALL]
    write_warmup_requests(tmp, model_name="tiny", height=8, width=8, buckets=BUCKETS, calls=calls)
    (tmp / "assets").mkdir(exist_ok=True)
    (tmp / "assets" / "labels.txt").write_text("".join(f"{x}\n" for x in LABELS))
    tmp.rename(target)
    return Version(target, model)


def export_serving_a_wrong_contract(
    base: Path, version: int, *, seed: int, monkeypatch: Any
) -> Path:
    """An export whose `serving_manifest` says the input is 16x8 while its signature takes
    8x8 (the file on disk is right): a gateway must refuse that version."""
    from contract.manifest import InputSpec
    from model_builder import export as export_module

    real = export_module.manifest_function

    def lying(manifest: Manifest) -> Any:
        return real(manifest.model_copy(update={"input": InputSpec(height=16, width=8)}))

    monkeypatch.setattr(export_module, "manifest_function", lying)
    try:
        return export_version(base, version, seed=seed).path
    finally:
        monkeypatch.setattr(export_module, "manifest_function", real)


def export_all(base: Path) -> Exports:
    """tiny v1 and v2 (other weights) and `other` v1 under `base`."""
    return Exports(
        base,
        export_version(base, 1, seed=0),
        export_version(base, 2, seed=1),
        export_version(base, 1, seed=2, name="other"),
    )


# As the deploy files run TF Serving: batching on with the export's parameters; polling fast
# so the test is short (TF Serving: 1 s for versions, models.config as configured). Labels may
# name versions still loading at start (--allow_version_labels_for_unavailable_models).
def standin_options(base: Path) -> ServerOptions:
    return ServerOptions(
        enable_batching=True,
        batching_parameters_file=base / BATCHING_CONFIG,
        file_system_poll_wait_s=0.2,
        model_config_file_poll_wait_s=0.2,
        max_num_load_retries=0,
        allow_version_labels_for_unavailable_models=True,
    )


class Exports(NamedTuple):
    """tiny v1 and v2 (other weights) and a second model, `other` v1, exported once."""

    base: Path
    tiny1: Version
    tiny2: Version
    other1: Version


class Pictures:
    """Distinct 8x8 images as PNG, and what each version must answer for each."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.pixels = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)]
        self.blobs = [png(p) for p in self.pixels]

    def expected(self, version: Version) -> np.ndarray:
        m = read_manifest(version.path)
        limits = DecodeLimits(max_image_pixels=1_000_000, allowed_formats=("PNG",))
        decoded = np.stack(
            [
                decode_image(b, input_spec=m.input, preprocessing=m.preprocessing, limits=limits)
                for b in self.blobs
            ]
        )
        return version.reference(decoded)


def scores(body: dict[str, Any], classes: int = 3) -> np.ndarray:
    """The full score vector of a one-image answer (every class asked for)."""
    (prediction,) = body["predictions"]
    out = np.zeros(classes, np.float32)
    for s in prediction["top_k"]:
        out[s["class_id"]] = s["score"]
    return out


def gateway_settings(address: str, empty: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "tfserving",
        "tfserving_address": address,
        "model_name": "tiny",
        "model_base_path": empty,  # no model volume: every contract comes over gRPC
        "max_batch_size": 8,
        "max_wait_ms": 2.0,
        "decode_workers": 2,
        "request_timeout_s": 20.0,
        "version_poll_interval_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def standin_and_gateway(
    base: Path, config: Path, tmp_path: Path, **overrides: Any
) -> Iterator[tuple[StandIn, LiveServer]]:
    empty = tmp_path / "no-volume"
    empty.mkdir(exist_ok=True)
    with StandIn(model_config_file=config, options=standin_options(base)) as server:
        for model, versions in _served(config).items():  # labelled versions load at their pace
            for version in versions:
                assert server.wait_for_state(model, version, "AVAILABLE", 30)
        settings = gateway_settings(server.address, empty, **overrides)
        with serving(create_app(settings)) as live:
            yield server, live


def _served(config: Path) -> dict[str, list[int]]:
    from contract.tfs_config import pinned_versions, read_models_config

    entries = read_models_config(config).model_config_list.config
    return {e.name: pinned_versions(e) or [] for e in entries}


def classify(url: str, blob: bytes, path: str = "/v1/classify", **params: Any) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", params=params, content=blob, headers={"content-type": "image/png"},
        timeout=20,
    )  # fmt: skip


def publish(exports: Exports, base: Path, name: str, version: int) -> Path:
    """Put an exported version into `base` as an export does: copied beside, renamed in."""
    target = base / name / str(version)
    tmp = base / name / f".tmp-{version}"
    shutil.copytree(exports.base / name / str(version), tmp)
    tmp.rename(target)
    return target


def base_with(exports: Exports, dest: Path, **versions: list[int]) -> Path:
    """A model base holding only `versions` per model name, with the export's configs."""
    dest.mkdir(parents=True)
    shutil.copy(exports.base / BATCHING_CONFIG, dest / BATCHING_CONFIG)
    for name, numbers in versions.items():
        for number in numbers:
            shutil.copytree(exports.base / name / str(number), dest / name / str(number))
    return dest


def canary_config(tmp_path: Path, base: Path) -> Path:
    """tiny v1 labelled stable and v2 labelled canary, both served."""
    return write_config(
        tmp_path / "models.config", {"tiny": base / "tiny"},
        labels={"tiny": {"stable": 1, "canary": 2}},
        policies={"tiny": "specific { versions: 1 versions: 2 }"},
    )  # fmt: skip
