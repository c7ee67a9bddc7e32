"""OneMap's search API: a paced, retrying HTTP client, and the rule that picks a block's result.

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

Which result is kept (:func:`pick_result`): among results with coordinates inside Singapore,
those whose ``BLK_NO`` equals the block, the one whose ``ROAD_NAME`` best matches the street
(HDB abbreviations such as AVE, ST, NTH, C'WEALTH are expanded first); with no such result, the
first result on the same road (``match: "road"``, a nearby block); otherwise the address counts
as a miss.

Requests are paced (``rate`` per second) and retried with exponential backoff on HTTP 5xx,
429 (honouring ``Retry-After``), timeouts, connection errors and invalid JSON; other 4xx
answers raise :class:`GeocodeError` at once. The cache of answers and the batch geocoder are in
:mod:`hdb_mlops.data.geocode`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "SEARCH_PATH",
    "TOKEN_ENV",
    "GeocodeError",
    "OneMapClient",
    "RateLimiter",
    "pick_result",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.onemap.gov.sg"
#: Environment variable overriding the OneMap base URL (a mirror, or a local test server).
BASE_URL_ENV = "HDB_MLOPS_ONEMAP_URL"
#: Environment variable with an optional OneMap access token.
TOKEN_ENV = "HDB_MLOPS_ONEMAP_TOKEN"
SEARCH_PATH = "/api/common/elastic/search"

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
