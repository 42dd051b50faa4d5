"""Kubernetes manifests: schema-validated offline (kubernetes-validate, strict), and kept in
step with the gateway's Settings, the compose file and the TF Serving image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    COMPOSE,
    K8S,
    container,
    find_tool,
    k8s_docs,
    load_yaml,
    missing_tool,
    run,
)

from service.settings import ENV_PREFIX, Settings


def validator() -> list[str]:
    tool = find_tool("kubernetes-validate")
    if tool is None:
        missing_tool("kubernetes-validate", "pip install kubernetes-validate (dev extra)")
    assert tool is not None
    return [tool, "--strict", "--no-warn"]


def resources() -> list[str]:
    return list(load_yaml(K8S / "kustomization.yaml")["resources"])


def env_of(doc: dict[str, Any], name: str) -> dict[str, str]:
    """The literal values (those from a Secret are not known here)."""
    return {e["name"]: e["value"] for e in container(doc, name)["env"] if "value" in e}


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_docs()


def test_every_manifest_passes_the_schema() -> None:
    result = run([*validator(), *resources()], cwd=K8S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(resources())


def test_the_schema_check_can_fail(tmp_path: Path) -> None:
    text = (K8S / "gateway-deployment.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("readinessProbe:", "readynessProbe:", 1))
    result = run([*validator(), str(bad)])
    assert result.returncode != 0
    assert "readynessProbe" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources()) == on_disk


def test_gateway_env_is_real_settings(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    env = env_of(docs[("Deployment", "gateway")], "gateway")
    fields = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}
    names = [e["name"] for e in container(docs[("Deployment", "gateway")], "gateway")["env"]]
    assert all(k.startswith(ENV_PREFIX) for k in names)
    assert not {k.removeprefix(ENV_PREFIX).lower() for k in names} - set(Settings.model_fields)
    settings = Settings.model_validate(fields)
    assert settings.backend == "tfserving"
    host, _, port = settings.tfserving_address.rpartition(":")
    service = docs[("Service", "tfserving")]
    assert host == service["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}


def test_gateway_probes_ports_and_grace(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = docs[("Deployment", "gateway")]
    gw = container(deployment, "gateway")
    settings = Settings.model_validate(
        {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env_of(deployment, "gateway").items()}
    )
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gw["ports"] == [{"name": "http", "containerPort": settings.port}]
    pre_stop = gw["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + settings.drain_timeout_s
    assert gw["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a CPU request


def test_hpa_targets_the_gateway(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = docs[("HorizontalPodAutoscaler", "gateway")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_tfserving_runs_on_a_gpu_node(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = docs[("Deployment", "tfserving")]["spec"]["template"]["spec"]
    tfs = container(docs[("Deployment", "tfserving")], "tfserving")
    assert tfs["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]


def test_images_match_compose(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    services = load_yaml(COMPOSE)["services"]
    tfs_image = (
        services["tfserving"]["image"].replace("${TF_SERVING_VERSION:-", "").replace("}", "")
    )
    assert container(docs[("Deployment", "tfserving")], "tfserving")["image"] == tfs_image
    assert (
        container(docs[("Deployment", "gateway")], "gateway")["image"]
        == services["gateway"]["image"]
    )
    assert (
        container(docs[("Job", "model-builder")], "builder")["image"]
        == services["builder"]["image"]
    )


def test_model_volume_is_shared_and_read_only_for_servers(
    docs: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pvc = docs[("PersistentVolumeClaim", "models")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # the Job and TF Serving's node
    for kind, name, cname, read_only in [
        ("Deployment", "tfserving", "tfserving", True),
        ("Job", "model-builder", "builder", False),
    ]:
        doc = docs[(kind, name)]
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
        mount = next(m for m in container(doc, cname)["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == "/models"
        assert mount.get("readOnly", False) is read_only


def test_the_ingress_limits_are_the_gateways(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    ingress = docs[("Ingress", "gateway")]
    notes = {
        k.removeprefix("nginx.ingress.kubernetes.io/"): v
        for k, v in ingress["metadata"]["annotations"].items()
    }
    defaults = Settings()
    assert int(notes["proxy-body-size"].removesuffix("m")) * 1024**2 == defaults.max_upload_bytes
    assert float(notes["client-body-timeout"]) == defaults.body_timeout_s
    assert float(notes["proxy-read-timeout"]) > defaults.request_timeout_s
    assert notes["proxy-request-buffering"] == "on"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = docs[("Service", backend["name"])]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_gateway_mounts_no_model_volume(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Contracts come from TF Serving: no PVC, no model path; /tmp (an emptyDir) holds the
    admin state its worker processes share; admin keys only from an optional Secret."""
    doc = docs[("Deployment", "gateway")]
    volumes = doc["spec"]["template"]["spec"]["volumes"]
    assert [v for v in volumes if "persistentVolumeClaim" in v] == []
    gateway = container(doc, "gateway")
    env = {e["name"]: e for e in gateway["env"]}
    assert f"{ENV_PREFIX}MODEL_BASE_PATH" not in env
    state_dir = env[f"{ENV_PREFIX}SHARED_STATE_DIR"]["value"]
    tmp = next(m for m in gateway["volumeMounts"] if m["name"] == "tmp")
    assert state_dir.startswith(tmp["mountPath"] + "/")
    secret = env[f"{ENV_PREFIX}ADMIN_KEYS"]["valueFrom"]["secretKeyRef"]
    assert secret["optional"] is True
