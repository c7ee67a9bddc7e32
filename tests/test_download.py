"""The data.gov.sg download client against a local stub server (never the real internet)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from datagov_stub import DatagovStub, StubResponse

from hdb_mlops.data import datagov
from hdb_mlops.data.datagov import DownloadedFile, DownloadError
from hdb_mlops.data.download import download_all, download_dataset
from hdb_mlops.data.schema import DATASETS, OFFICIAL_2017_COLUMNS, dataset

KEY = "2017-onwards"
DS = dataset(KEY)

# Made-up rows in the official 2017+ column order (fictional blocks and streets, not real data).
ROWS = [
    ("2017-01", "ANG MO KIO", "3 ROOM", "901", "EXAMPLE AVE 1", "04 TO 06", "67", "New Generation",
     "1979", "61 years 04 months", "255000"),
    ("2017-02", "BEDOK", "4 ROOM", "17A", "SAMPLE RD", "10 TO 12", "92", "Model A",
     "1998", "80 years 01 month", "410000"),
    ("2017-03", "TAMPINES", "5 ROOM", "5", "FICTION ST 9", "01 TO 03", "121", "Improved",
     "2004", "86 years 11 months", "520500"),
    ("2017-04", "YISHUN", "EXECUTIVE", "88", "NOWHERE LANE", "07 TO 09", "142", "Apartment",
     "1988", "70 years", "600000"),
]  # fmt: skip


def make_csv(rows: list[tuple[str, ...]] = ROWS) -> bytes:
    lines = [",".join(OFFICIAL_2017_COLUMNS), *(",".join(r) for r in rows)]
    return ("\n".join(lines) + "\n").encode("utf-8")


PAYLOAD = make_csv()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches data.gov.sg: the default base URL points at a closed local port."""
    monkeypatch.setenv(datagov.BASE_URL_ENV, "http://127.0.0.1:9")
    monkeypatch.delenv(datagov.API_KEY_ENV, raising=False)


@pytest.fixture
def stub() -> Iterator[DatagovStub]:
    with DatagovStub(PAYLOAD) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def fetch(stub: DatagovStub, cache: Path, sleeps: list[float], **kwargs) -> DownloadedFile:
    kwargs.setdefault("base_url", stub.url)
    kwargs.setdefault("poll_interval", 0.25)
    return download_dataset(KEY, cache, sleep=sleeps.append, progress=False, **kwargs)


def sidecar(cache: Path) -> dict:
    return json.loads((cache / f"{DS.file_stem}.csv.json").read_text())


def assert_good_file(result: DownloadedFile, cache: Path, payload: bytes = PAYLOAD) -> None:
    assert result.path == cache / f"{DS.file_stem}.csv"
    assert result.path.read_bytes() == payload
    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    assert result.bytes == len(payload)
    assert not list(cache.glob("*.part")), "a .part file was left behind"


# 1 ------------------------------------------------------------------------------------------
def test_success_end_to_end_with_poll_in_progress(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float]
) -> None:
    result = fetch(stub, tmp_path, sleeps)

    assert_good_file(result, tmp_path)
    assert (result.key, result.dataset_id, result.from_cache) == (KEY, DS.dataset_id, False)
    # initiate, poll (in progress), poll (url), file
    assert [r.route for r in stub.requests] == ["initiate", "poll", "poll", "file"]
    assert all(DS.dataset_id == r.dataset_id for r in stub.requests)
    assert sleeps == [0.25]  # one wait between the two polls, no retry
    meta = sidecar(tmp_path)
    assert meta["dataset_id"] == DS.dataset_id and meta["key"] == KEY
    assert meta["sha256"] == SHA and meta["bytes"] == len(PAYLOAD) and meta["rows"] == len(ROWS)
    assert meta["url"] == f"{stub.url}/files/{DS.dataset_id}.csv"  # no signature in the sidecar
    assert datetime.fromisoformat(meta["downloaded_at"]).utcoffset().total_seconds() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{DS.file_stem}.csv",
        f"{DS.file_stem}.csv.json",
    ]


