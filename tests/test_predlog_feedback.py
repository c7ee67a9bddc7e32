"""The prediction log (sqlite, one writer thread) and live accuracy (``POST /feedback``): the
log's tables and ``labelled()`` frame, every feedback outcome, the grace for predictions not
in the log yet (another worker's), expiry, and the feedback route's answers and metrics on a
real uvicorn.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
from helpers import request_rows
from prometheus_client import CollectorRegistry, generate_latest
from test_serve_monitoring import bundle, metric_value, tx  # noqa: F401 - fixtures

from hdb_mlops.data.ingest import parse_fields
from hdb_mlops.model.bundle import load_bundle
from hdb_mlops.monitoring.feedback import FeedbackDesk, expire_predictions, record_feedback
from hdb_mlops.monitoring.predlog import (
    PredictionLog,
    PredictionLogError,
    labelled_transactions,
)
from hdb_mlops.monitoring.service import create_monitored_app
from hdb_mlops.serving.metrics import FeedbackMetrics
from hdb_mlops.serving.server import serve_in_thread

RECORD = {
    "month": "2025-06",
    "town": "ANG MO KIO",
    "flat_type": "4 ROOM",
    "block": "406",
    "street_name": "ANG MO KIO AVE 10",
    "storey_range": "07 TO 09",
    "floor_area_sqm": 92.0,
    "flat_model": "NEW GENERATION",
    "lease_commence_date": 1979,
    "remaining_lease": 627,
}


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture()
def plog(tmp_path):
    log = PredictionLog(tmp_path / "log.sqlite")
    yield log
    log.close()


def desk_for(plog, **kwargs) -> tuple[FeedbackDesk, CollectorRegistry]:
    registry = CollectorRegistry()
    return FeedbackDesk(plog, FeedbackMetrics(registry), **kwargs), registry


# ------------------------------------------------------------------------- the log


def test_log_writes_in_batches_on_one_thread(plog):
    ids = [new_id() for _ in range(250)]
    for i, pid in enumerate(ids):
        assert plog.log(pid, RECORD, 500_000.0 + i, lower=450_000.0, upper=560_000.0)
    writers = [t for t in threading.enumerate() if t.name == "prediction-log"]
    assert len(writers) == 1
    assert plog.flush()
    assert plog.rows == 250 and plog.counts()["predictions"] == 250
    with sqlite3.connect(plog.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [r[1] for r in db.execute("PRAGMA table_info(predictions)")]
        assert columns[:9] == [
            "prediction_id", "logged_at", "model_version", "model_sha256", "endpoint",
            "record", "price", "lower", "upper",
        ]  # fmt: skip
        assert [r[1] for r in db.execute("PRAGMA table_info(feedback)")] == [
            "prediction_id", "received_at", "actual_price", "ape", "outcome",
        ]  # fmt: skip
        record = db.execute("SELECT record FROM predictions LIMIT 1").fetchone()[0]
    assert '"remaining_lease":"52 years 03 months"' in record  # the files' spelling
    # logging the same prediction twice keeps one row
    plog.log(ids[0], RECORD, 1.0)
    assert plog.flush() and plog.counts()["predictions"] == 250


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    plog = PredictionLog(tmp_path / "log.sqlite", queue_items=2)
    _, registry = desk_for(plog)
    model = type("M", (), {"info": {"version": "3", "sha256": "abc"}})()
    answer = {"prediction_id": new_id(), "price": 1.0, "interval": {"lower": 1, "upper": 2}}
    for _ in range(5):  # the writer thread is not started yet: the queue fills up
        plog.observe("/predict", [RECORD], [answer], model)
    assert plog.dropped == 3
    assert metric_value(generate_latest(registry).decode(), "hdb_prediction_log_dropped_total") == 3
    plog.close()


def test_a_file_that_is_not_a_log_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database\n" * 100)
    with pytest.raises(PredictionLogError, match=r"cannot open the prediction log .*notes\.sqlite"):
        PredictionLog(path)


def test_labelled_is_the_data_files_schema_plus_the_prediction(plog):
    first, second, third = new_id(), new_id(), new_id()
    plog.log(first, RECORD, 500_000.0, model_version="1", lower=1.0, upper=2.0)
    plog.log(
        second, {**RECORD, "remaining_lease": None, "block": None}, 400_000.0, model_version="2"
    )
    plog.log(third, RECORD, 600_000.0, model_version="2")  # no feedback: not labelled
    plog.flush()
    assert record_feedback(plog, first, 520_000.0, received_at=1000.0).outcome == "accepted"
    assert record_feedback(plog, second, 380_000.0, received_at=2000.0).outcome == "accepted"
    frame = plog.labelled()
    assert list(frame.columns) == [
        "month", "town", "flat_type", "block", "street_name", "storey_range",
        "floor_area_sqm", "flat_model", "lease_commence_date", "remaining_lease",
        "resale_price", "prediction_id", "predicted_price", "lower", "upper", "ape",
        "model_version", "model_sha256", "endpoint", "logged_at", "received_at",
    ]  # fmt: skip
    assert frame["prediction_id"].tolist() == [first, second]  # by feedback time
    assert frame["resale_price"].tolist() == [520_000.0, 380_000.0]
    assert frame["predicted_price"].tolist() == [500_000.0, 400_000.0]
    assert frame["ape"].tolist() == pytest.approx([20 / 520, 20 / 380])
    assert frame["remaining_lease"].tolist() == ["52 years 03 months", ""]
    assert frame["block"].tolist() == ["406", ""]
    assert frame["lease_commence_date"].dtype == "int64"
    assert plog.labelled(since=1500.0)["prediction_id"].tolist() == [second]
    assert plog.labelled(model_version="1")["prediction_id"].tolist() == [first]
    # the data loader parses it like a file's rows: the remaining lease given or derived
    parsed = parse_fields(frame[list(frame.columns[:11])].astype("str").replace("None", ""))
    assert parsed["remaining_lease_months"].tolist() == [627, 637]
    assert parsed["remaining_lease_derived"].tolist() == [False, True]
    transactions = labelled_transactions(frame)
    assert transactions["month"].dtype == "period[M]"
    assert transactions["remaining_lease_months"].tolist() == [627, 637]
    assert transactions["predicted_price"].tolist() == [500_000.0, 400_000.0]
    assert labelled_transactions(plog.labelled(since=1e12)).empty


def test_feedback_outcomes_accepted_duplicate_late_unknown(plog):
    now = time.time()
    fresh, old = new_id(), new_id()
    plog.log(fresh, RECORD, 500_000.0, logged_at=now - 10)
    plog.log(old, RECORD, 500_000.0, logged_at=now - 100 * 86400)
    plog.flush()
    desk, registry = desk_for(plog, max_age_s=90 * 86400, grace_s=0)
    got = desk.submit(fresh, 400_000.0)
    assert (got.outcome, got.ape) == ("accepted", pytest.approx(0.25))
    assert desk.submit(fresh, 410_000.0).outcome == "duplicate"
    assert desk.submit(old, 400_000.0).outcome == "late"
    assert desk.submit(new_id(), 400_000.0).outcome == "unknown"  # no grace
    text = generate_latest(registry).decode()
    for outcome, n in {
        "accepted": 1,
        "duplicate": 1,
        "late": 1,
        "unknown": 1,
        "pending": 0,
    }.items():
        assert metric_value(text, "hdb_feedback_total", outcome=outcome) == n, outcome
    # only accepted feedback is live accuracy
    assert (
        metric_value(text, "hdb_prediction_absolute_percentage_error_count", model_version="none")
        == 1
    )
    assert (
        metric_value(
            text, "hdb_prediction_absolute_percentage_error_bucket", model_version="none", le="0.3"
        )
        == 1
    )
    assert (
        metric_value(
            text, "hdb_prediction_absolute_percentage_error_bucket", model_version="none", le="0.2"
        )
        == 0
    )
    assert plog.counts()["feedback"] == {"accepted": 1, "late": 1}
    assert plog.labelled()["prediction_id"].tolist() == [fresh]
    assert plog.labelled(include_late=True)["prediction_id"].tolist() == [fresh, old]


def test_feedback_before_its_prediction_lands_waits_for_it(tmp_path):
    """Two workers share one log file: feedback reaches worker B for a prediction worker A
    has not written yet; B holds it and matches it when A's row lands."""
    path = tmp_path / "shared.sqlite"
    worker_a, worker_b = PredictionLog(path), PredictionLog(path, tick_s=0.05)
    desk, registry = desk_for(worker_b, grace_s=30)
    worker_b.start()
    pid = new_id()
    assert desk.submit(pid, 450_000.0).outcome == "pending"
    assert desk.submit(pid, 450_000.0).outcome == "duplicate"  # already waiting
    assert metric_value(generate_latest(registry).decode(), "hdb_feedback_pending") == 1
    worker_a.log(pid, RECORD, 500_000.0, model_version="4")
    worker_a.flush()
    deadline = time.monotonic() + 10
    while desk.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    text = generate_latest(registry).decode()
    assert metric_value(text, "hdb_feedback_pending") == 0
    assert metric_value(text, "hdb_feedback_total", outcome="accepted") == 1
    assert metric_value(
        text, "hdb_prediction_absolute_percentage_error_sum", model_version="4"
    ) == pytest.approx(50 / 450)
    assert worker_a.labelled()["model_version"].tolist() == ["4"]
    worker_a.close()
    worker_b.close()


