"""`resnet-serving rollout`: take a new model version through canary steps, judged on its own.

An operator tool beside the gateway, standing on the contract alone: it writes TF Serving's
`models.config` (which versions are served, and the `stable` / `canary` labels), asks TF
Serving for version states over gRPC, and talks to the gateway's API: the admin call that
sets the canary's share, `/v1/models` for what the gateway serves, `/metrics` for each
version's requests, errors and latency.
"""
