"""Every model the gateway serves, each version's contract and batcher, and where a request goes.

One `ServedModel` per served model (`Settings.served_models`). Its `slots` are the versions
the backend reports AVAILABLE whose contract checked out (`Backend.contract`), each with its
own manifest and its own micro-batcher over a `PinnedBackend`, so a batch never mixes versions
and every batch is sent to, and tagged with, one version.

Following versions: every `version_poll_interval_s` (and at once when a call meets a version
that went away) the registry asks the backend for each model's version states and labels. A
new AVAILABLE version gets a slot once its contract is read and checked (a contract that fails
is refused: that version never gets traffic, `/v1/models` says why). A version no longer
AVAILABLE is retired: new requests stop choosing it, its batcher flushes what it already
holds, and the batches already sent finish on it.

Where a request goes (`ServedModel.route`): `?version=N` to that version, `?label=L` to the
version the model server's label L names (404 when either is not served); otherwise the
default: `canary_fraction` of it (`service.traffic`, changed at run time) to the version of
the `canary` label, the rest to the `stable` label's version, or, with no labels, to the
newest version, as TF Serving's own default (Latest) does.

`ModelRegistry.predict` sends a request's pixels to its version. A call that meets a version
that just went away (VersionGone, or its batcher retired under it) refreshes the model's
versions at once and is retried once on the version the same choice names now, within the
request's deadline (the pixels are decoded again only if that version's input differs). A
canary that fails (a 5xx) is retried on the stable version: the failure counts against the
canary in the metrics, and the client gets the stable answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from contract.manifest import Manifest
from contract.tfs_config import CANARY_LABEL, STABLE_LABEL
from service.backends.base import Backend, PinnedBackend
from service.batcher import ImageResult, MicroBatcher
from service.errors import (
    BackendError,
    BackendStartupError,
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    LabelNotFound,
    ModelNotFound,
    NotReady,
    QueueFull,
    ShuttingDown,
    VersionGone,
    VersionNotFound,
)
from service.metrics import GatewayMetrics
from service.settings import Settings
from service.traffic import TrafficSplit

log = logging.getLogger(__name__)

Decode = Callable[[Manifest], Awaitable[list[np.ndarray]]]
"""Decode the request's images for a contract (called again only for another input)."""


@dataclass
class VersionSlot:
    """One served version of one model: its contract and the batcher that feeds it."""

    model: str
    version: int
    manifest: Manifest
    batcher: MicroBatcher
    retired: bool = False  # no longer served: new requests do not choose it


class Choice(NamedTuple):
    """What a request asked for: a version, a label, or neither (the default)."""

    version: int | None = None
    label: str | None = None


class Route(NamedTuple):
    """The version a request goes to; a canary route names the stable one to fall back on."""

    slot: VersionSlot
    canary: bool = False
    fallback: VersionSlot | None = None


class Answer(NamedTuple):
    """The version that answered, and its results (one per image)."""

    slot: VersionSlot
    results: list[ImageResult]


