"""Training data: the built-in `builtin:shapes` set or an image folder, as tf.data pipelines.

An image folder holds one subfolder per class; labels are the sorted subfolder names. Every
file is decoded once with Pillow before training starts, so a corrupt image fails fast with
its path instead of crashing epoch 7. Images are resized with the same rule the gateway uses
(`manifest.Preprocessing`), rounded to uint8 (the wire format), augmented, then normalised
with `preprocess.normalize`: training sees exactly what the exported graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from contract.manifest import Normalization, Preprocessing
from model_builder.errors import DatasetError
from model_builder.preprocess import UNIT_SCALE, normalize
from model_builder.shapes import SHAPE_CLASSES, generate_shapes

BUILTIN_SHAPES = "builtin:shapes"
# Formats tf.io.decode_image reads; Pillow knows more, but the pipeline could not decode them.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
_TF_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "MPO"})
DEFAULT_SHAPES_PER_CLASS = 500
_CACHE_LIMIT_BYTES = 1 << 30  # keep decoded images in memory only below this size
Flip = Literal["none", "horizontal", "both"]


@dataclass(frozen=True)
class Splits:
    """A dataset ready for `model.fit`: batched float32 images and int32 labels."""

    train: Any  # tf.data.Dataset
    val: Any  # tf.data.Dataset
    labels: tuple[str, ...]
    n_train: int
    n_val: int
    val_labels: np.ndarray  # int32, in the order `val` yields them (for the confusion summary)


@dataclass(frozen=True)
class PipelineOptions:
    """How examples become model inputs; the defaults suit the demo."""

    input_size: int = 32
    batch_size: int = 64
    val_split: float = 0.2
    seed: int = 0
    flip: Flip = "horizontal"
    brightness: float = 0.1  # max delta as a fraction of full scale
    contrast: float = 0.15  # factor drawn from [1 - c, 1 + c]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    normalization: Normalization = UNIT_SCALE


# ---------------------------------------------------------------- writing and checking folders


def write_image_folder(
    out_dir: Path, n_per_class: int, size: int = 32, seed: int = 0, image_format: str = "png"
) -> dict[str, int]:
    """Write `builtin:shapes` as an image folder (`out_dir/<class>/<i>.png`); counts per class."""
    suffix = {"png": ".png", "jpeg": ".jpg"}.get(image_format)
    if suffix is None:
        raise DatasetError(f"image format must be png or jpeg. Received: {image_format!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"output folder is not empty, refusing to write into it: {out_dir}")
    images, labels = generate_shapes(n_per_class, size, seed)
    counts: dict[str, int] = {}
    for c, name in enumerate(SHAPE_CLASSES):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images[labels == c]):
            Image.fromarray(img).save(out_dir / name / f"{i:05d}{suffix}", quality=95)
        counts[name] = int((labels == c).sum())
    return counts


def scan_image_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Files, int32 labels and class names of an image folder; DatasetError on any defect.

    Checks, each with one line: folder missing or empty, fewer than two classes, a class
    without images, a file that does not decode or has a format the pipeline cannot read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder does not exist: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"dataset folder is empty, expected one subfolder per class: {root}")
    if len(classes) < 2:
        raise DatasetError(
            f"dataset needs at least 2 class folders, found 1 ({classes[0]!r}) in {root}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            exts = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetError(f"class folder {root / name} has no images ({exts})")
        files += found
        labels += [c] * len(found)
    for path in files:
        _check_image(path)
    return files, np.asarray(labels, np.int32), tuple(classes)


def _check_image(path: Path) -> None:
    """Decode one file fully with Pillow; DatasetError names the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.load()  # verify() alone misses truncated pixel data
    except Exception as exc:  # Pillow raises many types for bad files
        raise DatasetError(f"cannot decode image {path}: {exc}") from None
    if fmt not in _TF_FORMATS:
        raise DatasetError(f"unsupported image format {fmt} in {path}: use JPEG, PNG, BMP or GIF")


# ---------------------------------------------------------------- splitting and pipelines


def check_val_split(val_split: float) -> None:
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"val_split must be in (0, 1). Received: val_split={val_split}")


