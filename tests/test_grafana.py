"""The Grafana dashboards, their provisioning and docker-compose.yml, checked offline (Grafana
is not installable here and there is no Docker daemon): raw dashboard JSON that file
provisioning accepts, every panel on the provisioned datasource with a PromQL query that
promtool parses, and a compose file with pinned images, healthchecks and the mounts the
configuration expects. tests/test_monitor_stack.py runs the same queries against a live
Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from hdb_mlops.monitoring import checks, panels
from hdb_mlops.monitoring.stack_config import dump_yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "hdb-prometheus"}
UIDS = {"service-health": "hdb-service-health", "model-health": "hdb-model-health"}
#: What each dashboard must show (a metric or recording rule in some panel's query).
REQUIRED = {
    "service-health": [
        "hdb:http_requests:rate1m",
        "hdb:http_errors:ratio_rate5m",
        "hdb:predict_latency_seconds:p50_5m",
        "histogram_quantile(0.90",
        "hdb:predict_latency_seconds:p99_5m",
        "hdb_rejected_requests_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ],
    "model-health": [
        "hdb_predicted_price_sgd_bucket",
        "hdb:drift_psi:max",
        "hdb_drift_ks_statistic",
        "hdb:live_mape:ratio_rate15m",
        "hdb:live_within_5pct:ratio_rate15m",
        "hdb_feedback_total",
        "hdb_model_info",
        "hdb_retraining_runs_total",
    ],
}
COMPOSE_SERVICES = {"api", "prometheus", "alertmanager", "grafana", "retrainer"}


def dashboard_text(name: str) -> str:
    return (GRAFANA / "dashboards" / f"{name}.json").read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def all_exprs() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr with Grafana's variables as Grafana would fill them)."""
    out = []
    for name in panels.DASHBOARDS:
        for panel in panels.dashboard_panels(panels.load_dashboard(name)):
            for target in panel.targets:
                expr = panels.grafana_expr(
                    target.expr, step=15, range_seconds=1800, scrape_seconds=15
                )
                out.append((name, panel.title, expr))
    return out


# ------------------------------------------------------------------------- dashboards


@pytest.mark.parametrize("name", panels.DASHBOARDS)
def test_dashboards_are_raw_json_for_file_provisioning(name):
    text = dashboard_text(name)
    dashboard = json.loads(text)
    assert dashboard["id"] is None
    assert dashboard["uid"] == UIDS[name]
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "${DS_" not in text and "$datasource" not in text
    assert dashboard["title"] and dashboard["schemaVersion"] >= 36


@pytest.mark.parametrize("name", panels.DASHBOARDS)
def test_every_panel_queries_the_provisioned_datasource(name):
    dashboard = json.loads(dashboard_text(name))
    raw = dashboard["panels"]
    assert len(raw) >= 8
    assert len({p["id"] for p in raw}) == len(raw), "panel ids must be unique"
    for panel in raw:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
    assert len(panels.dashboard_panels(dashboard)) == len(raw)


@pytest.mark.parametrize("name", panels.DASHBOARDS)
def test_dashboards_show_what_the_chapter_needs(name):
    exprs = " ".join(
        t.expr for p in panels.dashboard_panels(panels.load_dashboard(name)) for t in p.targets
    )
    missing = [needle for needle in REQUIRED[name] if needle not in exprs]
    assert missing == []


def test_dashboards_read_only_recording_rules_that_exist():
    groups = yaml.safe_load((ROOT / "prometheus" / "rules" / "recording.yml").read_text())
    recorded = {r["record"] for g in groups["groups"] for r in g["rules"]}
    used = {m for _d, _t, e in all_exprs() for m in re.findall(r"\bhdb:[a-z0-9_:]+", e)}
    assert used and used <= recorded, used - recorded


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool parses each query (as a recording rule) once Grafana's variables are filled."""
    try:
        checks.require_binaries("promtool")
    except checks.MissingBinaryError as exc:
        pytest.skip(f"promtool missing: {exc}")
    rules = [
        {"record": f"check:panel_{i}", "expr": expr} for i, (_d, _t, expr) in enumerate(all_exprs())
    ]
    path = tmp_path / "panels.yml"
    path.write_text(dump_yaml({"groups": [{"name": "panels", "rules": rules}]}))
    result = checks.check_rules([path])
    assert result.ok, result.output
    assert f"SUCCESS: {len(rules)} rules found" in result.output


