"""The OneMap geocoder against a local stub of the search endpoint (no internet)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from hdb_mlops import config
from hdb_mlops.data import location, location_files, onemap
from hdb_mlops.data.geocode import (
    AddressCache,
    fetch_stations,
    geocode_addresses,
    geocode_frame,
)
from hdb_mlops.data.location import ADDRESS_CACHE_FILE, CACHE_FORMAT, add_location_features
from hdb_mlops.data.onemap import GeocodeError, RateLimiter, pick_result

# --------------------------------------------------------------------------------------------
# The stub
# --------------------------------------------------------------------------------------------


def result(blk: str, road: str, lat: float, lon: float, postal: str = "560406") -> dict:
    """One OneMap search result, with the string fields OneMap sends."""
    return {
        "SEARCHVAL": f"{blk} {road}",
        "BLK_NO": blk,
        "ROAD_NAME": road,
        "BUILDING": "NIL",
        "ADDRESS": f"{blk} {road} SINGAPORE {postal}",
        "POSTAL": postal,
        "X": "30000.1",
        "Y": "38000.2",
        "LATITUDE": f"{lat}",
        "LONGITUDE": f"{lon}",
    }


def page(results: list[dict], page_num: int = 1, pages: int = 1) -> dict:
    return {"found": len(results), "totalNumPages": pages, "pageNum": page_num, "results": results}


@dataclass
class Scripted:
    status: int = 200
    body: Any = None  # None: the normal answer; bytes: sent as is; otherwise JSON
    headers: dict[str, str] = field(default_factory=dict)


class OneMapStub:
    """Imitates GET /api/common/elastic/search on 127.0.0.1 (answers by searchVal and page)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[dict]] = {}  # searchVal -> results of page 1
        self.paged: dict[str, list[list[dict]]] = {}  # searchVal -> results per page
        self.script: deque[Scripted] = deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def searched(self) -> list[str]:
        with self._lock:
            return [r["query"].get("searchVal", [""])[0] for r in self.requests]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append({"path": parts.path, "query": query, "headers": dict(h.headers)})
            scripted = self.script.popleft() if self.script else None
        if parts.path != "/api/common/elastic/search":
            self._send(h, 404, {"error": "not found"})
            return
        if scripted is not None and scripted.body is not None:
            self._send(h, scripted.status, scripted.body, scripted.headers)
            return
        if scripted is not None and scripted.status != 200:
            self._send(h, scripted.status, {"error": "scripted"}, scripted.headers)
            return
        value = query.get("searchVal", [""])[0]
        num = int(query.get("pageNum", ["1"])[0])
        if value in self.paged:
            pages = self.paged[value]
            body = page(pages[num - 1] if num <= len(pages) else [], num, len(pages))
        else:
            body = page(self.answers.get(value, []) if num == 1 else [], num)
        self._send(h, 200, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict | None = None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture
def stub():
    server = OneMapStub()
    server.answers["406 ANG MO KIO AVE 10"] = [
        result("406", "ANG MO KIO AVENUE 10", 1.362004, 103.853879, "560406")
    ]
    server.answers["108 ANG MO KIO AVE 4"] = [
        result("108", "ANG MO KIO AVENUE 4", 1.370966, 103.838201, "560108")
    ]
    yield server
    server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def run(stub: OneMapStub, addresses, cache_dir: Path, sleeps: list[float], **kw):
    """geocode_addresses against the stub, without pacing and with recorded sleeps."""
    kw.setdefault("rate", 0)
    return geocode_addresses(
        addresses, cache_dir, base_url=stub.url, sleep=sleeps.append, progress=False, **kw
    )


def read_cache(cache_dir: Path) -> dict:
    return json.loads((cache_dir / ADDRESS_CACHE_FILE).read_text())


# --------------------------------------------------------------------------------------------
# Hits, misses, choosing a result
# --------------------------------------------------------------------------------------------


def test_hit_returns_the_geocode_table_and_caches_it(stub, tmp_path, sleeps):
    table = run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)

    assert list(table.columns) == list(location.GEOCODE_COLUMNS)
    row = table.iloc[0]
    assert (row["block"], row["street_name"], row["postal"]) == (
        "406",
        "ANG MO KIO AVE 10",
        "560406",
    )
    assert row["latitude"] == pytest.approx(1.362004) and row["longitude"] == pytest.approx(
        103.853879
    )
    (req,) = stub.requests
    assert req["path"] == "/api/common/elastic/search"
    assert req["query"] == {
        "searchVal": ["406 ANG MO KIO AVE 10"],
        "returnGeom": ["Y"],
        "getAddrDetails": ["Y"],
        "pageNum": ["1"],
    }
    assert req["headers"]["User-Agent"].startswith("hdb-mlops/")
    cache = read_cache(tmp_path)
    assert cache["format"] == CACHE_FORMAT and cache["version"] == 1
    entry = cache["entries"]["406|ANG MO KIO AVE 10"]
    assert entry["match"] == "block" and entry["postal"] == "560406"
    assert sleeps == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write


