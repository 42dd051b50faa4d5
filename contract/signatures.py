"""Signature and tensor names of every export, and the one rule a served signature must meet.

The export writes these names, the gateway and the load tester send them, the stand-in and
`verify` check them. Both gateway backends reduce what they see of the served model (Keras
TensorSpecs in-process, TensorInfo protos over gRPC) to `TensorSig`s and call
`check_signature`, so the rule and its message live here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from contract.errors import SignatureMismatch

SIGNATURE_PIXELS = "serving_default"  # uint8 [batch, H, W, 3] RGB -> outputs below
SIGNATURE_BYTES = "serving_bytes"  # string [batch] JPEG/PNG bytes -> outputs below
# The contract over gRPC: int32 [batch] (values ignored) -> `manifest` string [batch], every
# row the export's manifest.json, so a gateway reads the contract from the model server and
# needs no model volume. TF Serving runs every signature through its batching session when
# --enable_batching is on, and a batched Run must have an input with a 0th dimension
# (batching_util.h, ComputeTensorBatchSize: "Batching Run() must have at least one input
# tensor") and outputs of rank >= 1 (batching_session.cc, SplitOutputTensors): hence the
# dummy input and one manifest per row rather than a zero-input, scalar-output signature. A
# string output splits back per task like any other (TF core/framework/tensor_util.cc, Split
# copies DT_STRING element by element).
SIGNATURE_MANIFEST = "serving_manifest"
INPUT_PIXELS = "images"
INPUT_BYTES = "image_bytes"
INPUT_MANIFEST = "unused"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_TOP_K_IDS = "top_k_ids"
OUTPUT_TOP_K_SCORES = "top_k_scores"
OUTPUT_MANIFEST = "manifest"


class ClientCall(NamedTuple):
    """One kind of Predict call our clients send: a signature and its output filter."""

    signature: str
    output_filter: tuple[str, ...]  # () = every output


# Every (signature, output filter) a client of ours sends. The export writes one warmup record
# per call and batch bucket, so TF Serving has run (and XLA compiled) each of them before it
# reports the model AVAILABLE; tests check each client against this list.
GATEWAY_CALL = ClientCall(SIGNATURE_PIXELS, (OUTPUT_PROBABILITIES,))  # service/backends/tfserving
MANIFEST_CALL = ClientCall(SIGNATURE_MANIFEST, (OUTPUT_MANIFEST,))  # the gateway, per version
CLIENT_CALLS: tuple[ClientCall, ...] = (
    GATEWAY_CALL,
    MANIFEST_CALL,
    ClientCall(SIGNATURE_PIXELS, ()),  # `loadtest --grpc`, plain TF Serving clients
    ClientCall(SIGNATURE_BYTES, ()),  # encoded-image clients (docs/backends.md)
)

# A tensor as both backends see it: dtype name ("uint8", "float32") and shape (None: any).
TensorSig = tuple[str, tuple[int | None, ...]]


@dataclass(frozen=True)
class Signature:
    """The tensors a signature must have (others may exist beside them)."""

    name: str
    inputs: Mapping[str, TensorSig]
    outputs: Mapping[str, TensorSig]


MANIFEST_SIGNATURE = Signature(
    SIGNATURE_MANIFEST,
    inputs={INPUT_MANIFEST: ("int32", (None,))},
    outputs={OUTPUT_MANIFEST: ("string", (None,))},
)
"""What `serving_manifest` takes and returns, in every export since it was added."""


def _shape_matches(got: tuple[int | None, ...], want: tuple[int | None, ...]) -> bool:
    # None in `want` accepts anything; None in `got` (unknown dim) only matches None.
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def format_shape(shape: Sequence[int | None]) -> str:
    """`[?,224,224,3]`: unknown dims as `?`."""
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def check_signature(
    expected: Signature,
    inputs: Mapping[str, TensorSig],
    outputs: Mapping[str, TensorSig],
    *,
    where: str,
) -> None:
    """Raise SignatureMismatch unless `inputs`/`outputs` hold every tensor `expected` names,
    each with its dtype and a compatible shape."""
    for kind, tensors, wanted in (
        ("input", inputs, expected.inputs),
        ("output", outputs, expected.outputs),
    ):
        for name, (dtype, shape) in wanted.items():
            if name not in tensors:
                raise SignatureMismatch(
                    f"{where}: signature {expected.name!r} has no {kind} {name!r}. "
                    f"Received: {kind}s={sorted(tensors)}"
                )
            got_dtype, got_shape = tensors[name]
            if got_dtype != dtype or not _shape_matches(got_shape, shape):
                # () is also how a shape of unknown rank arrives (wire.tensor_sig)
                got = format_shape(got_shape) if got_shape else " of unknown rank (or a scalar)"
                raise SignatureMismatch(
                    f"{where}: {kind} {name!r} does not match the manifest: expected "
                    f"{dtype}{format_shape(shape)}. Received: {got_dtype}{got}"
                )
