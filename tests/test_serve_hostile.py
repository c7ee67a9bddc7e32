"""Hostile and tricky requests against the real service: ``hdb-mlops serve`` in a subprocess
on 127.0.0.1, with a 1 s body timeout (``$HDB_MLOPS_BODY_TIMEOUT``) and its JSON log in a file.

Every bad request must be a 4xx with the service's JSON error shape naming the field, on every
route it concerns (/predict, /predict/batch, /invocations), and must leave no traceback and no
error record in the server's log: deep nesting, duplicate keys, NaN, coercions the published
schema does not admit, cross-field rules, a remaining lease that contradicts the lease start,
and a body that never fully arrives.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

# the model bundle and helpers of the main service tests (module fixtures: trained once here)
from test_serve import ROW, assert_error, free_port, tx, wait_ready, xgb_bundle  # noqa: F401

from hdb_mlops.data.normalise import derive_remaining_lease
from hdb_mlops.serving.request_fields import (
    LEASE_TOLERANCE_MONTHS,
    implied_remaining_lease,
    lease_months,
)

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE_CSV = PROJECT / "data" / "sample" / "resale-flat-prices-sample.csv"
BODY_TIMEOUT = 1.0
JSON = {"content-type": "application/json"}
#: ROW's lease: 1979 start, sold 2025-06 -> 637 months left (53 years 01 month)
ROW_LEASE = implied_remaining_lease(ROW["month"], ROW["lease_commence_date"])


# ------------------------------------------------------------------------- the service


class Service:
    """A ``serve()`` subprocess and its log file."""

    def __init__(self, url: str, log_file: Path):
        self.url = url
        self.log_file = log_file

    def records(self) -> tuple[list[dict], list[str]]:
        """The JSON log records, and the lines that are not JSON (a bare traceback)."""
        records, other = [], []
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                other.append(line)
        return records, other

    def assert_clean(self, request_ids: list[str]) -> None:
        """No traceback or error anywhere in the log, and a 4xx log line per request id."""
        deadline = time.monotonic() + 5
        while True:  # the log line is written just after the response is sent
            records, other = self.records()
            statuses = {r["request_id"]: r["status"] for r in records if r.get("msg") == "request"}
            if all(rid in statuses for rid in request_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not [line for line in other if "Traceback" in line or "Error" in line], other
        bad = [r for r in records if "exc" in r or r["level"] in ("error", "critical")]
        assert not bad, bad
        for rid in request_ids:
            assert rid in statuses, f"no log line for request {rid}"
            assert 400 <= statuses[rid] < 500, (rid, statuses[rid])


@pytest.fixture(scope="module")
def service(xgb_bundle, tmp_path_factory):  # noqa: F811 - the imported fixture
    """``hdb-mlops serve`` itself, with the body timeout from its environment variable."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("hostile") / "service.log"
    command = [sys.executable, "-m", "hdb_mlops.cli", "serve", "--port", str(port)]
    env = {
        **os.environ,
        "HDB_MLOPS_BODY_TIMEOUT": str(BODY_TIMEOUT),
        # monitored, as `hdb-mlops serve` runs by default: the prediction log off the checkout
        "HDB_MLOPS_PREDICTION_LOG": str(log_file.with_name("predictions.sqlite")),
    }
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [*command, "--model", str(xgb_bundle)], stdout=log, stderr=log, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield Service(url, log_file)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.url, timeout=30) as c:
        yield c


class Requests:
    """Posts with a fresh X-Request-ID each, remembered for the log check."""

    def __init__(self, client: httpx.Client):
        self.client = client
        self.ids: list[str] = []

    def post(self, path: str, content: bytes | str, headers: dict | None = None) -> httpx.Response:
        rid = f"hostile-{uuid.uuid4().hex[:12]}"
        self.ids.append(rid)
        return self.client.post(
            path, content=content, headers={**JSON, **(headers or {}), "x-request-id": rid}
        )


@pytest.fixture
def bad(client, service):
    """Posts of bad requests; after the test, the log has no traceback and a 4xx for each."""
    requests = Requests(client)
    yield requests
    service.assert_clean(requests.ids)


def as_route(path: str, row_text: str) -> str:
    """A JSON body for ``path`` with ``row_text`` (one row's JSON text) as its only row."""
    if path == "/predict/batch":
        return f'{{"records": [{row_text}]}}'
    return row_text


def prefixed(path: str, field: str) -> str:
    return f"records.0.{field}" if path == "/predict/batch" else field


ROUTES = ["/predict", "/predict/batch", "/invocations"]


# ------------------------------------------------------------------------- 1. nesting