def test_headers_user_agent_and_api_key_not_leaked_to_file_url(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(datagov.API_KEY_ENV, "secret-key")
    fetch(stub, tmp_path, sleeps)

    for req in stub.requests:
        assert req.headers["User-Agent"].startswith("hdb-mlops/")
        expected_key = None if req.route == "file" else "secret-key"
        assert {k.lower(): v for k, v in req.headers.items()}.get("x-api-key") == expected_key


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("route", "failure"),
    [
        ("initiate", StubResponse(500)),
        ("initiate", StubResponse(drop=True)),  # connection closed without an answer
        ("poll", StubResponse(503)),
        ("file", StubResponse(502, body=b"bad gateway")),
        ("poll", StubResponse(body={"code": 17, "data": {}, "errorMsg": "Internal hiccup"})),
    ],
    ids=["initiate-500", "initiate-dropped", "poll-503", "file-502", "poll-api-error"],
)
def test_transient_failure_then_success(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], route: str, failure: StubResponse
) -> None:
    stub.script(route, failure)
    result = fetch(stub, tmp_path, sleeps, backoff=2.0)

    assert_good_file(result, tmp_path)
    assert stub.count("initiate") == 2  # the whole sequence was retried once
    retry_sleeps = [s for s in sleeps if s != 0.25]
    assert len(retry_sleeps) == 1 and 2.0 <= retry_sleeps[0] <= 2.0 * 1.1


def test_read_timeout_is_retried(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    stub.script("initiate", StubResponse(delay=0.6))
    result = fetch(stub, tmp_path, sleeps, timeout=0.2)

    assert_good_file(result, tmp_path)
    assert stub.count("initiate") == 2


def test_server_errors_exhaust_retries_with_exponential_backoff(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float]
) -> None:
    stub.script("initiate", *[StubResponse(500)] * 4)
    with pytest.raises(DownloadError) as err:
        fetch(stub, tmp_path, sleeps, retries=3, backoff=1.0)

    assert stub.count() == 4 and stub.count("initiate") == 4
    assert [round(s) for s in sleeps] == [1, 2, 4]
    assert all(base <= s <= base * 1.1 for s, base in zip(sleeps, [1, 2, 4], strict=True))
    msg = str(err.value)
    assert KEY in msg and "4 attempts" in msg and "HTTP 500" in msg
    assert list(tmp_path.iterdir()) == []


# 3 ------------------------------------------------------------------------------------------
def test_429_honours_retry_after(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    stub.script("initiate", StubResponse(429, headers={"Retry-After": "7"}))
    result = fetch(stub, tmp_path, sleeps)

    assert_good_file(result, tmp_path)
    assert sleeps[0] == 7
    assert 7 in sleeps and stub.count("initiate") == 2


def test_429_without_retry_after_uses_backoff(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float]
) -> None:
    stub.script("poll", StubResponse(429))
    fetch(stub, tmp_path, sleeps, backoff=3.0)
    assert 3.0 <= sleeps[0] <= 3.3


# 4 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        StubResponse(body=PAYLOAD[:40], content_length=len(PAYLOAD)),  # truncated transfer
        StubResponse(body=b"<html><body>Service Unavailable</body></html>\n"),  # no header
        StubResponse(body=PAYLOAD.splitlines(keepends=True)[0]),  # header only, no data rows
        StubResponse(body=b"\xff\xfe" + PAYLOAD),  # not UTF-8
    ],
    ids=["truncated", "garbage", "header-only", "not-utf8"],
)
def test_corrupted_payload_then_good(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], bad: StubResponse
) -> None:
    stub.script("file", bad)
    result = fetch(stub, tmp_path, sleeps)

    assert_good_file(result, tmp_path)
    assert sidecar(tmp_path)["sha256"] == SHA
    assert stub.count("file") == 2 and stub.count("initiate") == 2  # whole sequence again


# 5 ------------------------------------------------------------------------------------------
def test_always_corrupted_raises_and_leaves_nothing(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float]
) -> None:
    stub.payload = b"this is not,a resale file\n1,2\n"
    with pytest.raises(DownloadError) as err:
        fetch(stub, tmp_path, sleeps, retries=2)

    msg = str(err.value)
    assert KEY in msg and DS.dataset_id in msg
    assert "corrupted" in msg.lower() or "invalid" in msg.lower()
    assert "3 attempts" in msg
    assert stub.count("file") == 3
    assert list(tmp_path.iterdir()) == []


