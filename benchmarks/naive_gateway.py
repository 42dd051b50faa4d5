"""The baselines: a FastAPI image classifier written the way tutorials write it, two ways.

Plain Pillow decode, one model call per request, no batching, everything inside the async
handler. `--mode signature` loads the exported SavedModel and calls its `serving_default`
signature directly (the strong peer: the same XLA-compiled graph our gateway runs);
`--mode keras` loads the Keras model and calls `model.predict` per request (the slowest way
Keras offers). Used only by `benchmarks/gateway_e2e.py`.

    python -m benchmarks.naive_gateway --mode signature --model models/bench/1 --size 32 --port 8100
    python -m benchmarks.naive_gateway --mode keras --model model.keras --size 32 --port 8100
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image


def keras_predict(model_path: str) -> Callable[[np.ndarray], np.ndarray]:
    """float [1,H,W,3] in 0..1 -> probabilities, through `model.predict` (logits -> softmax)."""
    import keras

    model = keras.models.load_model(model_path, compile=False)

    def predict(pixels: np.ndarray) -> np.ndarray:
        logits = model.predict(pixels.astype(np.float32)[None] / 255.0, verbose=0)[0]
        probs = np.exp(logits - logits.max())
        return np.asarray(probs / probs.sum())

    return predict


def signature_predict(version_dir: str) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 [H,W,3] -> probabilities, through the SavedModel's `serving_default` signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    fn = loaded.signatures["serving_default"]

    def predict(pixels: np.ndarray) -> np.ndarray:
        out = fn(images=tf.constant(pixels[None]))
        return np.asarray(out["probabilities"][0])

    predict.loaded = loaded  # type: ignore[attr-defined]  # keeps the variables alive
    return predict


def make_app(predict: Callable[[np.ndarray], np.ndarray], size: int, num_labels: int) -> FastAPI:
    labels = [f"class_{i}" for i in range(num_labels)]
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def classify(request: Request) -> dict[str, object]:
        data = await request.body()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        probs = predict(np.asarray(image, dtype=np.uint8))
        top = np.argsort(-probs)[:5]
        return {"predictions": [{"label": labels[i], "score": float(probs[i])} for i in top]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["signature", "keras"], default="signature")
    parser.add_argument("--model", required=True, help="SavedModel version dir, or .keras file")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    predict = (
        signature_predict(args.model) if args.mode == "signature" else keras_predict(args.model)
    )
    app = make_app(predict, args.size, args.labels)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
