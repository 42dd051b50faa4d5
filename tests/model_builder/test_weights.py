"""Weight loading, fully offline: ImageNet files placed in a temporary KERAS_HOME in the
legacy Keras 2 layout keras.applications ships, user .keras/.weights.h5 files, and the
one-line errors for files that are missing, unreadable or do not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from model_builder import weights
from model_builder.errors import WeightsError
from model_builder.resnet import build_model
from model_builder.weights import ImagenetFiles, load_weights


def write_keras_applications_file(model: Any, home: Path, arch: str, *, top: bool) -> Path:
    """Write `model`'s weights as keras.applications names and lays out its ImageNet files."""
    path = home / "models" / ImagenetFiles.name(arch, top=top)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    if not top:  # the _notop file has no classifier
        with h5py.File(path, "a") as f:
            del f["predictions"]
            names = [n for n in f.attrs["layer_names"] if n not in (b"predictions", "predictions")]
            f.attrs["layer_names"] = names
    return path


def assert_same_weights(a: Any, b: Any, *, skip: tuple[str, ...] = ()) -> None:
    for la in a.layers:
        if la.weights and la.name not in skip:
            for wa, wb in zip(la.get_weights(), b.get_layer(la.name).get_weights(), strict=True):
                np.testing.assert_array_equal(wa, wb)


def tiny(arch: str, **kw: Any) -> Any:
    """Same layer names and code path as the real net, a fraction of the size."""
    return build_model(arch, input_size=32, width=kw.pop("width", 4), **kw)


def test_imagenet_resnet50_from_keras_cache(tmp_path: Path, monkeypatch: Any) -> None:
    source = build_model("resnet50")
    path = write_keras_applications_file(source, tmp_path, "resnet50", top=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    target = build_model("resnet50")
    before = target.get_layer("conv1_conv").get_weights()[0]
    assert not np.array_equal(before, source.get_layer("conv1_conv").get_weights()[0])

    loaded = load_weights(target, "imagenet", arch="resnet50", download=False)

    assert loaded.path == path and not loaded.head_skipped
    assert loaded.layers_loaded == len([la for la in target.layers if la.weights])
    assert_same_weights(source, target)


@pytest.mark.parametrize("top_file", [True, False])
def test_imagenet_body_only_when_classes_differ(
    tmp_path: Path, monkeypatch: Any, top_file: bool
) -> None:
    source = tiny("resnet101", num_classes=1000)
    write_keras_applications_file(source, tmp_path, "resnet101", top=top_file)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    target = tiny("resnet101", num_classes=7)
    head = target.get_layer("predictions").get_weights()[0].copy()

    loaded = load_weights(target, "imagenet", arch="resnet101", download=False)

    assert loaded.head_skipped
    assert_same_weights(source, target, skip=("predictions",))
    np.testing.assert_array_equal(target.get_layer("predictions").get_weights()[0], head)


def test_imagenet_absent_and_offline_says_where(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_weights(tiny("resnet50"), "imagenet", arch="resnet50", cache_dir=tmp_path, download=False)  # fmt: skip
    message = str(info.value)
    assert str(tmp_path / "models") in message
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in message
    assert weights.BASE_WEIGHTS_URL in message


def test_imagenet_download_failure_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    # Port 9 (discard) on loopback is closed here: a real, immediate connection failure.
    monkeypatch.setattr(weights, "BASE_WEIGHTS_URL", "http://127.0.0.1:9/")
    with pytest.raises(WeightsError, match="download failed") as info:
        load_weights(tiny("resnet152"), "imagenet", arch="resnet152", cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_imagenet_only_for_keras_applications_archs() -> None:
    with pytest.raises(WeightsError, match=r"resnet50, resnet101, resnet152.*arch='resnet18'"):
        load_weights(tiny("resnet18"), "imagenet", arch="resnet18")


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_user_files_load(tmp_path: Path, suffix: str) -> None:
    source = tiny("resnet_cifar", width=2)
    path = tmp_path / f"mine{suffix}"
    if suffix == ".keras":
        source.save(path)
    else:
        source.save_weights(path)
    target = tiny("resnet_cifar", width=2)

    loaded = load_weights(target, str(path), arch="resnet_cifar")

    assert loaded.path == path
    assert_same_weights(source, target)


def test_wrong_shape_names_layer_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "w8.weights.h5"
    tiny("resnet18", width=8).save_weights(path)
    with pytest.raises(WeightsError) as info:
        load_weights(tiny("resnet18", width=16), path, arch="resnet18")
    assert str(info.value) == (
        f"weights file {path} does not fit resnet18: layer 'conv1_conv' expects shapes "
        "[(7, 7, 3, 16), (16,)] but the file has [(7, 7, 3, 8), (8,)]"
    )


def test_deeper_file_is_refused_and_model_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "r101.weights.h5"
    tiny("resnet101").save_weights(path)
    target = tiny("resnet50")
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(WeightsError, match=r"lacks, e\.g\. 'conv4_block10_1_bn'"):
        load_weights(target, path, arch="resnet50")
    for a, b in zip(before, target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_shallower_file_names_the_missing_layer(tmp_path: Path) -> None:
    path = tmp_path / "r50.weights.h5"
    tiny("resnet50").save_weights(path)
    with pytest.raises(WeightsError, match="layer 'conv4_block7_1_conv' is missing"):
        load_weights(tiny("resnet101"), path, arch="resnet101")


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("absent.keras", None, "weights file not found. Received: weights="),
        ("model.pt", b"x", "a .keras or .weights.h5 file. Received: weights="),
        ("junk.weights.h5", b"not hdf5", "cannot read weights file"),
        ("junk.keras", b"not a zip", "cannot read weights file"),
    ],
)
def test_bad_sources(tmp_path: Path, name: str, content: bytes | None, fragment: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=fragment):
        load_weights(tiny("resnet18"), str(path), arch="resnet18")


def test_random_keeps_initialisation() -> None:
    model = tiny("resnet18")
    before = model.get_weights()[0].copy()
    loaded = load_weights(model, "random", arch="resnet18")
    assert loaded.source == "random" and loaded.path is None
    np.testing.assert_array_equal(model.get_weights()[0], before)
