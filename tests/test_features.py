"""The feature builder exists once: :func:`numeric_features` and :func:`category_codes` on plain
values, used by :func:`build_features` on a whole frame (training) and by the service's XGBoost
fast path on validated request rows. Hand-computed values, the frame equals the array builder
column by column, and the service's model input equals the generic path's exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import made_up_locations, request_rows

from hdb_mlops.data.location import add_location_features, make_geocode_table
from hdb_mlops.data.normalise import (
    derive_remaining_lease,
    derived_remaining_lease_months,
    format_remaining_lease,
    lease_age_months,
    month_count,
    parse_storey_range,
)
from hdb_mlops.model.bundle import Bundle
from hdb_mlops.model.features import (
    LOCATION_FEATURES,
    NUMERIC_FEATURES,
    FeatureSpec,
    build_features,
    category_codes,
    location_lookup,
    location_values,
    month_index,
    month_index_of,
    numeric_features,
    transactions_from_records,
)
from hdb_mlops.model.models import XGBoostModel
from hdb_mlops.serving.engines import numeric_rows, records_frame
from hdb_mlops.serving.fastpath import XGBoostEngine
from hdb_mlops.serving.request_schema import build_schemas

FAST_XGB = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3, "max_cat_to_onehot": 1}


@pytest.fixture(scope="module")
def tx(tmp_path_factory) -> pd.DataFrame:
    from hdb_mlops.data.storage import prepare

    return prepare("sample", tmp_path_factory.mktemp("features") / "data").transactions()


@pytest.fixture(scope="module")
def locations(tx) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Made-up coordinates for every other sample address, and three stations."""
    geocodes, stations = made_up_locations(tx)
    return make_geocode_table(geocodes), stations


# ------------------------------------------------------------------------- hand-computed


def test_numeric_features_on_hand_computed_values():
    # a 1979 lease (taken to start 1979-07) sold 2025-03, storey "07 TO 09", lease not reported
    idx = month_index_of(2025, 3)
    assert idx == 35 * 12 + 2 == 422
    got = numeric_features(float(idx), 8.0, 92.0, 1979.0)
    age = (2025 - 1979) * 12 + (3 - 7)  # 548 months
    assert got == {
        "floor_area_sqm": 92.0,
        "storey_mid": 8.0,
        "remaining_lease_months": 99 * 12 - age,  # 640 = 53 years 04 months
        "lease_commence_date": 1979.0,
        "flat_age_months": age,
        "month_index": 422.0,
    }
    assert list(got) == list(NUMERIC_FEATURES)
    # a reported remaining lease is kept as is
    assert numeric_features(422.0, 8.0, 92.0, 1979.0, 631.0)["remaining_lease_months"] == 631
    # sold before the lease's July: a negative age, the lease capped at 99 years
    young = numeric_features(float(month_index_of(2025, 3)), 2.0, 93.0, 2025.0)
    assert young["flat_age_months"] == -4
    assert young["remaining_lease_months"] == 1188
    # month 0 is 1990-01; a lease exactly 99 years old has nothing left
    assert month_index_of(1990, 1) == 0
    old = numeric_features(float(month_index_of(2089, 7)), 5.0, 60.0, 1990.0)
    assert old["remaining_lease_months"] == 0


def test_the_array_builder_gives_the_scalar_values_row_by_row():
    idx = np.array([422.0, 422.0, 0.0, 430.0, 300.0])
    mid = np.array([8.0, 2.0, 5.0, 11.0, 14.0])
    area = np.array([92.0, 93.0, 60.0, 120.5, 67.0])
    lcd = np.array([1979.0, 2025.0, 1966.0, np.nan, 1990.0])
    reported = np.array([np.nan, np.nan, 700.0, np.nan, 845.0])
    arrays = numeric_features(idx, mid, area, lcd, reported)
    for i in range(len(idx)):
        one = numeric_features(
            idx[i].item(), mid[i].item(), area[i].item(), lcd[i].item(), reported[i].item()
        )
        for col in NUMERIC_FEATURES:
            np.testing.assert_array_equal(arrays[col][i], one[col], err_msg=f"{col} row {i}")
    # an unknown lease start gives NaN age and NaN derived lease, never a number
    assert math.isnan(arrays["flat_age_months"][3]) and math.isnan(
        arrays["remaining_lease_months"][3]
    )
    assert all(arrays[c].dtype == np.float64 for c in NUMERIC_FEATURES)