# 6 ------------------------------------------------------------------------------------------
def test_cache_hit_makes_no_request(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    first = fetch(stub, tmp_path, sleeps)
    n = stub.count()

    again = fetch(stub, tmp_path, sleeps)
    assert stub.count() == n  # zero requests
    assert again.from_cache and not first.from_cache
    assert (again.path, again.sha256, again.bytes) == (first.path, first.sha256, first.bytes)

    forced = fetch(stub, tmp_path, sleeps, force=True)
    assert not forced.from_cache and stub.count("file") == 2


def test_corrupted_cache_is_downloaded_again(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    first = fetch(stub, tmp_path, sleeps)
    first.path.write_bytes(PAYLOAD.replace(b"255000", b"999999"))  # same size, altered bytes

    with caplog.at_level(logging.WARNING, logger="hdb_mlops.data.download"):
        again = fetch(stub, tmp_path, sleeps)

    assert not again.from_cache and stub.count("file") == 2
    assert_good_file(again, tmp_path)
    assert any("corrupted" in r.getMessage() for r in caplog.records)


def test_cache_hit_without_server(tmp_path: Path, sleeps: list[float]) -> None:
    with DatagovStub(PAYLOAD) as stub:
        fetch(stub, tmp_path, sleeps)
    # the server is gone (and the default URL is a closed port): the cache alone answers
    result = download_dataset(KEY, tmp_path, progress=False, sleep=sleeps.append)
    assert result.from_cache and result.sha256 == SHA


# 7 ------------------------------------------------------------------------------------------
def test_404_fails_at_once(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    stub.script("initiate", StubResponse(404, body={"code": 4, "errorMsg": "Dataset not found"}))
    with pytest.raises(DownloadError, match=rf"dataset id {DS.dataset_id} .*not found") as err:
        fetch(stub, tmp_path, sleeps)

    assert "data.gov.sg" in str(err.value)
    assert stub.count() == 1 and sleeps == []
    assert list(tmp_path.iterdir()) == []


def test_export_never_ready(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    stub.in_progress_polls = 100
    with pytest.raises(DownloadError, match="max_polls"):
        fetch(stub, tmp_path, sleeps, max_polls=3)
    assert stub.count("poll") == 3 and sleeps == [0.25, 0.25]


# 8 ------------------------------------------------------------------------------------------
def test_unknown_key_names_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download_dataset("2030-2040", tmp_path, progress=False, sleep=pytest.fail)
    for ds in DATASETS:
        assert ds.key in str(err.value)


def test_dataset_id_is_accepted(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    result = download_dataset(
        DS.dataset_id, tmp_path, base_url=stub.url, progress=False, sleep=sleeps.append
    )
    assert result.key == KEY and result.path.read_bytes() == PAYLOAD


# 9 ------------------------------------------------------------------------------------------
def test_env_var_base_url(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(datagov.BASE_URL_ENV, stub.url + "/")
    result = download_dataset(KEY, tmp_path, progress=False, sleep=sleeps.append)
    assert_good_file(result, tmp_path)
    assert stub.count() == 4


def test_explicit_base_url_beats_env_var(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float]
) -> None:
    # the autouse fixture points the env var at a closed port; base_url wins
    result = fetch(stub, tmp_path, sleeps, retries=0)
    assert_good_file(result, tmp_path)


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["gzip-file", "content-encoding"])
def test_gzip_payload_stored_as_csv_gz(
    stub: DatagovStub, tmp_path: Path, sleeps: list[float], how: str
) -> None:
    packed = gzip.compress(PAYLOAD)
    headers = {"Content-Encoding": "gzip"} if how == "content-encoding" else {}
    stub.script("file", StubResponse(body=packed, headers=headers))
    result = fetch(stub, tmp_path, sleeps)

    assert result.path == tmp_path / f"{DS.file_stem}.csv.gz"
    assert result.path.read_bytes() == packed
    assert gzip.decompress(result.path.read_bytes()) == PAYLOAD
    assert result.sha256 == hashlib.sha256(packed).hexdigest() and result.bytes == len(packed)
    assert not (tmp_path / f"{DS.file_stem}.csv").exists()
    meta = sidecar(tmp_path)
    assert meta["rows"] == len(ROWS) and meta["file"] == result.path.name

    cached = fetch(stub, tmp_path, sleeps)
    assert cached.from_cache and cached.path == result.path


def test_corrupted_gzip_is_retried(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    stub.script("file", StubResponse(body=gzip.compress(PAYLOAD)[:-12]))  # cut-off gzip stream
    result = fetch(stub, tmp_path, sleeps)
    assert_good_file(result, tmp_path)
    assert stub.count("file") == 2


# download_all -------------------------------------------------------------------------------
def test_download_all(stub: DatagovStub, tmp_path: Path, sleeps: list[float]) -> None:
    keys = ["1990-1999", KEY]
    old = make_csv([r[:9] + r[10:] for r in ROWS]).replace(b",remaining_lease", b"")
    stub.payloads[dataset("1990-1999").dataset_id] = old
    results = download_all(
        tmp_path, keys, base_url=stub.url, progress=False, sleep=sleeps.append, poll_interval=0
    )

    assert [r.key for r in results] == keys
    assert results[0].path.read_bytes() == old and results[1].path.read_bytes() == PAYLOAD
    assert stub.count("file") == 2


def test_download_all_checks_keys_before_any_request(stub: DatagovStub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown dataset"):
        download_all(tmp_path, [KEY, "nope"], base_url=stub.url, progress=False)
    assert stub.count() == 0
