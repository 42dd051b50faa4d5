"""Exports for the tests of versions that change while serving: more versions of the 8x8 tiny
model (each with its own weights, so an answer shows which version computed it), an export
as releases before `serving_manifest` wrote it, and one whose served contract is wrong."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from contract.manifest import Manifest
from contract.signatures import CLIENT_CALLS, MANIFEST_CALL, SIGNATURE_BYTES, SIGNATURE_PIXELS

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


def copy_base(source: Path, dest: Path) -> Path:
    """A private copy of a model base (tests that add or remove versions)."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest
