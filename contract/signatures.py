"""Signature and tensor names of every export, and the one rule a served signature must meet.

The export writes these names, the gateway and the load tester send them, the stand-in and
`verify` check them. Both gateway backends reduce what they see of the served model (Keras
TensorSpecs in-process, TensorInfo protos over gRPC) to `TensorSig`s and call
`check_signature`, so the rule and its message live here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from contract.errors import SignatureMismatch

if TYPE_CHECKING:
    from contract.manifest import Manifest

SIGNATURE_PIXELS = "serving_default"  # uint8 [batch, H, W, 3] RGB -> outputs below
SIGNATURE_BYTES = "serving_bytes"  # string [batch] JPEG/PNG bytes -> outputs below
INPUT_PIXELS = "images"
INPUT_BYTES = "image_bytes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_TOP_K_IDS = "top_k_ids"
OUTPUT_TOP_K_SCORES = "top_k_scores"

# A tensor as both backends see it: dtype name ("uint8", "float32") and shape (None: any).
TensorSig = tuple[str, tuple[int | None, ...]]


def _shape_matches(got: tuple[int | None, ...], want: tuple[int | None, ...]) -> bool:
    # None in `want` accepts anything; None in `got` (unknown dim) only matches None.
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def format_shape(shape: Sequence[int | None]) -> str:
    """`[?,224,224,3]`: unknown dims as `?`."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def check_signature(
    manifest: Manifest,
    inputs: Mapping[str, TensorSig],
    outputs: Mapping[str, TensorSig],
    *,
    where: str,
) -> None:
    """Raise SignatureMismatch unless `serving_default` is uint8 [?,H,W,3] -> float32 [?,C]."""
    spec = manifest.input
    want_in: TensorSig = ("uint8", (None, spec.height, spec.width, spec.channels))
    want_out: TensorSig = ("float32", (None, manifest.num_classes))
    for kind, tensors, name, (dtype, shape) in (
        ("input", inputs, INPUT_PIXELS, want_in),
        ("output", outputs, OUTPUT_PROBABILITIES, want_out),
    ):
        if name not in tensors:
            raise SignatureMismatch(
                f"{where}: signature {SIGNATURE_PIXELS!r} has no {kind} {name!r}. "
                f"Received: {kind}s={sorted(tensors)}"
            )
        got_dtype, got_shape = tensors[name]
        if got_dtype != dtype or not _shape_matches(got_shape, shape):
            raise SignatureMismatch(
                f"{where}: {kind} {name!r} does not match the manifest "
                f"(model {manifest.model_name} v{manifest.model_version}): expected "
                f"{dtype}{format_shape(shape)}. Received: {got_dtype}{format_shape(got_shape)}"
            )
