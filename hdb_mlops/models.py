"""Price models: two baselines and XGBoost, all with one interface.

Every model is fitted on normalised transactions (with ``resale_price``) and predicts prices
for normalised transactions, going through :func:`hdb_mlops.features.build_features`, so the
same object serves training, evaluation and the API.

Prices move with the market, and a tree model cannot extrapolate a trend. The XGBoost model
therefore learns log prices *relative to a monthly market index* estimated from its training
data; for months after its training data it carries the index forward along the recent trend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.features import FeatureSpec, build_features, month_index

DEFAULT_XGB_PARAMS: dict[str, Any] = {
    "n_estimators": 2000,
    "learning_rate": 0.05,
    "max_depth": 8,
    "min_child_weight": 3,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_cat_to_onehot": 1,
}


class PriceModel:
    """Common interface: ``fit(transactions)``, ``predict(transactions)`` in SGD."""

    name = "model"
    spec: FeatureSpec
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None

    def fit(self, transactions: pd.DataFrame) -> PriceModel:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def features(self, transactions: pd.DataFrame) -> pd.DataFrame:
        """The feature frame this model sees."""
        return build_features(transactions, self.spec, self.locations)

    def params(self) -> dict[str, Any]:
        """Hyper-parameters worth logging."""
        return {}


# ------------------------------------------------------------------------ baselines


@dataclass
class MedianPpsmBaseline(PriceModel):
    """Median price per square metre of the same town and flat type over the last
    ``window_months`` of the training data, times the floor area. What a person with a
    spreadsheet would do; every other model has to beat it."""

    window_months: int = 12
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name = "median_ppsm"

    def fit(self, transactions: pd.DataFrame) -> MedianPpsmBaseline:
        idx = month_index(transactions["month"])
        recent = transactions[idx > idx.max() - self.window_months]
        ppsm = recent["resale_price"] / recent["floor_area_sqm"]
        self.by_cell_ = ppsm.groupby([recent["town"], recent["flat_type"]]).median().to_dict()
        self.by_type_ = ppsm.groupby(recent["flat_type"]).median().to_dict()
        self.overall_ = float(ppsm.median())
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        keys = zip(transactions["town"], transactions["flat_type"], strict=True)
        ppsm = np.array(
            [
                self.by_cell_.get((town, ft), self.by_type_.get(ft, self.overall_))
                for town, ft in keys
            ],
            dtype="float64",
        )
        return ppsm * transactions["floor_area_sqm"].to_numpy(dtype="float64")

    def params(self) -> dict[str, Any]:
        return {"window_months": self.window_months}


@dataclass
class LinearModel(PriceModel):
    """Ridge regression on log price: one-hot categories, scaled numbers, a linear time
    trend (which, unlike a tree, extrapolates)."""

    alpha: float = 1.0
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name = "linear"

    def fit(self, transactions: pd.DataFrame) -> LinearModel:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler

        numeric = [c for c in self.spec.columns if c not in self.spec.categorical]
        pre = ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
                ("lease", SplineTransformer(n_knots=8), ["remaining_lease_months"]),
                (
                    "cat",
                    OneHotEncoder(handle_unknown="ignore", min_frequency=5),
                    list(self.spec.categorical),
                ),
            ]
        )
        self.pipeline_ = make_pipeline(pre, Ridge(alpha=self.alpha))
        X = self.features(transactions)
        X[list(self.spec.categorical)] = X[list(self.spec.categorical)].astype("object")
        self.pipeline_.fit(X, np.log(transactions["resale_price"].to_numpy()))
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        X = self.features(transactions)
        X[list(self.spec.categorical)] = X[list(self.spec.categorical)].astype("object")
        return np.exp(self.pipeline_.predict(X))

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


# ------------------------------------------------------------------------ XGBoost


def market_index(transactions: pd.DataFrame) -> pd.Series:
    """Monthly log price index, mix-adjusted: the median over each month of log price per
    sqm minus its town x flat type median. Indexed by month_index."""
    log_ppsm = np.log(transactions["resale_price"] / transactions["floor_area_sqm"])
    cell = log_ppsm.groupby([transactions["town"], transactions["flat_type"]]).transform("median")
    idx = month_index(transactions["month"])
    return (log_ppsm - cell).groupby(idx).median().sort_index()


@dataclass
class TrendIndex:
    """A monthly index that is known up to the last training month and carried forward after
    it: flat by default, or along the slope of its last ``trend_months`` months.

    Flat is the honest default: on the real data, extending 2024's rise through 2025-2026
    (when prices levelled off) doubled the holdout error."""

    trend_months: int = 0

    def fit(self, transactions: pd.DataFrame) -> TrendIndex:
        index = market_index(transactions)
        full = pd.RangeIndex(index.index.min(), index.index.max() + 1)
        index = index.reindex(full).interpolate(limit_direction="both")
        # smooth month-to-month noise with a centred 3-month median
        self.values_ = index.rolling(3, center=True, min_periods=1).median()
        tail = self.values_.iloc[-self.trend_months :] if self.trend_months else self.values_.iloc[:0]
        self.slope_ = (
            float(np.polyfit(tail.index.to_numpy(), tail.to_numpy(), 1)[0]) if len(tail) > 2 else 0.0
        )
        self.last_ = int(self.values_.index.max())
        self.first_ = int(self.values_.index.min())
        return self

    def __call__(self, idx: pd.Series | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype="int64")
        known = self.values_.reindex(np.clip(idx, self.first_, self.last_)).to_numpy()
        ahead = np.maximum(idx - self.last_, 0)
        return known + self.slope_ * ahead


@dataclass
class XGBoostModel(PriceModel):
    """Gradient-boosted trees on log price relative to the market index.

    The last ``valid_months`` of the training data are held out for early stopping; the
    model is then refitted on all of it with the number of trees found.
    """

    params_: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_XGB_PARAMS))
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    valid_months: int = 3
    early_stopping_rounds: int = 50
    detrend: bool = True
    trend_months: int = 0
    seed: int = 42
    n_jobs: int = 2
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = field(default=None, repr=False)
    name = "xgboost"

    def _target(self, transactions: pd.DataFrame) -> np.ndarray:
        y = np.log(transactions["resale_price"].to_numpy(dtype="float64"))
        if self.detrend:
            y = y - self.index_(month_index(transactions["month"]))
        return y

    def _regressor(self, n_estimators: int, early_stopping: bool):
        import xgboost as xgb

        params = {**self.params_, "n_estimators": n_estimators}
        return xgb.XGBRegressor(
            **params,
            tree_method="hist",
            enable_categorical=True,
            random_state=self.seed,
            n_jobs=self.n_jobs,
            early_stopping_rounds=self.early_stopping_rounds if early_stopping else None,
        )

    def fit(self, transactions: pd.DataFrame) -> XGBoostModel:
        self.index_ = TrendIndex(self.trend_months).fit(transactions)
        X = self.features(transactions)
        y = self._target(transactions)
        idx = month_index(transactions["month"]).to_numpy()
        valid = idx > idx.max() - self.valid_months
        n_estimators = int(self.params_.get("n_estimators", 2000))
        if self.valid_months and valid.any() and (~valid).sum() > 100:
            probe = self._regressor(n_estimators, early_stopping=True)
            probe.fit(X[~valid], y[~valid], eval_set=[(X[valid], y[valid])], verbose=False)
            n_estimators = max(int(probe.best_iteration) + 1, 10)
        self.n_estimators_ = n_estimators
        self.booster_ = self._regressor(n_estimators, early_stopping=False)
        self.booster_.fit(X, y, verbose=False)
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        log_rel = self.booster_.predict(self.features(transactions))
        if self.detrend:
            log_rel = log_rel + self.index_(month_index(transactions["month"]))
        return np.exp(log_rel)

    def params(self) -> dict[str, Any]:
        return {
            **self.params_,
            "n_estimators_used": getattr(self, "n_estimators_", None),
            "detrend": self.detrend,
            "trend_months": self.trend_months,
            "valid_months": self.valid_months,
            "location": self.spec.location,
            "seed": self.seed,
        }


MODELS = {"median_ppsm": MedianPpsmBaseline, "linear": LinearModel, "xgboost": XGBoostModel}


def make_model(name: str, **kwargs: Any) -> PriceModel:
    """A model by name: ``median_ppsm``, ``linear`` or ``xgboost``."""
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}") from None
