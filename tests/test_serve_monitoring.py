"""Chapter 6's service: the observer hook, the new metrics (rejections by error code, model
version, process and Python collectors), the drift gauges against the bundle's reference
profile, the prediction log behind every route, ``promtool check metrics``, and ``hdb-mlops
serve`` with and without monitoring. Real uvicorn servers on 127.0.0.1 (free ports).
"""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import CUTOFF, fast_bundle, metric_value, request_rows, xgboost_model

from hdb_mlops.data import storage
from hdb_mlops.model.bundle import load_bundle
from hdb_mlops.model.features import transactions_from_records
from hdb_mlops.monitoring import drift
from hdb_mlops.monitoring.service import create_monitored_app
from hdb_mlops.serving import process
from hdb_mlops.serving.app import create_app
from hdb_mlops.serving.request_fields import format_months
from hdb_mlops.serving.request_schema import REQUEST_COLUMNS
from hdb_mlops.serving.server import serve_in_thread

MAX_BODY = 400_000


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tx(tmp_path_factory) -> pd.DataFrame:
    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


def profiled_bundle(model, tx: pd.DataFrame, out: Path, seed: int = 1) -> Path:
    """Fit on 4,000 rows up to the cut-off and save with the reference profile that
    :func:`hdb_mlops.model.train.publish` writes (features and predictions of the fit rows)."""
    return fast_bundle(model, tx, out, seed)


@pytest.fixture(scope="module")
def bundle(tx, tmp_path_factory) -> Path:
    return profiled_bundle(xgboost_model(), tx, tmp_path_factory.mktemp("xgb") / "bundle")


@pytest.fixture(scope="module")
def monitored(bundle, tmp_path_factory):
    """The monitored service: a 500-row drift window, a prediction log in a temporary folder
    and a small body limit (create_app's options pass through)."""
    log_path = tmp_path_factory.mktemp("monitor") / "predictions.sqlite"
    app = create_monitored_app(
        bundle, prediction_log=log_path, drift_window=500, max_body_bytes=MAX_BODY
    )
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture()
def client(monitored):
    with httpx.Client(base_url=monitored[0], timeout=30) as c:
        yield c


def samples(text: str, name: str) -> dict[str, float]:
    """``{feature: value}`` of a gauge labelled by feature."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            out[key.split('feature="', 1)[1].split('"', 1)[0]] = float(value)
    return out


# ------------------------------------------------------------------------- metrics


def test_metrics_pass_promtool_check_metrics(client, tx):
    """Every series the service exposes, its own and chapter 6's, is valid exposition text
    with promtool's naming rules (Debian's prometheus package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rows = request_rows(tx, 20, seed=5)
    answers = client.post("/predict/batch", json={"records": rows}).json()["predictions"]
    client.post(
        "/feedback", json={"prediction_id": answers[0]["prediction_id"], "actual_price": 5e5}
    )
    client.post("/predict", json={"town": "ATLANTIS"})
    text = client.get("/metrics").text
    for name in ("hdb_drift_psi", "hdb_feedback_total", "hdb_rejected_requests_total"):
        assert name in text
    out = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_process_and_python_collectors_are_in_the_service_registry(client):
    text = client.get("/metrics").text
    assert metric_value(text, "process_resident_memory_bytes") > 10e6
    assert metric_value(text, "process_cpu_seconds_total") > 0
    assert 'python_info{implementation="CPython"' in text
    assert metric_value(text, "python_gc_objects_collected_total", generation="0") >= 0
    assert "python_gc_collections_total" in text


def test_predictions_are_counted_by_model_version(client, tx):
    before = client.get("/metrics").text
    labels = {"endpoint": "/predict", "model_version": "none"}  # a bundle directory
    n = metric_value(before, "hdb_predictions_total", **labels)
    for row in request_rows(tx, 3, seed=9):
        assert client.post("/predict", json=row).status_code == 200
    after = client.get("/metrics").text
    assert metric_value(after, "hdb_predictions_total", **labels) == n + 3


