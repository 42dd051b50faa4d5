"""The manifest schema: valid manifests round-trip, invalid ones fail with a located reason."""

import json
from pathlib import Path

import numpy as np
import pytest

from contract.errors import ImageShapeError, ManifestError
from contract.manifest import (
    MANIFEST_RELPATH,
    InputSpec,
    Manifest,
    latest_version_dir,
    read_manifest,
    version_dir,
    write_manifest,
)
from contract.signatures import INPUT_PIXELS, OUTPUT_PROBABILITIES, SIGNATURE_PIXELS


def make_manifest(**overrides: object) -> Manifest:
    base: dict[str, object] = {
        "model_name": "demo",
        "model_version": 1,
        "architecture": "resnet_cifar",
        "input": InputSpec(height=32, width=32),
        "labels": ("a", "b", "c", "d", "e", "f"),
    }
    base.update(overrides)
    return Manifest(**base)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    m = make_manifest()
    write_manifest(m, tmp_path)
    assert read_manifest(tmp_path) == m


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (33, 64), (64, 64)])
def test_bucket_for(n: int, bucket: int) -> None:
    assert make_manifest().bucket_for(n) == bucket


@pytest.mark.parametrize("n", [1, 3, 64])
def test_check_images_takes_the_models_input(n: int) -> None:
    make_manifest().check_images(np.zeros((n, 32, 32, 3), np.uint8))


@pytest.mark.parametrize(
    ("images", "received"),
    [
        (np.zeros((2, 32, 32, 3), np.float32), "float32[2, 32, 32, 3]"),  # dtype
        (np.zeros((2, 32, 31, 3), np.uint8), "uint8[2, 32, 31, 3]"),  # width
        (np.zeros((2, 31, 32, 3), np.uint8), "uint8[2, 31, 32, 3]"),  # height
        (np.zeros((2, 32, 32, 1), np.uint8), "uint8[2, 32, 32, 1]"),  # channels
        (np.zeros((32, 32, 3), np.uint8), "uint8[32, 32, 3]"),  # one image without N
        (np.zeros((0, 32, 32, 3), np.uint8), "uint8[0, 32, 32, 3]"),  # empty batch
    ],
)
def test_check_images_refuses_anything_else_with_one_message(
    images: np.ndarray, received: str
) -> None:
    with pytest.raises(ImageShapeError) as info:
        make_manifest().check_images(images)
    assert str(info.value) == (
        f"images for model demo v1 must be uint8 [N,32,32,3] with N >= 1. Received: {received}"
    )


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"top_k": 7}, "<root>"),
        ({"batch_buckets": [4, 2]}, "<root>"),
        ({"model_name": "bad name"}, "model_name"),
        ({"input": {"height": 0, "width": 32}}, "input.height"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_manifest_names_the_field(
    tmp_path: Path, change: dict[str, object], where: str
) -> None:
    raw = json.loads(make_manifest().to_json())
    raw.update(change)
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / "assets.extra" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=f"invalid at {where}"):
        read_manifest(tmp_path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path)


def test_unreadable_manifest_says_which_file(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_RELPATH
    path.parent.mkdir()
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ManifestError, match=rf"cannot read manifest {path}: Expecting"):
        read_manifest(tmp_path)


def test_write_manifest_makes_its_folder_and_overwrites(tmp_path: Path) -> None:
    """Into a version directory that does not exist yet, then again over the first one."""
    target = tmp_path / "demo" / "1"
    write_manifest(make_manifest(), target)
    write_manifest(make_manifest(labels=("é", "北", "c", "d", "e", "f")), target)
    assert read_manifest(target).labels[:2] == ("é", "北")
    assert (
        json.loads((target / MANIFEST_RELPATH).read_text(encoding="utf-8"))["model_name"] == "demo"
    )


def test_latest_version_dir(tmp_path: Path) -> None:
    for v in ("1", "10", "2", "tmp"):
        (tmp_path / "demo" / v).mkdir(parents=True)
    assert latest_version_dir(tmp_path, "demo").name == "10"
    with pytest.raises(ManifestError, match=r"no numeric version directories under .*other"):
        latest_version_dir(tmp_path, "other")


def test_version_dir_is_the_given_one_or_the_latest(tmp_path: Path) -> None:
    for v in ("1", "3"):
        (tmp_path / "demo" / v).mkdir(parents=True)
    assert version_dir(tmp_path, "demo", None) == tmp_path / "demo" / "3"
    assert version_dir(tmp_path, "demo", 1) == tmp_path / "demo" / "1"
    with pytest.raises(ManifestError, match=r"model version directory .*demo/2 does not exist"):
        version_dir(tmp_path, "demo", 2)


def test_bucket_for_past_the_largest_bucket_says_so() -> None:
    with pytest.raises(ValueError, match="batch of 65 exceeds the largest bucket 64"):
        make_manifest().bucket_for(65)


def test_a_non_square_input_is_named_height_first() -> None:
    m = make_manifest(input=InputSpec(height=24, width=32))
    with pytest.raises(ImageShapeError, match=r"uint8 \[N,24,32,3\] with N >= 1"):
        m.check_images(np.zeros((1, 32, 24, 3), np.uint8))


def test_pixels_signature_is_the_models_input_and_output() -> None:
    sig = make_manifest(input=InputSpec(height=24, width=32)).pixels_signature()
    assert sig.name == SIGNATURE_PIXELS
    assert sig.inputs == {INPUT_PIXELS: ("uint8", (None, 24, 32, 3))}
    assert sig.outputs == {OUTPUT_PROBABILITIES: ("float32", (None, 6))}
