"""Model backends behind one protocol: `embedded` (in-process TF) and `tfserving` (gRPC)."""
