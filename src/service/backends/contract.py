"""What both backends check at start-up: the served signature matches the manifest.

The embedded backend reads TensorSpecs from the loaded SavedModel, the gRPC backend reads
TensorInfo protos from TF Serving's metadata; both reduce them to (dtype name, shape) and
call `check_signature`, so the rule and its error message live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from model_builder.errors import ManifestError
from model_builder.manifest import (
    INPUT_PIXELS,
    OUTPUT_PROBABILITIES,
    SIGNATURE_PIXELS,
    Manifest,
    latest_version_dir,
    read_manifest,
)
from service.errors import GatewayError

# A tensor as both backends see it: dtype name ("uint8", "float32") and shape (None: any).
TensorSig = tuple[str, tuple[int | None, ...]]


class BackendStartupError(GatewayError):
    """The backend cannot serve: model missing, unloadable, or not matching its manifest."""

    code = "backend_startup"


def version_dir(model_base: Path, model_name: str, version: int | None) -> Path:
    """`<base>/<name>/<version>` (the highest on disk when `version` is None), checked to exist."""
    try:
        path = (
            latest_version_dir(model_base, model_name)
            if version is None
            else Path(model_base) / model_name / str(version)
        )
    except ManifestError as exc:
        raise BackendStartupError(f"cannot find the model: {exc}") from None
    if not path.is_dir():
        raise BackendStartupError(f"model version directory {path} does not exist")
    return path


def load_manifest(path: Path) -> Manifest:
    """The manifest of one version directory; a start-up error names the path and the reason."""
    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise BackendStartupError(str(exc)) from None


def _shape_matches(got: tuple[int | None, ...], want: tuple[int | None, ...]) -> bool:
    # None in `want` accepts anything; None in `got` (unknown dim) only matches None.
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def check_signature(
    manifest: Manifest,
    inputs: Mapping[str, TensorSig],
    outputs: Mapping[str, TensorSig],
    *,
    where: str,
) -> None:
    """Raise BackendStartupError unless `serving_default` is uint8 [?,H,W,3] -> float32 [?,C]."""
    spec = manifest.input
    want_in: TensorSig = ("uint8", (None, spec.height, spec.width, spec.channels))
    want_out: TensorSig = ("float32", (None, manifest.num_classes))
    for kind, tensors, name, (dtype, shape) in (
        ("input", inputs, INPUT_PIXELS, want_in),
        ("output", outputs, OUTPUT_PROBABILITIES, want_out),
    ):
        if name not in tensors:
            raise BackendStartupError(
                f"{where}: signature {SIGNATURE_PIXELS!r} has no {kind} {name!r}. "
                f"Received: {kind}s={sorted(tensors)}"
            )
        got_dtype, got_shape = tensors[name]
        if got_dtype != dtype or not _shape_matches(got_shape, shape):
            raise BackendStartupError(
                f"{where}: {kind} {name!r} does not match the manifest "
                f"(model {manifest.model_name} v{manifest.model_version}): expected "
                f"{dtype}{_fmt(shape)}. Received: {got_dtype}{_fmt(got_shape)}"
            )
