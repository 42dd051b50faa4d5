"""The same SavedModel behind BentoML's adaptive batching, for `benchmarks/gateway_e2e.py`.

Run with a Python that has bentoml installed (it pins its own dependencies, so it lives in an
environment of its own); TensorFlow comes from `--site-packages`, appended to that
environment's path. One worker; the API is batchable, so BentoML's dispatcher merges
concurrent requests into one signature call (its "cork": a batch goes as soon as the model is
free, bentoml/BentoML `_internal/marshal/dispatcher.py`). Each request is one image, decoded
and resized with Pillow as the naive gateway does.

    /path/to/bento/python benchmarks/bento_service.py --model models/bench/1 --size 32 \\
        --port 3000 --site-packages .venv/lib/python3.11/site-packages
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if os.environ.get("BENCH_SITE_PACKAGES"):  # TensorFlow, from the project's environment
    sys.path.append(os.environ["BENCH_SITE_PACKAGES"])

import bentoml
import numpy as np
from PIL import Image

SIZE = int(os.environ.get("BENCH_SIZE", "32"))


@bentoml.service(workers=1, traffic={"timeout": 60})
class Classifier:
    """`POST /classify` (multipart field `image`): top-5 per image, adaptive batching."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.tf = tf
        self.loaded = tf.saved_model.load(os.environ["BENCH_MODEL"])
        self.fn = self.loaded.signatures["serving_default"]

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=10_000)
    def classify(self, image: list[Image.Image]) -> list[dict[str, Any]]:
        pixels = np.stack(
            [np.asarray(im.convert("RGB").resize((SIZE, SIZE)), dtype=np.uint8) for im in image]
        )
        probs = self.fn(images=self.tf.constant(pixels))["probabilities"].numpy()
        out = []
        for row in probs:
            top = np.argsort(-row)[:5]
            out.append(
                {"predictions": [{"label": f"class_{i}", "score": float(row[i])} for i in top]}
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the SavedModel version folder")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--site-packages", default=os.environ.get("BENCH_SITE_PACKAGES", ""))
    args = parser.parse_args()
    env = {**os.environ, "BENCH_MODEL": args.model, "BENCH_SIZE": str(args.size),
           "BENCH_SITE_PACKAGES": args.site_packages}  # fmt: skip
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "bentoml", "serve", "bento_service:Classifier",
           "--working-dir", str(here), "--port", str(args.port), "--host", "127.0.0.1"]  # fmt: skip
    os.execve(sys.executable, cmd, env)


if __name__ == "__main__":
    main()
