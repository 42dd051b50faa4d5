"""The baseline: a FastAPI image classifier written the way tutorials write it.

Load the Keras model, decode with plain Pillow, `model.predict` on every request, no batching,
everything inside the async handler. Used only by `benchmarks/gateway_e2e.py`.

    python -m benchmarks.naive_gateway --model model.keras --labels 10 --size 32 --port 8100
"""

from __future__ import annotations

import argparse
import io

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image


def make_app(model_path: str, size: int, num_labels: int) -> FastAPI:

    model = keras.models.load_model(model_path, compile=False)
    labels = [f"class_{i}" for i in range(num_labels)]
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, object]:
        data = await request.body()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size))
        x = np.asarray(image, dtype=np.float32)[None] / 255.0
        logits = model.predict(x, verbose=0)[0]
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:5]
        return {"predictions": [{"label": labels[i], "score": float(probs[i])} for i in top]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    app = make_app(args.model, args.size, args.labels)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