@dataclass
class ServedModel:
    """One model's versions as the gateway last saw them."""

    name: str
    pinned: int | None = None  # settings.model_version: only this version is served
    slots: dict[int, VersionSlot] = field(default_factory=dict)
    states: dict[int, str] = field(default_factory=dict)  # every version the server reports
    errors: dict[int, str] = field(default_factory=dict)  # why a version ended in error
    rejected: dict[int, str] = field(default_factory=dict)  # AVAILABLE, contract refused
    labels: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None  # why the last refresh failed (the server was unreachable)

    def _slot_of(self, label: str) -> VersionSlot | None:
        version = self.labels.get(label)
        return self.slots.get(version) if version is not None else None

    def current(self) -> VersionSlot | None:
        """The default version: `stable`'s when it serves, else the newest that serves."""
        stable = self._slot_of(STABLE_LABEL)
        if stable is not None:
            return stable
        return self.slots[max(self.slots)] if self.slots else None

    def canary(self) -> VersionSlot | None:
        """The `canary` label's version, when it serves and is not the default one."""
        slot, current = self._slot_of(CANARY_LABEL), self.current()
        return slot if slot is not None and slot is not current else None

    def why_not_serving(self) -> str:
        """One line: why this model has no version to serve (for 503s and /readyz)."""
        if self.rejected:
            v, why = max(self.rejected.items())
            return f"model {self.name!r} v{v} was refused: {why}"
        if self.last_error:
            return f"model {self.name!r}: {self.last_error}"
        states = ", ".join(f"v{v} {s}" for v, s in sorted(self.states.items())) or "no versions"
        return f"model {self.name!r} has no servable version yet ({states})"

    def route(
        self, choice: Choice, *, fraction: float, draw: float, followed: tuple[str, ...]
    ) -> Route:
        """Where a request with `choice` goes now (`draw` in [0, 1) decides the canary split)."""
        if choice.version is not None:
            slot = self.slots.get(choice.version)
            if slot is None:
                raise VersionNotFound(
                    f"model {self.name!r} does not serve version {choice.version} now. "
                    f"Serving: {sorted(self.slots)}"
                )
            return Route(slot)
        if choice.label is not None:
            if choice.label not in followed:
                raise LabelNotFound(
                    f"this gateway follows the labels {list(followed)} (version_labels). "
                    f"Received: label={choice.label!r}"
                )
            slot = self._slot_of(choice.label)
            if slot is None:
                where = self.labels.get(choice.label)
                raise LabelNotFound(
                    f"model {self.name!r} has no label {choice.label!r} now"
                    + (f" (it names v{where}, which is not served)" if where else "")
                )
            return Route(slot)
        current = self.current()
        if current is None:
            raise NotReady(self.why_not_serving())
        canary = self.canary()
        if canary is not None and draw < fraction:
            return Route(canary, canary=True, fallback=current)
        return Route(current)


