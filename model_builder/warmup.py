"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests`.

One PredictRequest per (client call, batch bucket): every (signature, output filter) in
`contract.signatures.CLIENT_CALLS` at every bucket, so TF Serving has run each graph our
clients will ever reach, and XLA has compiled each shape, before it reports the model
AVAILABLE (it replays the file at load: tensorflow/serving
`servables/tensorflow/saved_model_warmup_util.cc`). Format as in tensorflow/serving's
`tensorflow_serving/example/resnet_warmup.py`: a TFRecord file of PredictionLog protos.
TF Serving reads at most 1000 records (`kMaxNumRecords`); 4 calls x 7 buckets is 28.

Pixel records hold one value that TensorFlow repeats over the whole shape (Tensor::FromProto
fills the rest with the last value given), so a 64x224x224x3 record is a few bytes instead of
9.6 MB; encoded-image records hold one small JPEG per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from contract import tfs_protos, wire
from contract.manifest import WARMUP_RELPATH
from contract.signatures import (
    CLIENT_CALLS,
    INPUT_BYTES,
    INPUT_MANIFEST,
    INPUT_PIXELS,
    SIGNATURE_BYTES,
    SIGNATURE_MANIFEST,
    SIGNATURE_PIXELS,
    ClientCall,
)
from contract.tfs_protos import PredictionLog

MAX_RECORDS = 1000  # tensorflow_serving/servables/tensorflow/saved_model_warmup_util.h
WARMUP_PIXEL = 128  # mid grey: every pixel of a pixel record


def warmup_pixels(batch: int, height: int, width: int) -> Any:
    """A uint8 `[batch, height, width, 3]` TensorProto holding one value for every pixel."""
    proto = tfs_protos.TensorProto(dtype=tfs_protos.DataType.DT_UINT8, int_val=[WARMUP_PIXEL])
    for size in (batch, height, width, 3):
        proto.tensor_shape.dim.add(size=size)
    return proto


def warmup_jpeg(height: int, width: int) -> bytes:
    """A deterministic `height x width` RGB JPEG (a smooth gradient, a few KB)."""
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                    np.full((height, width), 96.0, np.float32)], axis=-1)  # fmt: skip
    return bytes(tf.io.encode_jpeg(rgb.astype(np.uint8), quality=90).numpy())


def _inputs(signature: str, batch: int, height: int, width: int) -> dict[str, Any]:
    if signature == SIGNATURE_PIXELS:
        return {INPUT_PIXELS: warmup_pixels(batch, height, width)}
    if signature == SIGNATURE_BYTES:
        jpeg = warmup_jpeg(height, width)
        return {INPUT_BYTES: wire.array_tensor(np.array([jpeg] * batch, dtype=object))}
    if signature == SIGNATURE_MANIFEST:
        return {INPUT_MANIFEST: wire.array_tensor(np.zeros(batch, np.int32))}
    raise ValueError(f"no warmup input for signature {signature!r}")


def warmup_requests(
    model_name: str,
    *,
    height: int,
    width: int,
    buckets: Sequence[int],
    calls: Sequence[ClientCall] = CLIENT_CALLS,
) -> list[Any]:
    """One PredictRequest per (call, bucket), calls in order, buckets ascending."""
    requests = [
        wire.predict_request(
            model_name,
            signature=call.signature,
            inputs=_inputs(call.signature, batch, height, width),
            output_filter=call.output_filter,
        )
        for call in calls
        for batch in buckets
    ]
    if len(requests) > MAX_RECORDS:
        raise ValueError(
            f"TF Serving replays at most {MAX_RECORDS} warmup records. Received: "
            f"{len(calls)} calls x {len(buckets)} buckets = {len(requests)}"
        )
    return requests


def write_warmup_requests(
    version_dir: Path,
    *,
    model_name: str,
    height: int,
    width: int,
    buckets: Sequence[int],
    calls: Sequence[ClientCall] = CLIENT_CALLS,
) -> Path:
    """Write the warmup file (see `warmup_requests`); returns its path."""
    path = version_dir / WARMUP_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    requests = warmup_requests(model_name, height=height, width=width, buckets=buckets, calls=calls)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(version_dir: Path) -> list[Any]:
    """Parse every record of the warmup file back into PredictRequest protos."""
    path = version_dir / WARMUP_RELPATH
    requests = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = PredictionLog.FromString(record)
        requests.append(log.predict_log.request)
    return requests
