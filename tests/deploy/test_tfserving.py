"""TF Serving's side: the flags point at the files contract.tfs_config writes, the
ConfigMap holds exactly what the generator renders, and the AVAILABLE health check works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_support import COMPOSE, DEPLOY, FakeRest, container, k8s_docs, load_yaml, run

from contract import tfs_config as tfc
from contract.manifest import DEFAULT_BUCKETS, InputSpec, Manifest
from service.settings import ENV_PREFIX, Settings

HEALTHCHECK = DEPLOY / "tfserving" / "healthcheck.sh"


def manifest(name: str = "demo", buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> Manifest:
    return Manifest(
        model_name=name,
        model_version=1,
        architecture="toy",
        input=InputSpec(height=32, width=32),
        labels=("cat", "dog"),
        top_k=2,
        batch_buckets=buckets,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("models")
    paths = tfc.write_tfserving_configs(base, [manifest()])
    return {name: path.read_text(encoding="utf-8") for name, path in paths.items()}


def compose_flags() -> dict[str, str]:
    cmd = load_yaml(COMPOSE)["services"]["tfserving"]["command"]
    return dict(a.removeprefix("--").split("=", 1) for a in cmd)


def k8s_flags() -> dict[str, str]:
    args = container(k8s_docs()[("Deployment", "tfserving")], "tfserving")["args"]
    return dict(a.removeprefix("--").split("=", 1) for a in args)


@pytest.mark.parametrize(
    "flag,filename",
    [
        ("model_config_file", tfc.MODELS_CONFIG),
        ("batching_parameters_file", tfc.BATCHING_CONFIG),
        ("monitoring_config_file", tfc.MONITORING_CONFIG),
    ],
)
@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_flags_name_the_generated_files(source: str, flag: str, filename: str) -> None:
    flags = compose_flags() if source == "compose" else k8s_flags()
    assert Path(flags[flag]).name == filename
    assert flags["enable_batching"] == "true"
    assert flags["xla_gpu_compilation_enabled"] == "true"


def test_compose_reads_configs_from_the_models_volume() -> None:
    flags = compose_flags()
    assert Path(flags["model_config_file"]).parent == Path("/models")


def test_configmap_is_what_the_generator_renders(rendered: dict[str, str]) -> None:
    data = k8s_docs()[("ConfigMap", "tfserving-config")]["data"]
    for name, text in rendered.items():
        assert data[name] == text, f"{name} drifted from contract.tfs_config"
    assert data["healthcheck.sh"] == HEALTHCHECK.read_text(encoding="utf-8")


def test_models_config_base_path_is_where_the_volume_is_mounted() -> None:
    config = tfc.read_models_config(_write_k8s_file("models.config"))
    (entry,) = config.model_config_list.config
    deployment = k8s_docs()[("Deployment", "tfserving")]
    mounts = {m["name"]: m["mountPath"] for m in container(deployment, "tfserving")["volumeMounts"]}
    assert entry.base_path == f"{mounts['models']}/{entry.name}"
    assert Path(k8s_flags()["model_config_file"]).parent == Path(mounts["tfserving-config"])


def _write_k8s_file(name: str) -> Path:
    import tempfile

    data = k8s_docs()[("ConfigMap", "tfserving-config")]["data"]
    path = Path(tempfile.mkdtemp()) / name
    path.write_text(data[name], encoding="utf-8")
    return path


@pytest.mark.parametrize("buckets", [DEFAULT_BUCKETS, (1, 8, 32), (4,)])
def test_batching_sizes_are_the_manifest_buckets(tmp_path: Path, buckets: tuple[int, ...]) -> None:
    m = manifest(buckets=buckets)
    paths = tfc.write_tfserving_configs(tmp_path, [m])
    params = tfc.read_batching_parameters(paths[tfc.BATCHING_CONFIG])
    assert tuple(params.allowed_batch_sizes) == m.batch_buckets
    assert params.max_batch_size.value == m.max_batch


def test_configmap_batching_matches_default_export() -> None:
    params = tfc.read_batching_parameters(_write_k8s_file(tfc.BATCHING_CONFIG))
    assert tuple(params.allowed_batch_sizes) == manifest().batch_buckets


def test_model_name_agrees_between_configmap_compose_and_k8s() -> None:
    config = tfc.read_models_config(_write_k8s_file("models.config"))
    names = [c.name for c in config.model_config_list.config]
    compose_name = load_yaml(COMPOSE)["services"]["builder"]["environment"]["MODEL_NAME"]
    assert compose_name == "${MODEL_NAME:-demo}"
    docs = k8s_docs()
    gw_env = {
        e["name"]: e["value"]
        for e in container(docs[("Deployment", "gateway")], "gateway")["env"]
        if "value" in e  # not those from a Secret
    }
    job_env = {
        e["name"]: e["value"] for e in container(docs[("Job", "model-builder")], "builder")["env"]
    }
    probe = container(docs[("Deployment", "tfserving")], "tfserving")["readinessProbe"]
    assert names == ["demo"]
    assert gw_env["RESNET_SERVING_MODEL_NAME"] == job_env["MODEL_NAME"] == "demo"
    assert probe["exec"]["command"][2] == "demo"
    # The gateway serves every model of models.config, and no other.
    served = Settings.model_validate(
        {k.removeprefix(ENV_PREFIX).lower(): v for k, v in gw_env.items()}
    ).served_models()
    assert sorted(served) == sorted(names)


# --- the AVAILABLE health check, run for real against a loopback REST stand-in ----------------


def status_body(*states: str) -> bytes:
    versions = [{"version": str(i + 1), "state": s, "status": {}} for i, s in enumerate(states)]
    return json.dumps({"model_version_status": versions}, indent=2).encode()


def healthcheck(port: int, model: str = "demo") -> subprocess.CompletedProcess[str]:
    return run(["bash", str(HEALTHCHECK), model, str(port)])


@pytest.mark.parametrize(
    "status,body,healthy",
    [
        (200, status_body("AVAILABLE"), True),
        (200, status_body("END", "AVAILABLE"), True),  # v2 rolled in, v1 unloaded
        (200, status_body("LOADING"), False),  # still warming up
        (200, status_body("START"), False),
        (200, status_body("END"), False),
        (404, b'{"error": "Could not find any versions of model demo"}', False),
        (500, b"{}", False),
    ],
)
def test_healthcheck_passes_only_on_available(
    fake_rest: FakeRest, status: int, body: bytes, healthy: bool
) -> None:
    fake_rest.status, fake_rest.body = status, body
    result = healthcheck(fake_rest.port)
    assert (result.returncode == 0) is healthy, result.stdout + result.stderr
    assert fake_rest.paths == ["/v1/models/demo"]


def test_healthcheck_fails_when_nothing_listens(fake_rest: FakeRest) -> None:
    port = fake_rest.port
    fake_rest.close()
    result = healthcheck(port)
    assert result.returncode == 1
    assert "no answer" in result.stdout


def test_healthcheck_needs_a_model_name() -> None:
    result = run(["bash", str(HEALTHCHECK)])
    assert result.returncode != 0
    assert "usage" in result.stderr


def test_k8s_probes_use_the_same_script() -> None:
    tfs = container(k8s_docs()[("Deployment", "tfserving")], "tfserving")
    rest_port = k8s_flags()["rest_api_port"]
    for probe in ("startupProbe", "readinessProbe"):
        command: list[Any] = tfs[probe]["exec"]["command"]
        assert command == ["bash", "/etc/tfserving/healthcheck.sh", "demo", rest_port]


KEEPALIVE = (
    "grpc.keepalive_permit_without_calls=1,grpc.http2.min_ping_interval_without_data_ms=10000"
)


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_tfserving_accepts_the_gateways_keepalive_pings(source: str) -> None:
    # Without this TF Serving answers idle pings with GOAWAY (too_many_pings).
    flags = compose_flags() if source == "compose" else k8s_flags()
    assert flags["grpc_channel_arguments"] == KEEPALIVE


# --- the export on the server's TensorFlow (deploy/tfserving/check_export.py) ---------------

CHECK_EXPORT = DEPLOY / "tfserving" / "check_export.py"
OPS_CHECKED = DEPLOY / "tfserving" / "export_ops.txt"


def _check_export() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_export", CHECK_EXPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exports_use_only_ops_checked_on_the_servers_tensorflow(exported_model: Any) -> None:
    """export_ops.txt lists the ops checked on TF Serving's TensorFlow; an export that needs
    another op must be checked again before the TF Serving image can be trusted with it."""
    ops = set(_check_export().graph_ops(exported_model.model_base / "tiny" / "1"))
    lines = OPS_CHECKED.read_text(encoding="utf-8").splitlines()
    checked = {line for line in lines if line and not line.startswith("#")}
    assert {"StatefulPartitionedCall", "DecodeImage", "ScaleAndTranslate", "TopKV2"} <= ops
    assert ops <= checked, f"not checked against TF Serving's TensorFlow: {sorted(ops - checked)}"


def test_check_export_loads_and_runs_an_export_as_tf_serving_does(exported_model: Any) -> None:
    result = run([sys.executable, str(CHECK_EXPORT), str(exported_model.model_base / "tiny" / "1")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   every op and attr is registered" in result.stdout
    # 4 client calls (contract.signatures.CLIENT_CALLS) x 4 buckets
    assert "ok   ran 16 warmup records through the Session" in result.stdout


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_tfserving_restarts_with_a_labelled_models_config(source: str) -> None:
    """A rollout leaves `version_labels` in models.config. When TF Serving restarts nothing is
    loaded yet, and without this flag it refuses labels on versions not AVAILABLE
    (server_core.cc, UpdateModelVersionLabelMap): it would not start at all."""
    flags = compose_flags() if source == "compose" else k8s_flags()
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0  # it re-reads the file
