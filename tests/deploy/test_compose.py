"""docker-compose.yml (+ the CPU override): validated by Docker Compose v2, and kept in step
with the gateway's Settings, TF Serving's configs and the exporter's TensorFlow version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    COMPOSE,
    COMPOSE_CPU,
    ROOT,
    container,
    k8s_docs,
    load_yaml,
    run,
)

from service.settings import ENV_PREFIX, Settings

_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def with_defaults(value: Any) -> Any:
    """Resolve `${VAR:-default}` to its default, recursively (what compose does when unset)."""
    if isinstance(value, str):
        return _DEFAULT.sub(lambda m: m.group(2), value)
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: with_defaults(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return with_defaults(load_yaml(COMPOSE)["services"])


def flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in service["command"])


def gateway_settings(env: dict[str, str]) -> Settings:
    """The Settings these variables make, decoded as pydantic-settings decodes the environment
    (JSON for list-valued settings)."""
    values = {
        k.removeprefix(ENV_PREFIX).lower(): json.loads(v) if v.startswith("[") else v
        for k, v in env.items()
    }
    return Settings.model_validate(values)


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"unsupported duration {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]


# --- validated by Docker Compose itself ------------------------------------------------------


@pytest.mark.parametrize(
    "files,profile",
    [
        ([COMPOSE], None),
        ([COMPOSE], "monitoring"),
        ([COMPOSE, COMPOSE_CPU], None),
        ([COMPOSE, COMPOSE_CPU], "monitoring"),
    ],
)
def test_compose_config_is_valid(
    compose_cmd: list[str], files: list[Path], profile: str | None
) -> None:
    args = [*compose_cmd, *(a for f in files for a in ("-f", str(f)))]
    if profile:
        args += ["--profile", profile]
    result = run([*args, "config", "-q"])
    assert result.returncode == 0, result.stderr


def test_compose_rejects_a_broken_file(compose_cmd: list[str], tmp_path: Path) -> None:
    # The validator must be able to fail: a misspelt key is an error.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:", 1))
    result = run([*compose_cmd, "-f", str(broken), "config", "-q"], cwd=ROOT)
    assert result.returncode != 0
    assert "depend_on" in result.stderr


def merged(compose_cmd: list[str], *files: Path) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))]
    result = run([*compose_cmd, *args, "config", "--format", "json"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_cpu_override_drops_the_gpu_and_enables_xla_cpu(compose_cmd: list[str]) -> None:
    gpu = merged(compose_cmd, COMPOSE)["tfserving"]
    cpu = merged(compose_cmd, COMPOSE, COMPOSE_CPU)["tfserving"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in cpu
    assert cpu["image"] == gpu["image"].removesuffix("-gpu")
    assert "--xla_cpu_compilation_enabled=true" in cpu["command"]
    # Everything else on the command line is the same server configuration.
    strip = {"--xla_gpu_compilation_enabled=true", "--xla_cpu_compilation_enabled=true"}
    assert set(cpu["command"]) - strip == set(gpu["command"]) - strip


# --- drift: compose vs the code ---------------------------------------------------------------


def test_compose_uses_the_services_we_document(services: dict[str, Any]) -> None:
    assert {"builder", "tfserving", "gateway", "prometheus", "grafana"} <= set(services)
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert "profiles" not in services["gateway"]


def test_gateway_env_is_real_settings(services: dict[str, Any]) -> None:
    env = services["gateway"]["environment"]
    unknown = sorted(
        k for k in env if k.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields
    )
    assert all(k.startswith(ENV_PREFIX) for k in env)
    assert not unknown, f"not Settings fields: {unknown}"
    settings = gateway_settings(env)  # parses, validators included
    assert settings.backend == "tfserving"


def test_ports_agree_with_settings_and_tfserving(services: dict[str, Any]) -> None:
    gw = services["gateway"]
    settings = gateway_settings(gw["environment"])
    assert gw["ports"] == [f"127.0.0.1:8001:{settings.port}"]  # this host only
    proxy = services["proxy"]
    upstream_host, _, upstream_port = proxy["environment"]["GATEWAY_UPSTREAM"].rpartition(":")
    assert (upstream_host, int(upstream_port)) == ("gateway", settings.port)
    assert proxy["ports"] == [f"{settings.port}:{proxy['environment']['PROXY_PORT']}"]
    host, _, grpc_port = settings.tfserving_address.rpartition(":")
    assert host == "tfserving"
    tfs = flags(services["tfserving"])
    assert tfs["port"] == grpc_port
    published = {p.rsplit(":", 2)[-1] for p in services["tfserving"]["ports"]}
    assert published == {tfs["port"], tfs["rest_api_port"]}


def test_stop_grace_outlasts_the_drain(services: dict[str, Any]) -> None:
    gw = services["gateway"]
    drain = gateway_settings(gw["environment"]).drain_timeout_s
    assert seconds(gw["stop_grace_period"]) > drain


def test_gateway_waits_for_a_healthy_tfserving(services: dict[str, Any]) -> None:
    assert services["gateway"]["depends_on"] == {"tfserving": {"condition": "service_healthy"}}
    assert services["tfserving"]["depends_on"] == {
        "builder": {"condition": "service_completed_successfully"}
    }


def models_mounts(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Service -> its mount of the `models` volume, from compose's normalised config."""
    return {
        name: mount
        for name, service in services.items()
        for mount in service.get("volumes", [])
        if mount.get("type") == "volume" and mount.get("source") == "models"
    }


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_the_builder_alone_gives_the_models_volume_its_owner(
    compose_cmd: list[str], files: list[Path]
) -> None:
    """`docker compose up` creates every container before it starts any, and each one created
    with the still-empty volume copies its image's /models owner onto it (TF Serving's image
    has a root-owned /models). Only the builder (uid 10001, /models owned by it) may copy; the
    servers mount read-only with nocopy."""
    services = merged(compose_cmd, *files)
    base = services["builder"]["environment"]["MODEL_BASE"]
    mounts = models_mounts(services)
    assert set(mounts) == {"builder", "tfserving"}
    assert {m["target"] for m in mounts.values()} == {base}
    assert flags(services["tfserving"])["model_config_file"] == f"{base}/models.config"
    builder = mounts.pop("builder")
    assert not builder.get("read_only") and not builder.get("volume", {}).get("nocopy")
    for name, mount in mounts.items():
        assert mount.get("read_only") is True, f"{name} must mount the models read-only"
        assert mount.get("volume", {}).get("nocopy") is True, f"{name} must not copy-up"


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_the_gateway_runs_without_the_model_volume(
    compose_cmd: list[str], files: list[Path]
) -> None:
    """Every contract comes from TF Serving (serving_manifest): the gateway mounts nothing of
    the models and is not told where they are; its admin state stays in its own /tmp."""
    gateway = merged(compose_cmd, *files)["gateway"]
    assert not gateway.get("volumes"), gateway.get("volumes")
    env = gateway["environment"]
    assert f"{ENV_PREFIX}MODEL_BASE_PATH" not in env
    settings = gateway_settings(with_defaults(env))
    assert settings.admin_keys == ("",)  # off until ROLLOUT_ADMIN_KEY is set
    assert str(settings.shared_state_dir).startswith("/tmp/")


