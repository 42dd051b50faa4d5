"""The tfserving backend's life around the requests: start-up, a pinned version, versions and
their contracts, readiness, the channel, and the retry schedule.

Against the scripted TF Serving (`tests/service/scripted_tfserving.py`: TF Serving's codes and
texts over real loopback gRPC, no TensorFlow session, so these run once per mutant in the
mutation check), or, for the schedules of retries and start-up polls, a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from contract import tfs_protos, wire
from contract.manifest import Manifest, read_manifest
from contract.signatures import OUTPUT_PROBABILITIES, SIGNATURE_MANIFEST, SIGNATURE_PIXELS
from service.backends import tfserving
from service.backends.tfserving import TFServingBackend
from service.breaker import CircuitBreaker
from service.errors import BackendStartupError, BackendUnavailable, DeadlineExceeded, VersionGone
from service.settings import Settings
from tests.service.scripted_tfserving import (
    ScriptedTFServing,
    ScriptedVersion,
    State,
    metadata_reply,
    resized,
    signature_map,
    until,
)


class Export:
    """The session's tiny export as the scripted server serves it: its manifest and its
    SignatureDefMap, and copies of them for other versions and shapes."""

    def __init__(self, exported_model: Any) -> None:
        version_dir = exported_model.model_base / "tiny" / "1"
        self.manifest: Manifest = read_manifest(version_dir)
        self.signatures = signature_map(version_dir)
        self.metadata = metadata_reply(self.signatures)

    def version(
        self,
        v: int,
        *,
        state: State = State.AVAILABLE,
        side: int | None = None,
        classes: int | None = None,
        **fields: Any,
    ) -> ScriptedVersion:
        """Version `v` in `state`, serving its manifest over `serving_manifest`, resized as
        asked (`fields`: other manifest fields)."""
        m = self.manifest
        update: dict[str, Any] = {"model_version": v, **fields}
        if side is not None:
            update["input"] = m.input.model_copy(update={"height": side, "width": side})
        if classes is not None:
            update["labels"] = tuple(f"class_{i}" for i in range(classes))
        signatures = resized(self.signatures, side=side, classes=classes)
        return ScriptedVersion(state, manifest=m.model_copy(update=update), signatures=signatures)


@pytest.fixture(scope="module")
def export(exported_model: Any) -> Export:
    return Export(exported_model)


def _client(address: str, tmp_path: Path, **kwargs: Any) -> TFServingBackend:
    """No model files (`model_base` is empty): every contract comes over gRPC."""
    options: dict[str, Any] = {
        "address": address, "model_name": "tiny", "model_base": tmp_path,
        "connect_timeout_s": 2.0, "startup_timeout_s": 5.0, "ready_cache_s": 0.0, **kwargs,
    }  # fmt: skip
    return TFServingBackend(**options)


def _settings(address: str, tmp_path: Path, **changes: Any) -> Settings:
    return Settings(
        backend="tfserving", tfserving_address=address, model_name="tiny",
        model_base_path=tmp_path, **changes,
    )  # fmt: skip


def _probabilities_of(classes: int) -> Any:
    def predict(request: Any) -> Any:
        n = request.inputs["images"].tensor_shape.dim[0].size
        reply = tfs_protos.PredictResponse()
        probs = np.full((n, classes), 1.0 / classes, np.float32)
        reply.outputs[OUTPUT_PROBABILITIES].CopyFrom(wire.array_tensor(probs))
        return reply

    return predict


def _images(n: int) -> np.ndarray:
    return np.zeros((n, 8, 8, 3), np.uint8)


def _versions_asked(server: ScriptedTFServing, rpc: str, signature: str = "") -> list[int | None]:
    """The version each `rpc` request pinned (None: the latest), for `signature` if given."""
    return [
        r.model_spec.version.value if r.model_spec.HasField("version") else None
        for r in server.asked(rpc)
        if not signature or r.model_spec.signature_name == signature
    ]


@contextlib.asynccontextmanager
async def _started(backend: TFServingBackend) -> AsyncIterator[TFServingBackend]:
    """`backend`, started; closed after the block."""
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


# ------------------------------------------------------------------------ a pinned version


async def test_a_pinned_version_is_the_one_started_and_watched(
    export: Export, tmp_path: Path
) -> None:
    """RESNET_SERVING_MODEL_VERSION=1 while v2 also serves: start() checks v1's contract, and
    readiness follows v1 (gone: not ready), not whatever else the server has."""
    versions = {1: export.version(1), 2: export.version(2)}
    async with ScriptedTFServing(export.metadata, versions=versions) as server:
        settings = _settings(server.address, tmp_path, model_version=1)
        async with _started(TFServingBackend.from_settings(settings)) as backend:
            assert backend.manifest.model_version == 1
            assert set(_versions_asked(server, "GetModelStatus")) == {1}
            versions[1].state = State.END  # v1 unloaded; v2 still AVAILABLE
            assert await backend.ready() is False


# ---------------------------------------------------------------- versions and their contracts


async def test_each_version_has_its_own_contract(export: Export, tmp_path: Path) -> None:
    """v1 (8 x 8) and v2 (224 x 224) serve at once: contract(v1) reads v1's manifest and checks
    it against v1's metadata, not the latest's; asked again it comes from the cache; a version
    whose messages fit the channel does not re-open it."""
    versions = {1: export.version(1), 2: export.version(2, side=224)}
    async with (
        ScriptedTFServing(export.metadata, versions=versions) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        assert backend.manifest.input.height == 224  # the latest, at start
        channel = backend._channel
        older = await backend.contract("tiny", 1)
        assert (older.model_version, older.input.height) == (1, 8)
        assert _versions_asked(server, "Predict", SIGNATURE_MANIFEST) == [2, 1]
        assert _versions_asked(server, "GetModelMetadata") == [2, 1]
        asked = len(server.requests)
        assert await backend.contract("tiny", 1) is older
        assert len(server.requests) == asked  # cached: nothing asked again
        assert backend._channel is channel  # v1's buckets fit the channel v2 sized


async def test_a_predict_for_an_older_version_asks_for_it_and_reads_with_its_contract(
    export: Export, tmp_path: Path
) -> None:
    """?version=1 while v2 (5 classes) is the latest: the Predict pins v1, asks only for the
    probabilities, and the reply is read with v1's contract (3 classes)."""
    versions = {1: export.version(1), 2: export.version(2, classes=5)}
    classes = {1: 3, 2: 5}

    def predict(request: Any) -> Any:
        asked = request.model_spec.version.value if request.model_spec.HasField("version") else 2
        return _probabilities_of(classes[asked])(request)

    async with (
        ScriptedTFServing(export.metadata, predict, versions=versions) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        probs = await backend.predict(_images(2), timeout_s=5, version=1)
        assert probs.shape == (2, 3)
        assert _versions_asked(server, "Predict", SIGNATURE_PIXELS) == [1]
        [request] = [r for r in server.asked("Predict")
                     if r.model_spec.signature_name == SIGNATURE_PIXELS]  # fmt: skip
        assert list(request.output_filter) == [OUTPUT_PROBABILITIES]


async def test_a_timeout_names_the_server_it_waited_for(export: Export, tmp_path: Path) -> None:
    """An operator reading a 504 learns which TF Serving did not answer."""
    hang = [f"Predict/{SIGNATURE_PIXELS}"]
    async with (
        ScriptedTFServing(
            export.metadata, _probabilities_of(3), versions={1: export.version(1)}, hang=hang
        ) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        with pytest.raises(DeadlineExceeded, match=f"TF Serving at {server.address}"):
            await backend.predict(_images(1), timeout_s=0.3)


async def test_a_reply_from_a_version_not_checked_yet_reads_with_its_contract(
    export: Export, tmp_path: Path
) -> None:
    """Unpinned Predicts go to TF Serving's latest; when v2 became AVAILABLE after start, the
    reply names v2 and is read with v2's contract (fetched then), not v1's."""
    versions = {1: export.version(1), 2: export.version(2, state=State.LOADING, classes=5)}
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(5), versions=versions) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        assert backend.manifest.num_classes == 3
        versions[2].state = State.AVAILABLE
        probs = await backend.predict(_images(2), timeout_s=5)
        assert probs.shape == (2, 5)
        assert backend.manifest.model_version == 2


async def test_versions_report_a_failed_load_with_its_error(export: Export, tmp_path: Path) -> None:
    """GetModelStatus lists a failed load as END with the load error in its status."""
    versions = {1: export.version(1), 2: export.version(2)}
    versions[2].state, versions[2].load_error = State.END, "Could not load SavedModel at /m/2"
    async with (
        ScriptedTFServing(export.metadata, versions=versions, labels={"stable": 1}) as s,
        _started(_client(s.address, tmp_path)) as backend,
    ):
        view = await backend.versions("tiny", ("stable",))
        assert view.states == {1: "AVAILABLE", 2: "END"}
        assert view.errors == {2: "Could not load SavedModel at /m/2"}
        assert view.labels == {"stable": 1}


@pytest.mark.parametrize("hang", ["GetModelMetadata/label", f"Predict/{SIGNATURE_MANIFEST}"])
async def test_every_lifecycle_call_has_a_deadline(
    export: Export, tmp_path: Path, hang: str
) -> None:
    """A server that never answers a label lookup (versions) or serving_manifest (start):
    the call fails within connect_timeout_s, it does not hang the gateway."""
    async with ScriptedTFServing(
        export.metadata, versions={1: export.version(1)}, labels={"stable": 1}
    ) as server:
        backend = _client(server.address, tmp_path, connect_timeout_s=0.3)
        try:
            if hang.endswith("label"):
                await backend.start()
            server.hang.add(hang)
            with pytest.raises(DeadlineExceeded):
                if hang.endswith("label"):
                    await asyncio.wait_for(backend.versions("tiny", ("stable",)), 3)
                else:
                    await asyncio.wait_for(backend.start(), 3)
        finally:
            await backend.close()


def _string_tensor(values: list[str]) -> Any:
    return wire.array_tensor(np.array(values, dtype=object).reshape(len(values)))


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("empty-manifest", r"serving_manifest answered manifest must have shape \(1,\)"),
        ("other-model", r"the manifest is for model 'other', not 'tiny'"),
        ("no-serving-default", r"no signature 'serving_default'"),
        ("other-signature", r"input 'images' does not match the manifest"),
    ],
)
async def test_a_refused_contract_says_which_server_model_and_version(
    export: Export, tmp_path: Path, case: str, match: str
) -> None:
    """The start-up error names the server, the model and the version it refused, and why."""
    version = export.version(1)
    if case == "empty-manifest":  # a broken export: no row at all
        version.manifest = _string_tensor([])
    elif case == "other-model":  # a copied directory
        version.manifest = export.version(1, model_name="other").manifest
    elif case == "no-serving-default":
        version.signatures = tfs_protos.SignatureDefMap()
        version.signatures.signature_def[SIGNATURE_MANIFEST].CopyFrom(
            export.signatures.signature_def[SIGNATURE_MANIFEST]
        )
    else:
        version.signatures = resized(export.signatures, side=16)
    async with ScriptedTFServing(export.metadata, versions={1: version}) as server:
        backend = _client(server.address, tmp_path)
        with pytest.raises(BackendStartupError, match=match) as info:
            await backend.start()
    assert info.value.detail.startswith(f"TF Serving at {server.address}, model 'tiny' v1")