def test_grafana_variables_are_filled_as_grafana_does():
    expr = "rate(x[$__rate_interval]) + increase(y[$__range]) + z[${__interval}]"
    assert panels.grafana_expr(expr, step=15, range_seconds=1800, scrape_seconds=15) == (
        "rate(x[1m]) + increase(y[30m]) + z[15s]"
    )
    # at speed 30 (1 s scrapes), a 5 s step: max(5 + 1, 4 x 1) = 6 s
    assert panels.grafana_expr("rate(x[$__rate_interval])", step=5, range_seconds=60,
                               scrape_seconds=1) == "rate(x[6s])"  # fmt: skip
    assert panels.legend(
        "{{endpoint}} {{status}}", {"endpoint": "/predict", "status": "200"}, "x"
    ) == ("/predict 200")
    assert panels.legend("", {"a": "1"}, "fallback") == "fallback"


# ------------------------------------------------------------------------- provisioning


def test_the_datasource_is_provisioned_with_the_uid_the_panels_use():
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE["uid"] and source["type"] == DATASOURCE["type"]
    assert source["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_dashboards_are_provisioned_from_the_folder_compose_mounts(compose):
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hdb.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ------------------------------------------------------------------------- docker-compose.yml


def test_compose_has_the_services_with_healthchecks(compose):
    services = compose["services"]
    assert set(services) == COMPOSE_SERVICES
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert "interval" in check and "retries" in check, name


def test_compose_images_are_pinned(compose):
    services = compose["services"]
    images = {name: s["image"] for name, s in services.items()}
    for name, image in images.items():
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    version = re.fullmatch(r"prom/prometheus:v(\d+)\.(\d+)\.(\d+)", images["prometheus"])
    assert version and tuple(map(int, version.groups())) >= (2, 42, 0)
    assert images["alertmanager"] == "prom/alertmanager:v0.25.0"
    assert re.fullmatch(r"grafana/grafana:1[12]\.\d+\.\d+", images["grafana"])
    # api and retrainer are the project's image, built from the Dockerfile
    for name in ("api", "retrainer"):
        assert services[name]["build"]["context"] == "."
    assert services["api"]["image"] == services["retrainer"]["image"]
    assert (ROOT / "Dockerfile").is_file()


def test_compose_mounts_the_configuration_the_servers_read(compose):
    services = compose["services"]
    for name in ("prometheus", "alertmanager"):
        mounts = dict(v.split(":")[:2] for v in services[name]["volumes"])
        assert mounts["./prometheus"] == "/etc/prometheus"
        config = next(a for a in services[name]["command"] if a.startswith("--config.file="))
        inside = config.split("=", 1)[1]
        on_host = ROOT / "prometheus" / Path(inside).relative_to("/etc/prometheus")
        assert on_host.is_file(), f"{name} reads {inside}, which is not in prometheus/"
    grafana = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    for host in grafana:
        if host.startswith("./"):
            assert (ROOT / host).is_dir(), host


def test_compose_targets_are_its_services(compose):
    """The compose variant of prometheus.yml scrapes the compose services at their ports."""
    docker = yaml.safe_load((ROOT / "prometheus" / "docker" / "prometheus.yml").read_text())
    services = compose["services"]
    for job in docker["scrape_configs"]:
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        if host == "localhost":
            continue
        assert host in services, target
        published = [p.split(":")[-1] for p in services[host].get("ports", [])]
        assert port in published, target
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text()
    retrainer = services["retrainer"]
    assert retrainer["entrypoint"] == ["hdb-mlops"] and retrainer["command"][0] == "retrainer"
    assert "--port=9095" in retrainer["command"]


def test_the_retrainer_verb_exists():
    from hdb_mlops.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "retrainer" in sub.choices and "monitor" in sub.choices
