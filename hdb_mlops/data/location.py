"""Location features: block coordinates, distance to the nearest MRT station and to the CBD.

Two reference tables feed the features, both plain DataFrames:

* the **geocode table** (:data:`GEOCODE_COLUMNS`): one row per address, ``block`` and
  ``street_name`` as in the resale files (upper-case strings, e.g. ``"228A"`` and
  ``"ANG MO KIO AVE 10"``), WGS84 ``latitude``/``longitude`` (float, NaN when unknown) and
  ``postal`` (6-digit string, NaN when unknown); text columns have pandas' ``str`` dtype.
  :func:`make_geocode_table` coerces records to it;
* the **station table** (:data:`STATION_COLUMNS`): ``name, latitude, longitude``.

The files they are read from, and the tables to use on this machine, are in
:mod:`hdb_mlops.data.location_files`.

:func:`add_location_features` joins the transactions to the geocode table on the normalised
(upper-case, stripped, single-spaced) block and street name and adds ``latitude``,
``longitude``, ``dist_mrt_km`` and ``dist_cbd_km``. Addresses without a geocode get NaN in all
four columns, never an error: serving relies on that for blocks newer than the table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ADDRESS_CACHE_FILE",
    "CACHE_FORMAT",
    "CBD",
    "EARTH_RADIUS_KM",
    "FEATURE_COLUMNS",
    "GEOCODE_COLUMNS",
    "STATION_COLUMNS",
    "add_location_features",
    "address_key",
    "haversine_km",
    "location_coverage",
    "make_geocode_table",
    "nearest_station_km",
    "normalise_address_part",
]

log = logging.getLogger(__name__)

#: Raffles Place MRT station (lat, lng): the conventional centre of Singapore's CBD.
CBD: tuple[float, float] = (1.2839, 103.8515)
#: Mean Earth radius (IUGG), in km.
EARTH_RADIUS_KM = 6371.0088

#: Columns of a geocode table, in order.
GEOCODE_COLUMNS: tuple[str, ...] = ("block", "street_name", "latitude", "longitude", "postal")
#: Columns of a station table, in order.
STATION_COLUMNS: tuple[str, ...] = ("name", "latitude", "longitude")
#: Columns added by :func:`add_location_features`.
FEATURE_COLUMNS: tuple[str, ...] = ("latitude", "longitude", "dist_mrt_km", "dist_cbd_km")

#: The ``format`` marker of the geocoder's cache file.
CACHE_FORMAT = "hdb-mlops/onemap-geocode-cache"
#: Name of the geocoder's cache file inside the cache folder.
ADDRESS_CACHE_FILE = "onemap-addresses.json"

_ALIASES = {
    "block": ("block", "blk_no", "blk", "block_no"),
    "street_name": ("street_name", "street", "road_name"),
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lng", "lon", "long"),
    "postal": ("postal", "postal_code", "postalcode"),
    "name": ("name", "stationname", "station_name", "station_na", "station", "mrt"),
}
_SPACES = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------
# Normalisation and distances
# --------------------------------------------------------------------------------------------


def _norm(value: Any) -> str:
    return _SPACES.sub(" ", str(value).strip().upper())


def address_key(block: Any, street_name: Any) -> str:
    """The join key of one address: ``"BLOCK|STREET_NAME"``, upper-case and single-spaced."""
    return f"{_norm(block)}|{_norm(street_name)}"


def normalise_address_part(values: pd.Series) -> pd.Series:
    """Upper-case, strip and collapse inner whitespace; missing values stay missing.

    Works on the distinct values only, so a million-row column takes milliseconds.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    cleaned = np.array([_norm(u) for u in uniques], dtype=object)
    out = np.where(codes >= 0, cleaned[np.maximum(codes, 0)] if len(cleaned) else None, None)
    return pd.Series(out, index=values.index, dtype=object)


