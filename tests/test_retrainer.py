"""The Alertmanager webhook receiver and the retraining loop, on real uvicorn servers, a real
MLflow store, a real prediction log and real retraining subprocesses.

The guard rails are checked with a retraining that fails fast (no prediction log), so that
they cost seconds; the crash and the real retraining run on the sample with a small model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.monitoring.audit import AuditLog, read_audit
from hdb_mlops.monitoring.retrain import (
    FAULT_ENV,
    RetrainError,
    RetrainSettings,
    assemble,
    feedback_transactions,
)
from hdb_mlops.monitoring.retrainer import Retrainer, RetrainLock
from hdb_mlops.monitoring.webhook import create_receiver_app
from hdb_mlops.serving.server import serve_in_thread

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

TOKEN = "test-reload-token"
FAST_XGB = {"n_estimators": 60, "max_depth": 6, "learning_rate": 0.3}


def alert(
    name: str = "HdbFeatureDrift",
    *,
    category: str = "model",
    status: str = "firing",
    fingerprint: str = "f1",
    starts: str = "2026-01-05T08:00:00.000Z",
) -> dict:
    """One alert as Alertmanager sends it."""
    return {
        "status": status,
        "labels": {"alertname": name, "category": category, "feature": "month_index"},
        "annotations": {"summary": "drift"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict) -> dict:
    """An Alertmanager webhook body (version 4) around ``alerts``."""
    first = alerts[0]
    name = first["labels"].get("alertname", "")
    return {
        "version": "4",
        "groupKey": '{}/{category="model"}:{alertname="' + name + '"}',
        "truncatedAlerts": 0,
        "status": first["status"],
        "receiver": "hdb-retrainer",
        "groupLabels": {"alertname": name},
        "commonLabels": first["labels"],
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def metric(text: str, name: str) -> float:
    """The value of one sample of a Prometheus text exposition."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"no sample {name} in /metrics")


@pytest.fixture
def receiver(tmp_path):
    """A receiver whose retraining fails fast (no prediction log), its retrainer and a client."""

    def start(**kwargs):
        settings = RetrainSettings(
            prediction_log=str(tmp_path / "no-such-log.sqlite"), work_dir=str(tmp_path / "work")
        )
        retrainer = Retrainer(settings, audit_log=tmp_path / "audit.jsonl", **kwargs)
        return retrainer, create_receiver_app(retrainer)

    servers = []

    def make(**kwargs):
        retrainer, app = start(**kwargs)
        ctx = serve_in_thread(app)
        url = ctx.__enter__()
        servers.append((ctx, retrainer))
        return retrainer, httpx.Client(base_url=url, timeout=30)

    yield make
    for ctx, retrainer in servers:
        retrainer.wait(60)
        ctx.__exit__(None, None, None)


# ------------------------------------------------------------------------- the payload


