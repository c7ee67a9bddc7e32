"""Honest, time-aware evaluation.

* **holdout**: train on every month up to a cut-off, test on every month after it;
* **rolling**: retrain each month on everything before it (an expanding window) and predict
  that month, the way a model in production is refreshed.

A random split is never the headline: sales of the same block, storey band and month land on
both sides and flatter the score (:func:`random_split` exists to show that).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hdb_mlops.model.models import PriceModel

DEFAULT_CUTOFF = "2024-12"
PRICE_BANDS = (0, 400_000, 600_000, 800_000, 1_000_000, np.inf)


def metrics(y_true: np.ndarray | pd.Series, y_pred: np.ndarray | pd.Series) -> dict[str, float]:
    """MAPE, median APE, MAE, RMSE, R² and the shares within ±5% and ±10% (in %)."""
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    if len(y_true) == 0:
        raise ValueError("no rows to evaluate")
    if not np.isfinite(y_pred).all():
        raise ValueError(f"{(~np.isfinite(y_pred)).sum()} predictions are NaN or infinite")
    err = y_pred - y_true
    ape = np.abs(err) / y_true
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mape": float(ape.mean() * 100),
        "median_ape": float(np.median(ape) * 100),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "within_5": float((ape <= 0.05).mean() * 100),
        "within_10": float((ape <= 0.10).mean() * 100),
        "n": len(y_true),
    }


def metrics_by(predictions: pd.DataFrame, by: str) -> pd.DataFrame:
    """Metrics per group of a predictions frame (columns resale_price, prediction, ``by``)."""
    rows = {
        key: metrics(group["resale_price"], group["prediction"])
        for key, group in predictions.groupby(by, observed=True)
    }
    return pd.DataFrame.from_dict(rows, orient="index").sort_values("mape")


def price_band(prices: pd.Series) -> pd.Series:
    """Price bands: <400k, 400-600k, 600-800k, 800k-1M, >=1M."""
    labels = ["<400k", "400-600k", "600-800k", "800k-1M", ">=1M"]
    return pd.cut(prices, bins=list(PRICE_BANDS), labels=labels, right=False)


@dataclass
class Evaluation:
    """Predictions of one protocol with their metrics."""

    protocol: str
    model: str
    predictions: pd.DataFrame
    overall: dict[str, float]
    fit_seconds: float
    per_month: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the fitted model (holdout and random split; the last one fitted for rolling)
    fitted: PriceModel | None = field(default=None, repr=False)
    #: the rows it was trained on (holdout and random split)
    train: pd.DataFrame | None = field(default=None, repr=False)

    def by(self, column: str) -> pd.DataFrame:
        """Metrics by ``town``, ``flat_type``, ``price_band`` (actual price),
        ``predicted_band`` (predicted price) or ``month``."""
        return metrics_by(self.predictions, column)


def _predictions(test: pd.DataFrame, pred: np.ndarray) -> pd.DataFrame:
    out = test[
        ["month", "town", "flat_type", "flat_model", "floor_area_sqm", "resale_price"]
    ].copy()
    out["prediction"] = pred
    out["ape"] = np.abs(pred - out["resale_price"]) / out["resale_price"] * 100
    out["price_band"] = price_band(out["resale_price"])
    # errors by what the model said: grouping by the actual price makes every model look
    # worst at both ends (the highest prices are the ones it under-predicted)
    out["predicted_band"] = price_band(out["prediction"])
    return out


def level_drift(predictions: pd.DataFrame) -> pd.DataFrame:
    """Split each month's error into a market-level part and the rest.

    Per month: ``level_bias`` (%), the median of ``actual / prediction`` minus one (positive:
    the model is too low, the market rose past it); ``mape``; and ``level_adjusted_mape``,
    the MAPE after every prediction of the month is scaled by that month's median ratio.

    The adjustment uses the month's own prices, so it is a diagnostic, never a score: it
    answers "how good would the model be if it knew the market's level?". When the adjusted
    error grows with the months ahead too, the market has moved *within* itself (some towns,
    flat types or lease bands more than others) and only retraining catches up.
    """
    if predictions.empty:
        raise ValueError("no predictions to analyse")
    ratio = np.log(
        predictions["resale_price"].to_numpy(dtype="float64")
        / predictions["prediction"].to_numpy(dtype="float64")
    )
    month = predictions["month"].to_numpy()
    frame = pd.DataFrame({"month": month, "log_ratio": ratio})
    bias = frame.groupby("month")["log_ratio"].transform("median").to_numpy()
    frame["ape"] = np.abs(1 - np.exp(-ratio)) * 100
    frame["adjusted_ape"] = np.abs(1 - np.exp(-(ratio - bias))) * 100
    grouped = frame.groupby("month")
    out = pd.DataFrame(
        {
            "level_bias": (np.exp(grouped["log_ratio"].median()) - 1) * 100,
            "mape": grouped["ape"].mean(),
            "level_adjusted_mape": grouped["adjusted_ape"].mean(),
            "n": grouped.size(),
        }
    )
    return out.sort_index()


def split_holdout(
    transactions: pd.DataFrame, cutoff: str = DEFAULT_CUTOFF
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows up to and including the cut-off month, and rows after it."""
    cut = pd.Period(cutoff, freq="M")
    train = transactions[transactions["month"] <= cut]
    test = transactions[transactions["month"] > cut]
    if train.empty or test.empty:
        raise ValueError(
            f"cut-off {cutoff} leaves {len(train)} training and {len(test)} test rows: "
            f"the data covers {transactions['month'].min()} .. {transactions['month'].max()}"
        )
    return train, test