def test_derive_remaining_lease_is_the_array_function():
    month = pd.Series(pd.PeriodIndex(["2025-03", "2025-03", "1990-01", None, "2017-12"], freq="M"))
    year = pd.Series([1979.0, 2025.0, 1966.0, 1980.0, np.nan])
    got = derive_remaining_lease(month, year)
    # the rule as documented: lease ends 99 years after July of its start year, at most 99 years
    expected = [
        min((1979 + 99) * 12 + 6 - (2025 * 12 + 2), 1188),
        1188,
        min((1966 + 99) * 12 + 6 - 1990 * 12, 1188),
        np.nan,
        np.nan,
    ]
    np.testing.assert_array_equal(got.to_numpy(), np.array(expected, dtype="float64"))
    sale = month_count(2025, 3)
    assert derived_remaining_lease_months(lease_age_months(sale, 1979)) == expected[0]
    storeys = parse_storey_range(pd.Series(["07 TO 09", "10 TO 12", "bad"]))
    np.testing.assert_array_equal(storeys["storey_mid"].to_numpy(), [8.0, 11.0, np.nan])


def test_category_codes_on_lists_and_columns():
    cats = ("A", "B", "C")
    values = ["C", "A", "nope", "B", "C"]
    np.testing.assert_array_equal(category_codes(values, cats), [2.0, 0.0, np.nan, 1.0, 2.0])
    column = pd.Series([*values, None], dtype="str")
    np.testing.assert_array_equal(
        category_codes(column, cats), [2.0, 0.0, np.nan, 1.0, 2.0, np.nan]
    )
    assert category_codes([], cats).shape == (0,)
    assert category_codes(pd.Series([], dtype="str"), cats).shape == (0,)


# ------------------------------------------------------------------------- training side


def odd_rows(tx: pd.DataFrame) -> pd.DataFrame:
    """Sample rows with unknown categories and missing values among them."""
    frame = tx.sample(2000, random_state=4).reset_index(drop=True)
    frame.loc[::7, "town"] = "NOT A TOWN"
    frame.loc[::11, "flat_model"] = "SPACE POD"
    frame["flat_type"] = frame["flat_type"].astype("object")
    frame.loc[::13, "flat_type"] = None
    return frame


@pytest.mark.parametrize("location", [False, True])
def test_build_features_is_the_array_builder_column_by_column(tx, locations, location):
    frame = odd_rows(tx)
    spec = FeatureSpec(location=location)
    features = build_features(frame, spec, locations if location else None)
    assert list(features.columns) == spec.columns
    numeric = numeric_features(
        month_index(frame["month"]).to_numpy(dtype="float64"),
        frame["storey_mid"].to_numpy(dtype="float64"),
        frame["floor_area_sqm"].to_numpy(dtype="float64"),
        frame["lease_commence_date"].to_numpy(dtype="float64"),
        frame["remaining_lease_months"].to_numpy(dtype="float64"),
    )
    for col in spec.numeric:
        assert features[col].dtype == np.float64, col
        np.testing.assert_array_equal(features[col].to_numpy(), numeric[col], err_msg=col)
    # the loader's own remaining lease, and the flat's age from the same lease start
    np.testing.assert_array_equal(
        features["remaining_lease_months"], frame["remaining_lease_months"]
    )
    idx = month_index(frame["month"]).to_numpy()
    start = (frame["lease_commence_date"].to_numpy() - 1990) * 12 + 6
    np.testing.assert_array_equal(features["flat_age_months"], idx - start)
    for col, cats in spec.categorical.items():
        values = frame[col].astype("str")
        # the codes XGBoost sees: as pandas encodes the spec's categories, unknown -> missing
        reference = pd.Categorical(values.where(values.isin(cats)), categories=list(cats))
        pd.testing.assert_extension_array_equal(features[col].array, reference)
        codes = category_codes(values, cats)
        np.testing.assert_array_equal(np.where(np.isnan(codes), -1, codes), reference.codes)
    if location:
        located = add_location_features(frame, *locations)
        lookup = location_lookup(locations)
        values = location_values(lookup, list(frame["block"]), list(frame["street_name"]))
        for j, col in enumerate(LOCATION_FEATURES):
            np.testing.assert_array_equal(features[col].to_numpy(), located[col].to_numpy(float))
            np.testing.assert_array_equal(values[:, j], located[col].to_numpy(float), err_msg=col)
        assert np.isnan(values[:, 0]).any() and (~np.isnan(values[:, 0])).any()


