"""Geocode HDB blocks with Singapore's OneMap search API, with retries and an on-disk cache.

One request per address::

    GET {base}/api/common/elastic/search?searchVal=<BLOCK STREET_NAME>&returnGeom=Y
        &getAddrDetails=Y&pageNum=1
    -> {"found": n, "totalNumPages": m, "pageNum": 1,
        "results": [{"SEARCHVAL", "BLK_NO", "ROAD_NAME", "BUILDING", "ADDRESS", "POSTAL",
                     "X", "Y", "LATITUDE", "LONGITUDE"}, ...]}

The base URL defaults to ``https://www.onemap.gov.sg``; pass ``base_url`` or set
``HDB_MLOPS_ONEMAP_URL`` to use another server (the tests use a local stub). The search API
needs no key today; if OneMap asks for one, put an access token in ``HDB_MLOPS_ONEMAP_TOKEN``
(sent as the ``Authorization`` header).

Which result is kept: among results with coordinates inside Singapore, those whose ``BLK_NO``
equals the block, the one whose ``ROAD_NAME`` best matches the street (HDB abbreviations such
as AVE, ST, NTH, C'WEALTH are expanded first); with no such result, the first result on the
same road (``match: "road"``, a nearby block); otherwise the address counts as a miss.

Requests are paced (``rate`` per second) and retried with exponential backoff on HTTP 5xx,
429 (honouring ``Retry-After``), timeouts, connection errors and invalid JSON; other 4xx
answers raise :class:`GeocodeError` at once.

The cache is one JSON file, ``<cache_dir>/onemap-addresses.json`` (format described in
:mod:`hdb_mlops.data.location`, which reads it): entries keyed ``"BLOCK|STREET_NAME"``, ``null`` for
an address OneMap did not find, so misses are not asked again (``refresh_misses=True`` asks
again). It is written atomically (temporary file + rename) every ``save_every`` new answers and
when the run ends, also on an error or Ctrl-C, so an interrupted run resumes where it stopped.
A cache file that cannot be read is **not** rebuilt silently: :class:`GeocodeError` names the
file and says to delete it (it only saves requests). One process at a time per cache folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "SEARCH_PATH",
    "TOKEN_ENV",
    "AddressCache",
    "GeocodeError",
    "OneMapClient",
    "RateLimiter",
    "fetch_stations",
    "geocode_addresses",
    "geocode_frame",
    "pick_result",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.onemap.gov.sg"
#: Environment variable overriding the OneMap base URL (a mirror, or a local test server).
BASE_URL_ENV = "HDB_MLOPS_ONEMAP_URL"
#: Environment variable with an optional OneMap access token.
TOKEN_ENV = "HDB_MLOPS_ONEMAP_TOKEN"
SEARCH_PATH = "/api/common/elastic/search"
CACHE_VERSION = 1
#: Stations file written by :func:`fetch_stations` in the cache folder.
STATIONS_CSV = "stations.csv"

# Singapore's bounding box, with a margin: results outside are geocoder noise (e.g. 0, 0).
_SG_LAT = (1.15, 1.48)
_SG_LON = (103.59, 104.10)
_MAX_RETRY_AFTER = 60.0

# HDB street-name abbreviations -> OneMap's full road names, for comparing the two.
_ABBREVIATIONS = {
    "AVE": "AVENUE", "BT": "BUKIT", "C'WEALTH": "COMMONWEALTH", "CWEALTH": "COMMONWEALTH",
    "CL": "CLOSE", "CRES": "CRESCENT", "CT": "COURT", "CTR": "CENTRE", "CTRL": "CENTRAL",
    "DR": "DRIVE", "GDNS": "GARDENS", "HTS": "HEIGHTS", "JLN": "JALAN", "KG": "KAMPONG",
    "LOR": "LORONG", "MKT": "MARKET", "NTH": "NORTH", "PK": "PARK", "PL": "PLACE", "RD": "ROAD",
    "SQ": "SQUARE", "ST": "STREET", "STH": "SOUTH", "TER": "TERRACE", "TG": "TANJONG",
    "UPP": "UPPER", "VW": "VIEW",
}  # fmt: skip


class GeocodeError(RuntimeError):
    """Geocoding failed; the message says what failed and what to do."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hdb-mlops")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0+unknown"


USER_AGENT = f"hdb-mlops/{_version()} (+OneMap search; python-requests)"


# --------------------------------------------------------------------------------------------
# Pacing and the HTTP client
# --------------------------------------------------------------------------------------------


