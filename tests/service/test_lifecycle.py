"""Versions that change while the gateway serves: the tfserving backend against the stand-in,
which loads and unloads versions as TF Serving does (latest policy: the new version AVAILABLE
before the old one UNLOADING -> END, calls in flight finishing), with no model volume on the
gateway's side (its `model_base_path` is an empty folder: the contract comes over gRPC)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from testdoubles.standin import Fault, StandIn
from testdoubles.tfs_status import TFSError
from tests.service.conftest import serving
from tests.service.openloop import OpenLoop
from tests.service.procs import free_port, start_gateway, wait_status
from tests.service.versions import (
    Exports,
    Pictures,
    base_with,
    canary_config,
    classify,
    publish,
    scores,
    standin_and_gateway,
)
from tests.testdoubles.standin_support import write_config


def end_of(server: StandIn, model: str, version: int) -> float:
    """When the stand-in published `version` END (time.monotonic(), this process's clock)."""
    return next(t for t, m, v, s in server.manager.events if (m, v, s) == (model, version, "END"))


def test_rolling_v1_to_v2_under_open_loop_load_loses_nothing(
    version_exports: Exports, tmp_path: Path
) -> None:
    """The issue's acceptance: v1 -> v2 under open-loop load, no restart: every answer 200,
    labelled with the version that computed it (its scores are that version's), none
    labelled v1 among the requests sent after v1 was unloaded, readiness 200 throughout."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1])
    config = write_config(tmp_path / "models.config", {"tiny": base / "tiny"})
    pictures = Pictures(6, seed=11)
    with standin_and_gateway(base, config, tmp_path) as (server, live):

        async def roll() -> tuple[OpenLoop, list[int]]:
            load = OpenLoop(live.url, "/v1/classify", pictures.blobs, rate_hz=40.0)
            ready: list[int] = []
            async with load.running(), httpx.AsyncClient(base_url=live.url) as probe:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(publish, version_exports, base, "tiny", 2)
                for _ in range(300):  # 30 s at most for v2 to load and v1 to unload
                    ready.append((await probe.get("/readyz")).status_code)
                    if any(e[1:] == ("tiny", 1, "END") for e in server.manager.events):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.5)  # and keep going on v2 alone
            return load, ready

        load, ready = asyncio.run(roll())
        unloaded_at = end_of(server, "tiny", 1)
    assert load.statuses() == {200: len(load.sent)}, [s.error or s.body for s in load.sent]
    assert set(ready) == {200}
    expected = {
        1: pictures.expected(version_exports.tiny1),
        2: pictures.expected(version_exports.tiny2),
    }
    assert np.abs(expected[1] - expected[2]).max() > 1e-3  # the label can be told from scores
    for sent in load.sent:
        assert sent.version is not None
        np.testing.assert_allclose(
            scores(sent.body or {}), expected[sent.version][sent.image], atol=1e-4
        )
    versions = [s.version for s in load.sent]
    assert 1 in versions and 2 in versions
    after = [s.version for s in load.sent if s.at > unloaded_at]
    assert after and set(after) == {2}


def test_a_batch_sent_to_a_version_that_went_away_is_retried_on_the_new_one(
    version_exports: Exports, tmp_path: Path
) -> None:
    """The gateway has not polled since v2 replaced v1 (its poll interval is long): the
    request goes to v1, meets NOT_FOUND `Specific(tiny, 1)`, and is answered by v2 at once."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1])
    config = write_config(tmp_path / "models.config", {"tiny": base / "tiny"})
    blob = Pictures(1, seed=3).blobs[0]
    with standin_and_gateway(base, config, tmp_path, version_poll_interval_s=600) as (
        server,
        live,
    ):
        first = classify(live.url, blob)
        assert first.status_code == 200 and first.json()["model"]["version"] == 1
        publish(version_exports, base, "tiny", 2)
        assert server.wait_for_state("tiny", 1, "END", 30)
        r = classify(live.url, blob)
        errors = live.app.state.gateway.metrics.registry.get_sample_value(
            "gateway_backend_calls_total", {"backend": "tfserving", "outcome": "error"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": "tiny", "version": 2}
    assert errors == 1  # the one batch that met the unloaded v1


@pytest.mark.parametrize(
    ("params", "code", "detail"),
    [
        ({"version": 7}, "version_not_found", "model 'tiny' does not serve version 7 now. Serving: [1, 2]"),
        ({"label": "canary"}, "label_not_found", "model 'tiny' has no label 'canary' now"),
        ({"label": "blue"}, "label_not_found", "this gateway follows the labels ['stable', 'canary'] (version_labels). Received: label='blue'"),
    ],
)  # fmt: skip
def test_unknown_version_or_label_is_a_clear_404(
    version_exports: Exports, tmp_path: Path, params: dict[str, Any], code: str, detail: str
) -> None:
    base = base_with(version_exports, tmp_path / "models", tiny=[1, 2])
    config = write_config(
        tmp_path / "models.config", {"tiny": base / "tiny"}, labels={"tiny": {"stable": 1}},
        policies={"tiny": "specific { versions: 1 versions: 2 }"},
    )  # fmt: skip
    with standin_and_gateway(base, config, tmp_path) as (_, live):
        blob = Pictures(1, 0).blobs[0]
        assert classify(live.url, blob).json()["model"]["version"] == 1  # stable, not newest
        assert classify(live.url, blob, version=2).json()["model"]["version"] == 2
        assert classify(live.url, blob, label="stable").json()["model"]["version"] == 1
        r = classify(live.url, blob, **params)
    assert r.status_code == 404, r.text
    assert (r.json()["error"], r.json()["detail"]) == (code, detail)


def test_one_gateway_serves_every_model(version_exports: Exports, tmp_path: Path) -> None:
    """Each model with its own contract, versions, batcher and metrics; /v1/classify keeps
    the default one; /v1/models lists them all."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1], other=[1])
    config = write_config(
        tmp_path / "models.config", {"tiny": base / "tiny", "other": base / "other"}
    )
    pictures = Pictures(1, seed=5)
    with standin_and_gateway(base, config, tmp_path, models=("other",)) as (_, live):
        default = classify(live.url, pictures.blobs[0])
        other = classify(live.url, pictures.blobs[0], "/v1/models/other/classify")
        named = classify(live.url, pictures.blobs[0], "/v1/models/tiny/classify")
        missing = classify(live.url, pictures.blobs[0], "/v1/models/nope/classify")
        listing = httpx.get(f"{live.url}/v1/models").json()
        ready = httpx.get(f"{live.url}/readyz").json()
        registry = live.app.state.gateway.models
        batchers = {n: m.current().batcher for n, m in registry.models.items()}
        metric = live.app.state.gateway.metrics.registry.get_sample_value
        counted = metric(
            "gateway_model_requests_total", {"model": "other", "version": "1", "outcome": "ok"}
        )
    assert default.json()["model"] == named.json()["model"] == {"name": "tiny", "version": 1}
    assert other.json()["model"] == {"name": "other", "version": 1}
    np.testing.assert_allclose(
        scores(other.json()), pictures.expected(version_exports.other1)[0], atol=1e-4
    )
    assert missing.status_code == 404 and missing.json()["error"] == "model_not_found"
    assert [(m["name"], m["default"], m["version"]) for m in listing["models"]] == [
        ("tiny", True, 1),
        ("other", False, 1),
    ]
    assert ready["models"] == [{"name": "tiny", "version": 1}, {"name": "other", "version": 1}]
    assert batchers["tiny"] is not batchers["other"]
    assert counted == 1


def default_versions(url: str, blob: bytes, n: int) -> list[int]:
    return [classify(url, blob).json()["model"]["version"] for _ in range(n)]


def test_the_canary_share_set_on_one_process_holds_in_another(
    version_exports: Exports, tmp_path: Path
) -> None:
    """Two gateway processes behind the same model server share `shared_state_dir`: the
    admin call reaches one, the default traffic of both follows it."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1, 2])
    shared = tmp_path / "shared"
    admin = {"admin_keys": ("k3y",), "shared_state_dir": shared}
    blob = Pictures(1, seed=2).blobs[0]
    with standin_and_gateway(base, canary_config(tmp_path, base), tmp_path, **admin) as (
        server,
        live,
    ):
        port = free_port()
        other = start_gateway(
            port, backend="tfserving", tfserving_address=server.address, model_name="tiny",
            model_base_path=tmp_path / "no-volume", admin_keys='["k3y"]', shared_state_dir=shared,
            version_poll_interval_s=0.5,
        )  # fmt: skip
        try:
            wait_status(f"http://127.0.0.1:{port}/readyz", 200, 60)
            url_b = f"http://127.0.0.1:{port}"
            assert set(default_versions(url_b, blob, 10)) == {1}  # canary_fraction 0
            assert classify(url_b, blob, label="canary").json()["model"]["version"] == 2
            put = f"{live.url}/admin/models/tiny/canary"
            assert httpx.put(put, json={"fraction": 1.0}).status_code == 401
            wrong = httpx.put(put, json={"fraction": 1.0}, headers={"X-Admin-Key": "nope"})
            assert wrong.status_code == 401
            r = httpx.put(put, json={"fraction": 1.0}, headers={"X-Admin-Key": "k3y"})
            assert r.status_code == 200, r.text
            assert r.json() == {
                "model": "tiny", "fraction": 1.0, "canary_version": 2, "stable_version": 1,
                "shared": True,
            }  # fmt: skip
            time.sleep(0.3)  # > READ_INTERVAL_S: the other process has looked again
            assert set(default_versions(url_b, blob, 10)) == {2}
            r = httpx.put(
                f"{url_b}/admin/models/tiny/canary", json={"fraction": 0.5},
                headers={"Authorization": "Bearer k3y"},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            time.sleep(0.3)
            assert set(default_versions(live.url, blob, 40)) == {1, 2}  # 2**-39 to fail
            listing = httpx.get(f"{url_b}/v1/models").json()["models"][0]
        finally:
            other.stop()
    assert listing["canary"] == {"version": 2, "fraction": 0.5}
    assert listing["labels"] == {"canary": 2, "stable": 1}
    assert [(v["version"], v["serving"], v["labels"]) for v in listing["versions"]] == [
        (2, True, ["canary"]),
        (1, True, ["stable"]),
    ]


def test_a_failing_canary_falls_back_to_stable_and_counts_against_itself(
    version_exports: Exports, tmp_path: Path
) -> None:
    """Default requests the canary fails (a 5xx) are answered by stable: the client sees no
    error, the metrics see the canary's. An explicit ?label=canary gets the error itself."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1, 2])
    blob = Pictures(1, seed=4).blobs[0]
    with standin_and_gateway(
        base, canary_config(tmp_path, base), tmp_path, canary_fraction=1.0
    ) as (
        server,
        live,
    ):
        assert classify(live.url, blob).json()["model"]["version"] == 2  # the canary works
        server.faults.set(
            Fault(predict_error=TFSError(grpc.StatusCode.INTERNAL, "canary is broken")),
            model="tiny", version=2,
        )  # fmt: skip
        answers = [classify(live.url, blob) for _ in range(5)]
        explicit = classify(live.url, blob, label="canary")
        metric = live.app.state.gateway.metrics.registry.get_sample_value
        failed = metric(
            "gateway_model_requests_total", {"model": "tiny", "version": "2", "outcome": "error"}
        )
        fallbacks = metric("gateway_canary_fallbacks_total", {"model": "tiny"})
    assert [(r.status_code, r.json()["model"]["version"]) for r in answers] == [(200, 1)] * 5
    assert explicit.status_code == 502 and "canary is broken" in explicit.json()["detail"]
    assert failed == 6 and fallbacks == 5


def test_admin_api_is_off_without_keys(tmp_path: Path) -> None:
    from tests.service.test_api import DoubleBackend

    settings = Settings(model_name="gw", model_base_path=tmp_path, admin_keys=(), decode_workers=1)
    with serving(create_app(settings, backend=DoubleBackend())) as live:
        off = httpx.put(f"{live.url}/admin/models/gw/canary", json={"fraction": 0.1})
    assert off.status_code == 403 and off.json()["error"] == "forbidden"
    assert "admin_keys" in off.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/admin/models/nope/canary", {"fraction": 0.1}, 404, "model_not_found"),
        ("/admin/models/gw/canary", {"fraction": 1.5}, 422, "invalid_parameter"),
        ("/admin/models/gw/canary", {}, 422, "invalid_parameter"),
    ],
)
def test_admin_api_refuses_bad_calls(
    tmp_path: Path, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    from tests.service.test_api import DoubleBackend

    settings = Settings(
        model_name="gw", model_base_path=tmp_path, admin_keys=("k",), decode_workers=1
    )
    with serving(create_app(settings, backend=DoubleBackend())) as live:
        r = httpx.put(f"{live.url}{path}", json=body, headers={"X-Admin-Key": "k"})
    assert (r.status_code, r.json()["error"]) == (status, code), r.text


def test_the_embedded_backend_follows_a_new_version_directory(
    version_exports: Exports, tmp_path: Path
) -> None:
    """Load beside, switch, drop the old: under open-loop load every answer is 200 and
    labelled truthfully, and v1 is unloaded once v2 serves."""
    base = base_with(version_exports, tmp_path / "models", tiny=[1])
    settings = Settings(
        backend="embedded", model_base_path=base, model_name="tiny", max_wait_ms=2.0,
        decode_workers=2, request_timeout_s=20.0, version_poll_interval_s=0.2,
    )  # fmt: skip
    pictures = Pictures(4, seed=8)
    with serving(create_app(settings)) as live:
        backend = live.app.state.gateway.backend

        async def roll() -> OpenLoop:
            load = OpenLoop(live.url, "/v1/classify", pictures.blobs, rate_hz=30.0)
            async with load.running():
                await asyncio.sleep(0.8)
                await asyncio.to_thread(publish, version_exports, base, "tiny", 2)
                for _ in range(300):
                    if 1 not in backend._versions["tiny"]:  # unloaded and forgotten
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)
            return load

        load = asyncio.run(roll())
        states = asyncio.run(backend.versions("tiny")).states
    assert states == {2: "AVAILABLE"}
    assert load.statuses() == {200: len(load.sent)}, [s.error or s.body for s in load.sent]
    expected = {
        1: pictures.expected(version_exports.tiny1),
        2: pictures.expected(version_exports.tiny2),
    }
    for sent in load.sent:
        assert sent.version is not None
        np.testing.assert_allclose(
            scores(sent.body or {}), expected[sent.version][sent.image], atol=1e-4
        )
    assert [s.version for s in load.sent][-5:] == [2] * 5