@pytest.mark.parametrize("path", ROUTES)
def test_deep_nesting_is_a_400_on_every_route(bad, path):
    deep_list = "[" * 1000 + "]" * 1000  # 2,000 bytes
    deep_value = '{"a": ' * 1000 + "1" + "}" * 1000
    row_with_deep_field = json.dumps(ROW)[:-1] + f', "floor_area_sqm": {deep_value}}}'
    bodies = [deep_list, row_with_deep_field.replace('"floor_area_sqm": 92.0, ', "")]
    bodies.append(as_route(path, bodies[1]))
    for body in bodies:
        error = assert_error(bad.post(path, body), 400, "body")
        assert error["error"] == "malformed_json"
        assert "nested too deeply" in error["detail"][0]["reason"]


@pytest.mark.parametrize("path", ROUTES)
def test_moderate_nesting_in_a_field_is_a_422_naming_it(bad, path):
    value = '{"a": ' * 200 + "1" + "}" * 200
    row = json.dumps({k: v for k, v in ROW.items() if k != "floor_area_sqm"})
    body = as_route(path, row[:-1] + f', "floor_area_sqm": {value}}}')
    assert_error(bad.post(path, body), 422, prefixed(path, "floor_area_sqm"))


# ------------------------------------------------------------------------- 2. strict JSON


@pytest.mark.parametrize("path", ROUTES)
def test_duplicate_keys_are_refused_naming_the_key(bad, path):
    row = json.dumps(ROW)[:-1] + ', "floor_area_sqm": 9}'
    error = assert_error(bad.post(path, as_route(path, row)), 400, prefixed(path, "floor_area_sqm"))
    assert error["error"] == "malformed_json"
    assert "duplicate key 'floor_area_sqm'" in error["detail"][0]["reason"]
    # at the top level of a batch too
    body = f'{{"records": [{json.dumps(ROW)}], "records": []}}'
    if path != "/predict":
        assert_error(bad.post(path, body), 400, "records")


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1" * 5000, '"\\ud800"'], ids=lambda v: v[:12]
)
def test_numbers_that_are_not_json_or_too_long(bad, path, value):
    row = json.dumps({k: v for k, v in ROW.items() if k != "floor_area_sqm"})
    response = bad.post(path, as_route(path, row[:-1] + f', "floor_area_sqm": {value}}}'))
    if value.startswith('"'):  # a lone surrogate is valid JSON syntax: a string, not a number
        assert_error(response, 422, prefixed(path, "floor_area_sqm"))
    else:
        assert assert_error(response, 400, "body")["error"] == "malformed_json"


@pytest.mark.parametrize("path", ROUTES)
def test_a_lone_surrogate_field_name_is_a_422(bad, path):
    """JSON lets ``"\\ud800"`` through, but it is no text: the name (which the error
    echoes) must not break the JSON answer."""
    row = json.dumps(ROW)[:-1] + ', "\\ud800x": 1}'
    assert_error(bad.post(path, as_route(path, row)), 422)