class RateLimiter:
    """Spaces calls at least ``1/rate`` seconds apart (``rate <= 0`` disables it)."""

    def __init__(
        self,
        rate: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._sleep = sleep
        self._clock = clock
        self._next: float | None = None

    def wait(self) -> None:
        """Block until the next call is allowed, then reserve the slot after it."""
        if self.interval <= 0:
            return
        now = self._clock()
        if self._next is not None and self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def _base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return min(max(float(str(value).strip()), 0.0), _MAX_RETRY_AFTER) if value else None
    except ValueError:  # an HTTP date: use the exponential backoff
        return None


class OneMapClient:
    """A paced, retrying client for OneMap's search endpoint.

    ``retries`` is the number of extra attempts after the first one; the n-th retry waits
    ``backoff * 2**(n-1)`` seconds (or the server's ``Retry-After``) through ``sleep``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        rate: float = 4.0,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 15.0,
        token: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = _base_url(base_url)
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.limiter = RateLimiter(rate, sleep)
        self.session = session or requests.Session()
        if session is None or "python-requests" in str(session.headers.get("User-Agent", "")):
            self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"
        token = token or os.environ.get(TOKEN_ENV)
        if token:
            self.session.headers["Authorization"] = token
        self.requests_made = 0

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def search(self, search_val: str, page: int = 1) -> dict[str, Any]:
        """One page of search results (the decoded JSON object), retrying transient failures."""
        url = f"{self.base_url}{SEARCH_PATH}"
        params = {
            "searchVal": search_val,
            "returnGeom": "Y",
            "getAddrDetails": "Y",
            "pageNum": str(page),
        }
        attempt = 0
        while True:
            self.limiter.wait()
            try:
                return self._once(url, params)
            except _Retryable as exc:
                last = exc
            if attempt >= self.retries:
                break
            attempt += 1
            delay = last.retry_after
            if delay is None:
                delay = self.backoff * 2 ** (attempt - 1)
            log.info(
                "OneMap search %r: %s; retry %d/%d in %.1f s",
                search_val, last.reason, attempt, self.retries, delay,
            )  # fmt: skip
            self.sleep(delay)
        raise GeocodeError(
            f"OneMap search for {search_val!r} failed {self.retries + 1} times (last: "
            f"{last.reason}) at {url}; check the network (or {BASE_URL_ENV}) and run again: "
            "answers received so far are cached"
        )

    def _once(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        self.requests_made += 1
        try:
            resp = self.session.get(url, params=params, timeout=self.timeout)
        except requests.Timeout as exc:
            raise _Retryable(f"timeout after {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise _Retryable(f"connection error: {exc}") from exc
        with resp:
            status = resp.status_code
            if status == 429:
                raise _Retryable("HTTP 429 Too Many Requests", _retry_after(resp))
            if status >= 500:
                raise _Retryable(f"HTTP {status}")
            if status in (401, 403):
                raise GeocodeError(
                    f"OneMap refused the search with HTTP {status} at {url}; if OneMap now "
                    f"requires a token, set {TOKEN_ENV} to a valid access token"
                )
            if not 200 <= status < 300:
                raise GeocodeError(
                    f"OneMap search answered HTTP {status} at {url}; not retryable: check "
                    f"{BASE_URL_ENV} (if set) and run again"
                )
            try:
                body = resp.json()
            except ValueError as exc:
                raise _Retryable("invalid JSON in the answer") from exc
        if not isinstance(body, dict):
            raise _Retryable(f"unexpected JSON {body!r:.120}")
        if "results" not in body and body.get("error"):
            raise GeocodeError(f"OneMap search error at {url}: {body['error']!r:.200}")
        return body


# --------------------------------------------------------------------------------------------
# Choosing a result
# --------------------------------------------------------------------------------------------


def _road_tokens(name: Any) -> frozenset[str]:
    text = re.sub(r"\bST\.\s*", "SAINT ", str(name or "").upper())
    tokens = []
    for raw in re.split(r"[\s/\-]+", text):
        token = raw.replace("'", "").replace(".", "").strip()
        token = _ABBREVIATIONS.get(raw, _ABBREVIATIONS.get(token, token))
        if token:
            tokens.append(token)
    return frozenset(tokens)


def _road_similarity(road: Any, street: str) -> float:
    a, b = _road_tokens(road), _road_tokens(street)
    return len(a & b) / len(a | b) if a | b else 0.0


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _in_singapore(result: dict[str, Any]) -> bool:
    lat, lon = _float(result.get("LATITUDE")), _float(result.get("LONGITUDE"))
    return (
        lat is not None
        and lon is not None
        and _SG_LAT[0] <= lat <= _SG_LAT[1]
        and _SG_LON[0] <= lon <= _SG_LON[1]
    )


def pick_result(
    results: Iterable[dict[str, Any]], block: str, street_name: str
) -> tuple[dict[str, Any], str] | None:
    """The OneMap result for a block and how it matched (``"block"`` or ``"road"``), or None.

    See the module docstring for the rule.
    """
    usable = [r for r in results if isinstance(r, dict) and _in_singapore(r)]
    want = str(block).strip().upper()
    same_block = [r for r in usable if str(r.get("BLK_NO") or "").strip().upper() == want]
    if same_block:
        best = max(same_block, key=lambda r: _road_similarity(r.get("ROAD_NAME"), street_name))
        return best, "block"
    street_tokens = _road_tokens(street_name)
    for r in usable:
        if street_tokens and _road_tokens(r.get("ROAD_NAME")) == street_tokens:
            return r, "road"
    return None


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


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


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
    :func:`hdb_mlops.data.location.default_location_tables` picks up. Best effort: OneMap's search
    ranking decides what is found, so the count is logged and a short list is warned about.
    """
    from hdb_mlops.data.location import load_stations

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
