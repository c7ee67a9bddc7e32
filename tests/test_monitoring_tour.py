"""Chapter 6A's notebook helpers (hdb_mlops.monitoring.tour): the traffic client against a stub
service, the /metrics readers on a real prometheus_client exposition, the rule tables and
their runbook anchors in the notebook, PromQL through a stub Prometheus API, promtool's
checks (skipped where promtool is missing) and the drift of request bodies against a small
bundle's profile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import requests
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hdb_mlops.monitoring import checks, tour
from hdb_mlops.monitoring.stack import StackInfo
from hdb_mlops.serving.server import serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06a_monitoring.ipynb"


@pytest.fixture(scope="module")
def exposition() -> str:
    """A small exposition in the service's style: a labelled counter, a histogram, an info
    gauge with a hash label and a gauge by feature."""
    r = CollectorRegistry()
    calls = Counter("hdb_http_requests", "Requests.", ["endpoint", "status"], registry=r)
    calls.labels("/predict", "200").inc(7)
    calls.labels("/predict", "422").inc(2)
    rows = Histogram("hdb_prediction_rows", "Rows.", ["endpoint"], buckets=(1, 5), registry=r)
    rows.labels("/predict").observe(1)
    rows.labels("/predict/batch").observe(5)
    info = Gauge("hdb_model_info", "Model.", ["name", "version", "sha256"], registry=r)
    info.labels("xgboost", "none", "0123456789ab").set(1)
    psi = Gauge("hdb_drift_psi", "PSI.", ["feature"], registry=r)
    psi.labels("town").set(0.07)
    psi.labels("month_index").set(8.5)
    return generate_latest(r).decode()


@pytest.fixture(scope="module")
def tools() -> None:
    try:
        checks.require_binaries("promtool")
    except checks.MissingBinaryError as exc:
        pytest.skip(f"promtool missing: {exc}")


# ------------------------------------------------------------------------- /metrics


def test_metric_families_name_type_labels_and_series(exposition):
    families = tour.metric_families(exposition).set_index("name")
    assert list(families.index) == [
        "hdb_http_requests_total",
        "hdb_prediction_rows",
        "hdb_model_info",
        "hdb_drift_psi",
    ]  # no *_created gauges
    assert families.loc["hdb_http_requests_total", "type"] == "counter"
    assert families.loc["hdb_http_requests_total", "labels"] == "endpoint, status"
    assert families.loc["hdb_http_requests_total", "series"] == 2
    assert families.loc["hdb_prediction_rows", "labels"] == "endpoint"  # le left out
    assert families.loc["hdb_prediction_rows", "series"] == 2
    assert list(tour.metric_families(exposition, "hdb_drift").name) == ["hdb_drift_psi"]
    assert tour.family_counts(exposition).to_dict() == {"hdb": 4}


def test_exposition_excerpt_keeps_the_families_asked_and_hides_the_hash(exposition):
    text = tour.exposition_excerpt(exposition, ["hdb_http_requests_total", "hdb_model_info"])
    lines = text.splitlines()
    assert lines[0] == "# HELP hdb_http_requests_total Requests."
    assert 'hdb_http_requests_total{endpoint="/predict",status="422"} 2.0' in lines
    assert 'hdb_model_info{name="xgboost",sha256="...",version="none"} 1.0' in lines
    assert "0123456789ab" not in text and "_created" not in text
    assert "hdb_prediction_rows" not in text and "hdb_drift_psi" not in text
    buckets = tour.exposition_excerpt(exposition, ["hdb_prediction_rows"]).splitlines()
    assert 'hdb_prediction_rows_bucket{endpoint="/predict/batch",le="5.0"} 1.0' in buckets
    assert 'hdb_prediction_rows_sum{endpoint="/predict/batch"} 5.0' in buckets


def test_gauge_values_by_label(exposition):
    values = tour.gauge_values(exposition, "hdb_drift_psi")
    assert values.to_dict() == {"town": 0.07, "month_index": 8.5}
    assert tour.gauge_values(exposition, "hdb_nothing").empty


# ------------------------------------------------------------------------- traffic


def stub_service() -> tuple[FastAPI, list]:
    """/predict (422 without a town), /predict/batch, /feedback (accepted) and /health."""
    app = FastAPI()
    feedback: list = []
    counter = iter(range(10_000))

    @app.post("/predict")
    async def predict(request: Request):
        body = await request.json()
        if "town" not in body:
            return JSONResponse({"error": "invalid_request"}, status_code=422)
        return {"prediction_id": f"p{next(counter)}", "price": 500_000.0}

    @app.post("/predict/batch")
    async def batch(request: Request):
        rows = (await request.json())["records"]
        return {"predictions": [{"price": 1.0} for _ in rows]}

    @app.post("/feedback", status_code=202)
    async def take(request: Request):
        items = (await request.json())["feedback"]
        feedback.extend(items)
        return {"count": len(items), "outcomes": {"accepted": len(items)}, "results": []}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app, feedback


def test_traffic_counts_bad_requests_batches_rows_and_feedback():
    app, feedback = stub_service()
    records = [{"town": f"T{i}"} for i in range(10)]
    with serve_in_thread(app) as url:
        traffic = tour.Traffic(
            url,
            records,
            prices=[100.0 + i for i in range(10)],
            bad=[{"month": "x"}, {"month": "y"}],
            bad_every=4,
            batch_every=5,
            batch_size=3,
            feedback_every=3,
        )
        counts = traffic.start(per_second=200).join()
        assert traffic.send_feedback() == {"accepted": 10}
        assert tour.answering(url)
    assert not tour.answering(url)
    assert counts[("/predict", "200")] == 10
    assert counts[("/predict", "422")] == 2  # after the 4th and the 8th
    assert counts[("/predict/batch", "200")] == 2
    assert counts[("/feedback", "202")] == 4  # after 3, 6 and 9 rows, then the rest
    assert len(traffic.rows) == 10 + 2 * 3
    # the 5th row, then the batch sent after it: that row and the next two
    assert traffic.rows[4:8] == [records[4], records[4], records[5], records[6]]
    assert [f["actual_price"] for f in feedback] == [100.0 + i for i in range(10)]
    table = traffic.table()
    assert list(table.columns) == ["endpoint", "status", "requests"]
    assert table["requests"].sum() == sum(counts.values())


def test_traffic_join_reraises_the_error_of_its_thread():
    traffic = tour.Traffic("http://127.0.0.1:9", [{"town": "T"}]).start()
    with pytest.raises(requests.ConnectionError):
        traffic.join(timeout=30)


# ------------------------------------------------------------------------- PromQL


def stub_prometheus(seen: list[str]) -> FastAPI:
    """/api/v1/query answering two series whatever the query (recorded in ``seen``)."""
    app = FastAPI()

    @app.get("/api/v1/query")
    async def query(query: str):
        seen.append(query)
        result = [
            {"metric": {"__name__": "up", "job": j, "instance": f"127.0.0.1:{p}"},
             "value": [1.0, v]}
            for j, p, v in (("prometheus", 40001, "1"), ("hdb-api", 40000, "0.5"))
        ]  # fmt: skip
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    return app


def test_query_table_hides_the_instance_sorts_and_scales_windows(tmp_path):
    seen: list[str] = []
    with serve_in_thread(stub_prometheus(seen)) as url:
        info = StackInfo(tmp_path, url, url, url, url, speed=30, scrape_seconds=1)
        table = tour.query_table(
            info, {"up": "up", "rate": "rate(x_total[5m])"}, value_format="{:.2f}"
        )
    assert seen == ["up", "rate(x_total[10s])"]
    assert table.loc["up"].index.tolist() == ['up{job="hdb-api"}', 'up{job="prometheus"}']
    assert table.loc["up", 'up{job="hdb-api"}']["value"] == "0.50"


# ------------------------------------------------------------------------- rules


def test_alert_and_recording_rule_tables():
    alerts = tour.alert_rules()
    assert {"HdbApiDown", "HdbHighErrorRate", "HdbFeatureDrift"} <= set(alerts.index)
    assert alerts.loc["HdbApiDown", "expression"] == 'up{job="hdb-api"} == 0'
    assert alerts.loc["HdbApiDown", "for"] == "1m"
    assert set(alerts["category"]) == {"service", "model"}
    assert "\n" not in "".join(alerts["expression"])
    recording = tour.recording_rules()
    assert 'hdb:live_mape:ratio_rate15m{model_version="all"}' in recording.index
    assert "hdb:http_errors:ratio_rate5m" in recording.index


def test_every_service_runbook_anchor_is_in_the_notebook():
    from hdb_mlops.monitoring.stack_config import CONFIG_DIR, load_yaml

    text = "".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"])
    rules = [
        r for g in load_yaml(CONFIG_DIR / "rules" / "alerts.yml")["groups"] for r in g["rules"]
    ]
    service = [r for r in rules if r["labels"]["category"] == "service"]
    assert service
    for rule in service:
        page, anchor = rule["annotations"]["runbook"].split("#")
        assert page == "notebooks/06a_monitoring.ipynb", rule["alert"]
        assert f'<a id="{anchor}"></a>' in text, f"{rule['alert']}: no anchor {anchor}"


def test_rule_tests_table_reports_every_file(tools):
    table = tour.rule_tests()
    assert len(table) >= 3
    assert set(table["promtool"]) == {"SUCCESS"}
    assert table["alert checks"].sum() > 10


SERIES = {
    'hdb_http_requests_total{status="200"}': "0+95x20",
    'hdb_http_requests_total{status="500"}': "0+5x20",
}
ERRORS = (
    'sum(rate(hdb_http_requests_total{status=~"5.."}[5m])) / sum(rate(hdb_http_requests_total[5m]))'
)


def test_promql_check_passes_and_fails_like_a_test(tools):
    assert tour.promql_check(ERRORS, SERIES, eval_time="10m", expected=0.05).ok
    wrong = tour.promql_check(ERRORS, SERIES, eval_time="10m", expected=0.5)
    assert not wrong.ok and "got" in wrong.output
    labelled = "sum by (status) (rate(hdb_http_requests_total[5m]))"
    assert not tour.promql_check(labelled, SERIES, eval_time="10m", expected=0.05).ok
    quoted = "sum(rate(hdb_http_requests_total{status=~'5..'}[5m])) / sum(rate(hdb_http_requests_total[5m]))"
    assert tour.promql_check(quoted, SERIES, eval_time="10m", expected=0.05).ok


# ------------------------------------------------------------------------- drift


def test_psi_bands():
    assert [tour.psi_band(v) for v in (0.0, 0.099, 0.1, 0.2, 0.21, 9.0)] == [
        "stable", "stable", "moderate", "moderate", "significant", "significant",
    ]  # fmt: skip
    assert tour.psi_band(float("nan")) == "" and tour.psi_band(None) == ""


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from hdb_mlops.data import storage
    from hdb_mlops.model import evaluate, train

    tx = storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()
    tx = tx[tx["month"] >= pd.Period("2022-01", freq="M")]

    def model():
        m = train.build_model("xgboost", params={"n_estimators": 10, "max_depth": 3})
        m.n_jobs = 1
        return m

    evaluation = evaluate.holdout(tx, model, cutoff="2024-12")
    out = tmp_path_factory.mktemp("model")
    return tx, train.publish(evaluation, tx, out, track=False).bundle_dir


def test_request_drift_of_request_bodies(small_bundle):
    from hdb_mlops.data import examples
    from hdb_mlops.model.bundle import load_bundle

    tx, bundle_dir = small_bundle
    later = tx[tx["month"] > pd.Period("2024-12", freq="M")].sample(300, random_state=1)
    table = tour.request_drift(bundle_dir, examples.request_records(later))
    assert table.index[-1] == "prediction"
    assert {"month_index", "town", "floor_area_sqm"} <= set(table.index)
    assert table.loc["month_index", "band"] == "significant"  # later months, by construction
    assert table.loc["floor_area_sqm", "psi"] < 0.1
    assert table.loc["town", "kind"] == "categorical" and pd.isna(table.loc["town", "ks_statistic"])
    assert (table["rows"] == 300).all()
    again = tour.request_drift(load_bundle(bundle_dir), examples.request_records(later))
    pd.testing.assert_frame_equal(table, again)
    fig = tour.psi_figure({"a": table, "b": again}, clip=1.0, note="a note")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.index)
    assert any("→" in t.get_text() for t in ax.texts)  # month_index above the clip


def test_fresh_workdir_empties_the_folder(tmp_path):
    work = tmp_path / "w"
    (work / "old").mkdir(parents=True)
    (work / "old" / "file.txt").write_text("x")
    assert tour.fresh_workdir(work) == work.resolve()
    assert list(work.iterdir()) == []
    assert tour.fresh_workdir(tmp_path / "new").is_dir()
