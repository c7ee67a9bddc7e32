"""Price models: two baselines and XGBoost, all with one interface.

Every model is fitted on normalised transactions (with ``resale_price``) and predicts prices
for normalised transactions, going through :func:`hdb_mlops.model.features.build_features`, so the
same object serves training, evaluation and the API.

Prices move with the market, and a tree model cannot extrapolate a trend. The XGBoost model
therefore learns log prices *relative to a monthly market index* estimated from its training
data; for months after its training data it carries the index forward (flat by default).

Repeated sales of the same block are the strongest signal in this market. Without location
features the XGBoost model adds a leak-free *address encoding*
(:class:`~hdb_mlops.model.encoding.AddressEncoder`): for every training row, the shrunk mean
index-adjusted log price per sqm of the **earlier** sales of the same block (and block x flat
type), so the trees learn how far to trust it exactly as they will use it on future months.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.model.encoding import AddressEncoder
from hdb_mlops.model.features import FeatureSpec, build_features, month_index

#: Chosen on a validation holdout inside the training period (train <= 2023-06, test
#: 2023-07..2024-12), never on the 2025+ test months: a learning rate of 0.05 was ~1% better
#: but three times slower to fit; 128 histogram bins cost nothing and halve the fit time.
DEFAULT_XGB_PARAMS: dict[str, Any] = {
    "n_estimators": 2000,
    "learning_rate": 0.1,
    "max_depth": 8,
    "min_child_weight": 3,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_cat_to_onehot": 1,
    "max_bin": 128,
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
    trend (which, unlike a tree, extrapolates).

    Solved exactly (Cholesky on a dense design) on one BLAS thread: an iterative sparse
    solver and a multi-threaded BLAS both change the last digits of the coefficients with
    the machine and the thread count, and so every figure computed from them."""

    alpha: float = 1.0
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name = "linear"

    def fit(self, transactions: pd.DataFrame) -> LinearModel:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler
        from threadpoolctl import threadpool_limits

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
            ],
            sparse_threshold=0.0,
        )
        self.pipeline_ = make_pipeline(pre, Ridge(alpha=self.alpha, solver="cholesky"))
        X = self.features(transactions)
        X[list(self.spec.categorical)] = X[list(self.spec.categorical)].astype("object")
        with threadpool_limits(limits=1):
            self.pipeline_.fit(X, np.log(transactions["resale_price"].to_numpy()))
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        X = self.features(transactions)
        X[list(self.spec.categorical)] = X[list(self.spec.categorical)].astype("object")
        with threadpool_limits(limits=1):
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

    Month-to-month noise is smoothed with a centred ``smooth_months`` median. At the edge a
    centred window only looks backwards and lags a moving market, so the last
    ``smooth_months // 2`` months keep their own value unless ``smooth_edge`` (on the
    2018-2024 backtests the unsmoothed edge is the better estimate of the next month's level).

    Flat is the honest default: on the real data, extending 2024's rise through 2025-2026
    (when prices levelled off) doubled the holdout error."""

    trend_months: int = 0
    smooth_months: int = 3
    smooth_edge: bool = False

    def fit(self, transactions: pd.DataFrame) -> TrendIndex:
        index = market_index(transactions)
        full = pd.RangeIndex(index.index.min(), index.index.max() + 1)
        index = index.reindex(full).interpolate(limit_direction="both")
        values = index
        if self.smooth_months > 1:
            values = index.rolling(self.smooth_months, center=True, min_periods=1).median()
            edge = self.smooth_months // 2
            if not self.smooth_edge and edge:
                values.iloc[-edge:] = index.iloc[-edge:]
        self.values_ = values
        tail = (
            self.values_.iloc[-self.trend_months :] if self.trend_months else self.values_.iloc[:0]
        )
        self.slope_ = (
            float(np.polyfit(tail.index.to_numpy(), tail.to_numpy(), 1)[0])
            if len(tail) > 2
            else 0.0
        )
        self.last_ = int(self.values_.index.max())
        self.first_ = int(self.values_.index.min())
        return self

    def __call__(self, idx: pd.Series | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype="int64")
        known = self.values_.reindex(np.clip(idx, self.first_, self.last_)).to_numpy()
        ahead = np.maximum(idx - self.last_, 0)
        return known + self.slope_ * ahead


def _with_columns(X: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """``X`` with the columns of ``extra`` appended by position (indexes may repeat)."""
    X = X.copy()
    for column in extra.columns:
        X[column] = extra[column].to_numpy()
    return X


@dataclass
class XGBoostModel(PriceModel):
    """Gradient-boosted trees on log price relative to the market index.

    The last ``valid_months`` of the training data are held out for early stopping; the
    model is then refitted on all of it with the number of trees found.

    ``address_encoding`` adds the :class:`AddressEncoder` features; ``None`` (the default)
    means "when the model has no location features" (no ``spec.location`` or no location
    tables): with coordinates the trees already locate every block and the encoding measured
    no better. ``recency_half_life`` (months, 0 = off) down-weights old training sales.
    """

    params_: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_XGB_PARAMS))
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    valid_months: int = 3
    early_stopping_rounds: int = 50
    detrend: bool = True
    trend_months: int = 0
    index_smooth_months: int = 3
    index_smooth_edge: bool = False
    address_encoding: bool | None = None
    encoding_prior: float = 5.0
    encoding_half_life: float = 0.0
    recency_half_life: float = 0.0
    seed: int = 42
    n_jobs: int = 2
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = field(default=None, repr=False)
    name = "xgboost"

    @property
    def uses_encoding(self) -> bool:
        """Whether the address encoding is on (resolving the ``None`` default)."""
        if self.address_encoding is not None:
            return bool(self.address_encoding)
        return not (self.spec.location and self.locations is not None)

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

    def model_input(self, transactions: pd.DataFrame) -> pd.DataFrame:
        """The booster's input: :meth:`features` plus the fitted address encoding."""
        X = self.features(transactions)
        encoder = getattr(self, "encoder_", None)
        return X if encoder is None else _with_columns(X, encoder.transform(transactions))

    def fit(self, transactions: pd.DataFrame) -> XGBoostModel:
        self.index_ = TrendIndex(
            self.trend_months, self.index_smooth_months, self.index_smooth_edge
        ).fit(transactions)
        X = self.features(transactions)
        y = self._target(transactions)
        self.encoder_ = None
        if self.uses_encoding:
            log_ppsm = np.log(
                transactions["resale_price"].to_numpy(dtype="float64")
                / transactions["floor_area_sqm"].to_numpy(dtype="float64")
            )
            residual = log_ppsm - self.index_(month_index(transactions["month"]))
            self.encoder_ = AddressEncoder(self.encoding_prior, self.encoding_half_life)
            X = _with_columns(X, self.encoder_.fit_transform(transactions, residual))
        idx = month_index(transactions["month"]).to_numpy()
        weight = None
        if self.recency_half_life:
            weight = 0.5 ** ((idx.max() - idx) / self.recency_half_life)
        valid = idx > idx.max() - self.valid_months
        n_estimators = int(self.params_.get("n_estimators", 2000))
        if self.valid_months and valid.any() and (~valid).sum() > 100:
            probe = self._regressor(n_estimators, early_stopping=True)
            probe.fit(
                X[~valid],
                y[~valid],
                sample_weight=None if weight is None else weight[~valid],
                eval_set=[(X[valid], y[valid])],
                verbose=False,
            )
            n_estimators = max(int(probe.best_iteration) + 1, 10)
        self.n_estimators_ = n_estimators
        self.booster_ = self._regressor(n_estimators, early_stopping=False)
        self.booster_.fit(X, y, sample_weight=weight, verbose=False)
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        log_rel = self.booster_.predict(self.model_input(transactions))
        if self.detrend:
            log_rel = log_rel + self.index_(month_index(transactions["month"]))
        return np.exp(log_rel)

    def params(self) -> dict[str, Any]:
        return {
            **self.params_,
            "n_estimators_used": getattr(self, "n_estimators_", None),
            "detrend": self.detrend,
            "trend_months": self.trend_months,
            "index_smooth_months": self.index_smooth_months,
            "index_smooth_edge": self.index_smooth_edge,
            "address_encoding": self.uses_encoding,
            "encoding_prior": self.encoding_prior,
            "encoding_half_life": self.encoding_half_life,
            "recency_half_life": self.recency_half_life,
            "valid_months": self.valid_months,
            "early_stopping_rounds": self.early_stopping_rounds,
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