def test_addresses_are_normalised_and_deduplicated(stub, tmp_path, sleeps):
    table = run(
        stub,
        [
            (" 406 ", "ang mo kio  ave 10"),
            ("406", "ANG MO KIO AVE 10"),
            ("108", "ANG MO KIO AVE 4"),
        ],
        tmp_path,
        sleeps,
    )
    assert table["block"].tolist() == ["406", "108"]
    assert stub.searched() == ["406 ANG MO KIO AVE 10", "108 ANG MO KIO AVE 4"]


def test_miss_is_nan_and_cached_as_null(stub, tmp_path, sleeps):
    table = run(stub, [("999", "NOWHERE RD"), ("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)

    miss = table.set_index("block").loc["999"]
    assert np.isnan(miss["latitude"]) and np.isnan(miss["longitude"]) and pd.isna(miss["postal"])
    assert read_cache(tmp_path)["entries"]["999|NOWHERE RD"] is None
    assert len(stub.requests) == 2

    again = run(stub, [("999", "NOWHERE RD"), ("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert len(stub.requests) == 2  # neither the miss nor the hit is asked again
    pd.testing.assert_frame_equal(again, table)

    stub.answers["999 NOWHERE RD"] = [result("999", "NOWHERE ROAD", 1.30, 103.80, "123999")]
    refreshed = run(stub, [("999", "NOWHERE RD")], tmp_path, sleeps, refresh_misses=True)
    assert stub.searched()[-1] == "999 NOWHERE RD" and len(stub.requests) == 3
    assert refreshed["latitude"].iloc[0] == pytest.approx(1.30)
    assert read_cache(tmp_path)["entries"]["999|NOWHERE RD"]["postal"] == "123999"


def test_several_results_the_matching_block_is_chosen(stub, tmp_path, sleeps):
    stub.answers["228A ANG MO KIO ST 23"] = [
        result("228", "ANG MO KIO STREET 23", 1.3601, 103.8401, "560228"),
        result("228B", "ANG MO KIO STREET 23", 1.3602, 103.8402, "562228"),
        result("228A", "ANG MO KIO STREET 23", 1.3603, 103.8403, "561228"),
    ]
    table = run(stub, [("228A", "ANG MO KIO ST 23")], tmp_path, sleeps)
    assert table["postal"].iloc[0] == "561228"
    assert table["latitude"].iloc[0] == pytest.approx(1.3603)


def test_pick_result_rules():
    same_block = [
        result("10", "TELOK BLANGAH CRESCENT", 1.2701, 103.8101, "090010"),
        result("10", "TELOK BLANGAH HEIGHTS", 1.2702, 103.8102, "100010"),
    ]
    picked, how = pick_result(same_block, "10", "TELOK BLANGAH HTS")
    assert (picked["POSTAL"], how) == ("100010", "block")

    wealth = [result("83", "COMMONWEALTH CLOSE", 1.3071, 103.7981, "140083")]
    assert pick_result(wealth, "83", "C'WEALTH CL")[1] == "block"
    # no result for the block, but one on the same road: a nearby block is better than nothing
    nearby = [
        result("", "SOME OTHER ROAD", 1.31, 103.80),
        result("84", "COMMONWEALTH CLOSE", 1.3072, 103.7982, "140084"),
    ]
    picked, how = pick_result(nearby, "83A", "C'WEALTH CL")
    assert (picked["POSTAL"], how) == ("140084", "road")
    saint = [result("3", "ST. GEORGE'S ROAD", 1.3251, 103.8621, "321003")]
    assert pick_result(saint, "5", "ST. GEORGE'S RD")[1] == "road"
    # different road, different block: a miss rather than a wrong place
    assert (
        pick_result([result("12", "ANG MO KIO AVENUE 1", 1.36, 103.85)], "11", "ANG MO KIO AVE 10")
        is None
    )
    # coordinates outside Singapore (or missing) are never used
    bogus = [result("406", "ANG MO KIO AVENUE 10", 0.0, 0.0), {"BLK_NO": "406", "LATITUDE": "NaN"}]
    assert pick_result(bogus, "406", "ANG MO KIO AVE 10") is None


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def test_500_then_success_retries_with_backoff(stub, tmp_path, sleeps):
    stub.script.append(Scripted(500))
    table = run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert table["latitude"].notna().all()
    assert len(stub.requests) == 2
    assert sleeps == [1.0]


def test_429_then_success_honours_retry_after(stub, tmp_path, sleeps):
    stub.script.extend([Scripted(429, headers={"Retry-After": "3"}), Scripted(429)])
    table = run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert table["latitude"].notna().all()
    assert len(stub.requests) == 3
    assert sleeps == [3.0, 2.0]  # Retry-After, then the backoff of the second retry


def test_invalid_json_is_retried(stub, tmp_path, sleeps):
    stub.script.append(Scripted(200, body=b"<html>maintenance</html>"))
    table = run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert table["latitude"].notna().all() and sleeps == [1.0]


def test_persistent_5xx_fails_clearly_and_keeps_earlier_answers(stub, tmp_path, sleeps):
    addresses = [("406", "ANG MO KIO AVE 10"), ("108", "ANG MO KIO AVE 4")]
    stub.script.extend([Scripted(200)] + [Scripted(503)] * 3)
    with pytest.raises(GeocodeError, match=r"failed 3 times \(last: HTTP 503\).*cached"):
        run(stub, addresses, tmp_path, sleeps, retries=2)
    assert sleeps == [1.0, 2.0]
    assert list(read_cache(tmp_path)["entries"]) == ["406|ANG MO KIO AVE 10"]

    # the next run resumes: only the address still missing is asked
    table = run(stub, addresses, tmp_path, sleeps)
    assert stub.searched()[-1] == "108 ANG MO KIO AVE 4" and len(stub.requests) == 5
    assert table["latitude"].notna().all()


def test_other_4xx_is_not_retried(stub, tmp_path, sleeps):
    stub.script.append(Scripted(403))
    with pytest.raises(GeocodeError, match=r"HTTP 403.*HDB_MLOPS_ONEMAP_TOKEN"):
        run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    stub.script.append(Scripted(400))
    with pytest.raises(GeocodeError, match="HTTP 400"):
        run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert len(stub.requests) == 2 and sleeps == []


def test_connection_errors_are_retried_then_reported(tmp_path, sleeps):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GeocodeError, match="connection error"):
        geocode_addresses(
            [("406", "ANG MO KIO AVE 10")], tmp_path, base_url=f"http://127.0.0.1:{port}",
            rate=0, retries=2, sleep=sleeps.append, progress=False, timeout=2,
        )  # fmt: skip
    assert sleeps == [1.0, 2.0]


# --------------------------------------------------------------------------------------------
# Cache, configuration, pacing
# --------------------------------------------------------------------------------------------


def test_cache_hit_makes_no_request(stub, tmp_path, sleeps):
    first = run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert len(stub.requests) == 1
    before = (tmp_path / ADDRESS_CACHE_FILE).stat().st_mtime_ns
    # an unreachable server proves that no request is attempted at all
    again = geocode_addresses(
        [("406", "ANG MO KIO AVE 10")], tmp_path, base_url="http://127.0.0.1:9", rate=0,
        retries=0, sleep=sleeps.append, progress=False,
    )  # fmt: skip
    pd.testing.assert_frame_equal(again, first)
    assert len(stub.requests) == 1
    assert (tmp_path / ADDRESS_CACHE_FILE).stat().st_mtime_ns == before


def test_cache_is_readable_by_load_geocodes(stub, tmp_path, sleeps):
    run(stub, [("406", "ANG MO KIO AVE 10"), ("999", "NOWHERE RD")], tmp_path, sleeps)
    table = location_files.load_geocodes(tmp_path / ADDRESS_CACHE_FILE)
    assert table["block"].tolist() == ["406"]  # the cached miss is not a geocode


@pytest.mark.parametrize(
    "content",
    [b'{"format": "hdb-mlops/onemap-geocode-cache", "entries": {"406|A', b"\xff\xfe", b"[1, 2]",
     b'{"format": "hdb-mlops/onemap-geocode-cache", "entries": {"406|A": 3}}'],
    ids=["truncated", "not-utf8", "not-a-cache", "bad-entry"],
)  # fmt: skip
def test_corrupt_cache_is_a_clear_error_and_left_untouched(stub, tmp_path, sleeps, content):
    path = tmp_path / ADDRESS_CACHE_FILE
    path.write_bytes(content)
    with pytest.raises(GeocodeError, match=r"delete it .* rebuild"):
        run(stub, [("406", "ANG MO KIO AVE 10")], tmp_path, sleeps)
    assert path.read_bytes() == content and stub.requests == []


def test_base_url_and_token_from_the_environment(stub, tmp_path, sleeps, monkeypatch):
    monkeypatch.setenv(onemap.BASE_URL_ENV, stub.url + "/")
    monkeypatch.setenv(onemap.TOKEN_ENV, "secret-token")
    table = geocode_addresses(
        [("406", "ANG MO KIO AVE 10")], tmp_path, rate=0, sleep=sleeps.append, progress=False
    )
    assert table["latitude"].notna().all()
    assert stub.requests[0]["headers"]["Authorization"] == "secret-token"
    assert read_cache(tmp_path)["source"] == stub.url + "/api/common/elastic/search"


def test_cache_saved_periodically(stub, tmp_path, sleeps):
    stub.answers.update(
        {
            f"{n} ANG MO KIO AVE 3": [result(str(n), "ANG MO KIO AVENUE 3", 1.37, 103.84)]
            for n in range(5)
        }
    )
    run(stub, [(str(n), "ANG MO KIO AVE 3") for n in range(5)], tmp_path, sleeps, save_every=2)
    assert len(read_cache(tmp_path)["entries"]) == 5
    cache = AddressCache.open(tmp_path)
    assert cache.get("4|ANG MO KIO AVE 3")["match"] == "block"


def test_rate_limiter_spaces_requests():
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4.0, sleep=sleep, clock=lambda: now[0])
    for _ in range(3):
        limiter.wait()
    assert waits == [0.25, 0.25]
    now[0] += 10  # idle for a while: no wait
    limiter.wait()
    assert waits == [0.25, 0.25]
    RateLimiter(0, sleep=sleep).wait()  # disabled
    assert len(waits) == 2


def test_default_rate_paces_real_requests(stub, tmp_path, sleeps):
    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    addresses = [("406", "ANG MO KIO AVE 10"), ("108", "ANG MO KIO AVE 4"), ("1", "X RD")]
    geocode_addresses(addresses, tmp_path, base_url=stub.url, rate=8.0, sleep=sleep, progress=False)
    assert len(sleeps) == 2 and all(0 < s <= 0.125 for s in sleeps)


# --------------------------------------------------------------------------------------------
# Frames and features
# --------------------------------------------------------------------------------------------


def test_geocode_frame_then_features_nan_for_misses(stub, tmp_path, sleeps):
    frame = pd.DataFrame(
        {
            "town": ["ANG MO KIO", "ANG MO KIO", "NOWHERE", "ANG MO KIO"],
            "block": ["406", "406", "999", "108"],
            "street_name": [
                "ANG MO KIO AVE 10",
                "ANG MO KIO AVE 10",
                "NOWHERE RD",
                "ANG MO KIO AVE 4",
            ],
            "resale_price": [400_000.0, 410_000.0, 500_000.0, 450_000.0],
        }
    )
    table = geocode_frame(
        frame, tmp_path, base_url=stub.url, rate=0, sleep=sleeps.append, progress=False
    )
    assert len(stub.requests) == 3 and len(table) == 3

    stations = pd.DataFrame({"name": ["AMK"], "latitude": [1.3700], "longitude": [103.8496]})
    out = add_location_features(frame, table, stations)
    assert (
        out.loc[[0, 1, 3], ["latitude", "longitude", "dist_mrt_km", "dist_cbd_km"]]
        .notna()
        .all()
        .all()
    )
    assert out.loc[2, ["latitude", "longitude", "dist_mrt_km", "dist_cbd_km"]].isna().all()
    assert out.loc[0, "dist_mrt_km"] == pytest.approx(1.02, abs=0.02)
    assert out.loc[0, "dist_cbd_km"] == pytest.approx(8.7, abs=0.2)


def test_fetch_stations_pages_and_caches(stub, tmp_path, sleeps, monkeypatch):
    stub.paged["MRT STATION"] = [
        [
            {**result("", "", 1.3700, 103.8496), "SEARCHVAL": "ANG MO KIO MRT STATION (NS16)"},
            {**result("", "", 1.3702, 103.8498), "SEARCHVAL": "ANG MO KIO MRT STATION"},
            {**result("", "", 1.3690, 103.8490), "SEARCHVAL": "ANG MO KIO MRT STATION EXIT A"},
        ],
        [
            {
                **result("", "", 1.2839, 103.8515),
                "SEARCHVAL": "RAFFLES PLACE MRT STATION (EW14 / NS26)",
            }
        ],
    ]
    stub.paged["LRT STATION"] = [
        [{**result("", "", 1.3917, 103.8954), "SEARCHVAL": "SENGKANG LRT STATION (STC)"}]
    ]
    stations = fetch_stations(
        tmp_path, base_url=stub.url, rate=0, sleep=sleeps.append, progress=False
    )
    assert stations["name"].tolist() == [
        "ANG MO KIO MRT STATION",
        "RAFFLES PLACE MRT STATION",
        "SENGKANG LRT STATION",
    ]
    assert stations["latitude"].iloc[0] == pytest.approx(1.3701)
    assert [r["query"]["pageNum"][0] for r in stub.requests] == ["1", "2", "1"]
    assert (tmp_path / "stations.csv").is_file()
    again = fetch_stations(tmp_path, base_url="http://127.0.0.1:9", progress=False)
    assert len(stub.requests) == 3
    pd.testing.assert_frame_equal(again, stations)

    # with no real data, the default tables come from the geocoder's cache folder
    monkeypatch.setattr(config, "real_data_dir", lambda: None)
    monkeypatch.setenv("HDB_MLOPS_DATA_DIR", str(tmp_path))
    cache_dir = tmp_path / "geocode"
    assert location_files.default_location_tables() is None
    (cache_dir).mkdir()
    (tmp_path / "stations.csv").rename(cache_dir / "stations.csv")
    assert location_files.default_location_tables() is None  # stations but no geocodes yet
    run(stub, [("406", "ANG MO KIO AVE 10")], cache_dir, sleeps)
    geocodes, station_table = location_files.default_location_tables()
    assert geocodes["block"].tolist() == ["406"] and len(station_table) == 3
