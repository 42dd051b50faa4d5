"""A tiny gateway look-alike over raw asyncio: for tests, calibration and benchmarks.

It answers every request with a small JSON body, `Server-Timing` and `X-Request-ID`, like
`POST /v1/classify` does, `GET /readyz` with 200, and `GET /v1/models` with one model and
its batch buckets (what `loadtest sweep` reads). It can be told to add a fixed delay
or to stall once (`stall_at_s`, `stall_s`): every request that arrives during the stall,
and the ones already waiting, are answered when it ends. Run it as
`python -m testdoubles.echo_server --port 8080` to measure the generator's own ceiling;
`--processes N` serves the port from N processes (SO_REUSEPORT), so that the endpoint is
not the bottleneck when load generators are compared against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import cast

from contract.manifest import DEFAULT_BUCKETS


@dataclass
class Behaviour:
    """How the server answers: fixed delay, one stall, or a fixed status."""

    delay_s: float = 0.0
    stall_at_s: float | None = None  # seconds after the first request
    stall_s: float = 0.0
    status: int = 200
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # reported by GET /v1/models


_BODY = b'{"predictions":[{"top_k":[{"label":"cat","score":0.9}]}]}'
_ids = itertools.count()


def _models(buckets: tuple[int, ...]) -> bytes:
    """`GET /v1/models` as the gateway answers it, reduced to what clients read."""
    body = json.dumps({"models": [{"name": "echo", "version": 1, "batch_buckets": list(buckets)}]})
    return (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        f"{body}"
    ).encode()


def _response(status: int) -> bytes:
    reason = {200: "OK", 503: "Service Unavailable", 429: "Too Many Requests"}.get(status, "X")
    extra = b"Retry-After: 1\r\n" if status in (429, 503) else b""
    return (
        (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"server-timing: decode;dur=0.1, queue;dur=0.2, backend;dur=0.3, total;dur=0.6\r\n"
            f"x-request-id: r{next(_ids)}\r\ncontent-length: {len(_BODY)}\r\n"
        ).encode()
        + extra
        + b"\r\n"
        + _BODY
    )


class _Handler(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        wait = self.server.wait_for()
        if wait <= 0:
            self._answer(head)
        else:
            self.busy = True
            asyncio.get_running_loop().call_later(wait, self._answer, head)

    def _answer(self, head: bytes) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.server.handled += 1
        behaviour = self.server.behaviour
        if head.startswith(b"get /v1/models"):
            self.transport.write(_models(behaviour.buckets))
        else:
            status = 200 if head.startswith(b"get /readyz") else behaviour.status
            self.transport.write(_response(status))
        self._next()


class EchoServer:
    """Serve on 127.0.0.1:`port` (0 picks a free port) inside the running loop."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.handled = 0
        self.port = 0
        self._t0: float | None = None
        self._server: asyncio.base_events.Server | None = None

    def wait_for(self) -> float:
        """Seconds to hold the request that just arrived."""
        now = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = now
        b = self.behaviour
        wait = b.delay_s
        if b.stall_at_s is not None:
            start = self._t0 + b.stall_at_s
            if start <= now < start + b.stall_s:
                wait = max(wait, start + b.stall_s - now)
        return wait

    async def start(self, port: int = 0, *, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Handler(self),
            "127.0.0.1",
            port,
            reuse_port=reuse_port or None,
            backlog=4096,  # like uvicorn's 2048+: a connection burst must not drop SYNs
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def _serve(port: int, delay_ms: float, use_uvloop: bool, reuse_port: bool, announce: bool,
           buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> None:  # fmt: skip
    async def serve() -> None:
        server = EchoServer(Behaviour(delay_s=delay_ms / 1000.0, buckets=buckets))
        bound = await server.start(port, reuse_port=reuse_port)
        if announce:
            print(f"listening on http://127.0.0.1:{bound}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        if use_uvloop:
            import uvloop  # optional: only with --uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    ap.add_argument(
        "--processes", type=int, default=1, help="serve from N processes (SO_REUSEPORT)"
    )
    ap.add_argument("--from-env", action="store_true",
                    help="port from RESNET_SERVING_PORT, delay from RESNET_SERVING_MAX_WAIT_MS "
                    "(stands in for the gateway in sweep tests)")  # fmt: skip
    ap.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                    help="batch buckets reported by GET /v1/models")  # fmt: skip
    args = ap.parse_args()
    buckets = tuple(int(b) for b in args.buckets.split(","))
    if args.from_env:
        args.port = int(os.environ.get("RESNET_SERVING_PORT", args.port))
        args.delay_ms = float(os.environ.get("RESNET_SERVING_MAX_WAIT_MS", args.delay_ms))
    if args.processes <= 1:
        _serve(args.port, args.delay_ms, args.uvloop, False, True, buckets)
        return

    if args.port == 0:  # every process must bind the same port: pick it here
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    # SIGTERM -> SystemExit, so multiprocessing's exit handler stops the daemonic children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = mp.get_context("spawn")
    for _ in range(args.processes - 1):
        ctx.Process(target=_serve, args=(args.port, args.delay_ms, args.uvloop, True, False, buckets),
                    daemon=True).start()  # fmt: skip
    _serve(args.port, args.delay_ms, args.uvloop, True, True, buckets)


if __name__ == "__main__":
    main()
