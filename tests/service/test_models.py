"""service.models against a scripted backend: the orderings real servers produce only by
chance (an ask for the versions that began before the version went away), made to happen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from contract.manifest import InputSpec, Manifest
from service.backends.base import ModelVersions
from service.errors import BackendError, GatewayError, VersionGone
from service.metrics import GatewayMetrics
from service.models import Choice, ModelRegistry
from service.traffic import TrafficSplit
from tests.service.conftest import gateway_settings

MANIFEST = Manifest(
    model_name="gw", model_version=1, architecture="double",
    input=InputSpec(height=4, width=4), labels=("a", "b"), top_k=2, batch_buckets=(1, 2),
)  # fmt: skip


class ScriptedBackend:
    """Serves the versions in `states`. With `hold_next`, the next `versions` call answers
    with what it saw when it began, once `release` is set (an ask that was slow to return)."""

    name = "scripted"
    breaker = None

    def __init__(self) -> None:
        self.states = {1: "AVAILABLE"}
        self.hold_next = False
        self.release = asyncio.Event()
        self.asks = 0
        self.gone: list[int] = []  # versions a predict met after they went away
        self.contract_errors: list[GatewayError] = []  # raised by the next contract calls

    async def start(self) -> None: ...

    async def ready(self) -> bool:
        return True

    async def close(self) -> None: ...

    async def versions(self, model: str, labels: tuple[str, ...] = ()) -> ModelVersions:
        self.asks += 1
        seen = dict(self.states)  # what the server said when the ask reached it
        if self.hold_next:
            self.hold_next = False
            await self.release.wait()
        return ModelVersions(seen)

    async def contract(self, model: str, version: int) -> Manifest:
        if self.contract_errors:
            raise self.contract_errors.pop(0)
        return MANIFEST

    async def predict(
        self, images: np.ndarray, *, timeout_s: float, model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        if self.states.get(version or 0) != "AVAILABLE":
            self.gone.append(version or 0)
            raise VersionGone(f"Servable not found for request: Specific({model}, {version})")
        out = np.zeros((len(images), 2), np.float32)
        out[:, 0] = version or 0  # the version that answered, in column 0
        return out


async def test_an_ask_that_began_before_the_unload_is_followed_by_a_fresh_one() -> None:
    """The request that meets the unloaded v1 joins an ask for the versions that was already
    under way and still lists v1: it asks again, and v2 answers, instead of a 503."""
    backend = ScriptedBackend()
    settings = gateway_settings(
        Path("unused"), model_name="gw", version_poll_interval_s=600, max_wait_ms=0.0
    )
    registry = ModelRegistry(backend, settings, GatewayMetrics(), TrafficSplit())  # type: ignore[arg-type]
    await registry.start()
    try:
        served = registry.model("gw")
        route = registry.route(served, Choice())
        assert route.slot.version == 1
        backend.hold_next = True
        stale = asyncio.create_task(registry.refresh("gw"))  # the poller's ask, under way
        while backend.asks < 2:
            await asyncio.sleep(0.001)
        backend.states = {2: "AVAILABLE", 1: "END"}  # TF Serving: v2 in, v1 unloaded

        async def no_decode(_: Manifest) -> list[np.ndarray]:
            raise AssertionError("same contract: no second decode")

        deadline = asyncio.get_running_loop().time() + 10
        pixels = [np.zeros((4, 4, 3), np.uint8)]
        answering = asyncio.create_task(
            registry.predict(served, Choice(), route, pixels, no_decode, deadline=deadline)
        )
        while not backend.gone:  # it meets v1 unloaded...
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # ...and joins the ask under way
        assert not answering.done() and backend.asks == 2
        backend.release.set()  # that ask answers what it saw: v1 only
        await stale
        answer = await asyncio.wait_for(answering, 5)
    finally:
        await registry.close(timeout_s=5)
    assert answer.slot.version == 2 and answer.results[0].probabilities[0] == 2
    assert backend.asks == 3  # at start, the one under way, and the fresh one


async def test_a_contract_the_server_failed_to_give_is_asked_for_again() -> None:
    """A model server error while reading v2's contract is not a verdict on v2: the rest of
    the ask goes on (v1 retired), and the next ask reads v2's contract and serves it."""
    backend = ScriptedBackend()
    settings = gateway_settings(Path("unused"), model_name="gw", version_poll_interval_s=600)
    registry = ModelRegistry(backend, settings, GatewayMetrics(), TrafficSplit())  # type: ignore[arg-type]
    await registry.start()
    try:
        served = registry.model("gw")
        backend.states = {2: "AVAILABLE", 1: "END"}
        backend.contract_errors.append(BackendError("Predict: answered INTERNAL: boom"))
        await registry.refresh("gw")
        assert (list(served.slots), served.rejected) == ([], {})
        await registry.refresh("gw")
        assert list(served.slots) == [2]
    finally:
        await registry.close(timeout_s=5)


async def test_every_version_batcher_sends_at_once_with_the_settings_call_slots() -> None:
    """Each version's batcher has `max_inflight_batches` call slots and sends a lone image at
    once (no window); the queue-depth gauge is the sum over every version's queue."""
    backend = ScriptedBackend()
    backend.states = {1: "AVAILABLE", 2: "AVAILABLE"}
    settings = gateway_settings(
        Path("unused"), model_name="gw", version_poll_interval_s=600, max_wait_ms=0.0,
        max_inflight_batches=3,
    )  # fmt: skip
    metrics = GatewayMetrics()
    registry = ModelRegistry(backend, settings, metrics, TrafficSplit())  # type: ignore[arg-type]
    await registry.start()
    try:
        served = registry.model("gw")
        assert sorted(served.slots) == [1, 2]
        assert {s.batcher.max_inflight_batches for s in served.slots.values()} == {3}
        loop = asyncio.get_running_loop()
        pixels = [np.zeros((4, 4, 3), np.uint8)]
        results = await asyncio.wait_for(
            served.slots[2].batcher.submit(pixels, deadline=loop.time() + 10), 5
        )
        assert results[0].probabilities[0] == 2 and results[0].queue_s < 0.5
        depth = metrics.registry.get_sample_value
        waiting = [  # queued in both versions; each dispatch runs after this coroutine resumes
            asyncio.create_task(s.batcher.submit(pixels * 2, deadline=loop.time() + 10))
            for s in served.slots.values()
        ]
        await asyncio.sleep(0)
        assert depth("gateway_queue_depth") == 4
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert depth("gateway_queue_depth") == 0
    finally:
        await registry.close(timeout_s=5)
