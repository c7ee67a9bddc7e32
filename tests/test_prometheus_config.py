"""The committed monitoring configuration (prometheus/): promtool and amtool accept it, every
alert has a rule test that fires it and one that keeps it quiet, Alertmanager routes model
alerts (and only those) to the retraining webhook, and the renderer divides every duration
by --speed while the committed files keep real-time values.

promtool and amtool are Debian's (prometheus 2.42, prometheus-alertmanager 0.25); the tests
that run them skip, naming the install command, where they are missing (CI installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hdb_mlops.monitoring import checks, stack_config
from hdb_mlops.monitoring.stack_config import (
    format_duration,
    parse_duration,
    render_local,
    scale_duration,
    scale_expr,
)

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "prometheus"
#: Where each category's alerts link their runbook (chapter 6A's notebook for the service,
#: 6B's for the model).
RUNBOOKS = {
    "service": "notebooks/06a_monitoring.ipynb",
    "model": "notebooks/06b_drift_and_retraining.ipynb",
}
MODEL_ALERTS = {"HdbFeatureDrift", "HdbPredictionDrift", "HdbLiveMapeHigh"}
SERVICE_ALERTS = {"HdbApiDown", "HdbHighErrorRate", "HdbHighLatencyP99"}
RECORDING_RULES = {
    "hdb:http_requests:rate1m",
    "hdb:http_errors:ratio_rate5m",
    "hdb:predict_latency_seconds:p99_5m",
    "hdb:predict_latency_seconds:p50_5m",
    "hdb:live_mape:ratio_rate15m",
    "hdb:live_within_5pct:ratio_rate15m",
    "hdb:drift_psi:max",
}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> dict[str, dict]:
    groups = load(PROM / "rules" / "alerts.yml")["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def recording_rules() -> list[dict]:
    groups = load(PROM / "rules" / "recording.yml")["groups"]
    return [r for g in groups for r in g["rules"]]


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    try:
        return checks.require_binaries("promtool", "amtool")
    except checks.MissingBinaryError as exc:
        pytest.skip(f"promtool/amtool missing: {exc}")


def assert_ok(result: checks.CheckResult) -> None:
    assert result.ok, f"{result.name}:\n{result.output}"


# ------------------------------------------------------------------------- promtool / amtool


def test_promtool_accepts_the_configuration_and_its_compose_variant(tools):
    for path in (PROM / "prometheus.yml", PROM / "docker" / "prometheus.yml"):
        result = checks.check_prometheus_config(path)
        assert_ok(result)
        assert "2 rule files found" in result.output


def test_promtool_accepts_the_rules(tools):
    result = checks.check_rules(sorted((PROM / "rules").glob("*.yml")))
    assert_ok(result)
    assert "SUCCESS: 9 rules found" in result.output  # 9 recording rules
    assert "SUCCESS: 6 rules found" in result.output  # 6 alerts


def test_promtool_rule_tests_pass(tools):
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert len(tests) >= 3
    assert_ok(checks.run_rule_tests(tests))


def test_every_alert_has_a_firing_and_a_quiet_rule_test():
    fires, quiet = {}, set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fires.setdefault(check["alertname"], []).extend(check["exp_alerts"])
                else:
                    quiet.add(check["alertname"])
    rules = alert_rules()
    assert set(rules) == MODEL_ALERTS | SERVICE_ALERTS
    assert set(fires) == set(rules), "an alert without a case where it fires"
    assert quiet == set(rules), "an alert without a case where it stays quiet"
    for name, expected in fires.items():
        for alert in expected:
            # the firing case pins the labels Alertmanager routes on and every annotation
            assert alert["exp_labels"]["category"] == rules[name]["labels"]["category"]
            assert alert["exp_labels"]["severity"] == rules[name]["labels"]["severity"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}


def test_the_rule_tests_catch_a_wrong_threshold(tools, tmp_path):
    """The tests are not vacuous: with the drift threshold moved from 0.2 to 0.4, they fail."""
    shutil.copytree(PROM, tmp_path / "prometheus")
    alerts = tmp_path / "prometheus" / "rules" / "alerts.yml"
    text = alerts.read_text()
    rule = '{feature!~"prediction|month_index"} > 0.2'
    assert text.count(rule) == 1
    alerts.write_text(text.replace(rule, rule.replace("0.2", "0.4")))
    result = checks.run_rule_tests(sorted((tmp_path / "prometheus" / "tests").glob("*.yml")))
    assert not result.ok
    assert "HdbFeatureDrift" in result.output


def test_amtool_accepts_the_alertmanager_configuration(tools):
    for path in (PROM / "alertmanager.yml", PROM / "docker" / "alertmanager.yml"):
        result = checks.check_alertmanager_config(path)
        assert_ok(result)
        assert "2 receivers" in result.output and "1 inhibit rules" in result.output


def test_model_alerts_route_to_the_retrainer_and_service_alerts_do_not(tools):
    config = PROM / "alertmanager.yml"
    rules = alert_rules()
    for name, rule in rules.items():
        labels = {"alertname": name, **rule["labels"]}
        receivers = checks.route_receivers(config, labels)
        if name in MODEL_ALERTS:
            assert receivers == ["hdb-retrainer"], name
        else:
            assert receivers == ["default"], name
    # an unknown alert without labels falls through to the default receiver too
    assert checks.route_receivers(config, {"alertname": "Whatever"}) == ["default"]


def test_alertmanager_sends_model_alerts_to_the_webhook_without_resolved_notifications():
    config = load(PROM / "alertmanager.yml")
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"default", "hdb-retrainer"}
    assert "webhook_configs" not in receivers["default"]  # notifies nobody
    (hook,) = receivers["hdb-retrainer"]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9095/alerts"
    assert hook["send_resolved"] is False
    (route,) = config["route"]["routes"]
    assert route["receiver"] == "hdb-retrainer"
    assert route["matchers"] == ['category="model"']
    assert route["group_by"] == ["alertname"]
    assert parse_duration(route["group_wait"]) <= 30
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["source_matchers"] == ['alertname="HdbApiDown"']
    assert inhibit["target_matchers"] == ['category="model"']


def test_alerts_and_recording_rules_follow_the_contract():
    rules = alert_rules()
    for name, rule in rules.items():
        expected = "model" if name in MODEL_ALERTS else "service"
        assert rule["labels"]["category"] == expected, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name
        assert rule["annotations"]["runbook"].startswith(RUNBOOKS[expected] + "#"), name
    assert rules["HdbApiDown"]["expr"] == 'up{job="hdb-api"} == 0'
    fors = {name: rule["for"] for name, rule in rules.items()}
    assert fors == {
        "HdbApiDown": "1m",
        "HdbHighErrorRate": "5m",
        "HdbHighLatencyP99": "5m",
        "HdbFeatureDrift": "5m",
        "HdbPredictionDrift": "5m",
        "HdbLiveMapeHigh": "10m",
    }
    assert {r["record"] for r in recording_rules()} == RECORDING_RULES


def test_prometheus_scrapes_the_three_jobs_and_alerts_to_alertmanager():
    config = load(PROM / "prometheus.yml")
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets == {
        "prometheus": ["127.0.0.1:9090"],
        "hdb-api": ["127.0.0.1:8080"],
        "hdb-retrainer": ["127.0.0.1:9095"],
    }
    assert config["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"]
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["127.0.0.1:9093"]


# ------------------------------------------------------------------------- the renderer


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800)]
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


def test_durations_format_and_scale_with_a_floor_of_one_second():
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.2) == "1s"
    assert scale_duration("5m", 30) == "10s"
    assert scale_duration("15s", 30) == "1s"  # 0.5 s, floored
    assert scale_duration("4h", 30) == "8m"
    assert scale_duration("5m", 1) == "5m"
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        parse_duration("5 minutes")


def test_expressions_scale_windows_subqueries_and_offsets_but_not_strings():
    expr = 'rate(x{path=~"[5m]"}[5m]) + max_over_time(y[30m:1m]) - z offset 10m + w[1h]'
    assert scale_expr(expr, 30, min_range=4) == (
        'rate(x{path=~"[5m]"}[10s]) + max_over_time(y[1m:2s]) - z offset 20s + w[2m]'
    )
    # a window never drops under min_range (four scrapes), nor grows past itself
    assert scale_expr("rate(x[1m])", 30, min_range=4) == "rate(x[4s])"
    assert scale_expr("rate(x[2s])", 30, min_range=4) == "rate(x[2s])"
    assert scale_expr("rate(x[5m])", 1, min_range=4) == "rate(x[5m])"


def rendered(tmp_path: Path, speed: float) -> dict:
    out = render_local(
        tmp_path / f"speed-{speed:g}",
        api_url="http://127.0.0.1:18000/prefix",
        retrainer_url="http://127.0.0.1:19095",
        prometheus_port=19090,
        alertmanager_port=19093,
        speed=speed,
    )
    rules = {p.name: load(p) for p in out.rule_files}
    return {
        "paths": out,
        "prometheus": load(out.prometheus_config),
        "alertmanager": load(out.alertmanager_config),
        "alerts": {r["alert"]: r for g in rules["alerts.yml"]["groups"] for r in g["rules"]},
        "recording": [r for g in rules["recording.yml"]["groups"] for r in g["rules"]],
    }


def test_the_renderer_divides_every_duration_by_speed(tmp_path):
    out = rendered(tmp_path, 30)
    glob = out["prometheus"]["global"]
    assert glob == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert out["paths"].scrape_seconds == 1
    fors = {name: rule["for"] for name, rule in out["alerts"].items()}
    assert fors == {
        "HdbApiDown": "2s",
        "HdbHighErrorRate": "10s",
        "HdbHighLatencyP99": "10s",
        "HdbFeatureDrift": "10s",
        "HdbPredictionDrift": "10s",
        "HdbLiveMapeHigh": "20s",
    }
    exprs = {r["record"] + str(r.get("labels", "")): r["expr"] for r in out["recording"]}
    assert "[4s]" in exprs["hdb:http_requests:rate1m"]  # 1m / 30 = 2 s, but 4 scrapes
    assert "[10s]" in exprs["hdb:http_errors:ratio_rate5m"]
    assert "[30s]" in exprs["hdb:live_mape:ratio_rate15m"]
    assert "[30s]" in out["alerts"]["HdbLiveMapeHigh"]["expr"]
    every_expr = " ".join(exprs.values()) + " ".join(r["expr"] for r in out["alerts"].values())
    assert "[1m]" not in every_expr and "[5m]" not in every_expr and "[15m]" not in every_expr
    route = out["alertmanager"]["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "1s",
        "10s",
        "8m",
    )
    child = route["routes"][0]
    assert (child["group_wait"], child["group_interval"], child["repeat_interval"]) == (
        "1s",
        "10s",
        "2m",
    )
    assert out["alertmanager"]["global"]["resolve_timeout"] == "10s"


def test_the_renderer_substitutes_targets_ports_and_rule_paths(tmp_path):
    out = rendered(tmp_path, 30)
    jobs = {job["job_name"]: job for job in out["prometheus"]["scrape_configs"]}
    assert jobs["hdb-api"]["static_configs"] == [{"targets": ["127.0.0.1:18000"]}]
    assert jobs["hdb-api"]["metrics_path"] == "/prefix/metrics"
    assert jobs["hdb-retrainer"]["static_configs"] == [{"targets": ["127.0.0.1:19095"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19090"]}]
    am = out["prometheus"]["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["127.0.0.1:19093"]
    assert out["prometheus"]["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"]
    hook = out["alertmanager"]["receivers"][1]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:19095/alerts"


def test_at_speed_one_only_the_targets_change(tmp_path):
    out = rendered(tmp_path, 1)
    source = load(PROM / "prometheus.yml")
    assert out["prometheus"]["global"] == source["global"]
    assert out["alerts"] == alert_rules()
    assert out["recording"] == recording_rules()
    committed = load(PROM / "alertmanager.yml")
    assert out["alertmanager"]["route"] == committed["route"]
    assert out["alertmanager"]["inhibit_rules"] == committed["inhibit_rules"]


@pytest.mark.parametrize("speed", [1, 30, 600])
def test_promtool_and_amtool_accept_the_rendered_files(tools, tmp_path, speed):
    out = rendered(tmp_path, speed)["paths"]
    for result in checks.check_rendered(out):
        assert_ok(result)


def test_the_compose_variant_is_rendered_from_the_sources():
    assert stack_config.stale_compose_files(PROM) == [], (
        "prometheus/docker/ is out of date: run `hdb-mlops monitor render --compose`"
    )
    docker = load(PROM / "docker" / "prometheus.yml")
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in docker["scrape_configs"]}
    assert jobs == {
        "prometheus": ["localhost:9090"],
        "hdb-api": ["api:8080"],
        "hdb-retrainer": ["retrainer:9095"],
    }
    assert docker["rule_files"] == ["../rules/recording.yml", "../rules/alerts.yml"]
    hook = load(PROM / "docker" / "alertmanager.yml")["receivers"][1]["webhook_configs"][0]
    assert hook["url"] == "http://retrainer:9095/alerts"


def test_a_bad_speed_or_url_is_refused(tmp_path):
    with pytest.raises(ValueError, match="speed"):
        render_local(
            tmp_path, api_url="http://127.0.0.1:1", retrainer_url="http://127.0.0.1:2",
            prometheus_port=1, alertmanager_port=2, speed=0,
        )  # fmt: skip
    with pytest.raises(ValueError, match="not an http"):
        stack_config.Target.from_url("127.0.0.1:8080")


# ------------------------------------------------------------------------- the CLI


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )


def test_monitor_check_runs_every_check(tools):
    out = run_cli("monitor", "check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert any(n.startswith("promtool test rules") for n in names)
    assert any(n.startswith("amtool check-config prometheus/docker/") for n in names)
    assert all(c["ok"] for c in report["checks"])


def test_monitor_render_writes_a_run_folder_promtool_accepts(tools, tmp_path):
    out = run_cli("monitor", "render", "--workdir", str(tmp_path), "--speed", "30", "--json")
    assert out.returncode == 0, out.stderr
    written = [Path(p) for p in json.loads(out.stdout)["written"]]
    assert {p.name for p in written} == {
        "prometheus.yml", "recording.yml", "alerts.yml", "alertmanager.yml",
    }  # fmt: skip
    assert all(p.is_relative_to(tmp_path) for p in written)
    assert_ok(checks.check_prometheus_config(tmp_path / "prometheus.yml"))


def test_promql_client_says_when_prometheus_is_not_there():
    from hdb_mlops.monitoring import promql
    from hdb_mlops.monitoring.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(promql.PrometheusUnreachable, match="hdb-mlops monitor up"):
        promql.query(url, "up")


def test_monitor_verbs_without_the_binaries_say_how_to_install_them(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    for verb in (["check"], ["up", "--workdir", str(tmp_path / "w")]):
        out = run_cli("monitor", *verb, env=env)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert "sudo apt-get install prometheus prometheus-alertmanager" in lines[0]
