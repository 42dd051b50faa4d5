"""Export a Keras model as a TF Serving SavedModel version with the manifest contract.

Layout (TF Serving's versioned layout; see `contract.manifest` for the file names):

    <model_base>/<name>/<version>/saved_model.pb, variables/, assets/labels.txt,
                                  assets.extra/manifest.json, assets.extra/tf_serving_warmup_requests

Two signatures share one XLA-compiled core (normalise -> model -> softmax -> top-k):
`serving_default` takes uint8 pixels; `serving_bytes` takes encoded images and decodes them
in graph first. A third, `serving_manifest`, returns the manifest itself, so a client gets
the contract from the model server over gRPC (no shared disk). A version is written into a temp dir beside it and renamed into place at the
end, so TF Serving never loads a half-written version, and an existing version is never
overwritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from contract import __version__
from contract.errors import ManifestError
from contract.manifest import (
    DEFAULT_BUCKETS,
    LABELS_RELPATH,
    InputSpec,
    Manifest,
    Precision,
    Preprocessing,
    latest_version_dir,
    read_manifest,
    write_manifest,
)
from contract.signatures import (
    INPUT_BYTES,
    INPUT_MANIFEST,
    INPUT_PIXELS,
    OUTPUT_MANIFEST,
    OUTPUT_PROBABILITIES,
    OUTPUT_TOP_K_IDS,
    OUTPUT_TOP_K_SCORES,
    SIGNATURE_BYTES,
    SIGNATURE_MANIFEST,
    SIGNATURE_PIXELS,
)
from contract.tfs_config import write_tfserving_configs
from model_builder.artifacts import RunInfo
from model_builder.errors import ExportError
from model_builder.fold import fold_batchnorm as _fold
from model_builder.preprocess import normalize
from model_builder.warmup import write_warmup_requests

_MIXED_POLICY: dict[str, str] = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def export_model(
    model: Any,
    *,
    model_base: Path,
    name: str,
    version: int,
    run_info: RunInfo,
    precision: Precision = "float32",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    top_k: int = 5,
    fold_batchnorm: bool = True,
    serving_base_path: str = "/models",
    jit_compile: bool = True,
) -> Path:
    """Write `<model_base>/<name>/<version>/` and refresh the TF Serving configs; returns it.

    `jit_compile=False` leaves the numeric core to TF's graph executor (benchmark baseline).
    BatchNorm is folded into the convolutions by default: same top-1, probabilities within
    1e-6 relative, fewer CPU-seconds per image (benchmarks/results/model_cpu.md).
    """

    model_base = Path(model_base)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a positive integer. Received: version={version!r}")
    version_dir = model_base / name / str(version)
    if version_dir.exists():
        raise ExportError(
            f"{version_dir} already exists; versions are never overwritten, pick a new one. "
            f"Received: version={version}"
        )
    _check_labels(run_info.labels)
    manifest = _build_manifest(
        run_info,
        name=name,
        version=version,
        precision=precision,
        buckets=buckets,
        top_k=top_k,
        fold_batchnorm=fold_batchnorm,
        jit_compile=jit_compile,
    )
    others = _other_manifests(model_base, exclude=name)
    for other in others:
        if other.batch_buckets != manifest.batch_buckets:
            raise ExportError(
                "every model under one TF Serving shares batching_parameters.txt, so batch "
                f"buckets must match: {other.model_name} has {list(other.batch_buckets)}. "
                f"Received: buckets={list(manifest.batch_buckets)}"
            )

    if fold_batchnorm:
        model = _fold(model)
    if precision != "float32":
        model = cast_precision(model, precision)

    tmp_dir = model_base / name / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        module = build_serving_module(model, run_info, top_k=top_k, jit_compile=jit_compile)
        module.serve_manifest = manifest_function(manifest)
        tf.saved_model.save(
            module,
            str(tmp_dir),
            signatures={
                SIGNATURE_PIXELS: module.serve_pixels.get_concrete_function(),
                SIGNATURE_BYTES: module.serve_bytes.get_concrete_function(),
                SIGNATURE_MANIFEST: module.serve_manifest.get_concrete_function(),
            },
        )
        _write_labels(tmp_dir, run_info.labels)
        write_manifest(manifest, tmp_dir)

        write_warmup_requests(
            tmp_dir,
            model_name=name,
            height=run_info.input_height,
            width=run_info.input_width,
            buckets=manifest.batch_buckets,
        )
        if version_dir.exists():  # someone else wrote it while we were exporting
            raise ExportError(f"{version_dir} appeared during export; not overwriting it")
        tmp_dir.rename(version_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    write_tfserving_configs(model_base, [*others, manifest], serving_base_path=serving_base_path)
    return version_dir


def build_serving_module(
    model: Any, run_info: RunInfo, *, top_k: int, jit_compile: bool = True
) -> Any:
    """A tf.Module holding `model` and both serving functions (`serve_pixels`, `serve_bytes`)."""

    height, width = run_info.input_height, run_info.input_width
    norm = run_info.normalization
    prep = run_info.preprocessing
    outputs_logits = run_info.outputs_logits

    module = tf.Module()
    module.model = model  # tracked, so its variables are saved

    # The XLA-compiled core. Decoding cannot be XLA-compiled (string ops), so
    # `serve_bytes` decodes outside and calls this function for the numeric part.
    @tf.function(
        jit_compile=jit_compile,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name=INPUT_PIXELS)],
    )
    def serve_pixels(images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = normalize(images, norm)
        out = tf.cast(model(x, training=False), tf.float32)
        probs = tf.nn.softmax(out, axis=-1) if outputs_logits else out
        scores, ids = tf.math.top_k(probs, k=top_k)
        return {
            OUTPUT_PROBABILITIES: probs,
            OUTPUT_TOP_K_IDS: tf.cast(ids, tf.int32),
            OUTPUT_TOP_K_SCORES: scores,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda b: decode_and_resize(b, height, width, prep),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8),
        )
        return serve_pixels(images)

    module.serve_pixels = serve_pixels
    module.serve_bytes = serve_bytes
    # Keras 3 keeps each weight in a tf.Variable behind its own KerasVariable. Tracked only
    # through `module.model`, the SavedModel restores them under other resource handles than
    # the ones the functions read, and a Session-based loader (TF Serving's LoadSavedModel)
    # then fails every request with "Could not find variable ..." (tensorflow/tensorflow#72963,
    # tensorflow/serving#2250). Tracking the very tf.Variables the functions capture, as
    # keras.export.ExportArchive does, makes the restore fill the handles the graph reads.
    captured: dict[int, Any] = {}
    for fn in (serve_pixels, serve_bytes):
        for variable in fn.get_concrete_function().variables:
            captured.setdefault(id(variable), variable)
    module.captured_variables = list(captured.values())
    return module


def manifest_function(manifest: Manifest) -> Any:
    """`serving_manifest`: int32 [batch] (values ignored) -> `manifest` string [batch], each
    row the very text of `assets.extra/manifest.json`. One row per input row, because TF
    Serving batches every signature (contract.signatures explains the shape)."""
    text = tf.constant(manifest.to_json())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name=INPUT_MANIFEST)])
    def serve_manifest(unused: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_MANIFEST: tf.fill(tf.shape(unused)[:1], text)}

    return serve_manifest


def decode_and_resize(data: Any, height: int, width: int, prep: Preprocessing) -> Any:
    """One encoded JPEG/PNG -> uint8 RGB `[height, width, 3]` per the manifest's rule (in graph).

    Alpha (RGBA or grey+alpha) is composited onto `prep.background_rgb`. EXIF orientation is
    not applied in graph (the gateway applies it); clients of `serving_bytes` send upright images.
    """

    img = tf.io.decode_image(data, channels=0, expand_animations=False, dtype=tf.uint8)
    channels = tf.shape(img)[-1]
    rgb = tf.cond(channels >= 3, lambda: img[..., :3], lambda: tf.repeat(img[..., :1], 3, axis=-1))
    rgb = tf.cast(rgb, tf.float32)
    has_alpha = tf.equal(channels % 2, 0)  # 2 = grey+alpha, 4 = RGBA
    alpha = tf.cond(
        has_alpha,
        lambda: tf.cast(img[..., -1:], tf.float32) / 255.0,
        lambda: tf.ones_like(rgb[..., :1]),
    )
    background = tf.constant(prep.background_rgb, tf.float32)
    rgb = rgb * alpha + background * (1.0 - alpha)

    method = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}[
        prep.interpolation
    ]
    antialias = prep.interpolation != "nearest"  # like Pillow's downscaling filters
    if prep.resize == "stretch":
        out = tf.image.resize(rgb, [height, width], method=method, antialias=antialias)
    else:
        shape = tf.cast(tf.shape(img)[:2], tf.float32)
        # Scale so the image covers (height, width) / crop_fraction, then crop the centre.
        target = tf.constant([height, width], tf.float32) / prep.crop_fraction
        scale = tf.reduce_max(target / shape)
        new_hw = tf.maximum(
            tf.cast(tf.round(shape * scale), tf.int32), tf.constant([height, width])
        )
        resized = tf.image.resize(rgb, new_hw, method=method, antialias=antialias)
        top = (new_hw[0] - height) // 2
        left = (new_hw[1] - width) // 2
        out = resized[top : top + height, left : left + width, :]
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(out, [height, width, 3])


def cast_precision(model: Any, precision: Precision) -> Any:
    """Clone `model` under the mixed dtype policy for `precision` and copy its weights.

    Variables stay float32 (mixed policy); compute runs in bf16/fp16. The serving graph casts
    the model's outputs back to float32 before softmax.
    """

    if precision == "float32":
        return model
    policy = _MIXED_POLICY.get(precision)
    if policy is None:
        raise ExportError(
            f"precision must be one of float32, bfloat16, float16. Received: precision={precision!r}"
        )

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone_model: Any = keras.models.clone_model
    cloned = clone_model(model, clone_function=clone)
    cloned.set_weights(model.get_weights())
    return cloned


def _build_manifest(
    run_info: RunInfo,
    *,
    name: str,
    version: int,
    precision: Precision,
    buckets: Sequence[int],
    top_k: int,
    fold_batchnorm: bool,
    jit_compile: bool = True,
) -> Manifest:

    try:
        return Manifest(
            model_name=name,
            model_version=version,
            architecture=run_info.architecture,
            input=InputSpec(height=run_info.input_height, width=run_info.input_width),
            preprocessing=run_info.preprocessing,
            normalization=run_info.normalization,
            labels=run_info.labels,
            top_k=top_k,
            batch_buckets=tuple(buckets),
            precision=precision,
            xla_compiled=jit_compile,
            folded_batchnorm=fold_batchnorm,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            framework={
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "resnet_serving": __version__,
            },
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        msg = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ExportError(
            f"export arguments break the manifest contract: {msg}. Received: name={name!r}, "
            f"top_k={top_k}, buckets={list(buckets)}, precision={precision!r}"
        ) from None


def _check_labels(labels: Sequence[str]) -> None:
    for label in labels:
        if not label.strip() or "\n" in label or "\r" in label:
            raise ExportError(
                f"labels must be non-empty single lines (labels.txt has one per line). "
                f"Received: label={label!r}"
            )


def _write_labels(version_dir: Path, labels: Sequence[str]) -> None:
    path = version_dir / LABELS_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def _other_manifests(model_base: Path, *, exclude: str) -> list[Manifest]:
    """The latest version's manifest of every other model under `model_base`."""

    found: list[Manifest] = []
    if not model_base.is_dir():
        return found
    for model_dir in sorted(p for p in model_base.iterdir() if p.is_dir()):
        if model_dir.name == exclude or model_dir.name.startswith("."):
            continue
        try:
            found.append(read_manifest(latest_version_dir(model_base, model_dir.name)))
        except ManifestError:
            continue  # not one of ours (or no versions yet): not listed in models.config
    return found
