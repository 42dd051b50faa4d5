"""builtin:shapes generation and the image-folder loader: determinism, distinct classes,
round trips through files, the resize rule, and one clear DatasetError per defect."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.manifest import Preprocessing
from model_builder.datasets import (
    BUILTIN_SHAPES,
    PipelineOptions,
    _resize_uint8,
    load_dataset,
    open_source,
    scan_image_folder,
    stratified_split,
    write_examples,
    write_image_folder,
)
from model_builder.errors import DatasetError
from model_builder.shapes import SHAPE_CLASSES, generate_shapes


@pytest.fixture(scope="module")
def shapes() -> tuple[np.ndarray, np.ndarray]:
    return generate_shapes(40, 32, seed=0)


# ---------------------------------------------------------------- generation


def test_generation_is_deterministic_by_seed() -> None:
    a, la = generate_shapes(3, 32, seed=7)
    b, lb = generate_shapes(3, 32, seed=7)
    c, _ = generate_shapes(3, 32, seed=8)
    assert a.shape == (30, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_larger_sets_extend_smaller_ones() -> None:
    small, _ = generate_shapes(2, 24, seed=3)
    big, labels = generate_shapes(5, 24, seed=3)
    np.testing.assert_array_equal(small, big[np.isin(np.arange(len(big)) % 5, [0, 1])])
    assert labels.tolist() == [c for c in range(len(SHAPE_CLASSES)) for _ in range(5)]


def test_other_sizes() -> None:
    images, _ = generate_shapes(1, 64, seed=0)
    assert images.shape == (10, 64, 64, 3)
    with pytest.raises(ValueError, match="size must be >= 8"):
        generate_shapes(1, 4)


def _gradients(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = images.astype(np.float64).mean(axis=-1)
    return np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2)), np.abs(np.diff(gray, axis=1)).mean(
        axis=(1, 2)
    )


def test_stripe_classes_have_their_orientation(shapes: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = shapes
    dx, dy = _gradients(images)
    horizontal = labels == SHAPE_CLASSES.index("horizontal_stripes")
    vertical = labels == SHAPE_CLASSES.index("vertical_stripes")
    assert (dy[horizontal] > dx[horizontal]).all()  # bands change along y
    assert (dx[vertical] > dy[vertical]).all()
    assert np.median(dy[horizontal] / dx[horizontal]) > 2
    assert np.median(dx[vertical] / dy[vertical]) > 2


def test_classes_differ_in_image_statistics(shapes: tuple[np.ndarray, np.ndarray]) -> None:
    """Class means of a small feature vector are pairwise apart: the classes are not noise."""
    images, labels = shapes
    dx, dy = _gradients(images)
    gray = images.astype(np.float64).mean(axis=-1)
    centre = gray[:, 8:24, 8:24].reshape(len(gray), -1)
    border = np.concatenate(
        [gray[:, :4].reshape(len(gray), -1), gray[:, -4:].reshape(len(gray), -1)], 1
    )
    features = np.stack(
        [dx, dy, (dx + dy), np.abs(centre.mean(1) - border.mean(1)), border.std(1)], axis=1
    )
    features /= features.std(axis=0)
    means = np.stack([features[labels == c].mean(0) for c in range(len(SHAPE_CLASSES))])
    for a, b in itertools.combinations(range(len(SHAPE_CLASSES)), 2):
        assert np.abs(means[a] - means[b]).max() > 0.1, (SHAPE_CLASSES[a], SHAPE_CLASSES[b])


# ---------------------------------------------------------------- folders and pipelines


def test_image_folder_round_trip(tmp_path: Path) -> None:
    counts = write_image_folder(tmp_path / "ds", n_per_class=3, size=32, seed=5)
    assert counts == dict.fromkeys(SHAPE_CLASSES, 3)
    files, labels, names = scan_image_folder(tmp_path / "ds")
    assert names == SHAPE_CLASSES and len(files) == 30
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    expected, _ = generate_shapes(3, 32, seed=5)
    np.testing.assert_array_equal(np.asarray(Image.open(files[4])), expected[4])


def test_folder_pipeline_yields_the_files_normalised(tmp_path: Path) -> None:
    """Same-size PNGs pass the resize unchanged, so val batches are exactly pixels / 255."""
    write_image_folder(tmp_path / "ds", n_per_class=4, size=32, seed=1)
    opts = PipelineOptions(input_size=32, batch_size=8, val_split=0.25, seed=0)
    splits = load_dataset(tmp_path / "ds", opts)
    assert (splits.n_train, splits.n_val) == (30, 10)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in splits.val], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    np.testing.assert_array_equal(y, splits.val_labels)
    files, labels, _ = scan_image_folder(tmp_path / "ds")
    _, val_idx = stratified_split(labels, 0.25, 0)
    pixels = np.stack([np.asarray(Image.open(files[i])) for i in val_idx])
    np.testing.assert_allclose(x, pixels / 255.0, atol=1e-6)
    tx, _ = next(iter(splits.train))
    assert tx.dtype == "float32" and tx.shape == (8, 32, 32, 3)
    assert float(np.min(tx)) >= 0.0 and float(np.max(tx)) <= 1.0


def test_resize_rules_on_a_wide_image() -> None:
    """64x32 (w x h) image whose columns encode their index: crop keeps the centre columns."""
    cols = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None], 32, axis=0)
    image = np.repeat(cols, 3, axis=2) * 3
    crop = _resize_uint8(image, 32, Preprocessing()).numpy()
    assert crop.shape == (32, 32, 3)
    np.testing.assert_array_equal(crop[0, :, 0], np.arange(16, 48) * 3)
    stretch = _resize_uint8(image, 32, Preprocessing(resize="stretch")).numpy()
    assert stretch.shape == (32, 32, 3) and stretch[0, 0, 0] < 6 and stretch[0, -1, 0] > 180


def test_stratified_split_is_deterministic_and_per_class() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 5])
    tr, va = stratified_split(labels, 0.2, seed=4)
    _, va2 = stratified_split(labels, 0.2, seed=4)
    np.testing.assert_array_equal(va, va2)
    assert np.bincount(labels[va]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=5)[1])


def test_examples_are_small_and_large_enough(tmp_path: Path) -> None:
    paths = write_examples(tmp_path, size=256)
    assert len(paths) == 2 * len(SHAPE_CLASSES)
    for path in paths:
        assert path.stat().st_size < 30_000, path
        assert Image.open(path).size == (256, 256)


# ---------------------------------------------------------------- one DatasetError per defect


def _missing(root: Path) -> Path:
    return root / "nope"


def _empty(root: Path) -> Path:
    (root / "ds").mkdir()
    return root / "ds"


def _one_class(root: Path) -> Path:
    write_image_folder(root / "ds", 2, 16, 0)
    for name in SHAPE_CLASSES[1:]:
        for f in (root / "ds" / name).iterdir():
            f.unlink()
        (root / "ds" / name).rmdir()
    return root / "ds"


def _class_without_images(root: Path) -> Path:
    write_image_folder(root / "ds", 2, 16, 0)
    (root / "ds" / "zebra").mkdir()
    (root / "ds" / "zebra" / "notes.txt").write_text("no images here")
    return root / "ds"


def _corrupt(root: Path) -> Path:
    write_image_folder(root / "ds", 2, 16, 0)
    good = (root / "ds" / "ring" / "00001.png").read_bytes()
    (root / "ds" / "ring" / "00001.png").write_bytes(good[: len(good) // 2])  # truncated
    return root / "ds"


def _garbage(root: Path) -> Path:
    write_image_folder(root / "ds", 2, 16, 0)
    (root / "ds" / "star" / "bad.jpg").write_bytes(b"this is not a jpeg")
    return root / "ds"


def _unsupported_format(root: Path) -> Path:
    write_image_folder(root / "ds", 2, 16, 0)
    Image.new("RGB", (16, 16)).save(root / "ds" / "cross" / "tiff.png", format="TIFF")
    return root / "ds"


DATASET_ERRORS: list[tuple[Callable[[Path], Path], str]] = [
    (_missing, r"dataset folder does not exist: .*nope"),
    (_empty, r"dataset folder is empty, expected one subfolder per class"),
    (_one_class, r"needs at least 2 class folders, found 1 \('checkerboard'\)"),
    (_class_without_images, r"class folder .*zebra has no images"),
    (_corrupt, r"cannot decode image .*ring/00001.png"),
    (_garbage, r"cannot decode image .*star/bad.jpg"),
    (_unsupported_format, r"unsupported image format TIFF in .*cross/tiff.png"),
]


@pytest.mark.parametrize(
    ("make", "message"), DATASET_ERRORS, ids=lambda v: getattr(v, "__name__", "")
)
def test_loader_names_each_defect(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    with pytest.raises(DatasetError, match=message) as info:
        open_source(make(tmp_path), input_size=16, seed=0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("builtin:cifar", {}, r"unknown built-in dataset.*Received: 'builtin:cifar'"),
        ("some/folder", {"samples_per_class": 3}, r"applies to builtin:shapes only"),
    ],
)
def test_source_argument_errors(source: str, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        open_source(source, input_size=16, seed=0, **kwargs)


@pytest.mark.parametrize("val_split", [0.0, 1.0, -0.1])
def test_val_split_out_of_range(val_split: float) -> None:
    with pytest.raises(DatasetError, match=r"val_split must be in \(0, 1\)"):
        stratified_split(np.zeros(10, np.int32), val_split, 0)


def test_builtin_source_generates_at_the_input_size() -> None:
    src = open_source(BUILTIN_SHAPES, input_size=24, seed=0, samples_per_class=2)
    assert src.images is not None and src.images.shape == (20, 24, 24, 3)
    assert src.class_names == SHAPE_CLASSES
