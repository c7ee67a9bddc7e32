"""Plots the notebooks show. Each function takes data and returns a matplotlib Figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float = 9, height: float = 4):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), layout="constrained")


def median_price_by_year(frame: pd.DataFrame) -> Figure:
    """Median resale price per year, with the interquartile band."""
    by_year = (
        frame.groupby(frame["month"].dt.year)["resale_price"].quantile([0.25, 0.5, 0.75]).unstack()
    )
    fig, ax = _figure()
    ax.fill_between(by_year.index, by_year[0.25], by_year[0.75], alpha=0.25, label="middle 50%")
    ax.plot(by_year.index, by_year[0.5], marker="o", label="median")
    ax.set(title="Resale price by year", xlabel="year", ylabel="price (SGD)")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v / 1000:,.0f}k")
    ax.legend()
    return fig


def median_price_by_town(frame: pd.DataFrame) -> Figure:
    """Median resale price per town, highest first."""
    by_town = frame.groupby("town")["resale_price"].median().sort_values()
    fig, ax = _figure(9, 6)
    ax.barh(by_town.index, by_town.to_numpy())
    ax.set(title="Median resale price by town", xlabel="price (SGD)")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1000:,.0f}k")
    return fig


def volume_by_month(frame: pd.DataFrame) -> Figure:
    """Number of transactions per month."""
    counts = frame.groupby("month").size()
    fig, ax = _figure()
    ax.plot(counts.index.to_timestamp(), counts.to_numpy())
    ax.set(title="Transactions per month", xlabel="month", ylabel="transactions")
    return fig


def frozen_vs_retrained(table: pd.DataFrame, train_end: str) -> Figure:
    """Monthly error of a model trained once next to one retrained regularly."""
    fig, ax = _figure()
    months = table.index.to_timestamp()
    ax.plot(
        months, table["frozen_mape"], label=f"trained once (data to {train_end})", color="tab:red"
    )
    ax.plot(months, table["retrained_mape"], label="retrained regularly", color="tab:green")
    ax.set(title="Error by month: a model left alone decays", xlabel="month", ylabel="MAPE (%)")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig


def residuals(predictions: pd.DataFrame) -> Figure:
    """Predicted against actual prices, and the percentage error against the actual price."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    actual, pred = predictions["resale_price"], predictions["prediction"]
    left.scatter(actual, pred, s=3, alpha=0.3)
    lims = [min(actual.min(), pred.min()), max(actual.max(), pred.max())]
    left.plot(lims, lims, color="black", linewidth=1)
    left.set(title="Predicted vs actual", xlabel="actual (SGD)", ylabel="predicted (SGD)")
    pct = (pred - actual) / actual * 100
    right.scatter(actual, pct, s=3, alpha=0.3)
    right.axhline(0, color="black", linewidth=1)
    for band in (-10, -5, 5, 10):
        right.axhline(band, color="grey", linewidth=0.5, linestyle="--")
    right.set(title="Error (%) vs actual price", xlabel="actual (SGD)", ylabel="error (%)")
    return fig


def model_comparison(table: pd.DataFrame, metric: str = "mape") -> Figure:
    """A bar per model of one metric (table indexed by model name)."""
    fig, ax = _figure(7, 3)
    ordered = table[metric].sort_values(ascending=False)
    ax.barh(ordered.index, ordered.to_numpy())
    ax.set(title=f"{metric.upper()} by model (holdout)", xlabel=metric)
    for y, v in enumerate(ordered.to_numpy()):
        ax.text(v, y, f" {v:.2f}", va="center")
    return fig


def level_drift(drift: pd.DataFrame, rolling_per_month: pd.Series | None = None) -> Figure:
    """Holdout error by month, with and without the market-level part
    (:func:`hdb_mlops.model.evaluate.level_drift`), next to the rolling protocol's error."""
    fig, ax = _figure()
    months = drift.index.to_timestamp()
    ax.plot(months, drift["mape"], label="trained once (holdout)", color="tab:red")
    ax.plot(
        months,
        drift["level_adjusted_mape"],
        label="trained once, market level known",
        color="tab:orange",
        linestyle="--",
    )
    if rolling_per_month is not None:
        ax.plot(
            rolling_per_month.index.to_timestamp(),
            rolling_per_month.to_numpy(),
            label="retrained monthly (rolling)",
            color="tab:green",
        )
    ax.set(title="Error by month after the cut-off", xlabel="month", ylabel="MAPE (%)")
    ax.set_ylim(bottom=0)
    ax.legend()
    return fig