BAD = {
    "not JSON": (b"{not json", 400, "body"),
    "not an object": (b"[1, 2]", 422, "body"),
    "old version": (json.dumps({**payload(alert()), "version": "3"}).encode(), 422, "version"),
    "no alerts": (json.dumps({**payload(alert()), "alerts": []}).encode(), 422, "alerts"),
    "no fingerprint": (
        json.dumps(payload({k: v for k, v in alert().items() if k != "fingerprint"})).encode(),
        422,
        "alerts.0.fingerprint",
    ),
    "startsAt not a time": (
        json.dumps(payload(alert(starts="yesterday"))).encode(),
        422,
        "alerts.0.startsAt",
    ),
    "no alertname": (
        json.dumps(payload({**alert(), "labels": {"category": "model"}})).encode(),
        422,
        "alerts.0.labels",
    ),
    "unknown status": (
        json.dumps(payload(alert(status="pending"))).encode(),
        422,
        "alerts.0.status",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_payload_is_refused_naming_the_field(receiver, tmp_path, case):
    body, status, field = BAD[case]
    _, client = receiver()
    answer = client.post("/alerts", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert field in [d["field"] for d in detail], detail
    assert all(d["reason"] for d in detail)
    assert AuditLog(tmp_path / "audit.jsonl").records() == []  # nothing decided


def test_alerts_that_are_not_firing_model_alerts_are_ignored(receiver, tmp_path):
    retrainer, client = receiver()
    service = client.post("/alerts", json=payload(alert("HdbApiDown", category="service")))
    resolved = client.post("/alerts", json=payload(alert(status="resolved")))
    assert service.status_code == resolved.status_code == 200
    assert service.json()["decision"] == resolved.json()["decision"] == "ignored"
    assert "HdbApiDown (firing)" in service.json()["reason"]
    audit = read_audit(tmp_path / "audit.jsonl")
    assert list(audit["decision"]) == ["ignored", "ignored"]
    assert list(audit["alertnames"]) == ["HdbApiDown", "HdbFeatureDrift"]
    text = client.get("/metrics").text
    assert metric(text, 'hdb_retraining_runs_total{outcome="ignored"}') == 2
    assert metric(text, 'hdb_alerts_received_total{alertname="HdbApiDown"}') == 1
    assert not retrainer.busy


# ------------------------------------------------------------------------- the guard rails


def test_a_resent_alert_is_never_retrained_twice(receiver, tmp_path):
    retrainer, client = receiver(cooldown_s=0)
    started = time.monotonic()
    first = client.post("/alerts", json=payload(alert()))
    assert first.status_code == 202 and first.json()["decision"] == "retrain"
    assert time.monotonic() - started < 2  # answered at once, the job runs in the background
    while_running = client.post("/alerts", json=payload(alert()))
    assert while_running.json()["decision"] == "skipped_duplicate"
    assert retrainer.wait(120)
    after = client.post("/alerts", json=payload(alert()))
    assert after.json()["decision"] == "skipped_duplicate"

    # a restarted receiver reads the same audit log: still a duplicate
    _, client2 = receiver(cooldown_s=0)
    assert client2.post("/alerts", json=payload(alert())).json()["decision"] == "skipped_duplicate"

    audit = read_audit(tmp_path / "audit.jsonl")
    assert list(audit["decision"]).count("retrain") == 1
    run = audit[audit["decision"] == "retrain"].iloc[0]
    assert run["outcome"] == "failed"
    assert "no prediction log" in run["error"] and "no-such-log.sqlite" in run["error"]
    text = client.get("/metrics").text
    assert metric(text, 'hdb_retraining_runs_total{outcome="failed"}') == 1
    assert metric(text, 'hdb_retraining_runs_total{outcome="skipped_duplicate"}') == 2
    assert metric(text, "hdb_retraining_in_progress") == 0
    assert metric(text, "hdb_retraining_last_run_timestamp_seconds") > 0
    records = client.get("/audit").json()
    # the retraining's record is written when it is over, after the resend it overlapped
    assert [r["decision"] for r in records["records"]] == [
        "skipped_duplicate",
        "retrain",
        "skipped_duplicate",
        "skipped_duplicate",
    ]


def test_a_new_firing_within_the_cooldown_waits_for_it(receiver, tmp_path):
    retrainer, client = receiver(cooldown_s=120)
    assert client.post("/alerts", json=payload(alert(fingerprint="a"))).status_code == 202
    assert retrainer.wait(120)
    second = client.post("/alerts", json=payload(alert(fingerprint="b")))
    assert second.json()["decision"] == "skipped_cooldown"
    assert "next may start after" in second.json()["reason"]
    # the same receiver restarted with a 1 s cool-down, which has passed by now: the firing
    # skipped in the cool-down was not forgotten
    time.sleep(1.0)
    restarted, client2 = receiver(cooldown_s=1)
    third = client2.post("/alerts", json=payload(alert(fingerprint="b")))
    assert third.status_code == 202, third.json()
    assert restarted.wait(120)
    audit = read_audit(tmp_path / "audit.jsonl")
    assert list(audit["decision"]) == ["retrain", "skipped_cooldown", "retrain"]


def test_one_retraining_at_a_time_and_a_stale_lock_is_taken_over(receiver, tmp_path):
    lock = tmp_path / "work" / "retraining.lock"
    lock.parent.mkdir(parents=True)
    # another receiver's retraining: a live process holds the lock
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "started_at": "2026-01-05T08:00:00Z"}))
        retrainer, client = receiver(cooldown_s=0)
        busy = client.post("/alerts", json=payload(alert()))
        assert busy.json()["decision"] == "skipped_busy"
        assert str(other.pid) in busy.json()["reason"]
        assert json.loads(lock.read_text())["pid"] == other.pid  # left alone
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    # that process died without releasing it: the lock is stale now
    again = client.post("/alerts", json=payload(alert()))
    assert again.status_code == 202, again.json()  # busy is not "done": retried
    assert retrainer.wait(120)
    assert not lock.exists()  # released after the run
    records = AuditLog(tmp_path / "audit.jsonl").records()
    assert [r["decision"] for r in records] == ["skipped_busy", "retrain"]
    assert records[1]["lock"]["took_over"]["pid"] == other.pid


