"""What a run sends, prepared once before the clock starts, as picklable recipes.

A recipe (`HttpRecipe`, `GrpcRecipe`) holds the encoded payloads and what a target needs to
connect; the runner builds its target from it, and each `--workers` process builds its own.
For gRPC the image size and dtype come from the server: `served_input` reads the
`serving_default` signature (GetModelMetadata) and the images are resized to it, so a run
against a 32x32 model sends 32x32 images without being told.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.signatures import INPUT_PIXELS, SIGNATURE_PIXELS
from loadtest import payloads
from loadtest.plan import GrpcTargetPlan, HttpTargetPlan, Inputs, TargetPlan
from loadtest.targets import GrpcTarget, HttpTarget, input_size, served_input


@dataclass(frozen=True)
class HttpRecipe:
    """What a worker process needs to build its own HttpTarget (pre-encoded requests)."""

    url: str
    requests: list[bytes]
    max_connections: int
    connect_timeout: float

    def build(self, share: int = 1) -> HttpTarget:
        """The target, with `1/share` of the connection cap (one of `share` workers)."""
        cap = max(1, -(-self.max_connections // share))
        return HttpTarget(self.url, self.requests, max_connections=cap,
                          connect_timeout=self.connect_timeout)  # fmt: skip


@dataclass(frozen=True)
class GrpcRecipe:
    """What a worker process needs to build its own GrpcTarget (uint8 NHWC batches)."""

    address: str
    model: str
    batches: list[np.ndarray]
    signature: str
    input_name: str

    def build(self, share: int = 1) -> GrpcTarget:
        return GrpcTarget(self.address, self.model, self.batches, signature=self.signature,
                          input_name=self.input_name)  # fmt: skip


Recipe = HttpRecipe | GrpcRecipe


def images(inputs: Inputs) -> list[payloads.Image]:
    """The images to send: the folder's, or generated at every size and format asked for."""
    if inputs.images_dir is not None:
        return payloads.load_images(inputs.images_dir)
    return payloads.generate_images(inputs.gen_sizes, inputs.gen_formats, count=inputs.gen_count)


def http_recipe(target: HttpTargetPlan, inputs: Inputs, *, max_connections: int,
                connect_timeout_s: float) -> HttpRecipe:  # fmt: skip
    """Complete HTTP requests to the gateway (`?top_k=` appended when asked)."""
    path = target.path
    if inputs.top_k is not None:
        path += ("&" if "?" in path else "?") + f"top_k={inputs.top_k}"
    reqs = payloads.build_http_requests(images(inputs), host=f"{target.host}:{target.port}",
                                        path=path, per_request=inputs.per_request,
                                        encoding=inputs.body)  # fmt: skip
    return HttpRecipe(target.url, reqs, max_connections, connect_timeout_s)


async def grpc_recipe(target: GrpcTargetPlan, inputs: Inputs, *, timeout_s: float) -> GrpcRecipe:
    """Pixel batches at the size the served signature takes (see targets.input_size)."""
    served = await served_input(target.address, target.model, timeout_s=timeout_s)
    w, h = input_size(served, target.size, where=f"model {target.model!r} at {target.address}")
    batches = payloads.pixel_batches(images(inputs), per_request=inputs.per_request,
                                     height=h, width=w)  # fmt: skip
    return GrpcRecipe(target.address, target.model, batches, SIGNATURE_PIXELS, INPUT_PIXELS)


async def build_recipe(target: TargetPlan, inputs: Inputs, *, max_connections: int,
                       connect_timeout_s: float) -> Recipe:  # fmt: skip
    """The recipe for `target`: everything encoded once, picklable for worker processes."""
    if isinstance(target, GrpcTargetPlan):
        return await grpc_recipe(target, inputs, timeout_s=max(connect_timeout_s, 5.0))
    return http_recipe(target, inputs, max_connections=max_connections,
                       connect_timeout_s=connect_timeout_s)  # fmt: skip
