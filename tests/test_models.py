"""The price models on the bundled synthetic sample: they fit, predict sensible prices, survive a
joblib round-trip, cope with unseen categories and missing locations, beat the baseline, are
reproducible, and never learn from rows they were not given (or from a sale's own price)."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest

from hdb_mlops.data.location import make_geocode_table
from hdb_mlops.model.encoding import AddressEncoder, address_keys, row_keys
from hdb_mlops.model.evaluate import holdout, metrics, split_holdout
from hdb_mlops.model.features import FeatureSpec, month_index
from hdb_mlops.model.models import (
    LinearModel,
    MedianPpsmBaseline,
    TrendIndex,
    XGBoostModel,
    make_model,
)

FAST_XGB = {
    "n_estimators": 80,
    "learning_rate": 0.2,
    "max_depth": 4,
    "min_child_weight": 3,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_cat_to_onehot": 1,
}


@pytest.fixture(scope="module")
def transactions(tmp_path_factory) -> pd.DataFrame:
    from hdb_mlops.data.storage import prepare

    data_dir = tmp_path_factory.mktemp("models") / "data"
    return prepare("sample", data_dir, rows=6000).transactions()


@pytest.fixture(scope="module")
def split(transactions) -> tuple[pd.DataFrame, pd.DataFrame]:
    cutoff = str(transactions["month"].max() - 12)
    return split_holdout(transactions, cutoff)


@pytest.fixture(scope="module")
def locations(transactions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Made-up coordinates for every sample address, and three stations."""
    addresses = transactions[["block", "street_name"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(0)
    addresses["latitude"] = 1.30 + rng.uniform(0, 0.15, len(addresses))
    addresses["longitude"] = 103.70 + rng.uniform(0, 0.25, len(addresses))
    stations = pd.DataFrame(
        {
            "name": ["A", "B", "C"],
            "latitude": [1.30, 1.35, 1.40],
            "longitude": [103.8, 103.9, 103.7],
        }
    )
    return make_geocode_table(addresses), stations


def xgb(**kwargs) -> XGBoostModel:
    kwargs.setdefault("params_", dict(FAST_XGB))
    kwargs.setdefault("valid_months", 0)
    kwargs.setdefault("n_jobs", 1)
    return XGBoostModel(**kwargs)


def model_factories(locations):
    return {
        "median_ppsm": MedianPpsmBaseline,
        "linear": LinearModel,
        "xgboost": xgb,
        "xgboost_early_stopping": lambda: xgb(valid_months=3, early_stopping_rounds=10),
        "xgboost_location": lambda: xgb(spec=FeatureSpec(location=True), locations=locations),
        "xgboost_location_and_encoding": lambda: xgb(
            spec=FeatureSpec(location=True), locations=locations, address_encoding=True
        ),
    }


def assert_prices(pred: np.ndarray, n: int) -> None:
    assert pred.shape == (n,)
    assert np.isfinite(pred).all()
    assert (pred > 10_000).all() and (pred < 5_000_000).all()


def test_every_model_fits_and_predicts_positive_finite_prices(split, locations):
    train, test = split
    for name, make in model_factories(locations).items():
        model = make().fit(train)
        pred = model.predict(test)
        assert_prices(pred, len(test))
        assert metrics(test["resale_price"], pred)["mape"] < 40, name
        json.dumps(model.params())  # loggable as is


def test_predictions_survive_a_joblib_round_trip(split, locations, tmp_path):
    train, test = split
    for name, make in model_factories(locations).items():
        model = make().fit(train)
        path = tmp_path / f"{name}.joblib"
        joblib.dump(model, path)
        loaded = joblib.load(path)
        np.testing.assert_array_equal(loaded.predict(test), model.predict(test), err_msg=name)


def test_unseen_categories_addresses_and_missing_location_give_finite_predictions(split, locations):
    train, test = split
    odd = test.head(50).copy()
    odd["town"] = ["NOT A TOWN", "ANG MO KIO"] * 25
    odd["flat_model"] = "SPACE POD"
    odd["block"] = "9999Z"
    odd["street_name"] = "NOWHERE RD"
    no_address = test.head(20).drop(columns=["block", "street_name"])
    blank = test.head(20).assign(block="", street_name="")
    for make in model_factories(locations).values():
        model = make().fit(train)
        for rows in (odd, no_address, blank):
            assert_prices(model.predict(rows), len(rows))
    # location features asked for but no tables: NaN features, still prices (encoding on)
    model = xgb(spec=FeatureSpec(location=True), locations=None).fit(train)
    assert model.uses_encoding
    assert_prices(model.predict(test), len(test))
    # a model fitted with tables predicts rows the tables do not know
    model = xgb(spec=FeatureSpec(location=True), locations=locations).fit(train)
    assert not model.uses_encoding
    assert_prices(model.predict(odd), len(odd))


def test_xgboost_beats_the_median_ppsm_baseline_on_a_holdout(transactions):
    cutoff = str(transactions["month"].max() - 12)
    base = holdout(transactions, MedianPpsmBaseline, cutoff=cutoff).overall
    boosted = holdout(transactions, lambda: xgb(params_={**FAST_XGB, "n_estimators": 150}), cutoff)
    assert boosted.overall["mape"] < base["mape"], (boosted.overall, base)


def test_same_data_params_and_seed_give_identical_predictions(split):
    train, test = split
    first = xgb(seed=3).fit(train).predict(test)
    second = xgb(seed=3).fit(train.copy()).predict(test)
    np.testing.assert_array_equal(first, second)
    other = xgb(seed=4).fit(train).predict(test)
    assert not np.array_equal(first, other)  # the seed matters (subsampling)


def test_training_ignores_test_period_prices(transactions):
    cutoff = str(transactions["month"].max() - 12)
    changed = transactions.copy()
    later = changed["month"] > pd.Period(cutoff, freq="M")
    changed.loc[later, "resale_price"] *= 1.5
    _, test = split_holdout(transactions, cutoff)
    preds = []
    for frame in (transactions, changed):
        train, _ = split_holdout(frame, cutoff)
        preds.append(xgb(valid_months=3).fit(train).predict(test))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_prediction_does_not_need_the_price(split):
    train, test = split
    model = xgb().fit(train)
    np.testing.assert_array_equal(
        model.predict(test.drop(columns=["resale_price"])), model.predict(test)
    )


def test_the_address_encoding_of_a_training_sale_only_sees_earlier_months(transactions):
    months = month_index(transactions["month"]).to_numpy()
    residual = np.log(transactions["resale_price"].to_numpy())
    cut = int(np.quantile(months, 0.7))
    bumped = np.where(months >= cut, residual + 1.0, residual)
    before = AddressEncoder().fit_transform(transactions, residual)
    after = AddressEncoder().fit_transform(transactions, bumped)
    # rows up to and including the first changed month are encoded identically...
    same = months <= cut
    pd.testing.assert_frame_equal(before[same], after[same])
    # ...and a sale's own price never enters its own encoding
    one = AddressEncoder().fit_transform(transactions, residual)
    lone = residual.copy()
    lone[0] += 5.0
    np.testing.assert_array_equal(
        AddressEncoder().fit_transform(transactions, lone).iloc[0].to_numpy(),
        one.iloc[0].to_numpy(),
    )
    # serving sees all the training sales: a repeated address gets a count
    enc = AddressEncoder()
    enc.fit_transform(transactions, residual)
    seen = enc.transform(transactions)
    assert (seen["n_address"] > 0).all()
    unseen = enc.transform(transactions.head(3).assign(block="0000", street_name="NO ST"))
    assert (unseen["n_address"] == 0).all() and np.isfinite(unseen["enc_address"]).all()


def test_row_keys_match_the_vectorised_address_keys():
    """The API's per-row keys are the training keys, whatever the case, spacing or gaps."""
    rows = pd.DataFrame(
        {
            "town": ["ANG MO KIO", "BEDOK", "BEDOK", "BEDOK", "YISHUN", "KALLANG/WHAMPOA"],
            "block": pd.array(["406", " 12a ", None, "", "101", "1"], dtype="str"),
            "street_name": pd.array(
                ["ANG MO KIO AVE 10", "bedok  north   rd", "BEDOK NTH RD", "X", None, " JLN  B "],
                dtype="str",
            ),
            "flat_type": ["4 ROOM", "3 ROOM", "EXECUTIVE", "EXECUTIVE", "5 ROOM", "2 ROOM"],
        }
    )
    vectorised = address_keys(rows)
    for i, row in enumerate(rows.itertuples(index=False)):
        expected = tuple(str(vectorised[level][i]) for level in vectorised)
        assert row_keys(row.town, row.block, row.street_name, row.flat_type) == expected
    assert row_keys("BEDOK", " 12a ", "bedok  north   rd", "3 ROOM")[-1] == (
        "BEDOK|12A|BEDOK NORTH RD|3 ROOM"
    )


def test_trend_index_carries_the_last_level_forward(transactions):
    index = TrendIndex().fit(transactions)
    last = index.last_
    ahead = index(np.array([last, last + 1, last + 24]))
    assert ahead[0] == ahead[1] == ahead[2]
    # the edge is the last month's own value, not a backward-looking median
    raw = index.values_.iloc[-1]
    smoothed = TrendIndex(smooth_edge=True).fit(transactions).values_.iloc[-1]
    assert np.isfinite(raw) and np.isfinite(smoothed)


def test_make_model_by_name():
    assert isinstance(make_model("xgboost"), XGBoostModel)
    with pytest.raises(ValueError, match="unknown model"):
        make_model("nope")
