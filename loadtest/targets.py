"""What a request is sent to: the gateway's HTTP API, or TF Serving's gRPC Predict directly.

Both expose `check()` (reachability, raising LoadTestError), `start(due, deadline, done)`
which sends one request and calls `done(due, sent, done, status, ok, error, server_timing)`
when it ends, `expire(now)` (fail what is past its deadline), and `close()`. Payloads are
prepared up front and cycled. A *recipe* (`HttpRecipe`, `GrpcRecipe`) is the picklable
description a `--workers` process builds its own target from.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from time import perf_counter as now  # uvloop's loop.time() ticks in whole ms
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc
import numpy as np

from contract import wire
from contract.tfs_grpc import prediction_service
from loadtest.errors import LoadTestError
from loadtest.httpclient import DoneFn, HttpPool, error_kind

DEFAULT_PATH = "/v1/classify"


class Target(Protocol):
    @property
    def waits(self) -> int: ...

    async def check(self) -> None: ...
    def start(self, due: float, deadline: float, done: DoneFn) -> None: ...
    def expire(self, t: float) -> None: ...
    async def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def parse_url(url: str) -> tuple[str, int, str]:
    """`http://host:port/path?query` -> (host, port, path+query); the path defaults to /v1/classify."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadTestError(
            f"URL must look like http://HOST[:PORT][/PATH] (https is not supported). Received: {url!r}"
        )
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise LoadTestError(f"URL has a bad port. Received: {url!r}") from exc
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


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
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise LoadTestError(f"--grpc must be HOST:PORT. Received: {address!r}")
        self.address, self.model, self.signature = address, model, signature
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 256 << 20),
                ("grpc.max_receive_message_length", 256 << 20),
            ],
        )
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
                done(due, sent, t, None, False, "cancelled", None)
                return
            exc = call.exception()
            if exc is None:
                done(due, sent, t, "OK", True, None, None)
            elif isinstance(exc, grpc.aio.AioRpcError):
                code = exc.code().name
                done(
                    due,
                    sent,
                    t,
                    code,
                    False,
                    "timeout" if code == "DEADLINE_EXCEEDED" else None,
                    None,
                )
            else:
                done(due, sent, t, None, False, error_kind(exc), None)

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
