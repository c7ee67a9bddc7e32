"""Location features: loaders, the join, distances, coverage; plus checks on the real tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hdb_mlops import config
from hdb_mlops.data import location, location_files
from hdb_mlops.data.location import (
    CBD,
    FEATURE_COLUMNS,
    GEOCODE_COLUMNS,
    add_location_features,
    haversine_km,
    location_coverage,
    nearest_station_km,
)
from hdb_mlops.data.location_files import default_location_tables, load_geocodes, load_stations

# Made-up coordinates in Singapore's lat/lng range.
GEOCODES = pd.DataFrame(
    {
        "block": ["1", "2A", "3"],
        "street_name": ["ALPHA AVE 1", "BETA ST 2", "GAMMA RD"],
        "latitude": [1.3000, 1.3500, 1.4000],
        "longitude": [103.8000, 103.8500, 103.9000],
        "postal": ["100001", "200002", None],
    }
)
STATIONS = pd.DataFrame(
    {"name": ["NORTH", "SOUTH"], "latitude": [1.4000, 1.3000], "longitude": [103.9100, 103.8000]}
)


def frame_of(*addresses: tuple[object, object]) -> pd.DataFrame:
    blocks, streets = zip(*addresses, strict=True)
    return pd.DataFrame(
        {"block": list(blocks), "street_name": list(streets), "price": range(len(blocks))}
    )


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def test_haversine_known_distances():
    assert haversine_km(*CBD, *CBD) == pytest.approx(0.0)
    # one degree of latitude, and of longitude on the equator: 2 pi R / 360
    assert haversine_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(111.195, abs=1e-3)
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(111.195, abs=1e-3)
    out = haversine_km(np.array([1.3, np.nan]), np.array([103.8, 103.8]), 1.3, 103.9)
    assert out[0] == pytest.approx(11.116, abs=1e-2) and np.isnan(out[1])


def test_nearest_station_matches_brute_force():
    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(1.25, 1.45, 500), rng.uniform(103.65, 104.0, 500)
    stations = pd.DataFrame(
        {"name": [f"S{i}" for i in range(40)], "latitude": rng.uniform(1.25, 1.45, 40),
         "longitude": rng.uniform(103.65, 104.0, 40)}
    )  # fmt: skip
    dist, where = nearest_station_km(lat, lon, stations)
    all_d = haversine_km(
        lat[:, None], lon[:, None], stations["latitude"].to_numpy()[None, :],
        stations["longitude"].to_numpy()[None, :],
    )  # fmt: skip
    np.testing.assert_allclose(dist, all_d.min(axis=1), atol=1e-9)
    np.testing.assert_array_equal(where, all_d.argmin(axis=1))


def test_nearest_station_without_points_or_stations_is_nan():
    empty = pd.DataFrame({"name": [], "latitude": [], "longitude": []})
    dist, where = nearest_station_km(np.array([1.3]), np.array([103.8]), empty)
    assert np.isnan(dist).all() and (where == -1).all()
    dist, where = nearest_station_km(np.array([np.nan]), np.array([103.8]), STATIONS)
    assert np.isnan(dist).all() and (where == -1).all()


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def test_features_join_on_normalised_address_and_leave_misses_nan():
    frame = frame_of(
        ("1", "ALPHA AVE 1"),
        (" 2a ", "beta  st 2"),  # case and spaces differ from the table
        ("9", "NOWHERE RD"),  # not geocoded
        (None, "GAMMA RD"),  # missing block
        ("3", "GAMMA RD"),
    )
    frame.index = [10, 11, 12, 13, 14]
    before = frame.copy()
    out = add_location_features(frame, GEOCODES, STATIONS)

    pd.testing.assert_frame_equal(frame, before)  # input untouched
    assert list(out.columns) == [*before.columns, *FEATURE_COLUMNS]
    assert out.index.tolist() == [10, 11, 12, 13, 14]
    assert all(out[c].dtype == np.float64 for c in FEATURE_COLUMNS)
    assert out.loc[[12, 13], list(FEATURE_COLUMNS)].isna().all().all()
    assert out.loc[[10, 11, 14], list(FEATURE_COLUMNS)].notna().all().all()
    assert out.loc[11, "latitude"] == 1.35 and out.loc[11, "longitude"] == 103.85
    assert out.loc[10, "dist_mrt_km"] == pytest.approx(0.0)  # on the SOUTH station
    assert out.loc[14, "dist_mrt_km"] == pytest.approx(haversine_km(1.4, 103.9, 1.4, 103.91))
    assert out.loc[11, "dist_cbd_km"] == pytest.approx(haversine_km(1.35, 103.85, *CBD))


def test_features_with_categorical_columns_and_existing_feature_columns():
    frame = frame_of(("1", "ALPHA AVE 1"), ("3", "GAMMA RD"), ("1", "ALPHA AVE 1"))
    frame["block"] = frame["block"].astype("category")
    frame["street_name"] = frame["street_name"].astype("category")
    frame["latitude"] = -1.0  # stale values are replaced
    out = add_location_features(frame, GEOCODES, STATIONS)
    assert out["latitude"].tolist() == [1.3, 1.4, 1.3]


def test_features_never_fail_on_missing_tables():
    frame = frame_of(("1", "ALPHA AVE 1"), ("2A", "BETA ST 2"))
    no_geocodes = add_location_features(frame, GEOCODES.iloc[0:0], STATIONS)
    assert no_geocodes[list(FEATURE_COLUMNS)].isna().all().all()
    no_stations = add_location_features(frame, GEOCODES, STATIONS.iloc[0:0])
    assert no_stations["dist_mrt_km"].isna().all() and no_stations["latitude"].notna().all()
    # a geocoder miss (NaN coordinates) in the table
    with_miss = pd.concat(
        [GEOCODES, pd.DataFrame([{"block": "9", "street_name": "NOWHERE RD"}])], ignore_index=True
    )
    out = add_location_features(frame_of(("9", "NOWHERE RD")), with_miss, STATIONS)
    assert out[list(FEATURE_COLUMNS)].isna().all().all()
    empty = add_location_features(frame.iloc[0:0], GEOCODES, STATIONS)
    assert list(empty.columns) == [*frame.columns, *FEATURE_COLUMNS] and empty.empty


def test_features_without_address_columns_are_nan(caplog):
    with caplog.at_level("WARNING", logger="hdb_mlops.data.location"):
        out = add_location_features(pd.DataFrame({"block": ["1"]}), GEOCODES, STATIONS)
    assert out[list(FEATURE_COLUMNS)].isna().all().all()
    assert "no street_name column" in caplog.text


def test_features_on_a_million_rows_take_seconds():
    rng = np.random.default_rng(0)
    n_addr = 10_000
    geocodes = pd.DataFrame(
        {
            "block": [str(i) for i in range(n_addr)],
            "street_name": [f"STREET {i % 500}" for i in range(n_addr)],
            "latitude": rng.uniform(1.25, 1.45, n_addr),
            "longitude": rng.uniform(103.65, 104.0, n_addr),
        }
    )
    pick = rng.integers(0, n_addr + 100, 1_000_000)  # ~1% not geocoded
    blocks = np.array([str(i) for i in range(n_addr + 100)], dtype=object)
    streets = np.array([f"STREET {i % 500}" for i in range(n_addr + 100)], dtype=object)
    frame = pd.DataFrame({"block": blocks[pick], "street_name": streets[pick]})
    stations = pd.DataFrame(
        {"name": range(186), "latitude": rng.uniform(1.25, 1.45, 186),
         "longitude": rng.uniform(103.65, 104.0, 186)}
    )  # fmt: skip
    start = time.perf_counter()
    out = add_location_features(frame, geocodes, stations)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"add_location_features took {elapsed:.1f} s on 1M rows"
    assert out["latitude"].isna().sum() == (pick >= n_addr).sum()


def test_location_coverage():
    frame = frame_of(
        ("1", "ALPHA AVE 1"), ("1", "alpha ave 1"), ("9", "NOWHERE RD"), ("3", "GAMMA RD")
    )
    cov = location_coverage(frame, GEOCODES)
    assert cov["rows"] == 4 and cov["rows_with_coords"] == 3 and cov["row_share"] == 0.75
    assert cov["addresses"] == 3 and cov["addresses_with_coords"] == 2
    assert cov["address_share"] == pytest.approx(2 / 3)
    assert cov["missing_examples"] == ["9|NOWHERE RD"]
    assert location_coverage(frame.iloc[0:0], GEOCODES)["row_share"] == 1.0


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_load_geocodes_keyed_format(tmp_path):
    path = write_json(
        tmp_path / "addresses.json",
        {
            "1|ALPHA AVE 1": {"block": "1", "street_name": "ALPHA AVE 1", "latitude": 1.3,
                              "longitude": 103.8, "postal": "100001", "address": "1 ALPHA"},
            "2A|BETA ST 2": {"block": "2A", "street_name": "BETA ST 2", "latitude": 1.35,
                             "longitude": 103.85, "postal": 20002},
        },
    )  # fmt: skip
    table = load_geocodes(path)
    assert list(table.columns) == list(GEOCODE_COLUMNS)
    assert table["block"].tolist() == ["1", "2A"]
    assert table["postal"].tolist() == ["100001", "020002"]
    assert table["latitude"].dtype == np.float64


def test_load_geocodes_slug_format(tmp_path):
    path = write_json(
        tmp_path / "geocodes.json",
        {
            "version": 1,
            "entries": {
                "alpha-1-alpha-ave-1": {"lat": 1.3, "lng": 103.8, "postalCode": "100001",
                                        "searchValue": "1 ALPHA AVE 1 SINGAPORE"},
                "kallang-3-st-george-s-rd": {"lat": 1.32, "lng": 103.86, "postalCode": "NIL",
                                             "searchValue": "3 ST. GEORGE'S RD SINGAPORE"},
                "broken": {"lat": 1.3, "lng": 103.8},
            },
        },
    )  # fmt: skip
    table = load_geocodes(path)
    assert table[["block", "street_name"]].values.tolist() == [
        ["1", "ALPHA AVE 1"],
        ["3", "ST. GEORGE'S RD"],
    ]
    assert pd.isna(table["postal"].iloc[1])


def test_load_geocodes_cache_format_and_csv(tmp_path):
    cache = write_json(
        tmp_path / "onemap-addresses.json",
        {
            "format": location.CACHE_FORMAT,
            "version": 1,
            "entries": {
                "1|ALPHA AVE 1": {"block": "1", "street_name": "ALPHA AVE 1", "latitude": 1.3,
                                  "longitude": 103.8, "postal": "100001", "match": "block"},
                "9|NOWHERE RD": None,
            },
        },
    )  # fmt: skip
    assert load_geocodes(cache)["block"].tolist() == ["1"]  # the cached miss is dropped

    csv = tmp_path / "geocodes.csv"
    csv.write_text(
        "block,street_name,lat,lng,postal\n1,alpha ave 1,1.3,103.8,100001\n2A,BETA ST 2,,,\n"
    )
    table = load_geocodes(csv)
    assert table[["block", "street_name"]].values.tolist() == [["1", "ALPHA AVE 1"]]
    assert table["postal"].tolist() == ["100001"]


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"1|A": {"block": "1"', "not valid JSON"), ("[1, 2]", "unknown geocode layout"),
     ('{"format": "hdb-mlops/onemap-geocode-cache", "entries": []}', "entries")],
)  # fmt: skip
def test_load_geocodes_rejects_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_geocodes(path)
    with pytest.raises(FileNotFoundError):
        load_geocodes(tmp_path / "absent.json")


def test_load_stations_geojson_and_csv(tmp_path):
    def point(name: str, lng: float, lat: float) -> dict:
        return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lng, lat]},
                "properties": {"stationName": name, "lines": ["NSL"]}}  # fmt: skip

    geo = write_json(
        tmp_path / "stations.geojson",
        {"type": "FeatureCollection", "features": [
            point("Alpha MRT Station", 103.80, 1.30), point("BETA LRT STATION", 103.85, 1.35),
            {"type": "Feature", "geometry": {"type": "LineString", "coordinates": []}, "properties": {}},
        ]},
    )  # fmt: skip
    table = load_stations(geo)
    assert list(table.columns) == ["name", "latitude", "longitude"]
    assert table.values.tolist() == [
        ["ALPHA MRT STATION", 1.30, 103.80],
        ["BETA LRT STATION", 1.35, 103.85],
    ]
    assert load_stations(geo, include_lrt=False)["name"].tolist() == ["ALPHA MRT STATION"]

    csv = tmp_path / "stations.csv"
    csv.write_text(
        "station_name,type,lat,lng\nJurong East,MRT,1.333,103.742\nBakau,LRT,1.388,103.905\n"
    )
    assert load_stations(csv)["name"].tolist() == ["JURONG EAST", "BAKAU"]
    assert load_stations(csv, include_lrt=False)["name"].tolist() == ["JURONG EAST"]

    empty = write_json(tmp_path / "empty.geojson", {"type": "FeatureCollection", "features": []})
    with pytest.raises(ValueError, match="no station"):
        load_stations(empty)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="station CSV needs"):
        load_stations(tmp_path / "bad.csv")


def test_default_tables_none_without_any_source(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "real_data_dir", lambda: None)
    monkeypatch.setenv("HDB_MLOPS_DATA_DIR", str(tmp_path))
    assert location_files.geocode_dir() == tmp_path / "geocode"
    assert default_location_tables() is None


def test_default_tables_from_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "real_data_dir", lambda: None)
    monkeypatch.setenv("HDB_MLOPS_DATA_DIR", str(tmp_path))
    folder = tmp_path / "geocode"
    folder.mkdir()
    write_json(
        folder / location.ADDRESS_CACHE_FILE,
        {"format": location.CACHE_FORMAT, "version": 1, "entries": {
            "1|ALPHA AVE 1": {"block": "1", "street_name": "ALPHA AVE 1", "latitude": 1.3,
                              "longitude": 103.8, "postal": "100001"}}},
    )  # fmt: skip
    STATIONS.to_csv(folder / "stations.csv", index=False)
    geocodes, stations = default_location_tables()
    assert geocodes["block"].tolist() == ["1"] and len(stations) == 2


# --------------------------------------------------------------------------------------------
# Real reference data (skipped where /work/shared/data/hdb is absent)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_transactions(real_data_dir: Path) -> pd.DataFrame:
    from hdb_mlops.data.ingest import load_file

    return load_file(real_data_dir / "latest_hdb_resale_prices.parquet").frame


@pytest.fixture(scope="module")
def real_features(real_transactions: pd.DataFrame, real_data_dir: Path) -> pd.DataFrame:
    geocodes = load_geocodes(real_data_dir / "addresses_geocoded.json")
    stations = load_stations(real_data_dir / "mrt-stations.geojson")
    return add_location_features(real_transactions, geocodes, stations)


def test_real_tables_load(real_data_dir):
    geocodes = load_geocodes(real_data_dir / "addresses_geocoded.json")
    assert len(geocodes) > 9_000 and geocodes[["latitude", "longitude"]].notna().all().all()
    assert geocodes["latitude"].between(1.2, 1.5).all()
    assert geocodes["longitude"].between(103.6, 104.1).all()
    slugs = load_geocodes(real_data_dir / "geocodes.json")
    assert len(slugs) > 9_000
    stations = load_stations(real_data_dir / "mrt-stations.geojson")
    assert len(stations) == 186


def test_real_coverage_of_2017_onwards(real_transactions, real_data_dir):
    geocodes = load_geocodes(real_data_dir / "addresses_geocoded.json")
    cov = location_coverage(real_transactions, geocodes)
    assert cov["row_share"] >= 0.99, cov
    assert cov["address_share"] >= 0.99, cov
    tables = default_location_tables()  # real folder: both geocode files combined
    assert tables is not None
    assert location_coverage(real_transactions, tables[0])["row_share"] >= cov["row_share"]


def test_real_distances_are_plausible(real_features):
    geocoded = real_features[real_features["latitude"].notna()]
    assert len(geocoded) / len(real_features) >= 0.99
    assert (geocoded["dist_mrt_km"] < 5).all()
    assert (geocoded["dist_cbd_km"] < 30).all()
    assert 0.3 <= geocoded["dist_mrt_km"].median() <= 1.5
    assert (geocoded["dist_mrt_km"] >= 0).all()
    # features are a function of the address: one value per block + street
    per_address = geocoded.groupby(["block", "street_name"])["dist_mrt_km"].nunique()
    assert (per_address == 1).all()
