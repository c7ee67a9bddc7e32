"""Geocode HDB blocks with OneMap, through an on-disk cache; fetch the MRT/LRT stations.

:func:`geocode_addresses` (and :func:`geocode_frame` for a transactions frame) asks OneMap's
search API, through the paced, retrying client of :mod:`hdb_mlops.data.onemap`, only for the
addresses its cache does not hold yet; :func:`fetch_stations` pages through OneMap's station
results once and saves them as a CSV.

The cache is one JSON file, ``<cache_dir>/onemap-addresses.json`` (format described in
:mod:`hdb_mlops.data.location_files`, which reads it): entries keyed ``"BLOCK|STREET_NAME"``,
``null`` for an address OneMap did not find, so misses are not asked again
(``refresh_misses=True`` asks again). It is written atomically (temporary file + rename) every
``save_every`` new answers and when the run ends, also on an error or Ctrl-C, so an interrupted
run resumes where it stopped. A cache file that cannot be read is **not** rebuilt silently:
:class:`~hdb_mlops.data.onemap.GeocodeError` names the file and says to delete it (it only
saves requests). One process at a time per cache folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import requests
from tqdm import tqdm

from hdb_mlops.data.location import (
    ADDRESS_CACHE_FILE,
    CACHE_FORMAT,
    GEOCODE_COLUMNS,
    STATION_COLUMNS,
    address_key,
    make_geocode_table,
)
from hdb_mlops.data.onemap import (
    BASE_URL_ENV,
    SEARCH_PATH,
    GeocodeError,
    OneMapClient,
    _base_url,
    _float,
    _in_singapore,
    pick_result,
)

__all__ = [
    "AddressCache",
    "fetch_stations",
    "geocode_addresses",
    "geocode_frame",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Stations file written by :func:`fetch_stations` in the cache folder.
STATIONS_CSV = "stations.csv"


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def _entry(block: str, street: str, result: dict[str, Any], match: str) -> dict[str, Any]:
    postal = str(result.get("POSTAL") or "").strip()
    return {
        "block": block,
        "street_name": street,
        "latitude": _float(result.get("LATITUDE")),
        "longitude": _float(result.get("LONGITUDE")),
        "postal": None if postal.upper() in ("", "NIL") else postal,
        "address": result.get("ADDRESS"),
        "match": match,
        "searched_at": _now(),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, ensure_ascii=False, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class AddressCache:
    """The geocoder's JSON cache: ``{"BLOCK|STREET": entry or None}`` in one file."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any] | None], source: str):
        self.path = path
        self.entries = entries
        self.source = source
        self.unsaved = 0

    @classmethod
    def open(cls, cache_dir: Path | str, source: str = "") -> AddressCache:
        """Load ``cache_dir/onemap-addresses.json`` (an empty cache when it does not exist).

        Raises :class:`GeocodeError` when the file exists but is not a valid cache.
        """
        path = Path(cache_dir) / ADDRESS_CACHE_FILE
        if not path.exists():
            return cls(path, {}, source)
        advice = (
            f"delete it (or move it aside) and run again to rebuild it: the cache only saves "
            f"OneMap requests ({path})"
        )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeocodeError(f"the geocode cache {path} is corrupt ({exc}); {advice}") from None
        entries = data.get("entries") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(entries, dict)
            or not all(isinstance(v, dict | None) for v in entries.values())
        ):
            raise GeocodeError(f"{path} is not a geocode cache of this project; {advice}")
        version = data.get("version", CACHE_VERSION)
        if not isinstance(version, int) or version > CACHE_VERSION:
            raise GeocodeError(
                f"{path} has cache version {version!r}, not one this hdb-mlops reads; "
                "upgrade the package or use another cache folder"
            )
        return cls(path, entries, source or str(data.get("source", "")))

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached entry (None for a miss or an unknown key)."""
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any] | None) -> None:
        """Record an answer (None: OneMap found nothing)."""
        self.entries[key] = entry
        self.unsaved += 1

    def save(self) -> None:
        """Write the cache atomically, if anything changed since the last save."""
        if not self.unsaved and self.path.exists():
            return
        payload = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "source": self.source,
            "updated_at": _now(),
            "entries": self.entries,
        }
        _write_json_atomic(self.path, payload)
        self.unsaved = 0


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _show_progress(progress: bool) -> bool:
    stream = sys.stderr
    return bool(progress and stream is not None and hasattr(stream, "isatty") and stream.isatty())


def geocode_addresses(
    addresses: Iterable[tuple[str, str]],
    cache_dir: Path,
    *,
    base_url: str | None = None,
    rate: float = 4.0,
    retries: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
    refresh_misses: bool = False,
    timeout: float = 15.0,
    backoff: float = 1.0,
    save_every: int = 100,
    token: str | None = None,
    session: requests.Session | None = None,
) -> pd.DataFrame:
    """Geocode (block, street_name) pairs with OneMap; cached answers make no request.

    Returns the geocode table (:data:`hdb_mlops.data.location.GEOCODE_COLUMNS`) with one row per
    distinct normalised address, in first-seen order, and NaN coordinates for misses. Raises
    :class:`GeocodeError` when OneMap keeps failing (after ``retries`` retries), refuses the
    request, or the cache file is corrupt; answers received before the error stay cached.
    """
    wanted: dict[str, tuple[str, str]] = {}
    for block, street in addresses:
        key = address_key(block, street)
        if key not in wanted:
            norm_block, _, norm_street = key.partition("|")
            wanted[key] = (norm_block, norm_street)
    base = _base_url(base_url)
    cache = AddressCache.open(cache_dir, source=f"{base}{SEARCH_PATH}")
    todo = [
        k
        for k in wanted
        if k not in cache or (refresh_misses and cache.get(k) is None)
    ]  # fmt: skip
    log.info(
        "geocode: %d addresses, %d cached, %d to ask OneMap (%s)",
        len(wanted), len(wanted) - len(todo), len(todo), base,
    )  # fmt: skip

    if todo:
        client = OneMapClient(
            base, rate=rate, retries=retries, backoff=backoff, timeout=timeout, token=token,
            sleep=sleep, session=session,
        )  # fmt: skip
        found = 0
        try:
            with tqdm(
                total=len(todo), unit="addr", desc="OneMap geocode", leave=False,
                disable=not _show_progress(progress),
            ) as bar:  # fmt: skip
                for key in todo:
                    block, street = wanted[key]
                    body = client.search(f"{block} {street}")
                    results = body.get("results")
                    if not isinstance(results, list) or _float(body.get("found")) == 0:
                        results = []
                    picked = pick_result(results, block, street)
                    entry = _entry(block, street, *picked) if picked else None
                    found += entry is not None
                    cache.put(key, entry)
                    if save_every > 0 and cache.unsaved >= save_every:
                        cache.save()
                    bar.update(1)
        finally:
            cache.save()
            if session is None:
                client.close()
        log.info("geocode: OneMap found %d of %d new addresses", found, len(todo))

    rows = []
    for key, (block, street) in wanted.items():
        entry = cache.get(key) or {}
        rows.append(
            {
                "block": block,
                "street_name": street,
                "latitude": entry.get("latitude"),
                "longitude": entry.get("longitude"),
                "postal": entry.get("postal"),
            }
        )
    return make_geocode_table(pd.DataFrame(rows, columns=list(GEOCODE_COLUMNS)))


def geocode_frame(frame: pd.DataFrame, cache_dir: Path, **kw: Any) -> pd.DataFrame:
    """Geocode the distinct (block, street_name) of a transactions frame.

    Keyword arguments go to :func:`geocode_addresses`; rows with a missing block or street
    are ignored.
    """
    pairs = frame[["block", "street_name"]].dropna().drop_duplicates()
    return geocode_addresses(
        zip(pairs["block"].astype(str), pairs["street_name"].astype(str), strict=True),
        cache_dir,
        **kw,
    )


_STATION = re.compile(r"^(?P<name>.+?) (?P<kind>MRT|LRT) STATION(?: \((?P<codes>[^)]*)\))?$")


def fetch_stations(
    cache_dir: Path,
    *,
    base_url: str | None = None,
    rate: float = 4.0,
    retries: int = 4,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = True,
    refresh: bool = False,
    queries: tuple[str, ...] = ("MRT STATION", "LRT STATION"),
    max_pages: int = 300,
    timeout: float = 15.0,
    session: requests.Session | None = None,
) -> pd.DataFrame:
    """MRT/LRT station coordinates from OneMap, saved as ``cache_dir/stations.csv``.

    Pages through the search results for each of ``queries`` and keeps results whose
    ``SEARCHVAL`` is a station ("ANG MO KIO MRT STATION", optionally with codes in
    brackets; exits are skipped), averaging the coordinates of repeated stations. With the
    file already present and ``refresh=False``, it is read instead (no request). Returns the
    station table (:data:`hdb_mlops.data.location.STATION_COLUMNS`); the CSV is what
    :func:`hdb_mlops.data.location_files.default_location_tables` picks up. Best effort: OneMap's
    search ranking decides what is found, so the count is logged and a short list is warned
    about.
    """
    from hdb_mlops.data.location_files import load_stations

    path = Path(cache_dir) / STATIONS_CSV
    if path.exists() and not refresh:
        return load_stations(path)
    client = OneMapClient(
        base_url, rate=rate, retries=retries, timeout=timeout, sleep=sleep, session=session
    )
    found: dict[str, list[tuple[float, float]]] = {}
    try:
        with tqdm(
            unit="page", desc="OneMap stations", leave=False, disable=not _show_progress(progress)
        ) as bar:
            for query in queries:
                page, pages = 1, 1
                while page <= min(pages, max_pages):
                    body = client.search(query, page=page)
                    pages = int(body.get("totalNumPages") or 1)
                    for r in body.get("results") or []:
                        m = _STATION.match(str(r.get("SEARCHVAL") or "").strip().upper())
                        lat, lon = _float(r.get("LATITUDE")), _float(r.get("LONGITUDE"))
                        if m and lat is not None and lon is not None and _in_singapore(r):
                            name = f"{m['name']} {m['kind']} STATION"
                            found.setdefault(name, []).append((lat, lon))
                    bar.update(1)
                    page += 1
    finally:
        if session is None:
            client.close()
    rows = [
        {
            "name": name,
            "latitude": sum(p[0] for p in points) / len(points),
            "longitude": sum(p[1] for p in points) / len(points),
        }
        for name, points in sorted(found.items())
    ]
    if not rows:
        raise GeocodeError(
            f"OneMap returned no station for {', '.join(queries)}; check the network (or "
            f"{BASE_URL_ENV}) and run again, or put a stations.csv (name, latitude, longitude) "
            f"in {cache_dir}"
        )
    if len(rows) < 100:
        log.warning("only %d stations found on OneMap; distances may be too large", len(rows))
    table = pd.DataFrame(rows, columns=list(STATION_COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    log.info("saved %d stations to %s", len(table), path)
    return table