def test_feedback_whose_prediction_never_lands_is_unknown_after_the_grace(plog):
    desk, registry = desk_for(plog, grace_s=0.2)
    assert desk.submit(new_id(), 450_000.0).outcome == "pending"
    desk.sweep(now=time.time() + 0.1)
    assert desk.pending == 1
    desk.sweep(now=time.time() + 0.3)
    text = generate_latest(registry).decode()
    assert desk.pending == 0 and metric_value(text, "hdb_feedback_total", outcome="unknown") == 1


def test_predictions_without_feedback_expire_once(plog):
    now = time.time()
    answered, forgotten, recent = new_id(), new_id(), new_id()
    for pid, age in ((answered, 100), (forgotten, 100), (recent, 1)):
        plog.log(pid, RECORD, 500_000.0, logged_at=now - age)
    plog.flush()
    record_feedback(plog, answered, 480_000.0)
    assert expire_predictions(plog, max_age_s=50, now=now) == 1  # forgotten only
    assert expire_predictions(plog, max_age_s=50, now=now) == 0  # counted once
    desk, registry = desk_for(plog, max_age_s=0.5, expire_every_s=0)
    desk.sweep(now=now + 1)  # now the recent one too
    assert metric_value(generate_latest(registry).decode(), "hdb_feedback_expired_total") == 1
    assert plog.counts()["expired"] == 2


