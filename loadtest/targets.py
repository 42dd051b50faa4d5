"""What a request is sent to: the gateway's HTTP API, or TF Serving's gRPC Predict directly.

Both expose `check()` (reachability, raising LoadTestError), `start(due, deadline, done)`
which sends one request and calls `done(due, sent, done, status, ok, error, server_timing,
detail)` when it ends, `expire(now)` (fail what is past its deadline), and `close()`.
Payloads are prepared up front (see recipes) and cycled. `served_input` asks TF Serving
which input its `serving_default` signature takes, before any payload is built.
"""

from __future__ import annotations

import asyncio
import itertools
from time import perf_counter as now  # uvloop's loop.time() ticks in whole ms
from typing import Any, Protocol

import grpc
import numpy as np

from contract import wire
from contract.signatures import INPUT_PIXELS, SIGNATURE_PIXELS, TensorSig, format_shape
from contract.tfs_grpc import prediction_service
from contract.tfs_protos import GetModelMetadataRequest, ModelSpec, SignatureDefMap
from loadtest.errors import LoadTestError
from loadtest.httpclient import DoneFn, HttpPool, error_kind
from loadtest.plan import parse_url

GRPC_MESSAGE_LIMIT = 256 << 20
GRPC_OPTIONS = [("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
                ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT)]  # fmt: skip


class Target(Protocol):
    @property
    def waits(self) -> int: ...

    async def check(self) -> None: ...
    def start(self, due: float, deadline: float, done: DoneFn) -> None: ...
    def expire(self, t: float) -> None: ...
    async def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


class HttpTarget:
    """Pre-encoded requests over the keep-alive pool, cycled round-robin."""

    def __init__(
        self, url: str, requests: list[bytes], *, max_connections: int, connect_timeout: float
    ):
        self.url = url
        self.host, self.port, self.path = parse_url(url)
        self.requests = requests
        self.pool = HttpPool(
            self.host, self.port, max_connections=max_connections, connect_timeout=connect_timeout
        )
        self._next = itertools.cycle(requests).__next__

    async def check(self) -> None:
        try:
            await self.pool.check()
        except (OSError, TimeoutError) as exc:
            why = (
                "timed out"
                if isinstance(exc, TimeoutError)
                else (exc.strerror or type(exc).__name__)
            )
            raise LoadTestError(
                f"cannot connect to {self.host}:{self.port} ({why}). Received: {self.url!r}"
            ) from exc

    def start(self, due: float, deadline: float, done: DoneFn) -> None:
        self.pool.request(self._next(), due, deadline, done)

    def expire(self, t: float) -> None:
        self.pool.expire(t)

    async def close(self) -> None:
        self.pool.close()

    @property
    def waits(self) -> int:
        return self.pool.waits

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "http",
            "url": self.url,
            "path": self.path,
            "request_bytes": len(self.requests[0]),
        }