def test_every_4xx_is_counted_by_its_error_code(client, tx, monkeypatch):
    monkeypatch.delenv("HDB_MLOPS_RELOAD_TOKEN", raising=False)
    row = request_rows(tx, 1, seed=11)[0]
    json_headers = {"content-type": "application/json"}
    cases = {
        "invalid_request": lambda: client.post("/predict", json={**row, "town": "ATLANTIS"}),
        "malformed_json": lambda: client.post("/predict", content=b"{", headers=json_headers),
        "not_found": lambda: client.get("/nowhere"),
        "method_not_allowed": lambda: client.get("/predict"),
        "unsupported_media_type": lambda: client.post(
            "/invocations", content=b"x", headers={"content-type": "image/png"}
        ),
        "not_acceptable": lambda: client.post(
            "/invocations", json=row, headers={"accept": "image/png"}
        ),
        "batch_too_large": lambda: client.post("/predict/batch", json={"records": [row] * 1001}),
        "payload_too_large": lambda: client.post(
            "/predict", content=b" " * (MAX_BODY + 1), headers=json_headers
        ),
        "reload_disabled": lambda: client.post("/admin/reload"),
        "duplicate_feedback": None,  # below
    }
    answer = client.post("/predict", json=row).json()
    feedback = {"prediction_id": answer["prediction_id"], "actual_price": 480_000}
    assert client.post("/feedback", json=feedback).status_code == 202
    cases["duplicate_feedback"] = lambda: client.post("/feedback", json=feedback)
    before = client.get("/metrics").text
    for code, call in cases.items():
        response = call()
        assert 400 <= response.status_code < 500, (code, response.status_code)
        assert response.json()["error"] == code
    after = client.get("/metrics").text
    for code in cases:
        got = metric_value(after, "hdb_rejected_requests_total", reason=code)
        assert got == metric_value(before, "hdb_rejected_requests_total", reason=code) + 1, code
    assert metric_value(after, "hdb_model_reloads_total", outcome="unauthorized") >= 1