# ------------------------------------------------------------------------- the route


@pytest.fixture(scope="module")
def service(bundle, tmp_path_factory):  # noqa: F811 - the imported fixture
    path = tmp_path_factory.mktemp("feedback") / "predictions.sqlite"
    app = create_monitored_app(bundle, prediction_log=path, feedback_max_age_s=3.0)
    with serve_in_thread(app) as url:
        yield url, app


def test_feedback_route_answers_and_counts(service, tx, bundle):  # noqa: F811
    url, app = service
    rows = request_rows(tx, 6, seed=71)
    actual = tx.sample(6, random_state=71)["resale_price"].tolist()
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = client.post("/predict/batch", json={"records": rows}).json()["predictions"]
        before = client.get("/metrics").text
        first = client.post(
            "/feedback",
            json={"prediction_id": answers[0]["prediction_id"], "actual_price": actual[0]},
        )
        assert first.status_code == 202
        ape = abs(answers[0]["price"] - actual[0]) / actual[0]
        assert first.json() == {
            "prediction_id": answers[0]["prediction_id"],
            "outcome": "accepted",
            "absolute_percentage_error": pytest.approx(ape),
        }
        again = client.post(
            "/feedback", json={"prediction_id": answers[0]["prediction_id"], "actual_price": 1.0}
        )
        assert again.status_code == 409 and again.json()["error"] == "duplicate_feedback"
        assert again.json()["detail"][0]["field"] == "prediction_id"
        # the hex form of the id is the same prediction
        hexed = uuid.UUID(answers[1]["prediction_id"]).hex
        second = client.post("/feedback", json={"prediction_id": hexed, "actual_price": actual[1]})
        assert second.json()["outcome"] == "accepted"
        stranger = new_id()
        batch = client.post(
            "/feedback",
            json={
                "feedback": [
                    {"prediction_id": a["prediction_id"], "actual_price": p}
                    for a, p in zip(answers[2:], actual[2:], strict=True)
                ]
                + [
                    {"prediction_id": answers[0]["prediction_id"], "actual_price": 1.0},
                    {"prediction_id": stranger, "actual_price": 500_000},
                ]
            },
        )
        assert batch.status_code == 202
        body = batch.json()
        assert body["count"] == 6
        assert body["outcomes"] == {"accepted": 4, "duplicate": 1, "pending": 1}
        assert [r["outcome"] for r in body["results"]][-2:] == ["duplicate", "pending"]
        after = client.get("/metrics").text
    apes = [abs(a["price"] - p) / p for a, p in zip(answers, actual, strict=True)]
    for name, delta in (
        ("hdb_prediction_absolute_percentage_error_count", 6),
        ("hdb_prediction_absolute_percentage_error_sum", sum(apes)),
    ):
        change = metric_value(after, name, model_version="none") - metric_value(
            before, name, model_version="none"
        )
        assert change == pytest.approx(delta), name
    for outcome, n in {"accepted": 6, "duplicate": 2, "pending": 1}.items():
        change = metric_value(after, "hdb_feedback_total", outcome=outcome) - metric_value(
            before, "hdb_feedback_total", outcome=outcome
        )
        assert change == n, outcome
    assert metric_value(after, "hdb_feedback_pending") >= 1
    # what retraining reads: the rows as sent, the actual prices, the model's own predictions
    labelled = app.state.prediction_log.labelled()
    mine = labelled.set_index("prediction_id").loc[[a["prediction_id"] for a in answers]]
    assert mine["resale_price"].tolist() == actual
    model = load_bundle(bundle)
    again = model.predict(labelled_transactions(mine.reset_index()))
    assert np.allclose(again, mine["predicted_price"].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        ({"prediction_id": "abc", "actual_price": 500_000}, 422, "invalid_request", "prediction_id"),
        ({"prediction_id": str(uuid.uuid4()), "actual_price": -5}, 422, "invalid_request", "actual_price"),
        ({"prediction_id": str(uuid.uuid4()), "actual_price": "5"}, 422, "invalid_request", "actual_price"),
        ({"prediction_id": str(uuid.uuid4()), "actual_price": True}, 422, "invalid_request", "actual_price"),
        ({"prediction_id": str(uuid.uuid4())}, 422, "invalid_request", "actual_price"),
        ({"prediction_id": str(uuid.uuid4()), "actual_price": 1, "x": 1}, 422, "invalid_request", "x"),
        ({"feedback": []}, 422, "invalid_request", "feedback"),
        (
            {"feedback": [{"prediction_id": str(uuid.uuid4()), "actual_price": 1}] * 1001},
            413,
            "batch_too_large",
            "feedback",
        ),
        (b'{"prediction_id": "a", "prediction_id": "b"}', 400, "malformed_json", "prediction_id"),
        (b"[1, 2", 400, "malformed_json", "body"),
    ],
)  # fmt: skip
def test_bad_feedback_is_one_clear_error(service, body, status, error, field):
    url, _ = service
    with httpx.Client(base_url=url) as client:
        before = metric_value(client.get("/metrics").text, "hdb_feedback_total", outcome="invalid")
        if isinstance(body, bytes):
            response = client.post(
                "/feedback", content=body, headers={"content-type": "application/json"}
            )
        else:
            response = client.post("/feedback", json=body)
        after = metric_value(client.get("/metrics").text, "hdb_feedback_total", outcome="invalid")
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == error and answer["request_id"]
    assert answer["detail"][0]["field"] == field
    assert after == before + 1