class GrpcTarget:
    """`PredictionService/Predict` on `serving_default` with uint8 NHWC `images` tensors."""

    def __init__(
        self,
        address: str,
        model: str,
        batches: list[np.ndarray],
        *,
        signature: str,
        input_name: str,
    ):
        self.address, self.model, self.signature = address, model, signature
        self.channel = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
        self.stub = prediction_service(self.channel)
        self.messages = [
            wire.predict_request(
                model, signature=signature, inputs={input_name: wire.images_tensor(batch)}
            )
            for batch in batches
        ]
        self._next = itertools.cycle(self.messages).__next__
        self._calls: set[Any] = set()

    async def check(self) -> None:
        try:
            await asyncio.wait_for(self.channel.channel_ready(), 5.0)
        except TimeoutError as exc:
            raise LoadTestError(
                f"cannot connect to gRPC endpoint {self.address} within 5 s. Received: --grpc {self.address}"
            ) from exc

    def start(self, due: float, deadline: float, done: DoneFn) -> None:
        sent = now()
        call = asyncio.ensure_future(
            self.stub.Predict(self._next(), timeout=max(0.001, deadline - sent))
        )
        self._calls.add(call)

        def finished(call: asyncio.Future[Any]) -> None:
            self._calls.discard(call)
            t = now()
            if call.cancelled():
                done(due, sent, t, None, False, "cancelled", None, None)
                return
            exc = call.exception()
            if exc is None:
                done(due, sent, t, "OK", True, None, None, None)
            elif isinstance(exc, grpc.aio.AioRpcError):
                code = exc.code().name
                if code == "DEADLINE_EXCEEDED":  # ours: a timeout, like HTTP's
                    done(due, sent, t, code, False, "timeout", None, None)
                else:  # the server's reason, e.g. INVALID_ARGUMENT with the shape it wanted
                    done(due, sent, t, code, False, None, None, exc.details() or "")
            else:
                done(due, sent, t, None, False, error_kind(exc), None, None)

        call.add_done_callback(finished)

    def expire(self, t: float) -> None:
        """gRPC enforces each call's own deadline."""

    async def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        await self.channel.close()

    @property
    def waits(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        shape = next(iter(self.messages[0].inputs.values())).tensor_shape
        return {"kind": "grpc", "address": self.address, "model": self.model, "signature": self.signature,
                "input_shape": [d.size for d in shape.dim]}  # fmt: skip


async def served_input(address: str, model: str, *, timeout_s: float) -> TensorSig:
    """(dtype, shape) of the `images` input of `model`'s `serving_default` signature, from
    TF Serving's GetModelMetadata; LoadTestError (with the server's text) when it cannot say."""
    where = f"TF Serving at {address}"
    request = GetModelMetadataRequest(model_spec=ModelSpec(name=model),
                                      metadata_field=["signature_def"])  # fmt: skip
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        try:
            reply = await prediction_service(channel).GetModelMetadata(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise LoadTestError(
                    f"cannot reach {where} within {timeout_s:g} s ({code.name}: {exc.details()}). "
                    f"Received: --grpc {address}"
                ) from None
            raise LoadTestError(
                f"{where} cannot describe model {model!r} ({code.name}: {exc.details()}). "
                f"Received: --model {model}"
            ) from None
    sig_map = SignatureDefMap()
    if "signature_def" not in reply.metadata or not reply.metadata["signature_def"].Unpack(sig_map):
        raise LoadTestError(f"{where} sent no signature_def metadata for model {model!r}")
    sig = sig_map.signature_def.get(SIGNATURE_PIXELS)
    if sig is None or INPUT_PIXELS not in sig.inputs:
        raise LoadTestError(
            f"{where}: model {model!r} has no {SIGNATURE_PIXELS!r} signature with input "
            f"{INPUT_PIXELS!r}, so it was not exported by model_builder. "
            f"Received: signatures={sorted(sig_map.signature_def)}"
        )
    return wire.tensor_sig(sig.inputs[INPUT_PIXELS])


def input_size(
    served: TensorSig, override: tuple[int, int] | None, *, where: str
) -> tuple[int, int]:
    """(width, height) to send for a served `images` input: uint8 [?, H, W, 3]. `override`
    (--grpc-size) fills dimensions the signature leaves open and must match fixed ones."""
    dtype, shape = served
    if dtype != "uint8" or len(shape) != 4 or shape[3] not in (3, None):
        raise LoadTestError(
            f"{where}: the load tester sends uint8 [batch, H, W, 3] images. "
            f"Received: images {dtype}{format_shape(shape)}"
        )
    height, width = shape[1], shape[2]
    if override is not None:
        w, h = override
        if (height, width) != (None, None) and (height, width) != (h, w):
            raise LoadTestError(
                f"--grpc-size must match the served input {format_shape(shape)} (or be left out: "
                f"the size is read from the server). Received: --grpc-size {w}x{h}"
            )
        return w, h
    if height is None or width is None:
        raise LoadTestError(
            f"{where}: the served input {format_shape(shape)} leaves the image size open; "
            "give it with --grpc-size WxH"
        )
    return width, height