def stratified_split(
    labels: np.ndarray, val_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: `val_split` of each class, chosen by `seed`, sorted."""
    check_val_split(val_split)
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * val_split) if len(idx) > 1 else 0
        n_val = min(max(n_val, 1 if len(idx) > 1 else 0), len(idx) - 1)
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    if not val_idx:
        raise DatasetError(f"val_split={val_split} leaves no validation images: add images")
    return np.sort(np.asarray(train_idx)), np.sort(np.asarray(val_idx))


def _resize_uint8(image: Any, size: int, rule: Preprocessing) -> Any:
    """Resize one HWC image per the manifest rule and round to uint8, as the gateway sends it."""
    import tensorflow as tf  # not at import: make-dataset writes images without TF

    method = rule.interpolation
    if rule.resize == "stretch":
        out = tf.image.resize(image, (size, size), method=method, antialias=True)
    else:
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        target = size / rule.crop_fraction
        scale = target / tf.reduce_min(shape)
        hw = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
        out = tf.image.resize(image, hw, method=method, antialias=True)
        top = (hw[0] - size) // 2
        left = (hw[1] - size) // 2
        out = out[top : top + size, left : left + size]
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _augment(image: Any, opts: PipelineOptions, seed: int) -> Any:
    """Random flips, brightness and contrast on a uint8 image; returns float32 in [0, 255]."""
    import tensorflow as tf  # not at import: make-dataset writes images without TF

    x = tf.cast(image, tf.float32)
    if opts.flip in ("horizontal", "both"):
        x = tf.image.random_flip_left_right(x, seed=seed)
    if opts.flip == "both":
        x = tf.image.random_flip_up_down(x, seed=seed + 1)
    if opts.brightness > 0:
        x = tf.image.random_brightness(x, opts.brightness * 255.0, seed=seed + 2)
    if opts.contrast > 0:
        x = tf.image.random_contrast(x, 1 - opts.contrast, 1 + opts.contrast, seed=seed + 3)
    return tf.clip_by_value(x, 0.0, 255.0)


def _pipelines(
    source: Any, n_items: int, bytes_per_item: int, opts: PipelineOptions, training: bool
) -> Any:
    """(uint8 image, label) dataset -> shuffled/augmented (train) or plain (val) batches."""
    import tensorflow as tf  # not at import: make-dataset writes images without TF

    ds = source
    if n_items * bytes_per_item <= _CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(n_items, 10_000), seed=opts.seed, reshuffle_each_iteration=True)
        ds = ds.map(
            lambda x, y: (_augment(x, opts, opts.seed), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    norm = opts.normalization
    ds = ds.batch(opts.batch_size)
    ds = ds.map(lambda x, y: (normalize(x, norm), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class Source:
    """A validated dataset, before any TensorFlow: images in memory or image files, labelled."""

    labels: np.ndarray  # int32 index into class_names
    class_names: tuple[str, ...]
    images: np.ndarray | None = None  # uint8 [N, S, S, 3] (builtin)
    files: tuple[Path, ...] = ()  # one per label (image folder)


def open_source(
    source: str | Path, *, input_size: int, seed: int, samples_per_class: int | None = None
) -> Source:
    """Check (folder) or generate (builtin) a dataset; every DatasetError surfaces here."""
    text = str(source)
    if text.startswith("builtin:"):
        if text != BUILTIN_SHAPES:
            raise DatasetError(
                f"unknown built-in dataset, the only one is {BUILTIN_SHAPES}. Received: {text!r}"
            )
        n = samples_per_class or DEFAULT_SHAPES_PER_CLASS
        images, labels = generate_shapes(n, input_size, seed)
        return Source(labels=labels, class_names=SHAPE_CLASSES, images=images)
    if samples_per_class is not None:
        raise DatasetError(
            f"--samples-per-class applies to {BUILTIN_SHAPES} only, not to folder {text}"
        )
    files, labels, names = scan_image_folder(Path(text))
    return Source(labels=labels, class_names=names, files=tuple(files))


def make_splits(src: Source, opts: PipelineOptions) -> Splits:
    """Stratified train/val split of `src` -> batched tf.data pipelines per `opts`."""
    tr, va = stratified_split(src.labels, opts.val_split, opts.seed)
    import tensorflow as tf  # not at import: make-dataset writes images without TF

    size = opts.input_size
    rule = opts.preprocessing
    labels = src.labels

    def load(path: Any, label: Any) -> Any:
        raw = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return _resize_uint8(raw, size, rule), label

    def make(idx: np.ndarray) -> Any:
        if src.images is not None:  # generated at the input size already
            return tf.data.Dataset.from_tensor_slices((src.images[idx], labels[idx]))
        paths = [str(src.files[i]) for i in idx]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels[idx]))
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    per_item = size * size * 3
    return Splits(
        train=_pipelines(make(tr), len(tr), per_item, opts, training=True),
        val=_pipelines(make(va), len(va), per_item, opts, training=False),
        labels=src.class_names,
        n_train=len(tr),
        n_val=len(va),
        val_labels=labels[va],
    )


def load_dataset(
    source: str | Path, opts: PipelineOptions, *, samples_per_class: int | None = None
) -> Splits:
    """`builtin:shapes` or an image folder -> train/val pipelines; validated before TF runs."""
    src = open_source(
        source, input_size=opts.input_size, seed=opts.seed, samples_per_class=samples_per_class
    )
    return make_splits(src, opts)


def write_examples(out_dir: Path, size: int = 256, seed: int = 1234) -> list[Path]:
    """One PNG and one JPEG per class at `size` px (for curl demos; the gateway resizes them).

    The PNGs are noise-free so they stay small; the JPEGs carry the training noise.
    """
    from model_builder.shapes import render_shape

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for c, name in enumerate(SHAPE_CLASSES):
        for fmt, noise in (("png", False), ("jpg", True)):
            # A 4-word seed: streams never coincide with generate_shapes' [seed, class, i].
            rng = np.random.default_rng([seed, c, int(noise), 1])
            path = out_dir / f"{name}.{fmt}"
            img = Image.fromarray(render_shape(name, size, rng, noise=noise))
            img.save(path, **({"quality": 80} if fmt == "jpg" else {"optimize": True}))
            written.append(path)
    return written
