"""The monitoring profile: Prometheus scrapes the real endpoints, Grafana is provisioned with
the Prometheus it talks to, and the dashboard's queries name metrics that exist."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import pytest
from deploy_support import COMPOSE, DEPLOY, load_yaml

from contract.tfs_config import PROMETHEUS_PATH

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "resnet-serving.json"


def jobs() -> dict[str, dict[str, Any]]:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}


def command_flags(service: str) -> dict[str, str]:
    cmd = load_yaml(COMPOSE)["services"][service]["command"]
    return dict(a.removeprefix("--").split("=", 1) for a in cmd)


def test_prometheus_scrapes_gateway_and_tfserving() -> None:
    services = load_yaml(COMPOSE)["services"]
    gateway_port = services["gateway"]["environment"]["RESNET_SERVING_PORT"]
    assert jobs()["gateway"]["metrics_path"] == "/metrics"
    assert jobs()["gateway"]["static_configs"][0]["targets"] == [f"gateway:{gateway_port}"]
    rest = command_flags("tfserving")["rest_api_port"]
    assert jobs()["tfserving"]["metrics_path"] == PROMETHEUS_PATH
    assert jobs()["tfserving"]["static_configs"][0]["targets"] == [f"tfserving:{rest}"]


def test_compose_mounts_what_grafana_and_prometheus_read() -> None:
    services = load_yaml(COMPOSE)["services"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).exists(), source
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    source = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


@pytest.mark.parametrize(
    "needle",
    [
        "gateway_request_duration_seconds_bucket",  # latency percentiles
        "gateway_batch_size_bucket",  # batch sizes
        "gateway_queue_depth",  # queue depth
        ":tensorflow:serving:request_count",  # GPU throughput
        ":tensorflow:serving:request_latency_bucket",
    ],
)
def test_dashboard_covers(needle: str) -> None:
    assert any(needle in e for e in exprs())


def gateway_metric_families() -> set[str]:
    """Metric family names of a real gateway's registry (each app has its own)."""
    metrics = importlib.import_module("service.metrics")
    return {m.name for m in metrics.GatewayMetrics().registry.collect()}


def test_gateway_metrics_in_dashboard_exist() -> None:
    families = gateway_metric_families()
    used = {
        re.sub(r"_(bucket|sum|count|total)$", "", m)
        for e in exprs()
        for m in re.findall(r"\bgateway_[a-z_]+", e)
    }
    assert used, "the dashboard shows no gateway metric"
    assert used <= families, f"dashboard names unknown gateway metrics: {sorted(used - families)}"
