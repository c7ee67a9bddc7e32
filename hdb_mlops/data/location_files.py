"""Read the geocode and station tables from files, and find the ones to use on this machine.

The tables themselves (columns, normalisation) are defined in :mod:`hdb_mlops.data.location`.
:func:`load_geocodes` reads a geocode table (:data:`~hdb_mlops.data.location.GEOCODE_COLUMNS`)
from

- ``addresses_geocoded.json``: ``{"BLOCK|STREET_NAME": {"block", "street_name", "latitude",
  "longitude", "postal", ...}}``;
- ``geocodes.json`` (best effort): ``{"entries": {"town-block-street": {"lat", "lng",
  "postalCode", "searchValue": "BLOCK STREET_NAME SINGAPORE", ...}}}``; block and street are
  taken from ``searchValue`` because the slug cannot be split back reliably;
- the project's own OneMap cache (see :mod:`hdb_mlops.data.geocode`), a JSON object::

      {"format": "hdb-mlops/onemap-geocode-cache", "version": 1, "updated_at": "...",
       "source": "https://www.onemap.gov.sg/api/common/elastic/search",
       "entries": {"406|ANG MO KIO AVE 10": {"block": "406", "street_name": "ANG MO KIO AVE 10",
                                             "latitude": 1.362, "longitude": 103.853,
                                             "postal": "560406", "address": "...",
                                             "match": "block", "searched_at": "..."},
                   "999|NOWHERE RD": null}}

  where ``null`` records an address OneMap did not find (a cached miss);
- a CSV with columns ``block, street_name, latitude, longitude[, postal]`` (``lat``/``lng``
  accepted too).

:func:`load_stations` reads a station table (:data:`~hdb_mlops.data.location.STATION_COLUMNS`)
from a GeoJSON FeatureCollection of Points (``[lng, lat]``, name in ``stationName``/``name``/
``STATION_NA``) or from a CSV with name/lat/lng columns.

:func:`default_location_tables` picks the files present in the real-data folder and in the
geocoder's cache folder (:func:`geocode_dir`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.data.location import (
    ADDRESS_CACHE_FILE,
    CACHE_FORMAT,
    STATION_COLUMNS,
    _norm,
    _pick,
    make_geocode_table,
)

__all__ = [
    "STATIONS_FILES",
    "default_location_tables",
    "geocode_dir",
    "load_geocodes",
    "load_stations",
]

log = logging.getLogger(__name__)

#: Station files looked for in the cache folder, in order of preference.
STATIONS_FILES: tuple[str, ...] = ("stations.csv", "stations.geojson")

# Reference files in the real-data folder, in order of preference.
_REAL_GEOCODES = ("addresses_geocoded.json", "geocodes.json")
_REAL_STATIONS = ("mrt-stations.geojson", "MrtLrt.csv")


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); if it is the geocoder cache, delete it to rebuild "
            "it with `hdb-mlops data geocode`"
        ) from None


def _records_from_keyed(entries: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"BLOCK|STREET": {...} | null}`` -> records (nulls, the cached misses, are skipped)."""
    records = []
    for key, value in entries.items():
        if not isinstance(value, dict):
            continue
        block, _, street = str(key).partition("|")
        records.append(
            {
                "block": value.get("block", block),
                "street_name": value.get("street_name", street),
                "latitude": value.get("latitude", value.get("lat")),
                "longitude": value.get("longitude", value.get("lng")),
                "postal": value.get("postal", value.get("postalCode")),
            }
        )
    return records


def _records_from_slugs(entries: dict[str, Any]) -> list[dict[str, Any]]:
    """geocodes.json: block and street from ``searchValue`` ("BLOCK STREET SINGAPORE")."""
    records, skipped = [], 0
    for value in entries.values():
        search = _norm(value.get("searchValue", "")) if isinstance(value, dict) else ""
        search = re.sub(r"\s+SINGAPORE$", "", search)
        block, _, street = search.partition(" ")
        if not block or not street:
            skipped += 1
            continue
        records.append(
            {
                "block": block,
                "street_name": street,
                "latitude": value.get("lat", value.get("latitude")),
                "longitude": value.get("lng", value.get("longitude")),
                "postal": value.get("postalCode", value.get("postal")),
            }
        )
    if skipped:
        log.warning("%d slug-keyed geocodes without a usable searchValue were skipped", skipped)
    return records


