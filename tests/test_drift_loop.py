"""End to end, for CI: chapter 6's closed loop with every part real and on 127.0.0.1.

A champion trained on 2017-2020 serves 2025's sales (the drift scenario, 60 times faster
than real time); the real Prometheus sees the drift gauges and fires, the real
Alertmanager calls the webhook, the receiver retrains in a subprocess on the prediction
log's feedback, the gate promotes the challenger and the service reloads it while the
traffic goes on. Skipped only where the Prometheus / Alertmanager binaries are missing.
"""

from __future__ import annotations

import shutil

import pytest

from hdb_mlops.monitoring.checks import BINARIES, INSTALL_HINT

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

SPEED = 60.0


def _missing_binaries() -> list[str]:
    return [tool for tool, names in BINARIES.items() if not any(shutil.which(n) for n in names)]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    if missing := _missing_binaries():
        pytest.skip(f"{', '.join(missing)} not installed: `{INSTALL_HINT}`")
    from hdb_mlops.monitoring.closed_loop import run_drift_loop

    root = tmp_path_factory.mktemp("loop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns/mlflow.db")
        mp.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(root / "mlruns" / "artifacts"))
        mp.setenv("HDB_MLOPS_MODEL_CACHE", str(root / "mlruns" / "cache"))
        report = run_drift_loop(root / "work", speed=SPEED, timeout_s=240)
    print(report.summary())
    return report


def test_the_drift_fires_a_model_alert_in_prometheus_and_alertmanager(loop):
    assert not loop.timed_out, loop.summary()
    # which model alert Prometheus fires first is a race between the features' and the
    # predictions' drift (both move within one evaluation interval at this speed)
    drift = {"HdbFeatureDrift", "HdbPredictionDrift"}
    assert loop.first_alert in (*drift, "HdbLiveMapeHigh"), loop.summary()
    assert drift & set(loop.prometheus_alerts), loop.summary()  # ALERTS{alertstate="firing"}
    assert drift & set(loop.alertmanager_alerts), loop.summary()  # /api/v2/alerts
    assert loop.wall_s["first_alert"] is not None


def test_alertmanager_calls_the_webhook_which_retrains(loop):
    assert loop.webhook_alerts.get("HdbFeatureDrift", 0) >= 1
    assert loop.wall_s["first_alert"] <= loop.wall_s["webhook"] <= loop.wall_s["promoted"]
    audit = loop.audit
    runs = audit[audit["decision"] == "retrain"]
    assert len(runs) == 1  # every other model alert met the guard rails
    others = {"skipped_busy", "skipped_cooldown", "skipped_duplicate"}
    assert set(audit["decision"]) <= {"retrain", *others}


def test_the_gate_promotes_the_challenger_on_the_feedback_window(loop):
    assert loop.outcome == "promoted", loop.summary()
    assert loop.promoted_version == loop.champion_version + 1
    gate, training = loop.gate, loop.training
    assert gate["promoted"] and gate["champion_version"] == loop.champion_version
    assert gate["champion_mape"] - gate["candidate_mape"] >= gate["margin"]
    assert training["window_months"][0] == "2025-01"  # the sales the alert was about
    assert training["train_months"][1] < training["window_months"][0]  # never trained on
    row = loop.audit[loop.audit["decision"] == "retrain"].iloc[0]
    assert row["outcome"] == "promoted" and row["version"] == loop.promoted_version
    assert row["candidate_mape"] == gate["candidate_mape"]


def test_the_new_champion_serves_without_a_failed_request(loop):
    assert loop.served_version == loop.promoted_version  # GET /model
    assert f'version="{loop.promoted_version}"' in loop.model_info  # hdb_model_info
    sim = loop.simulation
    assert sim.statuses == {"200": sim.requests_sent} and sim.failures == {}
    assert set(sim.served_versions) == {str(loop.champion_version), str(loop.promoted_version)}
    row = loop.audit[loop.audit["decision"] == "retrain"].iloc[0]
    assert row["reloaded"] and row["served_version"] == loop.promoted_version
