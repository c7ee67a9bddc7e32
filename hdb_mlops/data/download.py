"""Download the HDB resale files from data.gov.sg, with retries, validation and a local cache.

:func:`download_dataset` runs data.gov.sg's initiate -> poll -> get sequence (one attempt is
:mod:`hdb_mlops.data.datagov`), retrying it with exponential backoff, streams the CSV into
``cache_dir`` (``.part`` file first, renamed only once the payload is valid), writes a JSON
sidecar with its sha256 and row count, and on the next call returns the cached file without
any HTTP request as long as the file still matches the sidecar's sha256.

The API needs no key; with one (``DATA_GOV_SG_API_KEY``) the rate limit is higher. Set
``HDB_MLOPS_DATAGOV_URL`` to point the client at another server (a mirror, or the local stub
the tests use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests

from hdb_mlops.data.datagov import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    USER_AGENT,
    DownloadedFile,
    DownloadError,
    _attempt,
    _Retryable,
)
from hdb_mlops.data.schema import DATASETS, Dataset, dataset

__all__ = [
    "download_all",
    "download_dataset",
]

log = logging.getLogger("hdb_mlops.data.download")

_jitter = random.Random()

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
# Retries
# --------------------------------------------------------------------------------------------


def _delay(exc: _Retryable, attempt: int, backoff: float) -> float:
    if exc.retry_after is not None:
        return exc.retry_after
    base = backoff * 2**attempt
    return base + _jitter.uniform(0, 0.1 * base)