class ModelRegistry:
    """Every served model; follows their versions and routes requests to them."""

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        metrics: GatewayMetrics,
        traffic: TrafficSplit,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._traffic = traffic
        self.models = {
            name: ServedModel(
                name, pinned=settings.model_version if name == settings.model_name else None
            )
            for name in settings.served_models()
        }
        # The last ask per model and its number: asks are numbered so a caller can wait for
        # one that began after the one it saw.
        self._refreshing: dict[str, tuple[asyncio.Task[None], int]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._random = random.Random()
        self._batcher_ids = itertools.count()
        self._depths: dict[int, int] = {}  # queue depth per batcher opened (the gauge's sum)

    @property
    def default(self) -> ServedModel:
        return self.models[self._settings.model_name]

    def model(self, name: str) -> ServedModel:
        """The served model `name`; 404 for any other."""
        served = self.models.get(name)
        if served is None:
            raise ModelNotFound(
                f"this gateway serves the models {list(self.models)}. Received: name={name!r}"
            )
        return served

    def queue_depth(self) -> int:
        return sum(s.batcher.queue_depth for m in self.models.values() for s in m.slots.values())

    def not_ready(self) -> str | None:
        """Why some served model cannot take requests now; None when every one can."""
        for served in self.models.values():
            if served.current() is None:
                return served.why_not_serving()
        return None

    # -- following versions -----------------------------------------------------------------

    async def start(self) -> None:
        """Read every model's versions once, then keep following them."""
        for name in self.models:
            try:
                await self.refresh(name)
            except GatewayError as exc:
                log.warning("model %s: versions not read yet: %s", name, exc.detail)
        self._watch = asyncio.create_task(self._follow(), name="model-versions")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._settings.version_poll_interval_s)
            for name in self.models:
                try:
                    await self.refresh(name)
                except GatewayError as exc:  # unreachable for now: keep serving what we have
                    self.models[name].last_error = exc.detail
                except Exception:
                    log.exception("model %s: following its versions failed", name)

    async def refresh(self, name: str, *, newer_than: int = 0) -> int:
        """Ask the backend about `name`'s versions now; concurrent callers share one ask.
        Returns the ask's number; `newer_than` waits out asks up to that number and joins
        (or makes) a later one: a caller whose ask began before a version went away."""
        while True:
            task, number = self._refreshing.get(name, (None, 0))
            if task is None or task.done():
                number += 1
                task = asyncio.create_task(self._refresh(self.models[name]), name=f"refresh-{name}")
                task.add_done_callback(_retrieve)  # every caller may have left before it ended
                self._refreshing[name] = (task, number)
            if number > newer_than:
                await asyncio.shield(task)  # a caller out of time must not cancel it for others
                return number
            with contextlib.suppress(Exception):
                await asyncio.shield(task)  # too early for this caller: wait it out, ask again

    async def _refresh(self, served: ServedModel) -> None:
        view = await self._backend.versions(served.name, self._settings.version_labels)
        served.states, served.errors = dict(view.states), dict(view.errors)
        served.labels, served.last_error = dict(view.labels), None
        serving = [v for v in view.available if served.pinned in (None, v)]
        for version in sorted(
            set(serving) - set(served.slots) - set(served.rejected), reverse=True
        ):
            try:
                manifest = await self._backend.contract(served.name, version)
            except BackendStartupError as exc:
                served.rejected[version] = exc.detail
                log.error("model %s v%d refused: %s", served.name, version, exc.detail)
                continue
            except VersionGone:
                continue  # unloaded while we asked: nothing to serve
            except GatewayError as exc:  # the server failed to answer: ask again next time
                log.warning(
                    "model %s v%d: contract not read yet: %s", served.name, version, exc.detail
                )
                continue
            served.slots[version] = await self._open(served.name, version, manifest)
            log.info(
                "model %s v%d serving (%s)", served.name, version, self._describe(served, version)
            )
        for version in [v for v in served.slots if v not in serving]:
            self._retire(served.slots.pop(version))
            log.info("model %s v%d no longer served", served.name, version)
        for version in [v for v in served.rejected if v not in serving]:
            del served.rejected[version]  # loaded again later: checked again

    @staticmethod
    def _describe(served: ServedModel, version: int) -> str:
        labels = [k for k, v in served.labels.items() if v == version]
        current = served.current()
        role = "default" if current is not None and current.version == version else "not default"
        return ", ".join([role, *(f"label {k}" for k in labels)])

    async def _open(self, model: str, version: int, manifest: Manifest) -> VersionSlot:
        s = self._settings
        batcher = MicroBatcher(
            PinnedBackend(self._backend, model, version),
            manifest,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_images=s.max_queue_images,
            max_queue_wait_s=s.max_queue_wait_s,
            max_inflight_batches=s.max_inflight_batches,
            retry_after_s=s.retry_after_s,
            on_batch=self._metrics.batch_observer(self._backend.name),
            on_queue_depth=self._depth_observer(),
        )
        await batcher.start()
        return VersionSlot(model, version, manifest, batcher)

    def _depth_observer(self) -> Callable[[int], None]:
        """A batcher's `on_queue_depth`: the gauge shows every batcher's queue of this process
        summed (set on change: multiprocess metrics cannot read a value at scrape time)."""
        key = next(self._batcher_ids)

        def observe(depth: int) -> None:
            self._depths[key] = depth
            self._metrics.queue_depth.set(sum(self._depths.values()))

        return observe

    def _retire(self, slot: VersionSlot) -> None:
        """Stop choosing `slot`; flush what its batcher holds (calls that meet the unloaded
        version fail VersionGone and are retried by their requests)."""
        slot.retired = True
        task = asyncio.create_task(
            slot.batcher.close(drain=True, timeout_s=self._settings.request_timeout_s)
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- requests ---------------------------------------------------------------------------

    def route(self, served: ServedModel, choice: Choice) -> Route:
        """Where a request for `served` with `choice` goes now."""
        return served.route(
            choice,
            fraction=self._traffic.fraction(served.name),
            draw=self._random.random(),
            followed=self._settings.version_labels,
        )

    def admit(self, route: Route, *, deadline: float) -> Route:
        """The route once its batcher can take one more image (503 queue_full otherwise,
        before the body is read). A canary too busy to take it sends it to stable instead,
        and that counts against the canary."""
        try:
            route.slot.batcher.check_admission(1, deadline=deadline)
            return route
        except QueueFull:
            if route.fallback is None or route.fallback.retired:
                raise
            self._metrics.observe_version(route.slot.model, route.slot.version, ok=False)
            self._metrics.canary_fallbacks.labels(route.slot.model).inc()
            route.fallback.batcher.check_admission(1, deadline=deadline)
            return Route(route.fallback)

    async def predict(
        self,
        served: ServedModel,
        choice: Choice,
        route: Route,
        pixels: list[np.ndarray],
        decode: Decode,
        *,
        deadline: float,
    ) -> Answer:
        """`pixels` (decoded for `route.slot`) through their version; see the module doc for
        the one retry after a version went away and the canary's fallback to stable."""
        slot = route.slot
        try:
            return Answer(slot, await self._submit(slot, pixels, deadline))
        except (VersionGone, ShuttingDown) as exc:
            if isinstance(exc, ShuttingDown) and not slot.retired:
                raise  # the gateway itself is shutting down
            asked = await self._refresh_by(served.name, deadline)
            if slot.version in served.slots:  # that ask began before the version went away
                await self._refresh_by(served.name, deadline, newer_than=asked)
            again = self.route(served, choice)
            if again.slot is slot or again.slot.retired:
                raise VersionGone(
                    f"model {served.name!r} v{slot.version} went away and no other version "
                    "took its place in time",
                    retry_after_s=self._settings.retry_after_s,
                ) from None
            moved = await self._pixels_for(again.slot, slot, pixels, decode)
            return Answer(again.slot, await self._submit(again.slot, moved, deadline))
        except (BackendError, BackendUnavailable, QueueFull):
            if route.fallback is None or route.fallback.retired:
                raise
            self._metrics.canary_fallbacks.labels(served.name).inc()
            moved = await self._pixels_for(route.fallback, slot, pixels, decode)
            return Answer(route.fallback, await self._submit(route.fallback, moved, deadline))

    async def _submit(
        self, slot: VersionSlot, pixels: list[np.ndarray], deadline: float
    ) -> list[ImageResult]:
        """Queue `pixels` at `slot`; a 5xx that is the version's own doing counts against it."""
        try:
            return await slot.batcher.submit(pixels, deadline=deadline)
        except (VersionGone, ShuttingDown):
            raise  # the version went away, or the gateway is stopping: not its fault
        except GatewayError as exc:
            if exc.status >= 500:
                self._metrics.observe_version(slot.model, slot.version, ok=False)
            raise

    @staticmethod
    async def _pixels_for(
        to: VersionSlot, came_from: VersionSlot, pixels: list[np.ndarray], decode: Decode
    ) -> list[np.ndarray]:
        if to.manifest.decodes_like(came_from.manifest):
            return pixels
        return await decode(to.manifest)

    async def _refresh_by(self, name: str, deadline: float, *, newer_than: int = 0) -> int:
        try:
            async with asyncio.timeout_at(deadline):
                return await self.refresh(name, newer_than=newer_than)
        except TimeoutError:
            raise DeadlineExceeded(
                f"request budget ran out while model {name!r} changed versions"
            ) from None

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self, *, timeout_s: float | None) -> None:
        """Stop following; flush every batcher within `timeout_s`."""
        watch, self._watch = self._watch, None
        tasks = [t for t in (watch, *(t for t, _ in self._refreshing.values())) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        closing = [
            slot.batcher.close(drain=True, timeout_s=timeout_s)
            for served in self.models.values()
            for slot in served.slots.values()
        ]
        await asyncio.gather(*closing, *self._retiring, return_exceptions=True)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a refresh's failure as seen (its callers got it, or gave up waiting)."""
    if not task.cancelled():
        task.exception()