def holdout(
    transactions: pd.DataFrame, make_model: Callable[[], PriceModel], cutoff: str = DEFAULT_CUTOFF
) -> Evaluation:
    """Train up to ``cutoff``, test on every later month."""
    train, test = split_holdout(transactions, cutoff)
    model = make_model()
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    preds = _predictions(test, model.predict(test))
    per_month = metrics_by(preds, "month").sort_index()
    return Evaluation(
        "holdout",
        model.name,
        preds,
        metrics(preds["resale_price"], preds["prediction"]),
        seconds,
        per_month,
        fitted=model,
        train=train,
    )


def rolling(
    transactions: pd.DataFrame,
    make_model: Callable[[], PriceModel],
    start: str = "2025-01",
    end: str | None = None,
    train_window: int | None = None,
) -> Evaluation:
    """Retrain before every month from ``start`` to ``end`` on all earlier rows (or the last
    ``train_window`` months of them) and predict that month."""
    months = sorted(m for m in transactions["month"].unique() if m >= pd.Period(start, freq="M"))
    if end is not None:
        months = [m for m in months if m <= pd.Period(end, freq="M")]
    if not months:
        raise ValueError(f"no months from {start} in the data")
    parts, fit_seconds = [], 0.0
    name = "model"
    for month in months:
        train = transactions[transactions["month"] < month]
        if train_window is not None:
            train = train[train["month"] > month - train_window - 1]
        test = transactions[transactions["month"] == month]
        model = make_model()
        name = model.name
        t0 = time.perf_counter()
        model.fit(train)
        fit_seconds += time.perf_counter() - t0
        parts.append(_predictions(test, model.predict(test)))
    preds = pd.concat(parts)
    per_month = metrics_by(preds, "month").sort_index()
    overall = metrics(preds["resale_price"], preds["prediction"])
    overall["mean_monthly_mape"] = float(per_month["mape"].mean())
    return Evaluation("rolling", name, preds, overall, fit_seconds, per_month)


def random_split(
    transactions: pd.DataFrame,
    make_model: Callable[[], PriceModel],
    test_share: float = 0.2,
    seed: int = 42,
) -> Evaluation:
    """A random split, for contrast only: near-duplicate sales leak across it."""
    rng = np.random.default_rng(seed)
    mask = rng.random(len(transactions)) < test_share
    train, test = transactions[~mask], transactions[mask]
    model = make_model()
    t0 = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - t0
    preds = _predictions(test, model.predict(test))
    return Evaluation(
        "random", model.name, preds, metrics(preds["resale_price"], preds["prediction"]), seconds
    )


def frozen_vs_retrained(
    transactions: pd.DataFrame,
    make_model: Callable[[], PriceModel],
    train_end: str = "2019-12",
    retrain_every: int = 1,
) -> pd.DataFrame:
    """Monthly MAPE after ``train_end`` of a model trained once on the data up to it, next to
    a model retrained every ``retrain_every`` months on everything before the month.

    The evidence of chapter 1: a model left alone decays as the market moves.
    """
    cut = pd.Period(train_end, freq="M")
    frozen = make_model().fit(transactions[transactions["month"] <= cut])
    months = sorted(m for m in transactions["month"].unique() if m > cut)
    rows, current, fitted_at = [], None, None
    for i, month in enumerate(months):
        test = transactions[transactions["month"] == month]
        if current is None or i % retrain_every == 0:
            current = make_model().fit(transactions[transactions["month"] < month])
            fitted_at = month - 1
        rows.append(
            {
                "month": month,
                "frozen_mape": metrics(test["resale_price"], frozen.predict(test))["mape"],
                "retrained_mape": metrics(test["resale_price"], current.predict(test))["mape"],
                "retrained_through": fitted_at,
                "n": len(test),
            }
        )
    return pd.DataFrame(rows).set_index("month")


def mape_interval(
    predictions: pd.DataFrame, level: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval of the MAPE of a predictions frame (its ``ape`` column, in %):
    how much the figure would move on another draw of sales from the same months. Two models
    whose intervals overlap widely are not shown to differ by this test set.

    scipy's :func:`scipy.stats.bootstrap` (percentile method, seeded) does the resampling.
    """
    from scipy.stats import bootstrap

    ape = predictions["ape"].to_numpy(dtype="float64")
    result = bootstrap(
        (ape,),
        np.mean,
        confidence_level=level,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval_coverage(
    predictions: pd.DataFrame, quantiles: dict[str, float], level: float = 0.9
) -> dict[str, float]:
    """How often a prediction interval built from residual ``quantiles`` (log(actual /
    predicted), as :func:`hdb_mlops.model.bundle.residual_quantiles` computes them) holds
    the actual price of ``predictions``: the share inside, below and above, in %.

    Measure it on months the quantiles were NOT computed on: on their own months the
    coverage is the nominal level by construction."""
    lo_q, hi_q = f"{(1 - level) / 2:g}", f"{(1 + level) / 2:g}"
    ratio = np.log(predictions["resale_price"].to_numpy() / predictions["prediction"].to_numpy())
    below = float((ratio < quantiles[lo_q]).mean() * 100)
    above = float((ratio > quantiles[hi_q]).mean() * 100)
    return {"inside": 100 - below - above, "below": below, "above": above, "n": len(ratio)}