COERCIONS = [
    ({"remaining_lease": False}, "remaining_lease"),
    ({"remaining_lease": True}, "remaining_lease"),
    ({"remaining_lease": 627.5}, "remaining_lease"),
    ({"remaining_lease": "627"}, "remaining_lease"),
    ({"remaining_lease": "52 years 03 months\n"}, "remaining_lease"),
    ({"remaining_lease": " 52 years 03 months"}, "remaining_lease"),
    ({"remaining_lease": "52 years 13 months"}, "remaining_lease"),
    ({"remaining_lease": "99 years 01 month"}, "remaining_lease"),
    ({"floor_area_sqm": "93"}, "floor_area_sqm"),
    ({"floor_area_sqm": True}, "floor_area_sqm"),
    ({"floor_area_sqm": [93]}, "floor_area_sqm"),
    ({"month": "2025-03\n"}, "month"),
    ({"month": " 2025-03"}, "month"),
    ({"month": 202503}, "month"),
    ({"storey_range": "07 TO 09\n"}, "storey_range"),
    ({"storey_range": "56 TO 55"}, "storey_range"),
    ({"lease_commence_date": "1979"}, "lease_commence_date"),
    ({"lease_commence_date": True}, "lease_commence_date"),
    ({"lease_commence_date": 1979.5}, "lease_commence_date"),
    ({"town": "ANG MO KIO\u2003"}, "town"),
    ({"town": "ANG  MO KIO"}, "town"),
    ({"block": 406}, "block"),
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("change, field", COERCIONS, ids=[repr(c) for c, _ in COERCIONS])
def test_values_the_schema_does_not_admit_are_refused(bad, path, change, field):
    body = as_route(path, json.dumps({**ROW, **change}))
    assert_error(bad.post(path, body), 422, prefixed(path, field))


@pytest.mark.parametrize(
    "change",
    [
        {"floor_area_sqm": 92},  # a JSON integer is a number
        {"lease_commence_date": 1979.0},  # JSON Schema's integer includes 1979.0
        {"remaining_lease": 627.0},
        {"remaining_lease": 627},
        {"storey_range": "07 to 09", "town": " ang mo kio\t", "flat_model": "new generation"},
    ],
)
def test_values_the_schema_admits_are_priced_alike(client, change):
    price = client.post("/predict", json=ROW).json()["price"]
    response = client.post("/predict", json={**ROW, **change})
    assert response.status_code == 200, response.text
    assert response.json()["price"] == price


def test_the_published_schema_is_what_is_enforced(client):
    """Every value above is refused by the published JSON schema too (checked with an
    ECMA-style validator: ``$`` is the end of the string), and every accepted one admitted."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    doc = client.get("/openapi.json").json()
    record = doc["components"]["schemas"]["Record"]
    validator = jsonschema_rs.validator_for(
        {**record, "components": doc["components"]}, validate_formats=False
    )
    assert validator.is_valid(ROW)
    for change, _field in COERCIONS:
        assert not validator.is_valid({**ROW, **change}), change
    for change in ({"floor_area_sqm": 92}, {"lease_commence_date": 1979.0}, {"town": "bedok "}):
        assert validator.is_valid({**ROW, **change}), change
    props = record["properties"]
    lease = props["remaining_lease"]["anyOf"]
    assert {"type": "integer", "minimum": 0, "maximum": 1188} in lease
    assert not any(t.get("type") == "boolean" for t in lease)
    assert props["floor_area_sqm"]["type"] == "number"
    assert props["lease_commence_date"]["type"] == "integer"
    # the rules across fields are described where the schema cannot say them
    assert "year after the sale" in props["lease_commence_date"]["description"]
    description = props["remaining_lease"]["description"]
    assert "lease_commence_date" in description and "month" in description
    assert f"{LEASE_TOLERANCE_MONTHS} months" in description
    assert "low <= high" in props["storey_range"]["description"]


def test_the_storey_pattern_is_exactly_low_le_high(client):
    doc = client.get("/openapi.json").json()
    pattern = doc["components"]["schemas"]["Record"]["properties"]["storey_range"]["pattern"]
    regex = re.compile(pattern.removesuffix("$") + r"\Z")
    for low in range(100):
        for high in range(100):
            for to in ("TO", "to", "To"):
                text = f"{low:02d} {to} {high:02d}"
                assert bool(regex.match(text)) == (1 <= low <= high), text


def test_the_month_pattern_spells_the_service_range(client):
    doc = client.get("/openapi.json").json()
    max_month = client.get("/model").json()["max_month"]
    pattern = doc["components"]["schemas"]["Record"]["properties"]["month"]["pattern"]
    regex = re.compile(pattern.removesuffix("$") + r"\Z")
    for year in range(1985, int(max_month[:4]) + 3):
        for month in range(0, 14):
            text = f"{year}-{month:02d}"
            assert bool(regex.match(text)) == ("1990-01" <= text <= max_month and 1 <= month <= 12)


# ------------------------------------------------------------------------- 3. lease rules


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("lease", [0, "0 years", ROW_LEASE + LEASE_TOLERANCE_MONTHS + 1, 1188])
def test_a_remaining_lease_that_contradicts_the_lease_start_is_refused(bad, path, lease):
    body = as_route(path, json.dumps({**ROW, "remaining_lease": lease}))
    error = assert_error(bad.post(path, body), 422, prefixed(path, "remaining_lease"))
    reason = error["detail"][0]["reason"]
    assert "lease_commence_date 1979" in reason and "month 2025-06" in reason
    assert f"{ROW_LEASE} months" in reason  # the expected value


def test_the_lease_rule_names_the_row_of_a_batch(bad):
    rows = [ROW, {**ROW, "remaining_lease": 0}, ROW]
    body = assert_error(bad.post("/predict/batch", json.dumps({"records": rows})), 422)
    assert [d["field"] for d in body["detail"]] == ["records.1.remaining_lease"]
    body = assert_error(bad.post("/invocations", json.dumps(rows)), 422)
    assert [d["field"] for d in body["detail"]] == ["1.remaining_lease"]
    body = assert_error(bad.post("/invocations", json.dumps({"instances": rows})), 422)
    assert [d["field"] for d in body["detail"]] == ["instances.1.remaining_lease"]


@pytest.mark.parametrize(
    "lease", [ROW_LEASE - LEASE_TOLERANCE_MONTHS, ROW_LEASE + LEASE_TOLERANCE_MONTHS, None, ""]
)
def test_a_remaining_lease_within_the_tolerance_is_priced(client, lease):
    response = client.post("/predict", json={**ROW, "remaining_lease": lease})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ROUTES)
def test_the_cross_field_rules_are_422_naming_the_field(bad, path):
    for change, field in [
        ({"storey_range": "56 TO 55"}, "storey_range"),
        ({"month": "2000-01", "lease_commence_date": 2005, "remaining_lease": None}, "lease_commence_date"),
    ]:  # fmt: skip
        body = as_route(path, json.dumps({**ROW, **change}))
        assert_error(bad.post(path, body), 422, prefixed(path, field))


def test_implied_lease_is_the_loaders_derivation():
    sample = pd.read_csv(SAMPLE_CSV, dtype=str)
    month = pd.PeriodIndex(sample["month"], freq="M").to_series(index=sample.index)
    loader = derive_remaining_lease(month, sample["lease_commence_date"].astype(int))
    ours = [
        implied_remaining_lease(m, int(y))
        for m, y in zip(sample["month"], sample["lease_commence_date"], strict=True)
    ]
    assert loader.astype(int).tolist() == ours


def test_no_sample_row_is_refused(client):
    """Every row of the bundled sample goes through /invocations as CSV (the official file
    format, header included) in batches of 1,000, and every one is priced."""
    lines = SAMPLE_CSV.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    for start in range(0, len(rows), 1000):
        chunk = "\n".join([header, *rows[start : start + 1000]])
        response = client.post("/invocations", content=chunk, headers={"content-type": "text/csv"})
        assert response.status_code == 200, response.text[:500]
        assert response.json()["count"] == len(rows[start : start + 1000])


def refused_share(rows: list[dict]) -> tuple[int, int]:
    refused = 0
    for row in rows:
        given = lease_months(str(row["remaining_lease"]))
        expected = implied_remaining_lease(str(row["month"]), int(row["lease_commence_date"]))
        refused += given is not None and abs(given - expected) > LEASE_TOLERANCE_MONTHS
    return refused, len(rows)


def test_the_lease_rule_refuses_no_sample_row_and_almost_no_real_row(real_data_dir):
    with open(SAMPLE_CSV, newline="") as f:
        assert refused_share(list(csv.DictReader(f)))[0] == 0
    path = real_data_dir / "latest_hdb_resale_prices.parquet"
    if not path.exists():
        pytest.skip(f"{path} not found")
    columns = ["month", "lease_commence_date", "remaining_lease"]
    real = pd.read_parquet(path, columns=columns)
    refused, total = refused_share(real.to_dict("records"))
    print(f"remaining-lease rule: {refused} of {total} real 2017+ rows refused")
    assert refused / total < 1e-4, (refused, total)


# ------------------------------------------------------------------------- 4. slow bodies


def stalled_request(url: str, path: str, declared: int = 400, sent: int = 200) -> socket.socket:
    """A raw connection that declares ``declared`` body bytes and sends ``sent``."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\nX-Request-ID: stalled-{uuid.uuid4().hex[:8]}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"[" * sent)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, whether the server then closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        closed = False
    return int(status_line.split()[1]), headers, body, closed


@pytest.mark.parametrize("path", ROUTES)
def test_a_stalled_body_is_answered_408_while_others_are_served(service, client, path):
    started = time.monotonic()
    sock = stalled_request(service.url, path)
    try:
        # meanwhile another client is served at once
        response = client.post("/predict", json=ROW)
        assert response.status_code == 200
        assert time.monotonic() - started < BODY_TIMEOUT
        status, headers, body, closed = read_response(sock)
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    assert status == 408, body
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 2, elapsed
    error = json.loads(body)
    assert set(error) == {"error", "detail", "request_id"}
    assert error["error"] == "request_timeout" and error["detail"][0]["field"] == "body"
    assert error["request_id"] == headers["x-request-id"]
    assert headers["connection"] == "close" and closed
    service.assert_clean([error["request_id"]])


def test_a_body_sent_drop_by_drop_is_bounded_in_total(service):
    """A client that keeps the body trickling (a byte every 0.2 s) is still cut off at the
    bound: the timeout is for the whole body, not for each read."""
    sock = stalled_request(service.url, "/predict", declared=400, sent=1)
    result: dict = {}

    def drip() -> None:
        try:
            for _ in range(100):
                time.sleep(0.2)
                sock.sendall(b"[")
        except OSError:
            result["cut"] = True

    started = time.monotonic()
    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        status, _headers, _body, _closed = read_response(sock)
    finally:
        sock.close()
        thread.join(5)
    assert status == 408
    assert time.monotonic() - started < BODY_TIMEOUT + 2
