"""Download the HDB resale files from data.gov.sg, with retries, validation and a local cache.

The data.gov.sg download API works in three steps for each dataset::

    GET {base}/v1/public/api/datasets/{id}/initiate-download  -> starts preparing the export
    GET {base}/v1/public/api/datasets/{id}/poll-download      -> {"data": {"url": ...}} when ready
    GET <signed, short-lived url>                             -> the CSV itself

:func:`download_dataset` runs that sequence, streams the CSV into ``cache_dir`` (``.part`` file
first, renamed only once the payload is valid), writes a JSON sidecar with its sha256 and row
count, and on the next call returns the cached file without any HTTP request as long as the
file still matches the sidecar's sha256.

The API needs no key; with one (``DATA_GOV_SG_API_KEY``) the rate limit is higher. Set
``HDB_MLOPS_DATAGOV_URL`` to point the client at another server (a mirror, or the local stub
the tests use).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from tqdm import tqdm

from hdb_mlops.data.schema import BASE_COLUMNS, DATASETS, Dataset, dataset

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DownloadError",
    "DownloadedFile",
    "download_all",
    "download_dataset",
]

log = logging.getLogger("hdb_mlops.data.download")

DEFAULT_BASE_URL = "https://api-open.data.gov.sg"
#: Environment variable overriding the API base URL (a mirror, or a local test server).
BASE_URL_ENV = "HDB_MLOPS_DATAGOV_URL"
#: Environment variable holding an optional data.gov.sg API key (higher rate limits).
API_KEY_ENV = "DATA_GOV_SG_API_KEY"

_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_RETRY_AFTER = 600.0  # never wait longer than this on a server's Retry-After
_jitter = random.Random()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hdb-mlops")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0+unknown"


USER_AGENT = f"hdb-mlops/{_version()} (+data.gov.sg collection 189; python-requests)"


class DownloadError(RuntimeError):
    """A dataset could not be downloaded; the message says what failed and what to do."""


@dataclass(frozen=True)
class DownloadedFile:
    """A resale file in the cache, as returned by :func:`download_dataset`."""

    dataset_id: str
    key: str
    path: Path
    sha256: str
    bytes: int
    from_cache: bool


class _Retryable(Exception):
    """A failure worth retrying the whole initiate -> poll -> get sequence for."""

    def __init__(self, reason: str, kind: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # "network", "server", "rate-limit", "api", "corrupted"
        self.retry_after = retry_after


_ADVICE = {
    "network": "check the network connection (or set {env} to a reachable mirror) and run again",
    "server": "data.gov.sg seems to be having trouble; wait a few minutes and run again",
    "rate-limit": "wait a minute and run again, or set {key_env} to an API key for a higher "
    "rate limit",
    "api": "wait a few minutes and run again; if it persists, check the dataset on data.gov.sg",
    "corrupted": "the file was corrupted/invalid every time; run again later, and check that "
    "{env} (if set) serves the official CSV",
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def download_dataset(
    key_or_id: str,
    cache_dir: Path,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    force: bool = False,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    poll_interval: float = 3.0,
    max_polls: int = 40,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadedFile:
    """Download one resale dataset into ``cache_dir`` (or return the verified cached copy).

    Args:
        key_or_id: a dataset key such as ``"2017-onwards"`` or its data.gov.sg id ``"d_..."``.
        cache_dir: folder for ``<file_stem>.csv`` (``.csv.gz`` for a gzip payload) and its
            ``<file_stem>.csv.json`` sidecar; created when missing.
        base_url: API base URL; default ``$HDB_MLOPS_DATAGOV_URL`` or ``DEFAULT_BASE_URL``.
        api_key: data.gov.sg API key sent as ``x-api-key``; default ``$DATA_GOV_SG_API_KEY``.
        force: download again even when a valid cached copy exists.
        retries: how many times to retry after the first attempt on connection errors,
            timeouts, HTTP 5xx/429 and corrupted payloads (``retries + 1`` attempts in all).
        backoff: base of the exponential backoff, ``backoff * 2**attempt`` seconds plus jitter
            (a 429's ``Retry-After`` takes precedence).
        timeout: seconds for connecting and for each read of every HTTP call.
        poll_interval: seconds between two polls while the export is being prepared.
        max_polls: polls per attempt before giving up on the export.
        progress: show a tqdm progress bar (only when stderr is a terminal).
        sleep: the function used to wait (tests inject a recorder).

    Returns:
        The file's dataset id, key, path, sha256, size in bytes and whether it came from the
        cache.

    Raises:
        DownloadError: unknown dataset, a non-retryable HTTP error (e.g. 404), an export that
            never became ready, or every attempt failed.
    """
    ds = _resolve(key_or_id)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sidecar = _sidecar_path(cache_dir, ds)

    if not force:
        cached = _from_cache(ds, cache_dir, sidecar)
        if cached is not None:
            return cached

    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    attempts = max(0, retries) + 1
    log.info("downloading %s (%s) from %s", ds.key, ds.dataset_id, base)

    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        last: _Retryable | None = None
        for attempt in range(attempts):
            try:
                return _attempt(
                    session, ds, base, key, cache_dir, sidecar,
                    timeout=timeout, poll_interval=poll_interval, max_polls=max_polls,
                    progress=progress, sleep=sleep,
                )  # fmt: skip
            except _Retryable as exc:
                last = exc
                if attempt + 1 >= attempts:
                    break
                delay = _delay(exc, attempt, backoff)
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                    ds.key, attempt + 1, attempts, exc.reason, delay,
                )  # fmt: skip
                sleep(delay)

    assert last is not None
    advice = _ADVICE[last.kind].format(env=BASE_URL_ENV, key_env=API_KEY_ENV)
    what = "corrupted/invalid payload" if last.kind == "corrupted" else "download failed"
    raise DownloadError(
        f"could not download dataset {ds.key} ({ds.dataset_id}) from {base}: {what} after "
        f"{attempts} attempt{'s' if attempts != 1 else ''}; last reason: {last.reason}. "
        f"What to do: {advice}."
    )


def download_all(
    cache_dir: Path, keys: Iterable[str] | None = None, **kwargs: Any
) -> list[DownloadedFile]:
    """Download several datasets (all five by default) into ``cache_dir``, one after the other.

    ``kwargs`` are passed to :func:`download_dataset`. Every key is checked before the first
    request; the first failure raises :class:`DownloadError` (files already downloaded stay in
    the cache, so running again resumes where it stopped).
    """
    datasets = [_resolve(k) for k in (keys if keys is not None else [d.key for d in DATASETS])]
    return [download_dataset(ds.key, cache_dir, **kwargs) for ds in datasets]


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _resolve(key_or_id: str) -> Dataset:
    try:
        return dataset(key_or_id)
    except KeyError as exc:
        raise DownloadError(str(exc.args[0])) from None


def _sidecar_path(cache_dir: Path, ds: Dataset) -> Path:
    return cache_dir / f"{ds.file_stem}.csv.json"


def _final_path(cache_dir: Path, ds: Dataset, gz: bool) -> Path:
    return cache_dir / f"{ds.file_stem}.csv{'.gz' if gz else ''}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_cache(ds: Dataset, cache_dir: Path, sidecar: Path) -> DownloadedFile | None:
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        path = cache_dir / Path(str(meta.get("file", f"{ds.file_stem}.csv"))).name
        expected = str(meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable cache sidecar %s (%s); downloading again", ds.key, sidecar, exc)
        return None
    if not path.is_file():
        return None
    actual = _sha256_file(path)
    if actual != expected:
        log.warning(
            "%s: cached file %s is corrupted (sha256 %s, sidecar says %s); downloading again",
            ds.key, path, actual[:12], expected[:12],
        )  # fmt: skip
        return None
    log.info("%s: using cached %s (sha256 verified)", ds.key, path)
    return DownloadedFile(ds.dataset_id, ds.key, path, actual, path.stat().st_size, True)


# --------------------------------------------------------------------------------------------
# One attempt: initiate -> poll -> get
# --------------------------------------------------------------------------------------------


def _delay(exc: _Retryable, attempt: int, backoff: float) -> float:
    if exc.retry_after is not None:
        return exc.retry_after
    base = backoff * 2**attempt
    return base + _jitter.uniform(0, 0.1 * base)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:  # an HTTP date: fall back to the exponential backoff
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _check_status(resp: requests.Response, ds: Dataset, step: str, url: str) -> None:
    """Raise _Retryable (429, 5xx) or DownloadError (other 4xx) for a non-2xx response."""
    status = resp.status_code
    if 200 <= status < 300:
        return
    where = f"{step} of {ds.key} ({ds.dataset_id})"
    if status == 429:
        raise _Retryable(f"HTTP 429 Too Many Requests on {step}", "rate-limit", _retry_after(resp))
    if status >= 500:
        raise _Retryable(f"HTTP {status} on {step}", "server")
    if status == 404 and step != "file download":
        msg = (
            f"dataset id {ds.dataset_id} ({ds.key}) not found on data.gov.sg (HTTP 404 from "
            f"{_strip_query(url)}); check the id in hdb_mlops.data.schema.DATASETS against "
            f"collection 189 on data.gov.sg, and {BASE_URL_ENV} if you set it"
        )
    elif status in (401, 403):
        msg = (
            f"{where} was refused with HTTP {status}; check {API_KEY_ENV} (unset it to use the "
            "public, key-less API) and run again"
        )
    else:
        msg = (
            f"{where} failed with HTTP {status} from {_strip_query(url)}; this is not "
            "retryable, check the URL and run again"
        )
    raise DownloadError(msg)


def _get(session: requests.Session, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return session.get(url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise _Retryable(f"timeout after {timeout:g} s on {_strip_query(url)}", "network") from exc
    except requests.ConnectionError as exc:
        raise _Retryable(f"connection error on {_strip_query(url)}: {exc}", "network") from exc
    except requests.RequestException as exc:
        raise _Retryable(f"request to {_strip_query(url)} failed: {exc}", "network") from exc


def _api_json(
    session: requests.Session, ds: Dataset, url: str, step: str, headers: dict[str, str],
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    resp = _get(session, url, timeout, headers=headers)
    with resp:
        _check_status(resp, ds, step, url)
        try:
            body = resp.json()
        except ValueError as exc:
            raise _Retryable(f"{step} answered with invalid JSON", "api") from exc
    if not isinstance(body, dict):
        raise _Retryable(f"{step} answered with unexpected JSON {body!r:.200}", "api")
    code, error = body.get("code", 0), body.get("errorMsg")
    if code not in (0, None) or error:
        raise _Retryable(f"{step} returned API error code={code!r} errorMsg={error!r}", "api")
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def _attempt(
    session: requests.Session,
    ds: Dataset,
    base: str,
    api_key: str | None,
    cache_dir: Path,
    sidecar: Path,
    *,
    timeout: float,
    poll_interval: float,
    max_polls: int,
    progress: bool,
    sleep: Callable[[float], None],
) -> DownloadedFile:
    api = f"{base}/v1/public/api/datasets/{ds.dataset_id}"
    headers = {"Accept": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key

    _api_json(session, ds, f"{api}/initiate-download", "initiate-download", headers, timeout)
    file_url = None
    polls = max(1, max_polls)
    for poll in range(polls):
        data = _api_json(session, ds, f"{api}/poll-download", "poll-download", headers, timeout)
        status = str(data.get("status") or "")
        if data.get("url"):
            file_url = urljoin(f"{base}/", str(data["url"]))
            break
        if "FAIL" in status.upper():
            raise _Retryable(f"data.gov.sg reported export status {status!r}", "api")
        log.debug(
            "%s: export not ready yet (status %r, poll %d/%d)", ds.key, status, poll + 1, polls
        )
        if poll + 1 < polls:
            sleep(poll_interval)
    if file_url is None:
        raise DownloadError(
            f"data.gov.sg did not finish preparing dataset {ds.key} ({ds.dataset_id}) after "
            f"{polls} polls {poll_interval:g} s apart; run again later or raise max_polls"
        )
    return _fetch_file(
        session, ds, file_url, cache_dir, sidecar, timeout=timeout, progress=progress
    )


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _show_progress(progress: bool) -> bool:
    stream = sys.stderr
    return bool(progress and stream is not None and hasattr(stream, "isatty") and stream.isatty())


def _fetch_file(
    session: requests.Session,
    ds: Dataset,
    url: str,
    cache_dir: Path,
    sidecar: Path,
    *,
    timeout: float,
    progress: bool,
) -> DownloadedFile:
    part = cache_dir / f"{ds.file_stem}.csv.part"
    # The signed URL gets no API key. "identity" asks for the plain CSV; the raw bytes are kept
    # as sent (a gzip body, from the file itself or a Content-Encoding, is stored as .csv.gz).
    resp = _get(session, url, timeout, stream=True, headers={"Accept-Encoding": "identity"})
    try:
        with resp:
            _check_status(resp, ds, "file download", url)
            expected = _content_length(resp)
            digest, size = hashlib.sha256(), 0
            with (
                part.open("wb") as out,
                tqdm(
                    total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=ds.key, leave=False, disable=not _show_progress(progress),
                ) as bar,
            ):  # fmt: skip
                try:
                    for chunk in resp.raw.stream(_CHUNK, decode_content=False):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    if expected is not None and size < expected:
                        raise _Retryable(
                            f"corrupted payload: truncated at {size} of {expected} bytes ({exc})",
                            "corrupted",
                        ) from exc
                    raise _Retryable(
                        f"connection lost during the file download: {exc}", "network"
                    ) from exc
        if expected is not None and size != expected:
            raise _Retryable(
                f"corrupted payload: got {size} bytes, Content-Length said {expected}", "corrupted"
            )
        gz, rows = _validate(part)
        sha = digest.hexdigest()
        final = _final_path(cache_dir, ds, gz)
        sidecar.unlink(missing_ok=True)
        os.replace(part, final)
        # a previous download in the other format must not linger beside the new file
        _final_path(cache_dir, ds, not gz).unlink(missing_ok=True)
    finally:
        part.unlink(missing_ok=True)

    meta = {
        "dataset_id": ds.dataset_id,
        "key": ds.key,
        "file": final.name,
        "sha256": sha,
        "bytes": size,
        "rows": rows,
        "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": _strip_query(url),
    }
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    log.info("%s: saved %s (%d bytes, %d rows, sha256 %s)", ds.key, final, size, rows, sha[:12])
    return DownloadedFile(ds.dataset_id, ds.key, final, sha, size, False)


def _content_length(resp: requests.Response) -> int | None:
    try:
        value = int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


# --------------------------------------------------------------------------------------------
# Payload validation
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _open_text(path: Path, gz: bool) -> Iterator[IO[str]]:
    raw: IO[bytes] = gzip.open(path, "rb") if gz else path.open("rb")  # noqa: SIM115
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        yield text


def _validate(path: Path) -> tuple[bool, int]:
    """Check a downloaded payload; return (is_gzip, data_rows) or raise _Retryable."""
    with path.open("rb") as fh:
        gz = fh.read(2) == _GZIP_MAGIC
    try:
        with _open_text(path, gz) as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if not header:
                raise _Retryable("corrupted payload: empty file, no CSV header", "corrupted")
            columns = {c.strip().lower() for c in header}
            missing = [c for c in BASE_COLUMNS if c not in columns]
            if missing:
                raise _Retryable(
                    f"corrupted payload: first line is not the resale CSV header (missing "
                    f"{', '.join(missing)}; got {','.join(header)[:120]!r})",
                    "corrupted",
                )
            rows = sum(1 for row in reader if row)
    except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error) as exc:
        kind = "gzip " if gz else ""
        raise _Retryable(f"corrupted payload: invalid {kind}CSV ({exc})", "corrupted") from exc
    if rows == 0:
        raise _Retryable("corrupted payload: header only, no data rows", "corrupted")
    return gz, rows