# ----------------------------------------------------------------------- start and readiness


async def test_start_twice_and_at_once(export: Export, tmp_path: Path) -> None:
    """start() on a started backend asks nothing; a second start() while the first is still
    waiting for the model returns only once the backend is started."""
    async with ScriptedTFServing(
        export.metadata, versions={1: export.version(1)}, loading_polls=1
    ) as server:
        backend = _client(server.address, tmp_path)
        first = asyncio.create_task(backend.start())
        try:
            await until(lambda: server.asked("GetModelStatus"))  # LOADING: it polls again
            await backend.start()
            assert backend.manifest.model_version == 1
            await first
            asked = len(server.requests)
            await backend.start()
            assert len(server.requests) == asked
        finally:
            first.cancel()
            await backend.close()


async def test_not_ready_until_the_contract_is_checked(export: Export, tmp_path: Path) -> None:
    """Version 1 is AVAILABLE but start() has not checked its metadata yet: not ready."""
    async with ScriptedTFServing(
        export.metadata, versions={1: export.version(1)}, hang={"GetModelMetadata"}
    ) as server:
        backend = _client(server.address, tmp_path)
        starting = asyncio.create_task(backend.start())
        try:
            await until(lambda: server.asked("GetModelMetadata"))
            assert await backend.ready() is False
        finally:
            starting.cancel()
            await backend.close()


