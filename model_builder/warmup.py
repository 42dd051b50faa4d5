"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests`.

One PredictRequest per batch bucket, so TF Serving compiles (XLA) every shape it will ever
see before it reports the model ready. Format as in tensorflow/serving's
`tensorflow_serving/example/resnet_warmup.py`: a TFRecord file of PredictionLog protos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from contract import wire
from contract.manifest import WARMUP_RELPATH
from contract.signatures import INPUT_PIXELS, SIGNATURE_PIXELS
from contract.tfs_protos import PredictionLog

WARMUP_SEED = 20240611  # fixed pixels: warmup files of one export are reproducible


def warmup_images(batch: int, height: int, width: int, seed: int = WARMUP_SEED) -> np.ndarray:
    """Deterministic uint8 RGB pixels `[batch, height, width, 3]` for one warmup request."""
    rng = np.random.default_rng(seed + batch)
    return rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)


def write_warmup_requests(
    version_dir: Path, *, model_name: str, height: int, width: int, buckets: Sequence[int]
) -> Path:
    """Write one `serving_default` PredictRequest per bucket; returns the file path."""
    path = version_dir / WARMUP_RELPATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in buckets:
            request = wire.predict_request(
                model_name,
                signature=SIGNATURE_PIXELS,
                inputs={INPUT_PIXELS: wire.images_tensor(warmup_images(batch, height, width))},
            )
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