def load_geocodes(path: Path | str) -> pd.DataFrame:
    """Read a geocode table from any of the supported formats (see the module docstring).

    Cached misses and entries without coordinates are dropped, so every returned row has
    coordinates. Raises ``ValueError`` for a file that is not valid JSON/CSV or has an unknown
    layout, ``FileNotFoundError`` when it does not exist.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise ValueError(f"{path}: cannot be read as CSV ({exc})") from None
        table = make_geocode_table(frame)
    else:
        data = _read_json(path)
        if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
            entries = data.get("entries")
            if not isinstance(entries, dict):
                raise ValueError(f"{path}: geocoder cache without an 'entries' object")
            records = _records_from_keyed(entries)
        elif isinstance(data, dict) and isinstance(data.get("entries"), dict):
            records = _records_from_slugs(data["entries"])
        elif isinstance(data, dict) and all(isinstance(v, dict | None) for v in data.values()):
            records = _records_from_keyed(data)
        elif isinstance(data, list) and all(isinstance(v, dict) for v in data):
            records = data
        else:
            raise ValueError(
                f"{path}: unknown geocode layout; expected a dict keyed 'BLOCK|STREET_NAME', "
                "a geocodes.json with 'entries', the geocoder cache, or a list of records"
            )
        table = make_geocode_table(records)
    table = table[table["latitude"].notna() & table["longitude"].notna()].reset_index(drop=True)
    log.debug("loaded %d geocoded addresses from %s", len(table), path)
    return table


def load_stations(path: Path | str, *, include_lrt: bool = True) -> pd.DataFrame:
    """Read a station table (name, latitude, longitude) from GeoJSON Points or a CSV.

    GeoJSON coordinates are ``[lng, lat]``; the name comes from ``stationName``, ``name`` or
    ``STATION_NA`` (so LTA's station-exit file works too: the distance is then to the nearest
    exit). CSV columns may be named name/station_name, lat/latitude and lng/lon/longitude. With
    ``include_lrt=False`` LRT stations (name containing "LRT", or a ``type`` column equal to
    "LRT") are left out. Raises ``ValueError`` when the file holds no usable station.
    """
    path = Path(path)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        try:
            raw = pd.read_csv(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise ValueError(f"{path}: cannot be read as CSV ({exc})") from None
        cols = {f: _pick(raw.columns, f) for f in STATION_COLUMNS}
        if any(c is None for c in cols.values()):
            raise ValueError(
                f"{path}: a station CSV needs name, lat/latitude and lng/longitude columns "
                f"(found {', '.join(map(str, raw.columns))})"
            )
        frame = pd.DataFrame({f: raw[c] for f, c in cols.items()})
        if not include_lrt and "type" in raw.columns:
            frame = frame[raw["type"].astype(str).str.strip().str.upper() != "LRT"]
    else:
        data = _read_json(path)
        features = data.get("features") if isinstance(data, dict) else None
        if not isinstance(features, list):
            raise ValueError(f"{path}: expected a GeoJSON FeatureCollection with 'features'")
        rows = []
        for feature in features:
            geometry = (feature or {}).get("geometry") or {}
            coords = geometry.get("coordinates")
            if geometry.get("type") != "Point" or not isinstance(coords, list) or len(coords) < 2:
                continue
            props = feature.get("properties") or {}
            key = _pick(props.keys(), "name")
            rows.append({"name": props.get(key) if key else None, "latitude": coords[1],
                         "longitude": coords[0]})  # fmt: skip
        frame = pd.DataFrame(rows, columns=list(STATION_COLUMNS))
    frame = frame.assign(
        name=frame["name"].map(lambda v: None if pd.isna(v) else _norm(v)),
        latitude=pd.to_numeric(frame["latitude"], errors="coerce").astype(float),
        longitude=pd.to_numeric(frame["longitude"], errors="coerce").astype(float),
    )
    frame = frame[frame["latitude"].notna() & frame["longitude"].notna()]
    if not include_lrt:
        frame = frame[~frame["name"].fillna("").str.contains(r"\bLRT\b", regex=True)]
    frame = frame.drop_duplicates().reset_index(drop=True)[list(STATION_COLUMNS)]
    if frame.empty:
        raise ValueError(f"{path}: no station with usable coordinates")
    log.debug("loaded %d stations from %s", len(frame), path)
    return frame


# --------------------------------------------------------------------------------------------
# Default tables
# --------------------------------------------------------------------------------------------


def geocode_dir() -> Path:
    """The geocoder's cache folder: ``config.data_dir() / "geocode"``."""
    return config.data_dir() / "geocode"


def default_location_tables() -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The (geocodes, stations) tables to use on this machine, or None when there are none.

    Geocodes: ``addresses_geocoded.json`` then ``geocodes.json`` from ``config.real_data_dir()``
    (when present), then the geocoder cache ``geocode_dir()/onemap-addresses.json``; all the
    tables found are combined, earlier ones winning for an address they share. Stations: the
    first of ``mrt-stations.geojson`` / ``MrtLrt.csv`` in the real-data folder, then
    ``stations.csv`` / ``stations.geojson`` in the cache folder. None unless both a geocode and
    a station table exist. A corrupt file raises ``ValueError`` naming it.
    """
    real = config.real_data_dir()
    cache = geocode_dir()
    geo_paths = [real / n for n in _REAL_GEOCODES] if real is not None else []
    geo_paths.append(cache / ADDRESS_CACHE_FILE)
    station_paths = [real / n for n in _REAL_STATIONS] if real is not None else []
    station_paths += [cache / n for n in STATIONS_FILES]

    tables = [load_geocodes(p) for p in geo_paths if p.is_file()]
    station_path = next((p for p in station_paths if p.is_file()), None)
    if not tables or station_path is None:
        log.info(
            "no location tables: geocodes %s, stations %s (run `hdb-mlops data geocode`)",
            "found" if tables else "missing",
            "found" if station_path is not None else "missing",
        )
        return None
    geocodes = make_geocode_table(pd.concat(tables, ignore_index=True))
    stations = load_stations(station_path)
    log.info(
        "location tables: %d geocoded addresses from %s; %d stations from %s",
        len(geocodes),
        ", ".join(p.name for p in geo_paths if p.is_file()),
        len(stations),
        station_path,
    )
    return geocodes, stations
