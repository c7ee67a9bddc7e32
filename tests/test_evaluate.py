"""Metrics, time-aware protocols, tuning and the chapter-1 comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.model import evaluate, models, tune


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pd.DataFrame:
    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


def small_xgb(**kw):
    params = {**models.DEFAULT_XGB_PARAMS, "n_estimators": 60, "max_depth": 4, "learning_rate": 0.2}
    return models.XGBoostModel(params_=params, n_jobs=1, valid_months=0, **kw)


def test_metrics_on_known_values():
    m = evaluate.metrics([100.0, 200.0, 400.0, 1000.0], [110.0, 190.0, 400.0, 800.0])
    assert m["mape"] == pytest.approx((10 + 5 + 0 + 20) / 4)
    assert m["median_ape"] == pytest.approx(7.5)
    assert m["mae"] == pytest.approx((10 + 10 + 0 + 200) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((100 + 100 + 0 + 40000) / 4))
    assert m["within_5"] == pytest.approx(50.0)  # 5% and 0% (5% counts as within)
    assert m["within_10"] == pytest.approx(75.0)
    assert m["n"] == 4
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate.metrics([1.0], [np.nan])
    with pytest.raises(ValueError, match="no rows"):
        evaluate.metrics([], [])


def test_holdout_never_trains_on_the_test_months(sample):
    seen: list[pd.Period] = []

    class Spy(models.MedianPpsmBaseline):
        def fit(self, transactions):
            seen.append(transactions["month"].max())
            return super().fit(transactions)

    ev = evaluate.holdout(sample, Spy, cutoff="2024-12")
    assert seen == [pd.Period("2024-12", freq="M")]
    assert ev.predictions["month"].min() == pd.Period("2025-01", freq="M")
    assert len(ev.predictions) == (sample["month"] > pd.Period("2024-12", freq="M")).sum()
    assert set(ev.by("flat_type").index) <= set(sample["flat_type"])
    assert ev.fitted is not None and ev.train is not None
    with pytest.raises(ValueError, match="leaves 0 training"):
        evaluate.holdout(sample, Spy, cutoff="2000-01")


def test_rolling_retrains_before_every_month(sample):
    fits: list[pd.Period] = []

    class Spy(models.MedianPpsmBaseline):
        def fit(self, transactions):
            fits.append(transactions["month"].max())
            return super().fit(transactions)

    ev = evaluate.rolling(sample, Spy, start="2026-03", end="2026-05")
    assert fits == [pd.Period(m, freq="M") for m in ("2026-02", "2026-03", "2026-04")]
    assert list(ev.per_month.index.astype(str)) == ["2026-03", "2026-04", "2026-05"]
    assert ev.overall["mean_monthly_mape"] == pytest.approx(ev.per_month["mape"].mean())


def test_xgboost_beats_the_baselines_on_the_sample(sample):
    recent = sample[sample["month"] >= pd.Period("2022-01", freq="M")]
    base = evaluate.holdout(recent, models.MedianPpsmBaseline).overall["mape"]
    xgb = evaluate.holdout(recent, small_xgb).overall["mape"]
    assert xgb < base - 2


def test_frozen_model_decays_and_retrained_does_not(sample):
    table = evaluate.frozen_vs_retrained(sample, small_xgb, train_end="2019-12", retrain_every=12)
    assert table.index.min() == pd.Period("2020-01", freq="M")
    last = table.iloc[-12:]
    assert last["frozen_mape"].mean() > 2 * last["retrained_mape"].mean()
    assert (table["retrained_through"] < table.index).all()


def test_tuning_is_reproducible_and_stays_in_the_training_data(sample):
    train = sample[sample["month"] <= pd.Period("2021-12", freq="M")]

    def fast(**kw):
        kw["params_"] = {**kw["params_"], "n_estimators": 40}
        return models.XGBoostModel(n_jobs=1, **kw)

    a = tune.tune(train, n_trials=2, seed=1, make_model=fast, max_estimators=40)
    b = tune.tune(train, n_trials=2, seed=1, make_model=fast, max_estimators=40)
    assert a.best_params == b.best_params
    assert a.best_mape == pytest.approx(b.best_mape)
    assert len(a.trials) == 2
    assert {"learning_rate", "max_depth"} <= set(a.best_params)


def test_level_drift_separates_the_market_level_from_the_rest():
    months = pd.PeriodIndex(["2025-01"] * 4 + ["2025-02"] * 4, freq="M")
    actual = np.array([100.0, 200.0, 300.0, 400.0] * 2) * 1000
    # January: exact; February: every prediction 10% low, the market rose past the model,
    # and one flat 10% further off on top of it
    pred = actual.copy()
    pred[4:] = actual[4:] / 1.1
    pred[7] = actual[7] / 1.1 / 1.1
    preds = pd.DataFrame({"month": months, "resale_price": actual, "prediction": pred})
    drift = evaluate.level_drift(preds)
    assert list(drift.index.astype(str)) == ["2025-01", "2025-02"]
    assert drift.loc["2025-01", "level_bias"] == pytest.approx(0.0)
    assert drift.loc["2025-01", "level_adjusted_mape"] == pytest.approx(0.0)
    assert drift.loc["2025-02", "level_bias"] == pytest.approx(10.0)
    # after the level is taken out only the one flat is off, by 1 - 1/1.1
    assert drift.loc["2025-02", "level_adjusted_mape"] == pytest.approx((1 - 1 / 1.1) * 100 / 4)
    assert drift.loc["2025-02", "mape"] > drift.loc["2025-02", "level_adjusted_mape"]
    assert drift["n"].tolist() == [4, 4]
    with pytest.raises(ValueError, match="no predictions"):
        evaluate.level_drift(preds.iloc[:0])
