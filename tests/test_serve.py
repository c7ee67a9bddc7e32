"""The prediction service, served by a real uvicorn on 127.0.0.1 (a free port per server).

Models are small but real: XGBoost and ridge fitted on a few thousand sample rows and saved as
verified bundles; the registry test uses a temporary MLflow sqlite store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import (
    CUTOFF,
    fast_bundle,
    made_up_locations,
    metric_value,
    request_rows,
    xgboost_model,
)

from hdb_mlops.data import storage
from hdb_mlops.data.normalise import format_remaining_lease
from hdb_mlops.data.schema import OFFICIAL_2017_COLUMNS
from hdb_mlops.model import train
from hdb_mlops.model.bundle import residual_quantiles, save_bundle
from hdb_mlops.model.features import transactions_from_records
from hdb_mlops.serving.app import create_app
from hdb_mlops.serving.engines import FrameEngine, LoaderEngine, records_frame
from hdb_mlops.serving.fastpath import XGBoostEngine
from hdb_mlops.serving.loading import ModelLoadError
from hdb_mlops.serving.server import serve_in_thread

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

PROJECT = Path(__file__).resolve().parents[1]
REQUEST_COLUMNS = [c for c in OFFICIAL_2017_COLUMNS if c != "resale_price"]
ROW = {
    "month": "2025-06",
    "town": "ANG MO KIO",
    "flat_type": "4 ROOM",
    "block": "406",
    "street_name": "ANG MO KIO AVE 10",
    "storey_range": "07 TO 09",
    "floor_area_sqm": 92.0,
    "flat_model": "New Generation",
    "lease_commence_date": 1979,
    "remaining_lease": "52 years 03 months",
}


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tx(tmp_path_factory) -> pd.DataFrame:
    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


def fit_and_save(model, tx: pd.DataFrame, out: Path) -> Path:
    """Fit on 4,000 rows up to the cut-off; residual quantiles from the next six months."""
    return fast_bundle(model, tx, out, profiled=False)


@pytest.fixture(scope="module")
def xgb_bundle(tx, tmp_path_factory) -> Path:
    return fit_and_save(xgboost_model(), tx, tmp_path_factory.mktemp("xgb") / "bundle")


@pytest.fixture(scope="module")
def linear_bundle(tx, tmp_path_factory) -> Path:
    model = train.build_model("linear")
    return fit_and_save(model, tx, tmp_path_factory.mktemp("linear") / "bundle")


@pytest.fixture(scope="module")
def location_bundle(tx, tmp_path_factory) -> Path:
    """XGBoost with location features; half the sample's addresses have (made-up) geocodes."""
    geocodes, stations = made_up_locations(tx)
    model = xgboost_model(location=True, locations=(geocodes, stations))
    return fit_and_save(model, tx, tmp_path_factory.mktemp("loc") / "bundle")


@pytest.fixture(scope="module")
def app(xgb_bundle):
    return create_app(xgb_bundle)


@pytest.fixture(scope="module")
def base_url(app):
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def small_client(xgb_bundle):
    """A service with tight limits: 5 rows per request, 4 kB bodies."""
    app = create_app(xgb_bundle, max_batch=5, max_body_bytes=4096)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def loader_record(r: dict) -> dict:
    """A request row as the loader's text record: remaining lease as the files write it and
    an empty price (transactions_from_records parses every official column)."""
    lease = r.get("remaining_lease", "")
    if isinstance(lease, int):
        lease = format_remaining_lease(pd.Series([lease])).iloc[0]
    return {**{k: str(v) for k, v in r.items()}, "remaining_lease": lease, "resale_price": ""}


def generic_path(bundle_dir: Path, rows: list[dict]) -> pd.DataFrame:
    """Reference predictions: transactions_from_records + Bundle.predict_with_interval."""
    from hdb_mlops.model.bundle import load_bundle

    raw = [loader_record(r) for r in rows]
    return load_bundle(bundle_dir).predict_with_interval(transactions_from_records(raw), 0.9)