async def test_an_open_circuit_answers_not_ready_without_touching_the_cache(
    export: Export, tmp_path: Path
) -> None:
    """While the breaker is open ready() is False at once; once it closes, the last answer
    from the server (cached for ready_cache_s) is ready again."""
    async with (
        ScriptedTFServing(export.metadata, versions={1: export.version(1)}) as server,
        _started(_client(server.address, tmp_path, ready_cache_s=60.0)) as backend,
    ):
        assert await backend.ready() is True
        for _ in range(backend.breaker.failure_threshold):
            backend.breaker.record_failure()
        assert await backend.ready() is False
        backend.breaker.record_success()
        assert await backend.ready() is True


async def test_a_readiness_check_that_gets_no_answer_is_false_within_a_second(
    export: Export, tmp_path: Path
) -> None:
    """/readyz must answer inside the kubelet's probe timeout (3 s in deploy/k8s) and the
    gateway's own 2 s bound: ready() gives GetModelStatus at most 1 s, whatever
    connect_timeout_s is, and says False (not None) when it runs out."""
    async with (
        ScriptedTFServing(export.metadata, versions={1: export.version(1)}) as server,
        _started(_client(server.address, tmp_path, connect_timeout_s=5.0)) as backend,
    ):
        server.hang.add("GetModelStatus")
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(backend.ready(), 5) is False
        assert asyncio.get_running_loop().time() - t0 < 1.8


