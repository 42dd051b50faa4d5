"""The export's contract: `assets.extra/manifest.json` inside every SavedModel version.

The gateway, the deploy files and the load tester read the preprocessing rule, input size,
labels and batch buckets from here; nobody copies these constants by hand.

Wire format to the model is always uint8 RGB NHWC at `input.height x input.width`. The
gateway produces it with `preprocessing` (resize + crop); the SavedModel applies
`normalization` in-graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.errors import ImageShapeError, ManifestError
from contract.signatures import (
    INPUT_PIXELS,
    OUTPUT_PROBABILITIES,
    SIGNATURE_BYTES,
    SIGNATURE_MANIFEST,
    SIGNATURE_PIXELS,
    Signature,
)

SCHEMA_VERSION = 1
MANIFEST_RELPATH = Path("assets.extra") / "manifest.json"
WARMUP_RELPATH = Path("assets.extra") / "tf_serving_warmup_requests"
LABELS_RELPATH = Path("assets") / "labels.txt"
DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # also a safe file and URL path name

Precision = Literal["float32", "bfloat16", "float16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the serving signature takes: uint8 RGB images, NHWC."""

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[3] = 3
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    channel_order: Literal["RGB"] = "RGB"


class Preprocessing(_Strict):
    """How a client turns an arbitrary image into the input tensor (done by the gateway).

    `resize_shorter_center_crop`: resize so the shorter side is `size / crop_fraction`, then
    take the centre `height x width` crop (ImageNet style is crop_fraction=0.875).
    `stretch`: resize straight to `height x width`, ignoring aspect ratio.
    """

    resize: Literal["resize_shorter_center_crop", "stretch"] = "resize_shorter_center_crop"
    crop_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    background_rgb: tuple[int, int, int] = (255, 255, 255)  # alpha is composited onto this
    apply_exif_orientation: bool = True


class Normalization(_Strict):
    """Applied inside the graph: reorder channels, then `(x * scale - mean) / std`."""

    model_channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


class Manifest(_Strict):
    """Everything a server or client needs to use one exported model version."""

    schema_version: Literal[1] = 1
    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    model_version: int = Field(gt=0)
    architecture: str
    input: InputSpec
    preprocessing: Preprocessing = Preprocessing()
    normalization: Normalization = Normalization()
    labels: tuple[str, ...] = Field(min_length=2)
    top_k: int = Field(default=5, gt=0)
    batch_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    precision: Precision = "float32"
    xla_compiled: bool = True
    folded_batchnorm: bool = False
    signatures: dict[str, str] = {
        SIGNATURE_PIXELS: "uint8 [batch, H, W, 3] RGB -> probabilities, top_k_ids, top_k_scores",
        SIGNATURE_BYTES: "string [batch] JPEG/PNG bytes -> probabilities, top_k_ids, top_k_scores",
        SIGNATURE_MANIFEST: "int32 [batch] (ignored) -> manifest: this manifest's JSON per row",
    }
    created_at: str = ""
    framework: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.top_k > len(self.labels):
            raise ValueError(
                f"top_k ({self.top_k}) exceeds the number of labels ({len(self.labels)})"
            )
        buckets = list(self.batch_buckets)
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(
                f"batch_buckets must be strictly increasing positive ints, got {buckets}"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]

    def pixels_signature(self) -> Signature:
        """What `serving_default` must take and return: uint8 [?,H,W,3] -> float32 [?,C]."""
        spec = self.input
        return Signature(
            SIGNATURE_PIXELS,
            inputs={INPUT_PIXELS: ("uint8", (None, spec.height, spec.width, spec.channels))},
            outputs={OUTPUT_PROBABILITIES: ("float32", (None, self.num_classes))},
        )

    def decodes_like(self, other: Manifest) -> bool:
        """True when pixels decoded for `other` are valid input for this one (same input
        spec and preprocessing), so a request moved between versions need not decode again."""
        return self.input == other.input and self.preprocessing == other.preprocessing

    def check_images(self, images: np.ndarray) -> None:
        """Raise ImageShapeError unless `images` is uint8 `[N, height, width, 3]`, N >= 1.

        The one check of what goes to the model, for everyone who hands it pixels (the
        gateway's batcher and both backends), so they all refuse with the same message.
        """
        spec = self.input
        want = (spec.height, spec.width, spec.channels)
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:] != want
            or not len(images)
        ):
            raise ImageShapeError(
                f"images for model {self.model_name} v{self.model_version} must be uint8 "
                f"[N,{want[0]},{want[1]},{want[2]}] with N >= 1. "
                f"Received: {images.dtype}{list(images.shape)}"
            )

    def bucket_for(self, n: int) -> int:
        """The smallest bucket that holds `n` images (the caller splits batches above max)."""
        for b in self.batch_buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} exceeds the largest bucket {self.max_batch}")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def write_manifest(manifest: Manifest, version_dir: Path) -> Path:
    """Write `assets.extra/manifest.json` under a SavedModel version directory."""
    path = version_dir / MANIFEST_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def read_manifest(version_dir: Path) -> Manifest:
    """Read and validate the manifest of one exported version; ManifestError says why not."""
    path = Path(version_dir) / MANIFEST_RELPATH
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}: was this exported by model_builder?") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    return parse_manifest(text, where=str(path))


def parse_manifest(data: bytes | str, *, where: str) -> Manifest:
    """A manifest from its JSON text (a file, or the `serving_manifest` signature's answer);
    ManifestError names `where` it came from and what is wrong."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {where}: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ManifestError(f"manifest {where} is invalid at {loc}: {first['msg']}") from None


def versions_on_disk(model_base: Path, model_name: str) -> list[int]:
    """The numeric version directories under `<model_base>/<model_name>`, ascending."""
    model_dir = Path(model_base) / model_name
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())


def latest_version_dir(model_base: Path, model_name: str) -> Path:
    """`<model_base>/<model_name>/<highest numeric version>`, as TF Serving picks it."""
    versions = versions_on_disk(model_base, model_name)
    if not versions:
        raise ManifestError(f"no numeric version directories under {Path(model_base) / model_name}")
    return Path(model_base) / model_name / str(versions[-1])


def version_dir(model_base: Path, model_name: str, version: int | None) -> Path:
    """`<base>/<name>/<version>` (the highest on disk when `version` is None), checked to exist."""
    path = (
        latest_version_dir(model_base, model_name)
        if version is None
        else Path(model_base) / model_name / str(version)
    )
    if not path.is_dir():
        raise ManifestError(f"model version directory {path} does not exist")
    return path