def haversine_km(
    lat1: np.ndarray | float, lon1: np.ndarray | float, lat2: np.ndarray | float,
    lon2: np.ndarray | float,
) -> np.ndarray:  # fmt: skip
    """Great-circle distance in km between points given in degrees (vectorised, NaN-safe)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, dtype=float) - np.asarray(lon1, dtype=float))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lmb = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.column_stack([cos_phi * np.cos(lmb), cos_phi * np.sin(lmb), np.sin(phi)])


def nearest_station_km(
    lat: np.ndarray, lon: np.ndarray, stations: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (km) to, and row position of, the nearest station for each point.

    A k-d tree on 3-D unit vectors finds the nearest station by chord length, which orders
    points exactly like the great-circle distance; the chord is then converted to the
    haversine distance. Points with NaN coordinates (or no stations) get NaN and position -1.
    """
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    dist = np.full(lat.shape, np.nan)
    where = np.full(lat.shape, -1, dtype=np.int64)
    s_lat = pd.to_numeric(stations["latitude"], errors="coerce").to_numpy(float)
    s_lon = pd.to_numeric(stations["longitude"], errors="coerce").to_numpy(float)
    s_ok = np.isfinite(s_lat) & np.isfinite(s_lon)
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not s_ok.any() or not ok.any():
        return dist, where
    from scipy.spatial import cKDTree  # imported here: scipy.spatial is slow to import

    tree = cKDTree(_unit_vectors(s_lat[s_ok], s_lon[s_ok]))
    chord, idx = tree.query(_unit_vectors(lat[ok], lon[ok]), k=1)
    dist[ok] = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0.0, 1.0))
    where[ok] = np.flatnonzero(s_ok)[idx]
    return dist, where


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _pick(columns: Iterable[str], field: str) -> str | None:
    lowered = {str(c).strip().lower(): c for c in columns}
    for alias in _ALIASES[field]:
        if alias in lowered:
            return lowered[alias]
    return None