def test_the_rollout_can_run_from_the_builder(services: dict[str, Any]) -> None:
    """`docker compose run --rm builder resnet-serving rollout run ...`: the builder writes
    models.config and holds the same admin key the gateway checks."""
    builder, gateway = services["builder"], services["gateway"]
    assert builder["environment"]["ROLLOUT_ADMIN_KEY"] == ""  # ${ROLLOUT_ADMIN_KEY:-}
    raw = load_yaml(COMPOSE)["services"]
    assert raw["builder"]["environment"]["ROLLOUT_ADMIN_KEY"] == "${ROLLOUT_ADMIN_KEY:-}"
    assert "${ROLLOUT_ADMIN_KEY:-}" in raw["gateway"]["environment"][f"{ENV_PREFIX}ADMIN_KEYS"]
    assert "default" in (gateway.get("networks") or {}) and "networks" not in builder
    dockerfile = (ROOT / "deploy" / "builder" / "Dockerfile").read_text()
    assert "'./[builder,rollout]'" in dockerfile


def test_one_model_name_everywhere(services: dict[str, Any]) -> None:
    name = services["builder"]["environment"]["MODEL_NAME"]
    assert services["gateway"]["environment"]["RESNET_SERVING_MODEL_NAME"] == name
    assert services["tfserving"]["healthcheck"]["test"][3] == name