def test_feedback_wants_json(service):
    url, _ = service
    response = httpx.post(f"{url}/feedback", content="x", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


def test_late_feedback_is_stored_but_not_live_accuracy(service, tx):  # noqa: F811
    url, app = service  # feedback_max_age_s=3
    with httpx.Client(base_url=url) as client:
        answer = client.post("/predict", json=request_rows(tx, 1, seed=81)[0]).json()
        before = client.get("/metrics").text
        time.sleep(3.2)
        late = client.post(
            "/feedback", json={"prediction_id": answer["prediction_id"], "actual_price": 5e5}
        )
        after = client.get("/metrics").text
    assert late.status_code == 202 and late.json()["outcome"] == "late"
    name = "hdb_prediction_absolute_percentage_error_count"
    assert metric_value(after, name, model_version="none") == metric_value(
        before, name, model_version="none"
    )
    frame = app.state.prediction_log.labelled(include_late=True)
    assert answer["prediction_id"] in set(frame["prediction_id"])
    assert answer["prediction_id"] not in set(app.state.prediction_log.labelled()["prediction_id"])


def test_predictions_that_never_get_feedback_are_counted_as_expired(service, tx):  # noqa: F811
    url, app = service
    app.state.feedback.expire_every_s = 0.1
    with httpx.Client(base_url=url) as client:
        before = metric_value(client.get("/metrics").text, "hdb_feedback_expired_total")
        client.post("/predict/batch", json={"records": request_rows(tx, 5, seed=91)})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            after = metric_value(client.get("/metrics").text, "hdb_feedback_expired_total")
            if after >= before + 5:
                break
            time.sleep(0.2)
    assert after >= before + 5