def _postal(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # a postal code read as a float
        text = text[:-2]
    if text.isdigit() and len(text) < 6:
        text = text.zfill(6)
    return None if text.upper() in ("", "NIL", "NAN", "NONE") else text


def make_geocode_table(records: pd.DataFrame | Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Coerce records or a frame to the geocode-table contract (:data:`GEOCODE_COLUMNS`).

    Block and street are normalised; coordinates become float64 (NaN when missing or not
    numeric); postal codes become 6-digit strings (NaN when unknown). Duplicate addresses keep
    the first row that has coordinates. Rows without block or street are dropped.
    """
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    cols = {f: _pick(frame.columns, f) for f in GEOCODE_COLUMNS}
    missing = [f for f in ("block", "street_name", "latitude", "longitude") if cols[f] is None]
    if missing and len(frame):
        raise ValueError(
            f"geocode table needs columns block, street_name, latitude, longitude; missing "
            f"{', '.join(missing)} (found {', '.join(map(str, frame.columns))})"
        )
    if not len(frame):
        return _empty_geocodes()
    out = pd.DataFrame(
        {
            "block": normalise_address_part(frame[cols["block"]]).to_numpy(),
            "street_name": normalise_address_part(frame[cols["street_name"]]).to_numpy(),
            "latitude": pd.to_numeric(frame[cols["latitude"]], errors="coerce").to_numpy(float),
            "longitude": pd.to_numeric(frame[cols["longitude"]], errors="coerce").to_numpy(float),
            "postal": (
                [_postal(v) for v in frame[cols["postal"]]]
                if cols["postal"] is not None
                else [None] * len(frame)
            ),
        }
    )
    out = out[out["block"].notna() & out["street_name"].notna()]
    out = out[(out["block"] != "") & (out["street_name"] != "")]
    has = out["latitude"].notna() & out["longitude"].notna()
    # rows with coordinates first, so that drop_duplicates keeps them
    out = out.iloc[np.argsort(~has.to_numpy(), kind="stable")]
    out = out.drop_duplicates(["block", "street_name"], keep="first")
    out = out.sort_index(kind="stable").reset_index(drop=True)
    for col in ("block", "street_name", "postal"):
        out[col] = out[col].astype("str")
    return out[list(GEOCODE_COLUMNS)]


def _empty_geocodes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "block": pd.Series(dtype="str"),
            "street_name": pd.Series(dtype="str"),
            "latitude": pd.Series(dtype=float),
            "longitude": pd.Series(dtype=float),
            "postal": pd.Series(dtype="str"),
        }
    )


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _match(frame: pd.DataFrame, table: pd.DataFrame) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per-row address codes, the distinct address keys, and each key's row in ``table``.

    Returns ``(codes, keys, positions)``: ``codes[i]`` indexes ``keys`` (-1 when block or street
    is missing), ``positions[j]`` is the row of ``keys[j]`` in ``table`` or -1.
    """
    missing = [c for c in ("block", "street_name") if c not in frame.columns]
    if missing and len(frame):
        log.warning(
            "location features: no %s column, so no row can be geocoded (NaN features)",
            " or ".join(missing),
        )
    blank = pd.Series(np.nan, index=frame.index, dtype=object)
    block = frame["block"] if "block" in frame.columns else blank
    street = frame["street_name"] if "street_name" in frame.columns else blank
    b_codes, b_uniques = pd.factorize(block, use_na_sentinel=True)
    s_codes, s_uniques = pd.factorize(street, use_na_sentinel=True)
    b_norm = [_norm(v) for v in b_uniques]
    s_norm = [_norm(v) for v in s_uniques]
    valid = (b_codes >= 0) & (s_codes >= 0)
    pair = np.where(valid, b_codes.astype(np.int64) * max(len(s_uniques), 1) + s_codes, -1)
    pair_codes, pairs = pd.factorize(pair, use_na_sentinel=False)
    width = max(len(s_uniques), 1)
    pair_keys = [("" if p < 0 else f"{b_norm[p // width]}|{s_norm[p % width]}") for p in pairs]
    # raw spellings that normalise to the same address share one key
    key_codes, key_index = pd.factorize(np.array(pair_keys, dtype=object))
    keys = [str(k) for k in key_index]
    codes = np.where(valid, key_codes[pair_codes] if len(key_codes) else -1, -1)
    table_keys = pd.Index(table["block"].astype(str) + "|" + table["street_name"].astype(str))
    positions = (
        table_keys.get_indexer(pd.Index(keys)) if len(table_keys) else np.full(len(keys), -1)
    )
    positions = np.where(np.array([k == "" for k in keys], dtype=bool), -1, positions)
    return codes, keys, positions


def add_location_features(
    frame: pd.DataFrame, geocodes: pd.DataFrame, stations: pd.DataFrame
) -> pd.DataFrame:
    """A copy of ``frame`` with float columns latitude, longitude, dist_mrt_km, dist_cbd_km.

    ``geocodes`` is a geocode table (:data:`GEOCODE_COLUMNS`, e.g. from
    :func:`hdb_mlops.data.location_files.load_geocodes` or
    :func:`hdb_mlops.data.geocode.geocode_addresses`), ``stations`` a station table. The join is
    on the normalised block and street_name; addresses without coordinates get NaN in all four
    columns, and so do all rows when ``frame`` has no block or street_name column (a warning is
    logged). Distances are great-circle (haversine) km: to the nearest station, and to
    :data:`CBD`. Existing columns of the same names are replaced.
    """
    table = make_geocode_table(geocodes)
    codes, _, positions = _match(frame, table)
    g_lat = table["latitude"].to_numpy(float)
    g_lon = table["longitude"].to_numpy(float)
    g_mrt, _ = nearest_station_km(g_lat, g_lon, stations)
    g_cbd = haversine_km(g_lat, g_lon, CBD[0], CBD[1])

    row_pos = np.where(codes >= 0, positions[np.maximum(codes, 0)] if len(positions) else -1, -1)
    hit = row_pos >= 0
    take = np.maximum(row_pos, 0)

    def spread(values: np.ndarray) -> np.ndarray:
        if not len(values):
            return np.full(len(frame), np.nan)
        return np.where(hit, values[take], np.nan).astype(float)

    out = frame.copy()
    out["latitude"] = spread(g_lat)
    out["longitude"] = spread(g_lon)
    out["dist_mrt_km"] = spread(g_mrt)
    out["dist_cbd_km"] = spread(g_cbd)
    misses = int((~hit).sum())
    if misses:
        log.debug("location features: %d of %d rows have no geocode", misses, len(frame))
    return out


def location_coverage(frame: pd.DataFrame, geocodes: pd.DataFrame) -> dict[str, Any]:
    """How much of ``frame`` the geocode table covers.

    Returns ``rows``, ``rows_with_coords``, ``row_share``, ``addresses`` (distinct block +
    street), ``addresses_with_coords``, ``address_share`` and ``missing_examples`` (up to ten
    uncovered "BLOCK|STREET" keys, most frequent first). Shares are 1.0 for an empty frame.
    """
    table = make_geocode_table(geocodes)
    table = table[table["latitude"].notna() & table["longitude"].notna()]
    codes, keys, positions = _match(frame, table.reset_index(drop=True))
    rows = len(frame)
    row_hit = np.where(codes >= 0, positions[np.maximum(codes, 0)] >= 0, False) if rows else []
    rows_with = int(np.sum(row_hit))
    real = np.array([k != "" for k in keys], dtype=bool)
    addresses = int(real.sum())
    addr_with = int(((positions >= 0) & real).sum())
    counts = np.bincount(codes[codes >= 0], minlength=len(keys)) if rows else np.zeros(0, int)
    missing_idx = [i for i in np.argsort(-counts, kind="stable") if real[i] and positions[i] < 0]
    return {
        "rows": rows,
        "rows_with_coords": rows_with,
        "row_share": rows_with / rows if rows else 1.0,
        "addresses": addresses,
        "addresses_with_coords": addr_with,
        "address_share": addr_with / addresses if addresses else 1.0,
        "missing_examples": [keys[i] for i in missing_idx[:10]],
    }