# ------------------------------------------------------------------------- drift


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as the data files would hold them (remaining lease in months spelt out)."""
    raw = []
    for r in rows:
        lease = r.get("remaining_lease")
        if isinstance(lease, int):
            lease = format_months(lease)
        raw.append({**r, "remaining_lease": lease or "", "resale_price": ""})
    return transactions_from_records(raw)


def test_drift_gauges_are_the_profile_statistics_of_the_last_rows(monitored, bundle, tx):
    """The gauges equal the drift maths on ``model.features`` of the rows sent (the request
    path derives the training features), over the most recent 500 rows only."""
    url, app = monitored
    loaded = load_bundle(bundle)
    old = tx[tx["month"] <= CUTOFF]
    drifted = request_rows(old, 300, seed=21)
    for r in drifted:
        r.update(floor_area_sqm=150.0, town="PUNGGOL", flat_type="5 ROOM")
    typical = request_rows(old, 500, seed=22)
    app.state.drift.max_age_s = 0  # recompute at every scrape
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/predict/batch", json={"records": drifted}).status_code == 200
        text = client.get("/metrics").text
        assert metric_value(text, "hdb_drift_window_rows") >= 300
        psi = samples(text, "hdb_drift_psi")
        assert psi["floor_area_sqm"] > 1 and psi["town"] > 1
        assert samples(text, "hdb_drift_chi2_pvalue")["town"] < 1e-6
        answers = []
        for r in typical:  # one at a time, through the single-row fast path
            answer = client.post("/predict", json=r)
            assert answer.status_code == 200
            answers.append(answer.json()["price"])
        text = client.get("/metrics").text
    app.state.drift.max_age_s = 1.0
    assert metric_value(text, "hdb_drift_window_rows") == 500
    expected = drift.drift_table(
        loaded.model.features(_frame(typical)), loaded.profile, np.array(answers)
    ).set_index("feature")
    for name, key in (
        ("hdb_drift_psi", "psi"),
        ("hdb_drift_ks_statistic", "ks_statistic"),
        ("hdb_drift_ks_pvalue", "ks_pvalue"),
        ("hdb_drift_chi2_pvalue", "chi2_pvalue"),
    ):
        got = samples(text, name)
        want = expected[key].dropna().to_dict()
        assert set(got) == set(want), name
        for feature, value in want.items():
            assert got[feature] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, feature)
    assert set(samples(text, "hdb_drift_psi")) == {*loaded.profile["columns"], "prediction"}
    worker = app.state.drift._worker  # computed by the statistics process, never here
    assert worker is not None and worker._proc.poll() is None and worker.fallbacks == 0
    # training-like rows: no shift in the flats themselves
    assert expected.loc["floor_area_sqm", "psi"] < 0.1
    assert expected.loc["town", "chi2_pvalue"] > 1e-3


def test_a_serving_process_freezes_its_heap_and_switches_threads_within_1ms(bundle):
    """``hdb-mlops serve`` (tune_process): after the model is loaded, the garbage collector
    no longer walks the loaded libraries and model, and the event loop's thread waits at most
    1 ms for the interpreter lock (what keeps the monitored p99 under its bar)."""
    interval = sys.getswitchinterval()
    try:
        with serve_in_thread(create_app(bundle, tune_process=True)) as url:
            assert httpx.get(url + "/ready", timeout=30).status_code == 200
            assert sys.getswitchinterval() == pytest.approx(0.001)
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        sys.setswitchinterval(interval)


def test_drift_gauges_are_computed_at_most_once_a_second(client, tx):
    import time

    client.get("/metrics")
    started = time.monotonic()
    first = metric_value(client.get("/metrics").text, "hdb_drift_window_rows")
    row = request_rows(tx, 1, seed=61)[0]
    assert client.post("/predict/batch", json={"records": [row] * 7}).status_code == 200
    cached = metric_value(client.get("/metrics").text, "hdb_drift_window_rows")
    if time.monotonic() - started < 0.9:  # still within the second: the cached value
        assert cached == first
    time.sleep(1.05)
    assert metric_value(client.get("/metrics").text, "hdb_drift_window_rows") == min(500, first + 7)


# ------------------------------------------------------------------------- observers


class Recorder:
    """An observer that keeps what it sees."""

    def __init__(self):
        self.seen = []
        self.models = []
        self.closed = False

    def observe(self, endpoint, records, predictions, model):
        self.seen.append((endpoint, list(records), list(predictions), model))

    def model_changed(self, model):
        self.models.append(model)

    def close(self):
        self.closed = True


class Broken:
    def observe(self, endpoint, records, predictions, model):
        raise RuntimeError("observer bug")


def test_observers_see_every_prediction_route_and_never_fail_a_request(bundle, tx, caplog):
    recorder = Recorder()
    app = create_app(bundle, observers=[Broken(), recorder])
    rows = request_rows(tx, 3, seed=31)
    csv_row = {**rows[0], "remaining_lease": ""}
    csv_line = ",".join(str(csv_row[c]) for c in REQUEST_COLUMNS)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        single = client.post("/predict", json=rows[0]).json()
        batch = client.post("/predict/batch", json={"records": rows}).json()
        invocation = client.post("/invocations", json={"instances": rows[:2]}).json()
        csv_headers = {"content-type": "text/csv", "accept": "text/csv"}
        csv = client.post("/invocations", content=csv_line, headers=csv_headers)
        assert csv.status_code == 200, csv.text
        assert client.post("/predict", json={**rows[0], "town": "X"}).status_code == 422
    assert recorder.closed and len(recorder.models) == 1
    endpoints = [s[0] for s in recorder.seen]
    assert endpoints == ["/predict", "/predict/batch", "/invocations", "/invocations"]
    _, records, predictions, model = recorder.seen[0]
    assert predictions == [single] and records[0].town == rows[0]["town"].upper()
    assert model is recorder.models[0] and model.info == single["model"]
    assert recorder.seen[1][2] == batch["predictions"] and len(recorder.seen[1][1]) == 3
    assert recorder.seen[2][2] == invocation["predictions"]
    assert recorder.seen[3][2][0]["price"] == pytest.approx(float(csv.text.split(",")[0]))
    assert "observer Broken failed in observe" in caplog.text


def test_the_prediction_log_holds_every_route(monitored, tx):
    url, app = monitored
    rows = request_rows(tx, 4, seed=41)
    with httpx.Client(base_url=url) as client:
        answers = [client.post("/predict", json=rows[0]).json()]
        answers += client.post("/predict/batch", json={"records": rows[1:3]}).json()["predictions"]
        answers.append(client.post("/invocations", json=rows[3]).json())
    plog = app.state.prediction_log
    assert plog.flush()
    with sqlite3.connect(plog.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        logged = {
            r[0]: r[1:]
            for r in db.execute(
                "SELECT prediction_id, endpoint, record, price, lower, upper, model_version, "
                "model_sha256 FROM predictions"
            )
        }
    for row, answer, endpoint in zip(
        rows, answers, ["/predict", "/predict/batch", "/predict/batch", "/invocations"], strict=True
    ):
        got_endpoint, record, price, lower, upper, version, sha = logged[answer["prediction_id"]]
        assert got_endpoint == endpoint and price == answer["price"] and version is None
        assert (lower, upper) == (answer["interval"]["lower"], answer["interval"]["upper"])
        assert sha == answer["model"]["sha256"]
        record = json.loads(record)
        assert list(record) == [
            "month", "town", "flat_type", "block", "street_name", "storey_range",
            "floor_area_sqm", "flat_model", "lease_commence_date", "remaining_lease",
        ]  # fmt: skip
        assert record["month"] == row["month"] and record["flat_model"] == row["flat_model"].upper()
        assert record["floor_area_sqm"] == row["floor_area_sqm"]


# ------------------------------------------------------------------------- the CLI


def test_hdb_mlops_serve_monitors_by_default(bundle, tx, tmp_path):
    log_path = tmp_path / "log" / "predictions.sqlite"
    args = ["--prediction-log", str(log_path), "--drift-window", "50"]
    with process.running_server(bundle, args=args, log_path=tmp_path / "serve.log") as server:
        row = request_rows(tx, 1, seed=51)[0]
        answer = httpx.post(f"{server.url}/predict", json=row).json()
        feedback = {"prediction_id": answer["prediction_id"], "actual_price": 450_000.0}
        got = httpx.post(f"{server.url}/feedback", json=feedback)
        assert got.status_code == 202 and got.json()["outcome"] == "accepted"
        ape = abs(answer["price"] - 450_000.0) / 450_000.0
        assert got.json()["absolute_percentage_error"] == pytest.approx(ape)
        text = httpx.get(f"{server.url}/metrics").text
        assert metric_value(text, "hdb_drift_window_rows") == 1
        assert (
            metric_value(
                text, "hdb_prediction_absolute_percentage_error_count", model_version="none"
            )
            == 1
        )
    assert log_path.is_file()


def test_hdb_mlops_serve_no_monitoring_is_the_bare_service(bundle, tx, tmp_path):
    with process.running_server(bundle, args=["--no-monitoring"]) as server:
        assert httpx.post(f"{server.url}/feedback", json={}).status_code == 404
        text = httpx.get(f"{server.url}/metrics").text
        assert "hdb_drift_" not in text and "hdb_feedback_" not in text
        assert "hdb_rejected_requests_total" in text and "process_cpu_seconds_total" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-monitoring", "--drift-window", "5"], "drop --no-monitoring"),
        (["--prediction-log", "/proc/nope/log.sqlite"], "argument --prediction-log: cannot create"),
        (["--prediction-log", "x.sqlite", "--no-prediction-log"], "contradict"),
        (["--drift-window", "0"], "argument --drift-window"),
    ],
)
def test_hdb_mlops_serve_monitoring_options_are_checked(bundle, tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", "serve", "--model", str(bundle), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