@pytest.mark.parametrize("hang", [True, False], ids=["status-hangs", "never-available"])
async def test_from_settings_bounds_start_by_its_timeouts(
    export: Export, tmp_path: Path, hang: bool
) -> None:
    """backend_connect_timeout_s bounds each status poll and startup_timeout_s the whole
    wait; the error says why it gave up."""
    version = export.version(1, state=State.LOADING)
    async with ScriptedTFServing(export.metadata, versions={1: version}) as server:
        if hang:
            server.hang.add("GetModelStatus")
        settings = _settings(
            server.address, tmp_path, backend_connect_timeout_s=0.3, startup_timeout_s=1.0
        )
        backend = TFServingBackend.from_settings(settings)
        why = "did not answer in time" if hang else "no version is AVAILABLE yet"
        with pytest.raises(BackendStartupError, match=rf"within 1 s: .*{why}"):
            await asyncio.wait_for(backend.start(), 4)


# --------------------------------------------------------------------------------- the channel


async def test_a_large_label_set_fits_the_channel(export: Export, tmp_path: Path) -> None:
    """ImageNet-21k's 21,843 classes x a bucket of 64: a 5.6 MB reply, past gRPC's 4 MB
    default receive limit and larger than the request; the channel is sized for it."""
    classes, buckets = 21_843, (1, 8, 64)
    version = export.version(1, classes=classes, batch_buckets=buckets)
    async with (
        ScriptedTFServing(
            export.metadata, _probabilities_of(classes), versions={1: version}
        ) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        probs = await backend.predict(_images(64), timeout_s=10)
        assert probs.shape == (64, classes)


async def test_growing_the_channel_lets_calls_on_the_old_one_finish_then_closes_it(
    export: Export, tmp_path: Path
) -> None:
    """A bigger version re-opens the channel: a Predict already on the old channel still gets
    its answer, then the old channel is closed and forgotten."""
    bigger = export.version(2, state=State.LOADING, side=224, batch_buckets=(1, 64))
    versions = {1: export.version(1), 2: bigger}
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=versions) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        old = backend._channel
        assert old is not None
        server.predict_delay_s = 0.5
        running = asyncio.create_task(backend.predict(_images(2), timeout_s=5, version=1))
        await until(lambda: server.asked("Predict")[-1].model_spec.signature_name
                     == SIGNATURE_PIXELS)  # fmt: skip
        versions[2].state = State.AVAILABLE
        await backend.contract("tiny", 2)  # 64 x 224 x 224 x 3: the channel grows
        assert backend._channel is not old
        assert (await running).shape == (2, 3)
        await until(lambda: not backend._retired)
        assert old.get_state() is grpc.ChannelConnectivity.SHUTDOWN