def assert_error(response: httpx.Response, status: int, field: str | None = None) -> dict:
    """A JSON error of the service's shape; ``field`` must be one of the named fields."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["detail"] and all(set(d) == {"field", "reason"} for d in body["detail"])
    assert all(d["reason"] for d in body["detail"])
    if field is not None:
        fields = [d["field"] for d in body["detail"]]
        assert field in fields, fields
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} not ready within {timeout} s")


# ------------------------------------------------------------------------- predictions


def test_predict_single(client, xgb_bundle):
    response = client.post("/predict", json=ROW)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"prediction_id", "price", "interval", "model"}
    assert uuid.UUID(body["prediction_id"]).version == 4
    interval = body["interval"]
    assert interval["level"] == 0.9
    assert interval["lower"] < body["price"] < interval["upper"]
    assert 100_000 < body["price"] < 2_000_000
    from hdb_mlops.model.bundle import sha256_file

    assert body["model"] == {
        "name": "xgboost",
        "version": None,
        "sha256": sha256_file(xgb_bundle / "metadata.json")[:12],
    }
    expected = generic_path(xgb_bundle, [ROW]).iloc[0]
    assert body["price"] == expected["prediction"]
    assert (interval["lower"], interval["upper"]) == (expected["lower"], expected["upper"])


def test_predict_batch_keeps_order_and_ids_are_unique(client, tx, xgb_bundle):
    rows = request_rows(tx, 40)
    response = client.post("/predict/batch", json={"records": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 40 == len(body["predictions"])
    prices = [p["price"] for p in body["predictions"]]
    assert prices == generic_path(xgb_bundle, rows)["prediction"].tolist()
    for p in body["predictions"]:
        assert p["interval"]["lower"] <= p["price"] <= p["interval"]["upper"]
    again = client.post("/predict/batch", json={"records": rows}).json()["predictions"]
    ids = [p["prediction_id"] for p in body["predictions"] + again]
    assert len(set(ids)) == 80
    assert [p["price"] for p in again] == prices


@pytest.mark.parametrize("which", ["xgb_bundle", "linear_bundle", "location_bundle"])
def test_fast_path_matches_transactions_from_records(which, request, tx):
    """The service's fast path (features straight from the validated rows) and the generic
    path (transactions_from_records + model.predict) give identical predictions."""
    from hdb_mlops.model.bundle import load_bundle
    from hdb_mlops.serving.request_schema import build_schemas

    bundle_dir = request.getfixturevalue(which)
    bundle = load_bundle(bundle_dir)
    Record = build_schemas(bundle.spec).record
    rows = request_rows(tx, 300, seed=11)
    rows[0] = {k: v for k, v in rows[0].items() if k not in ("block", "street_name")}
    rows[1]["flat_type"] = "multi generation"  # the 1990s spelling, normalised by both
    records = [Record.model_validate(r) for r in rows]
    expected = bundle.predict(
        transactions_from_records(
            [
                {
                    **loader_record(r),
                    "block": r.get("block", ""),
                    "street_name": r.get("street_name", ""),
                }
                for r in rows
            ]
        )
    )
    engines = [FrameEngine(bundle)]
    if bundle.name == "xgboost":
        engines.append(XGBoostEngine(bundle))
        engines.append(XGBoostEngine(bundle, direct=False))
    for engine in engines:
        np.testing.assert_array_equal(engine.predict(records), expected, err_msg=engine.name)
    np.testing.assert_array_equal(LoaderEngine(bundle).predict(records), expected)
    # the frame the fast path builds is the loader's, column for column where features look
    frame = records_frame(records)
    loader = transactions_from_records(
        [{**{k: str(v) for k, v in r.items()}, "resale_price": ""} for r in rows[2:]]
    )
    cols = ["month", "town", "flat_type", "storey_mid", "floor_area_sqm", "flat_model"]
    pd.testing.assert_frame_equal(
        frame.iloc[2:][cols].reset_index(drop=True), loader[cols], check_dtype=False
    )


def test_address_encoding_fast_path_is_exact(xgb_bundle, tx):
    """The default XGBoost model (raw columns) has an address encoding; the service computes
    it without pandas (keys in Python, the encoder's arithmetic on arrays), identical to the
    encoder's own transform."""
    from hdb_mlops.model.bundle import load_bundle
    from hdb_mlops.serving.request_schema import build_schemas

    bundle = load_bundle(xgb_bundle)
    encoder = bundle.model.encoder_
    assert encoder is not None, "the default raw-column XGBoost model encodes addresses"
    engine = XGBoostEngine(bundle)
    encoding = engine.encoding
    Record = build_schemas(bundle.spec).record
    rows = request_rows(tx, 200, seed=5)
    records = [Record.model_validate(r) for r in rows]
    frame = records_frame(records)
    expected = encoder.transform(frame).to_numpy(dtype="float64")
    months = engine.features(records)[:, engine.month_col]
    np.testing.assert_array_equal(encoding.features(records, months), expected)


def test_served_engine_is_the_fast_path(client, base_url, linear_bundle):
    assert client.get("/ready").json()["engine"] == "xgboost"
    with serve_in_thread(create_app(linear_bundle)) as url:
        ready = httpx.get(f"{url}/ready").json()
        assert ready["engine"] == "frame"
        assert ready["model"]["name"] == "linear"
        response = httpx.post(f"{url}/predict", json=ROW)
        assert response.status_code == 200
        assert response.json()["price"] == generic_path(linear_bundle, [ROW]).iloc[0, 0]
    with serve_in_thread(create_app(linear_bundle, fast_path=False)) as url:
        assert httpx.get(f"{url}/ready").json()["engine"] == "loader"
        assert (
            httpx.post(f"{url}/predict", json=ROW).json()["price"]
            == (generic_path(linear_bundle, [ROW]).iloc[0, 0])
        )


def test_app_from_env(xgb_bundle, monkeypatch):
    """The uvicorn factory reads the model, the batch limit and the fast-path switch from the
    environment."""
    from hdb_mlops.serving.app import app_from_env

    monkeypatch.setenv("HDB_MLOPS_MODEL", str(xgb_bundle))
    monkeypatch.setenv("HDB_MLOPS_MAX_BATCH", "3")
    monkeypatch.setenv("HDB_MLOPS_FAST_PATH", "0")
    with serve_in_thread(app_from_env()) as url:
        assert httpx.get(f"{url}/ready").json()["engine"] == "loader"
        assert httpx.get(f"{url}/model").json()["max_batch"] == 3
        assert (
            httpx.post(f"{url}/predict", json=ROW).json()["price"]
            == (generic_path(xgb_bundle, [ROW]).iloc[0, 0])
        )


def test_categories_any_case_and_lease_forms_agree(client):
    price = client.post("/predict", json=ROW).json()["price"]
    variants = [
        {**ROW, "flat_model": "NEW GENERATION"},
        {**ROW, "flat_model": " new generation ", "town": "Ang Mo Kio", "flat_type": "4 room"},
        {**ROW, "remaining_lease": 52 * 12 + 3},
        {**ROW, "storey_range": "07 to 09"},
    ]
    for variant in variants:
        response = client.post("/predict", json=variant)
        assert response.status_code == 200, (variant, response.text)
        assert response.json()["price"] == price, variant


def test_missing_optional_fields_are_not_errors(client):
    row = {k: v for k, v in ROW.items() if k not in ("block", "street_name", "remaining_lease")}
    response = client.post("/predict", json=row)
    assert response.status_code == 200, response.text
    response = client.post("/predict", json={**row, "block": None, "street_name": None})
    assert response.status_code == 200, response.text
    derived = client.post("/predict", json={**row, "remaining_lease": None}).json()["price"]
    assert derived == response.json()["price"]


# ------------------------------------------------------------------------- ops endpoints


def test_health_ready_model(client, xgb_bundle):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    model = client.get("/model").json()
    metadata = json.loads((xgb_bundle / "metadata.json").read_text())
    assert model["name"] == "xgboost" and model["version"] is None
    assert model["bundle_sha256"].startswith(model["sha256"])
    assert model["model_sha256"] == metadata["model_sha256"]
    assert model["metrics"] == metadata["metrics"] and model["metrics"]["mape"] > 0
    assert model["residual_quantiles"] == metadata["residual_quantiles"]
    assert model["created_at"] == metadata["created_at"]
    assert model["source"] == {"kind": "path", "ref": str(xgb_bundle), "path": str(xgb_bundle)}
    assert model["interval_level"] == 0.9 and model["max_batch"] == 1000
    assert "ANG MO KIO" in model["feature_spec"]["categorical"]["town"]
    assert model["engine"] == "xgboost"


def test_metrics_move_after_requests(client, tx):
    before = client.get("/metrics")
    assert before.headers["content-type"].startswith("text/plain")
    labels = {"method": "POST", "endpoint": "/predict", "status": "200"}
    n_before = metric_value(before.text, "hdb_http_requests_total", **labels)
    preds_before = metric_value(
        before.text, "hdb_predictions_total", endpoint="/predict/batch", model_version="none"
    )
    errors_before = metric_value(
        before.text, "hdb_http_requests_total", method="POST", endpoint="/predict", status="422"
    )
    prices_before = metric_value(before.text, "hdb_predicted_price_sgd_count")
    for _ in range(3):
        assert client.post("/predict", json=ROW).status_code == 200
    assert client.post("/predict/batch", json={"records": request_rows(tx, 7)}).status_code == 200
    assert client.post("/predict", json={**ROW, "town": "ATLANTIS"}).status_code == 422
    after = client.get("/metrics").text
    assert metric_value(after, "hdb_http_requests_total", **labels) == n_before + 3
    assert metric_value(after, "hdb_http_request_duration_seconds_count", **labels) >= n_before + 3
    assert metric_value(
        after, "hdb_predictions_total", endpoint="/predict/batch", model_version="none"
    ) == (preds_before + 7)
    assert metric_value(
        after, "hdb_http_requests_total", method="POST", endpoint="/predict", status="422"
    ) == (errors_before + 1)
    assert metric_value(after, "hdb_predicted_price_sgd_count") == prices_before + 10
    info = [line for line in after.splitlines() if line.startswith("hdb_model_info{")]
    assert len(info) == 1 and 'name="xgboost"' in info[0] and 'version="none"' in info[0]
    assert info[0].endswith(" 1.0")
    assert metric_value(after, "hdb_model_loaded") == 1.0


def test_two_apps_have_their_own_metrics(client, xgb_bundle):
    with serve_in_thread(create_app(xgb_bundle)) as url:
        first = httpx.get(f"{url}/metrics").text
        assert (
            metric_value(
                first, "hdb_http_requests_total", method="POST", endpoint="/predict", status="200"
            )
            == 0
        )
        assert httpx.post(f"{url}/predict", json=ROW).status_code == 200
        assert (
            metric_value(
                httpx.get(f"{url}/metrics").text,
                "hdb_http_requests_total",
                method="POST",
                endpoint="/predict",
                status="200",
            )
            == 1
        )


def test_request_id_is_echoed_or_issued(client):
    response = client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert response.headers["x-request-id"] == "trace-42.a"
    issued = client.get("/health").headers["x-request-id"]
    assert issued and issued != "trace-42.a"
    unsafe = client.get("/health", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert len(unsafe) == 32  # refused (too long) and replaced


def test_not_ready_without_a_loaded_model(xgb_bundle):
    """Without its lifespan (nothing loaded) the app says so: /ready and /ping 503, /health
    200, predictions 503 as JSON."""
    import asyncio

    async def check() -> None:
        transport = httpx.ASGITransport(app=create_app(xgb_bundle))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/ready")).status_code == 503
            assert (await c.get("/ping")).status_code == 503
            assert_error(await c.post("/predict", json=ROW), 503)
            assert_error(await c.get("/model"), 503)

    asyncio.run(check())


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"town": "ATLANTIS"}, "town"),
        ({"town": 7}, "town"),
        ({"flat_type": "6 ROOM"}, "flat_type"),
        ({"flat_model": "IGLOO"}, "flat_model"),
        ({"month": "2025-13"}, "month"),
        ({"month": "June 2025"}, "month"),
        ({"month": "1989-12"}, "month"),
        ({"month": "2099-01"}, "month"),
        ({"storey_range": "7 TO 9"}, "storey_range"),
        ({"storey_range": "09 TO 07"}, "storey_range"),
        ({"storey_range": "00 TO 03"}, "storey_range"),
        ({"floor_area_sqm": 5}, "floor_area_sqm"),
        ({"floor_area_sqm": 1e9}, "floor_area_sqm"),
        ({"floor_area_sqm": "big"}, "floor_area_sqm"),
        ({"lease_commence_date": 1900}, "lease_commence_date"),
        ({"lease_commence_date": 2999}, "lease_commence_date"),
        ({"month": "2000-01", "lease_commence_date": 2005}, "lease_commence_date"),
        ({"remaining_lease": "soon"}, "remaining_lease"),
        ({"remaining_lease": "120 years"}, "remaining_lease"),
        ({"remaining_lease": "99 years 06 months"}, "remaining_lease"),
        ({"remaining_lease": 99 * 12 + 1}, "remaining_lease"),
        ({"remaining_lease": -1}, "remaining_lease"),
        ({"block": "x" * 100}, "block"),
        ({"resale_price": 500000}, "resale_price"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_field_is_named(client, change, field):
    assert_error(client.post("/predict", json={**ROW, **change}), 422, field)


@pytest.mark.parametrize("missing", ["month", "town", "floor_area_sqm", "lease_commence_date"])
def test_missing_field_is_named(client, missing):
    row = {k: v for k, v in ROW.items() if k != missing}
    body = assert_error(client.post("/predict", json=row), 422, missing)
    assert body["error"] == "invalid_request"


def test_batch_errors_name_the_row(client):
    rows = [ROW, ROW, ROW, {**ROW, "town": "ATLANTIS"}, {**ROW, "month": "2025-6"}]
    body = assert_error(client.post("/predict/batch", json={"records": rows}), 422)
    assert {d["field"] for d in body["detail"]} == {"records.3.town", "records.4.month"}
    assert_error(client.post("/predict/batch", json={"records": []}), 422, "records")
    assert_error(client.post("/predict/batch", json={"rows": [ROW]}), 422, "rows")
    assert_error(client.post("/predict/batch", json=[ROW]), 422, "body")
    assert_error(client.post("/predict", json={"records": [ROW]}), 422, "records")


def test_batch_too_large_names_the_limit(client, small_client):
    body = assert_error(small_client.post("/predict/batch", json={"records": [ROW] * 6}), 413)
    assert body["error"] == "batch_too_large"
    assert "at most 5 rows" in body["detail"][0]["reason"]
    assert small_client.post("/predict/batch", json={"records": [ROW] * 5}).status_code == 200
    body = assert_error(client.post("/predict/batch", json={"records": [ROW] * 1001}), 413)
    assert "at most 1000 rows" in body["detail"][0]["reason"]


def test_body_over_the_size_limit(small_client):
    padding = {**ROW, "street_name": "A" * 5000}
    body = assert_error(small_client.post("/predict", json=padding), 413, "body")
    assert body["error"] == "payload_too_large"

    def chunks():  # no Content-Length: counted while reading
        yield b'{"records": ['
        for _ in range(40):
            yield json.dumps(ROW).encode() + b","
        yield json.dumps(ROW).encode() + b"]}"

    response = small_client.post(
        "/predict/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "body")


def test_malformed_json_wrong_type_and_empty_body(client):
    body = assert_error(
        client.post(
            "/predict", content=b'{"month": ', headers={"content-type": "application/json"}
        ),
        400,
        "body",
    )
    assert body["error"] == "malformed_json"
    body = assert_error(
        client.post("/predict", content=b"month=2025-06", headers={"content-type": "text/plain"}),
        415,
        "content-type",
    )
    assert body["error"] == "unsupported_media_type"
    assert_error(
        client.post(
            "/predict",
            content=b"<row/>",
            headers={"content-type": "application/xml"},
        ),
        415,
    )
    assert_error(client.post("/predict", headers={"content-type": "application/json"}), 422, "body")
    assert_error(client.post("/predict"), 422, "body")
    assert_error(client.post("/predict", json=[ROW]), 422, "body")
    assert_error(client.post("/predict", json="2025-06"), 422, "body")


def test_unknown_route_and_method_are_json(client):
    assert assert_error(client.get("/nowhere"), 404, "path")["error"] == "not_found"
    assert assert_error(client.get("/predict"), 405, "method")["error"] == "method_not_allowed"
    assert_error(client.delete("/model"), 405)


# ------------------------------------------------------------------------- SageMaker


def test_sagemaker_ping_and_json_invocations(client, tx, xgb_bundle):
    assert client.get("/ping").status_code == 200
    rows = request_rows(tx, 6)
    expected = generic_path(xgb_bundle, rows)["prediction"].tolist()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    single = client.post("/invocations", content=json.dumps(rows[0]), headers=headers)
    assert single.status_code == 200, single.text
    assert single.json()["price"] == expected[0]
    for payload in ({"instances": rows}, {"records": rows}, rows):
        response = client.post("/invocations", content=json.dumps(payload), headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == 6
        assert [p["price"] for p in body["predictions"]] == expected
    # no Accept header at all, and a charset parameter, as some SDKs send them
    response = client.post(
        "/invocations",
        content=json.dumps({"instances": rows}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200


def test_sagemaker_csv_invocations(client, tx, xgb_bundle):
    rows = request_rows(tx, 5)
    expected = generic_path(xgb_bundle, rows)["prediction"].tolist()

    def line(row: dict, columns: list[str]) -> str:
        value = {**row, "resale_price": "123456"}
        if isinstance(value.get("remaining_lease"), int):
            value["remaining_lease"] = format_remaining_lease(
                pd.Series([value["remaining_lease"]])
            ).iloc[0]
        return ",".join(str(value.get(c, "")) for c in columns)

    csv_headers = {"Content-Type": "text/csv", "Accept": "application/json"}
    layouts = {
        "2017 order, no price": REQUEST_COLUMNS,
        "2017 order with the price": list(OFFICIAL_2017_COLUMNS),
    }
    for name, columns in layouts.items():
        text = "\n".join(line(r, columns) for r in rows) + "\n"
        response = client.post("/invocations", content=text, headers=csv_headers)
        assert response.status_code == 200, (name, response.text)
        assert [p["price"] for p in response.json()["predictions"]] == expected, name
        with_header = ",".join(columns) + "\r\n" + text
        response = client.post("/invocations", content=with_header, headers=csv_headers)
        assert [p["price"] for p in response.json()["predictions"]] == expected, name

    # pre-2015 order (no remaining_lease column): the lease is derived, as the loader does
    old = [c for c in REQUEST_COLUMNS if c != "remaining_lease"]
    no_lease = [{k: v for k, v in r.items() if k != "remaining_lease"} for r in rows]
    response = client.post(
        "/invocations", content="\n".join(line(r, old) for r in no_lease), headers=csv_headers
    )
    assert [p["price"] for p in response.json()["predictions"]] == (
        generic_path(xgb_bundle, no_lease)["prediction"].tolist()
    )

    # a header in another order, as a spreadsheet might write it
    shuffled = list(reversed(REQUEST_COLUMNS))
    text = ",".join(shuffled) + "\n" + "\n".join(line(r, shuffled) for r in rows)
    response = client.post("/invocations", content=text, headers=csv_headers)
    assert [p["price"] for p in response.json()["predictions"]] == expected

    # the first lines of the official-format sample file, sent as they are
    sample_lines = (PROJECT / "data/sample/resale-flat-prices-sample.csv").read_text().splitlines()
    response = client.post(
        "/invocations", content="\n".join(sample_lines[:11]), headers=csv_headers
    )
    assert response.status_code == 200 and response.json()["count"] == 10

    # Accept: text/csv gives one "price,lower,upper" line per row
    text = "\n".join(line(r, REQUEST_COLUMNS) for r in rows)
    response = client.post(
        "/invocations", content=text, headers={"Content-Type": "text/csv", "Accept": "text/csv"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().split("\n")
    assert [float(x.split(",")[0]) for x in lines] == expected
    assert all(float(lo) <= float(p) <= float(hi) for p, lo, hi in (x.split(",") for x in lines))


def test_sagemaker_invocation_errors(client, small_client):
    headers = {"Content-Type": "text/csv"}
    good = ",".join(str(ROW[c]) for c in REQUEST_COLUMNS)
    bad_town = good.replace("ANG MO KIO,4 ROOM", "ATLANTIS,4 ROOM")
    assert_error(
        client.post("/invocations", content=f"{good}\n{bad_town}", headers=headers),
        422,
        "records.1.town",
    )
    assert_error(client.post("/invocations", content="2025-06,BEDOK", headers=headers), 422)
    assert_error(client.post("/invocations", content="", headers=headers), 422, "body")
    assert_error(
        client.post("/invocations", content="month,town,colour\n1,2,3", headers=headers),
        422,
        "header",
    )
    assert_error(client.post("/invocations", content=b"\xff\xfe", headers=headers), 400, "body")
    assert_error(
        client.post("/invocations", content="{", headers={"Content-Type": "application/json"}),
        400,
        "body",
    )
    assert_error(
        client.post("/invocations", content="<x/>", headers={"Content-Type": "application/xml"}),
        415,
        "content-type",
    )
    assert_error(
        client.post(
            "/invocations",
            content=good,
            headers={"Content-Type": "text/csv", "Accept": "application/xml"},
        ),
        406,
        "accept",
    )
    assert_error(client.post("/invocations", json={"instances": [{**ROW, "town": 1}]}), 422)
    assert_error(client.post("/invocations", json={**ROW, "month": "2025-13"}), 422, "month")
    too_many = "\n".join([good] * 6)
    body = assert_error(small_client.post("/invocations", content=too_many, headers=headers), 413)
    assert "at most 5 rows" in body["detail"][0]["reason"]
    assert_error(small_client.post("/invocations", json={"instances": [ROW] * 6}), 413)


# ------------------------------------------------------------------------- start-up


def test_bad_references_fail_at_creation(xgb_bundle, tmp_path):
    import shutil

    with pytest.raises(ModelLoadError, match="no bundle directory"):
        create_app(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"metadata\.json"):
        create_app(tmp_path / "empty")
    spec_tampered = shutil.copytree(xgb_bundle, tmp_path / "spec")
    spec_file = spec_tampered / "feature_spec.json"
    spec_file.write_text(spec_file.read_text().replace("BEDOK", "BEDOK2"))
    with pytest.raises(ModelLoadError, match=r"feature_spec\.json"):
        create_app(spec_tampered)
    meta_tampered = shutil.copytree(xgb_bundle, tmp_path / "meta")
    meta = json.loads((meta_tampered / "metadata.json").read_text())
    meta["metrics"]["mape"] = 0.01
    (meta_tampered / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"metadata\.json"):
        create_app(meta_tampered)


def test_tampered_model_stops_startup_in_thread(xgb_bundle, tmp_path):
    import shutil

    tampered = shutil.copytree(xgb_bundle, tmp_path / "bundle")
    app = create_app(tampered)  # the spec is intact: creation works
    with open(tampered / "model.joblib", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"model\.joblib has sha256"), serve_in_thread(app):
        pass


def test_tampered_bundle_process_fails_to_start(xgb_bundle, tmp_path):
    """uvicorn with the factory: a bundle whose model.joblib changed never serves; the
    process exits with an error that names the file."""
    import shutil

    tampered = shutil.copytree(xgb_bundle, tmp_path / "bundle")
    with open(tampered / "model.joblib", "ab") as fh:
        fh.write(b"\0")
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "hdb_mlops.serving.app:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "HDB_MLOPS_MODEL": str(tampered)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "model.joblib has sha256" in output, output[-3000:]
    assert "Application startup failed" in output


def test_serve_writes_json_logs_and_shuts_down_gracefully(xgb_bundle, tmp_path):
    port = free_port()
    log_file = tmp_path / "service.log"
    code = (
        "from hdb_mlops.serving.server import serve; "
        f"serve(port={port}, model_ref={str(xgb_bundle)!r}, graceful_timeout=5)"
    )
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        response = httpx.post(f"{url}/predict", json=ROW, headers={"X-Request-ID": "log-test-1"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "log-test-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal: killed by SIGTERM, cleanly
    assert returncode in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    request = next(r for r in records if r.get("request_id") == "log-test-1")
    assert request["msg"] == "request" and request["status"] == 200
    assert request["endpoint"] == "/predict" and request["duration_ms"] > 0
    messages = [r["msg"] for r in records]
    assert "model loaded" in messages and "model unloaded" in messages
    assert "Application shutdown complete." in messages
    assert not any(r["level"] == "error" for r in records)


def test_registry_alias_and_version(tx, tmp_path, monkeypatch):
    """``champion`` (the default) and a version number are resolved through the registry;
    the served version is pinned and reported."""
    from hdb_mlops.model import registry, tracking
    from hdb_mlops.model.evaluate import holdout

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HDB_MLOPS_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HDB_MLOPS_MODEL", raising=False)
    name = "serve-test"
    data = tx[tx["month"] <= CUTOFF + 3].sample(3000, random_state=2).sort_values("month")
    evaluation = holdout(data, lambda: train.build_model("median_ppsm"), cutoff=str(CUTOFF))
    model = train.build_model("median_ppsm").fit(data)
    preds = evaluation.predictions
    bundle_dir = save_bundle(
        model,
        tmp_path / "bundle",
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile={},
        data_hash=None,
        git=None,
    )
    run_id = tracking.log_training(model, evaluation, bundle_dir, experiment="serve-test")
    version = registry.register(run_id, name=name)
    tracking.get_client().set_registered_model_alias(name, "champion", str(version))

    with pytest.raises(ModelLoadError, match="no version 42"):
        create_app(42, registry_name=name)
    for ref in (None, "champion", version, str(version)):
        app = create_app(ref, registry_name=name)
        with serve_in_thread(app) as url:
            served = httpx.get(f"{url}/model").json()
            assert served["version"] == str(version), ref
            assert served["source"]["kind"] == "registry"
            assert served["source"]["version"] == version
            prediction = httpx.post(f"{url}/predict", json=ROW).json()
            assert prediction["model"]["version"] == str(version)
            assert prediction["model"]["name"] == "median_ppsm"
            metrics = httpx.get(f"{url}/metrics").text
            assert f'version="{version}"' in metrics


@pytest.mark.slow
def test_two_workers_from_the_factory(xgb_bundle, tmp_path):
    port = free_port()
    code = (
        "from hdb_mlops.serving.server import serve; "
        f"serve(port={port}, workers=2, model_ref={str(xgb_bundle)!r}, graceful_timeout=5)"
    )
    log_file = tmp_path / "service.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=log, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, timeout=300)
        for _ in range(4):
            assert httpx.post(f"{url}/predict", json=ROW).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    loaded = [
        json.loads(line)
        for line in log_file.read_text().splitlines()
        if line.startswith("{") and '"model loaded"' in line
    ]
    assert len(loaded) == 2  # one per worker