# TF Serving GPU images with public evidence that they exist (nothing here can reach Docker Hub).
# 2.19.1-gpu: third-party k8s/compose manifests pulling it, one a validation note naming it "the
# current official TensorFlow Serving release and Docker tag"; tensorflow/serving tag 2.19.1
# ships tensorflow_serving/tools/docker/Dockerfile.gpu. No pull of "2.20.0-gpu" or "2.21.0-gpu" was
# found (tensorflow-serving-api 2.21.0 on PyPI suggests a 2.21.0 release: add it once a pull is).
EVIDENCED_GPU_TAGS = {"2.18.0-gpu", "2.19.1-gpu"}
OPS_CHECKED = ROOT / "deploy" / "tfserving" / "export_ops.txt"


def checked_tensorflow() -> str:
    """The TensorFlow version the export's ops were last checked against (export_ops.txt)."""
    header = OPS_CHECKED.read_text(encoding="utf-8").splitlines()[0]
    match = re.search(r"TensorFlow (\d+\.\d+\.\d+)", header)
    assert match, f"{OPS_CHECKED} must name the TensorFlow it was checked with. Received: {header}"
    return match.group(1)


def test_tfserving_image_exists_and_runs_the_export(services: dict[str, Any]) -> None:
    image = services["tfserving"]["image"]
    match = re.fullmatch(r"tensorflow/serving:((\d+\.\d+\.\d+)-gpu)", image)
    assert match, f"pin an exact GPU release. Received: image={image!r}"
    assert match.group(1) in EVIDENCED_GPU_TAGS, f"no public evidence that {image} exists"
    # TF Serving X.Y.Z is built on TensorFlow X.Y: the export must have been checked there.
    assert checked_tensorflow().rsplit(".", 1)[0] == match.group(2).rsplit(".", 1)[0]
    assert flags(services["tfserving"])["xla_gpu_compilation_enabled"] == "true"
    assert services["tfserving"]["entrypoint"] == ["tensorflow_model_server"]


# Whole warmup of the default export measured on CPU, load included (benchmarks/results/
# warmup_cpu.md: ResNet-50 float32, 21 records, TensorFlow 2.19.1 loaded as TF Serving loads it).
MEASURED_CPU_WARMUP_S = 30.7


def compose_seconds(value: str) -> float:
    """compose's normalised durations: `2m0s`, `5m0s`, `10s`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", value)
    assert parts, f"unsupported duration {value!r}"
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_health_checks_wait_out_the_measured_warmup(
    compose_cmd: list[str], files: list[Path]
) -> None:
    """TF Serving opens its ports only after warmup; a start period shorter than warmup marks
    it unhealthy and `docker compose up` gives up on the gateway that depends on it."""
    check = merged(compose_cmd, *files)["tfserving"]["healthcheck"]
    window = compose_seconds(check["start_period"])
    window += compose_seconds(check["interval"]) * check["retries"]
    assert window >= 4 * MEASURED_CPU_WARMUP_S
    k8s = container(k8s_docs()[("Deployment", "tfserving")], "tfserving")["startupProbe"]
    assert k8s["periodSeconds"] * k8s["failureThreshold"] >= window


def test_tfserving_healthcheck_script_is_mounted(services: dict[str, Any]) -> None:
    test = services["tfserving"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "/etc/tfserving/healthcheck.sh"]
    rest_port = flags(services["tfserving"])["rest_api_port"]
    assert test[4] == rest_port
    mount = "./deploy/tfserving/healthcheck.sh:/etc/tfserving/healthcheck.sh:ro"
    assert mount in services["tfserving"]["volumes"]


def test_gateway_healthcheck_asks_readyz(services: dict[str, Any]) -> None:
    test = services["gateway"]["healthcheck"]["test"]
    assert test == ["CMD", "python", "/usr/local/bin/gateway-healthcheck", "/readyz"]


def test_only_the_proxy_network_may_name_the_client(services: dict[str, Any]) -> None:
    """The gateway believes X-Forwarded-For from the `edge` network, which only the proxy
    shares with it; the proxy's template replaces the header (tests/deploy/test_proxy.py)."""
    gateway, proxy = services["gateway"], services["proxy"]
    trusted = json.loads(gateway["environment"][f"{ENV_PREFIX}FORWARDED_ALLOW_IPS"])
    assert Settings(forwarded_allow_ips=trusted).forwarded_allow_ips == tuple(trusted)
    assert proxy["networks"] == ["edge"] or set(proxy["networks"]) == {"edge"}
    members = [name for name, svc in services.items() if "edge" in (svc.get("networks") or {})]
    assert sorted(members) == ["gateway", "proxy"]