def test_the_lock_lets_one_of_two_processes_win(tmp_path):
    first, second = RetrainLock(tmp_path / "x.lock"), RetrainLock(tmp_path / "x.lock")
    assert first.acquire(alerts=["a"]) is None
    with pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
        second.acquire()
    first.update(worker_pid=12345)
    assert json.loads((tmp_path / "x.lock").read_text())["worker_pid"] == 12345
    first.release()
    assert second.acquire() is None
    second.release()


def test_the_cooldown_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="cooldown_s"):
        Retrainer(RetrainSettings(work_dir=str(tmp_path)), cooldown_s=-1)


# ------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pd.DataFrame:
    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


def log_feedback(log, rows: pd.DataFrame, prefix: str = "p") -> None:
    """Log ``rows`` as priced by the service, then their actual prices as feedback."""
    from hdb_mlops.data.examples import request_records
    from hdb_mlops.monitoring.feedback import record_feedback

    for i, record in enumerate(request_records(rows)):
        log.log(f"{prefix}{i}", record, 500_000.0, model_version="1")
    assert log.flush()
    for i, price in enumerate(rows["resale_price"]):
        assert record_feedback(log, f"{prefix}{i}", float(price)).outcome == "accepted"


def test_the_window_is_never_trained_on(sample, tmp_path):
    from hdb_mlops.monitoring.predlog import PredictionLog

    history = sample[sample["month"] <= pd.Period("2025-06", freq="M")]
    fed = sample[sample["month"] >= pd.Period("2025-04", freq="M")]
    fed = fed[fed["month"] <= pd.Period("2025-09", freq="M")]
    log = PredictionLog(tmp_path / "p.sqlite")
    log_feedback(log, fed)
    log.close()
    feedback = feedback_transactions(log.labelled())
    assert len(feedback) == len(fed)

    out = assemble(history, feedback, window_months=2, min_window_rows=10)
    assert out.info["window_months"] == ["2025-08", "2025-09"]
    assert set(out.window["month"].astype(str)) == {"2025-08", "2025-09"}
    assert out.train["month"].max() == pd.Period("2025-07", freq="M")
    # the files cover up to 2025-06: the feedback adds 2025-07 only, never a sale twice
    july = (fed["month"] == pd.Period("2025-07", freq="M")).sum()
    assert out.info["train_rows_feedback"] == july
    assert out.info["train_rows_files"] == (history["month"] < pd.Period("2025-08", freq="M")).sum()
    assert out.info["train_rows"] == len(out.train) == out.info["train_rows_files"] + july
    assert out.info["cutoff"] == "2025-07"

    with pytest.raises(RetrainError, match="min_window_rows=100000"):
        assemble(history, feedback, window_months=2, min_window_rows=100_000)
    with pytest.raises(RetrainError, match="no labelled feedback"):
        assemble(history, feedback.iloc[:0])
    # no data files: the feedback before the window is the training set...
    alone = assemble(history.iloc[:0], feedback, window_months=2, min_window_rows=10)
    assert alone.info["train_months"] == ["2025-04", "2025-07"]
    # a window longer than the feedback starts at the first month fed back, and the files
    # train up to the month before it: no month falls between training and window
    long = assemble(history, feedback, window_months=12, min_window_rows=10)
    assert long.info["window_months"] == ["2025-04", "2025-09"]
    assert long.train["month"].max() == pd.Period("2025-03", freq="M")
    # ...and with nothing before the window there is nothing to train on
    in_window = feedback[feedback["month"] >= pd.Period("2025-08", freq="M")]
    with pytest.raises(RetrainError, match="no sales before the window's first month 2025-08"):
        assemble(history.iloc[:0], in_window, window_months=2, min_window_rows=10)