# ------------------------------------------------------------------- schedules, on a fake clock


class FakeClock:
    """`time.monotonic` and `asyncio.sleep` for the backend module: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []  # type: ignore[var-annotated]

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(tfserving, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(tfserving, "asyncio", SimpleNamespace(sleep=clock.sleep))
    return clock


def _unavailable(details: str = "failed to connect") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


@pytest.mark.parametrize(
    ("timeout_s", "sleeps"),
    [
        (2.0, [0.05, 0.1, 0.2, 0.4, 0.5]),  # doubling from retry_backoff_s, capped at 0.5 s
        (0.3, [0.05, 0.1]),  # 0.15 s left: no sleep of 0.2 s that would end past the deadline
    ],
)
async def test_unavailable_is_retried_on_a_doubling_backoff_within_the_budget(
    clock: FakeClock, timeout_s: float, sleeps: list[float]
) -> None:
    """A server that is down: attempts back off 50 ms, 100 ms, ... up to 0.5 s, and stop while
    time for another is left, so the answer is 503 backend_unavailable, never a 504."""
    backend = TFServingBackend(
        address="127.0.0.1:1", model_name="m", model_base=Path("."),
        breaker=CircuitBreaker(failure_threshold=100),  # the schedule, not the breaker
    )  # fmt: skip
    lefts: list[float] = []

    async def rpc(left: float) -> None:
        lefts.append(left)
        raise _unavailable()

    with pytest.raises(BackendUnavailable):
        await backend._call("Predict", rpc, timeout_s=timeout_s)
    assert clock.sleeps == pytest.approx(sleeps)
    spent = np.cumsum([0.0, *sleeps])
    assert lefts == pytest.approx([timeout_s - s for s in spent])  # each gets what is left


async def test_start_polls_every_half_second_and_gives_up_before_its_deadline(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """startup_timeout_s=1.2: polls at 0, 0.5 and 1.0 s, then gives up (a next poll at 1.5 s
    would be late), never after the deadline and never a poll interval before it."""
    backend = TFServingBackend(
        address="127.0.0.1:1", model_name="m", model_base=Path("."), startup_timeout_s=1.2
    )
    polls: list[float] = []

    async def nothing_available(*args: Any) -> list[int]:
        polls.append(clock.now - 1000.0)
        return []

    monkeypatch.setattr(backend, "_available_versions", nothing_available)
    with pytest.raises(BackendStartupError, match=r"within 1\.2 s: no version is AVAILABLE yet"):
        await backend._wait_available()
    assert polls == pytest.approx([0.0, 0.5, 1.0])


async def test_a_version_gone_carries_the_configured_retry_after() -> None:
    backend = TFServingBackend(
        address="127.0.0.1:1", model_name="m", model_base=Path("."), retry_after_s=3
    )

    async def gone(left: float) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(),
            details="Servable not found for request: Specific(m, 3)",
        )  # fmt: skip

    with pytest.raises(VersionGone) as info:
        await backend._call("Predict", gone, timeout_s=1)
    assert info.value.retry_after_s == 3
