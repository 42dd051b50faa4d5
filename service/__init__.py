"""service: the FastAPI gateway, its micro-batcher and its backends (TF Serving gRPC, embedded)."""