# ------------------------------------------------------------------------- real retrainings


@pytest.fixture(scope="module")
def loop(sample, tmp_path_factory):
    """A store with a 2017-2020 champion, a prediction log with the 2025-01..03 sales and
    their prices, and the service serving the champion with reloading on."""
    from hdb_mlops.monitoring.predlog import PredictionLog
    from hdb_mlops.monitoring.simulate import prepare_scenario
    from hdb_mlops.serving.app import create_app

    root = tmp_path_factory.mktemp("loop")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlruns/mlflow.db")
        mp.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(root / "mlruns" / "artifacts"))
        mp.setenv("HDB_MLOPS_MODEL_CACHE", str(root / "mlruns" / "cache"))
        champion = prepare_scenario("drift", data=sample, out_dir=root / "models", params=FAST_XGB)
        assert champion["version"] == 1 and not champion["forced"]
        log = PredictionLog(root / "predictions.sqlite")
        window = sample[
            sample["month"].between(pd.Period("2025-01", "M"), pd.Period("2025-03", "M"))
        ]
        log_feedback(log, window)
        log.close()
        app = create_app("champion", reload_token=TOKEN)
        with serve_in_thread(app) as url:
            yield {"root": root, "url": url, "log": root / "predictions.sqlite", "window": window}


def loop_receiver(loop, tmp_path, **kwargs) -> Retrainer:
    settings = RetrainSettings(
        data="sample",
        prediction_log=str(loop["log"]),
        work_dir=str(tmp_path / "work"),
        params=FAST_XGB,
        min_window_rows=100,
        timeout_s=300,
    )
    return Retrainer(
        settings,
        audit_log=tmp_path / "audit.jsonl",
        service_url=loop["url"],
        cooldown_s=0,
        reload_token=TOKEN,
        **kwargs,
    )


def served_version(url: str) -> int:
    return int(httpx.get(f"{url}/model", timeout=30).json()["version"])


def test_a_crash_mid_retraining_leaves_the_champion_serving(loop, tmp_path, monkeypatch):
    from hdb_mlops.model import registry

    monkeypatch.setenv(FAULT_ENV, "after_train")  # the child process dies once trained
    retrainer = loop_receiver(loop, tmp_path)
    with serve_in_thread(create_receiver_app(retrainer)) as url:
        answer = httpx.post(f"{url}/alerts", json=payload(alert()), timeout=30)
        assert answer.status_code == 202
        assert retrainer.wait(300)
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "retraining": False}
    [record] = AuditLog(tmp_path / "audit.jsonl").records()
    assert record["outcome"] == "failed"
    assert "status 70" in record["error"] and f"{FAULT_ENV}=after_train" in record["error"]
    assert record["job"]["exit_code"] == 70 and record.get("reload") is None
    assert registry.load("champion").metadata["extra"]["cutoff"] == "2020-09"
    assert registry.list_versions()["version"].tolist() == [1]  # nothing registered
    assert served_version(loop["url"]) == 1
    assert not (tmp_path / "work" / "retraining.lock").exists()