def test_location_values_of_odd_and_missing_addresses(tx, locations):
    row = tx.iloc[[0]]
    block, street = str(row["block"].iloc[0]), str(row["street_name"].iloc[0])
    lookup = location_lookup(locations)
    blocks = [block, f"  {block.lower()} ", None, "", block]
    streets = [street, street.lower().replace(" ", "  "), street, street, None]
    frame = pd.DataFrame({"block": blocks, "street_name": streets})
    located = add_location_features(frame, *locations)[list(LOCATION_FEATURES)].to_numpy(float)
    np.testing.assert_array_equal(location_values(lookup, blocks, streets), located)
    assert location_lookup(None) == {}
    assert location_values({}, [], []).shape == (0, 4)


# ------------------------------------------------------------------------- service side


def loader_record(row: dict) -> dict:
    """A request body as the files' text record (the generic path's input)."""
    lease = row.get("remaining_lease", "")
    if isinstance(lease, int):
        lease = format_remaining_lease(pd.Series([lease])).iloc[0]
    return {
        **{k: str(v) for k, v in row.items()},
        "block": row.get("block", ""),
        "street_name": row.get("street_name", ""),
        "remaining_lease": lease,
        "resale_price": "",
    }


def feature_matrix(features: pd.DataFrame) -> np.ndarray:
    """build_features' frame as XGBoost reads it: floats, category codes, NaN for missing."""
    cols = []
    for col in features.columns:
        values = features[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy()
            cols.append(np.where(codes < 0, np.nan, codes).astype("float64"))
        else:
            cols.append(values.to_numpy(dtype="float64"))
    return np.column_stack(cols)


@pytest.fixture(scope="module", params=["plain", "location", "encoding"])
def engine_case(request, tx, locations):
    spec = FeatureSpec(location=request.param == "location")
    model = XGBoostModel(
        spec=spec,
        locations=locations if spec.location else None,
        address_encoding=request.param == "encoding",
        params_=dict(FAST_XGB),
        valid_months=0,
        n_jobs=1,
    )
    model.fit(tx[tx["month"] <= pd.Period("2024-12", freq="M")].sample(3000, random_state=2))
    bundle = Bundle(model=model, spec=spec, metadata={}, profile={}, path=Path("."), sha256="")
    return bundle, XGBoostEngine(bundle)


def test_the_fast_engine_input_is_build_features_of_the_generic_path(engine_case, tx):
    bundle, engine = engine_case
    spec = bundle.model.spec
    Record = build_schemas(spec).record
    rows = request_rows(tx, 300, seed=11, odd=True)
    records = [Record.model_validate(r) for r in rows]
    generic = transactions_from_records([loader_record(r) for r in rows])
    expected = feature_matrix(build_features(generic, spec, bundle.model.locations))
    got = engine.features(records)
    width = len(spec.columns)
    np.testing.assert_array_equal(got[:, :width], expected)
    if engine.encoding is not None:
        encoded = bundle.model.encoder_.transform(generic).to_numpy(dtype="float64")
        np.testing.assert_array_equal(got[:, width:], encoded)
    else:
        assert got.shape[1] == width
    # one row at a time (the service's usual call, on Python numbers) gives the same rows
    for i in range(0, len(records), 7):
        np.testing.assert_array_equal(engine.features(records[i : i + 1]), got[i : i + 1])
    # and the same predictions as the model on the generic path
    np.testing.assert_array_equal(engine.predict(records), bundle.model.predict(generic))


def test_records_frame_and_numeric_rows_are_the_loader_columns(tx):
    Record = build_schemas(FeatureSpec()).record
    rows = request_rows(tx, 200, seed=5, odd=True)
    records = [Record.model_validate(r) for r in rows]
    generic = transactions_from_records([loader_record(r) for r in rows])
    frame = records_frame(records)
    cols = [
        "month",
        "town",
        "flat_type",
        "storey_low",
        "storey_high",
        "storey_mid",
        "floor_area_sqm",
        "flat_model",
        "lease_commence_date",
        "remaining_lease_reported",
        "remaining_lease_months",
        "remaining_lease_derived",
    ]
    pd.testing.assert_frame_equal(frame[cols], generic[cols], check_dtype=False)
    numeric = numeric_rows(records)
    features = build_features(generic)
    for col in NUMERIC_FEATURES:
        np.testing.assert_array_equal(numeric[col], features[col].to_numpy(), err_msg=col)
        one = numeric_rows(records[:1])[col]
        assert isinstance(one, int | float) and one == features[col].iloc[0], col
