"""The data.gov.sg download API over HTTP: one initiate -> poll -> get attempt, and its checks.

The data.gov.sg download API works in three steps for each dataset::

    GET {base}/v1/public/api/datasets/{id}/initiate-download  -> starts preparing the export
    GET {base}/v1/public/api/datasets/{id}/poll-download      -> {"data": {"url": ...}} when ready
    GET <signed, short-lived url>                             -> the CSV itself

One attempt runs that sequence and streams the CSV to a ``.part`` file in the cache folder,
checks its size and that it is the resale CSV (plain or gzip, header and at least one row),
then renames it and writes its JSON sidecar (sha256, bytes, rows). A failure worth retrying
the whole sequence for (connection error, timeout, HTTP 5xx or 429, an API error, a corrupted
payload) raises ``_Retryable``; any other raises :class:`DownloadError` at once. The retries
and the cache lookup are in :mod:`hdb_mlops.data.download`.

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
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from tqdm import tqdm

from hdb_mlops.data.schema import BASE_COLUMNS, Dataset

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DownloadError",
    "DownloadedFile",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api-open.data.gov.sg"
#: Environment variable overriding the API base URL (a mirror, or a local test server).
BASE_URL_ENV = "HDB_MLOPS_DATAGOV_URL"
#: Environment variable holding an optional data.gov.sg API key (higher rate limits).
API_KEY_ENV = "DATA_GOV_SG_API_KEY"

_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_RETRY_AFTER = 600.0  # never wait longer than this on a server's Retry-After


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
    """A resale file in the cache, as returned by
    :func:`hdb_mlops.data.download.download_dataset`."""

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


# --------------------------------------------------------------------------------------------
# One attempt: initiate -> poll -> get
# --------------------------------------------------------------------------------------------


def _final_path(cache_dir: Path, ds: Dataset, gz: bool) -> Path:
    return cache_dir / f"{ds.file_stem}.csv{'.gz' if gz else ''}"


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