def test_a_model_alert_retrains_promotes_and_the_service_reloads(loop, tmp_path):
    from hdb_mlops.model import registry

    retrainer = loop_receiver(loop, tmp_path)
    with serve_in_thread(create_receiver_app(retrainer)) as url:
        started = time.monotonic()
        answer = httpx.post(f"{url}/alerts", json=payload(alert("HdbLiveMapeHigh")), timeout=30)
        assert answer.status_code == 202
        assert retrainer.wait(300)
        seconds = time.monotonic() - started
        metrics = httpx.get(f"{url}/metrics").text
    [record] = AuditLog(tmp_path / "audit.jsonl").records()
    assert record["outcome"] == "promoted", record.get("error")
    training, gate = record["training"], record["gate"]
    assert training["window_months"] == ["2025-01", "2025-03"]
    assert training["window_rows"] == len(loop["window"])
    assert training["train_months"] == ["2017-01", "2024-12"]  # strictly before the window
    assert training["train_rows"] > 20_000 and training["train_rows_feedback"] == 0
    # the 2020 champion prices 2025 sales as in 2020; the challenger knows 2024
    assert gate["champion_mape"] > 20 and gate["candidate_mape"] < 10
    assert gate["champion_mape"] - gate["candidate_mape"] >= gate["margin"] == 0.5
    version = record["version"]
    assert record["champion_before"] == 1 and record["champion_after"] == version
    assert registry.show("champion")["version"] == version
    assert record["reload"]["reloaded"] and record["reload"]["serves_expected"]
    assert served_version(loop["url"]) == version
    service_metrics = httpx.get(f"{loop['url']}/metrics").text
    info = [line for line in service_metrics.splitlines() if line.startswith("hdb_model_info{")]
    assert len(info) == 1 and f'version="{version}"' in info[0], info
    assert metric(metrics, 'hdb_retraining_runs_total{outcome="promoted"}') == 1
    row = read_audit(tmp_path / "audit.jsonl").iloc[0]
    assert row["candidate_mape"] == gate["candidate_mape"] and row["served_version"] == version
    print(f"retraining, gate and reload: {seconds:.1f} s")
    assert Path(record["job"]["log"]).exists()


# ------------------------------------------------------------------------- the command line


def cli(*args: str, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args], capture_output=True, text=True, **kwargs
    )


def test_hdb_mlops_retrainer_serves_until_sigterm(tmp_path):
    from hdb_mlops.serving.process import free_port

    port = free_port()
    audit = tmp_path / "audit.jsonl"
    command = [
        sys.executable, "-m", "hdb_mlops.cli", "retrainer", "--port", str(port),
        "--audit-log", str(audit), "--work-dir", str(tmp_path / "work"),
        "--prediction-log", str(tmp_path / "predictions.sqlite"), "--cooldown", "60",
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"{url}/health").json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        answer = httpx.post(f"{url}/alerts", json=payload(alert("HdbApiDown", category="service")))
        assert answer.json()["decision"] == "ignored"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises SIGTERM
    assert "no prediction log at" in stderr  # a warning, not an error: the service makes it
    assert [r["decision"] for r in AuditLog(audit).records()] == ["ignored"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cooldown", "-1"], "argument --cooldown: '-1' is not a number of at least 0"),
        (["--service-url", "localhost:8080"], "argument --service-url: 'localhost:8080'"),
        (["--port", "99999"], "argument --port: 99999 is not a port number"),
        (["--data", "/no/such/file.csv"], "argument --data: no such file or folder"),
    ],
)
def test_hdb_mlops_retrainer_refuses_bad_arguments_in_one_line(args, message):
    out = cli("retrainer", *args, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
