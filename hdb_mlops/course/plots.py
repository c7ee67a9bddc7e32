"""Plots the notebooks show. Each function takes data and returns a matplotlib Figure.

Conventions, the same in every figure:

* colours from the Okabe-Ito palette, which readers with a colour-vision deficiency can tell
  apart (no red/green pairs);
* prices on k/M axes (``650k``, ``1.2M``), never matplotlib's offset ``1e6``;
* a figure made from the bundled sample says so (``source=`` "sample"): its prices are
  synthetic, and a reader must not take them for the market's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Okabe & Ito (2008): blue, orange, bluish green, vermillion, sky blue, reddish purple, yellow
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, _ = PALETTE
SAMPLE_NOTE = "synthetic sample: prices are generated, not real sales"


def source_note(data_source: object) -> str | None:
    """The caption a figure made from ``data_source`` carries (None for real data)."""
    return SAMPLE_NOTE if str(data_source) == "sample" else None


def price_label(value: float, _pos: object = None) -> str:
    """A price for an axis tick: ``650k``, ``1.2M``."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    return f"{value / 1000:,.0f}k"


def _figure(width: float = 9, height: float = 4, ncols: int = 1):
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), layout="constrained")


def _note(fig: Figure, source: str | None, extra: str | None = None) -> None:
    """Write the source caption (and an explanation) under the figure."""
    text = " · ".join(t for t in (extra, source_note(source) if source else None) if t)
    if text:
        fig.supxlabel(text, fontsize=8, color="#555555", x=0.01, ha="left")


def _price_axis(axis: object) -> None:
    axis.set_major_formatter(price_label)  # type: ignore[attr-defined]


def median_price_by_year(frame: pd.DataFrame, source: str | None = None) -> Figure:
    """Median resale price per year, with the interquartile band."""
    by_year = (
        frame.groupby(frame["month"].dt.year)["resale_price"].quantile([0.25, 0.5, 0.75]).unstack()
    )
    fig, ax = _figure()
    ax.fill_between(
        by_year.index, by_year[0.25], by_year[0.75], alpha=0.25, color=BLUE, label="middle 50%"
    )
    ax.plot(by_year.index, by_year[0.5], marker="o", color=BLUE, label="median")
    ax.set(title="Resale price by year (all flat types)", xlabel="year", ylabel="price (S$)")
    _price_axis(ax.yaxis)
    ax.legend()
    _note(fig, source)
    return fig


def median_price_by_town(
    frame: pd.DataFrame,
    flat_type: str = "4 ROOM",
    year: int | None = None,
    source: str | None = None,
) -> Figure:
    """Median price per town for one flat type in one year (default: the latest full year).

    Pooling every year and flat type would rank towns by their mix of sales (old years, small
    flats) as much as by their prices; one flat type in one year compares like with like."""
    years = frame["month"].dt.year
    counts = years.value_counts()
    year = year or int(max(y for y, n in counts.items() if n >= counts.max() * 0.5))
    subset = frame[(years == year) & (frame["flat_type"] == flat_type)]
    by_town = subset.groupby("town")["resale_price"].agg(["median", "size"])
    by_town = by_town[by_town["size"] >= 10].sort_values("median")
    fig, ax = _figure(9, 6)
    ax.barh(by_town.index, by_town["median"].to_numpy(), color=BLUE)
    ax.set(title=f"Median price of a {flat_type} flat by town, {year}", xlabel="price (S$)")
    _price_axis(ax.xaxis)
    _note(fig, source, "towns with at least 10 such sales in the year")
    return fig


def volume_by_month(frame: pd.DataFrame, source: str | None = None) -> Figure:
    """Number of sales per month."""
    counts = frame.groupby("month").size()
    fig, ax = _figure()
    ax.plot(counts.index.to_timestamp(), counts.to_numpy(), color=BLUE)
    synthetic = source_note(source) is not None
    ylabel = "sales in the sample" if synthetic else "sales"
    ax.set(title="Sales per month", xlabel="month", ylabel=ylabel)
    ax.set_ylim(bottom=0)
    extra = "the sample draws a fixed number of sales a month" if synthetic else None
    _note(fig, source, extra)
    return fig


def frozen_vs_retrained(
    table: pd.DataFrame, train_end: str, retrain_every: int, source: str | None = None
) -> Figure:
    """Monthly error of a model trained once next to one retrained every few months, with a
    marker at the training cut-off."""
    fig, ax = _figure()
    months = table.index.to_timestamp()
    ax.plot(
        months,
        table["frozen_mape"],
        label=f"trained once, on sales to {train_end}",
        color=VERMILLION,
    )
    every = "every month" if retrain_every == 1 else f"every {retrain_every} months"
    ax.plot(
        months,
        table["retrained_mape"],
        label=f"retrained {every} on all earlier sales",
        color=BLUE,
        linestyle="--",
    )
    cut = pd.Period(train_end, freq="M").to_timestamp(how="end")
    ax.axvline(cut, color="#555555", linewidth=1, linestyle=":")
    ax.annotate(" training cut-off", (cut, 0), xytext=(2, 4), textcoords="offset points",
                fontsize=8, color="#555555")  # fmt: skip
    ax.set(title="Error by month: a model left alone decays", xlabel="month", ylabel="MAPE (%)")
    ax.set_ylim(bottom=0)
    ax.legend()
    _note(fig, source)
    return fig


def residuals(predictions: pd.DataFrame, source: str | None = None) -> Figure:
    """Predicted against actual prices, and the percentage error against the *predicted*
    price, as hexbin densities (thousands of points would hide each other).

    The error is grouped by what the model predicted, not by the actual price: grouping by the
    actual price makes any model look worst at the extremes (the highest prices are the ones
    it under-predicted), a U-shape that a perfect model of noisy prices would show too."""
    fig, (left, right) = _figure(11, 4.2, ncols=2)
    actual, pred = predictions["resale_price"], predictions["prediction"]
    left.hexbin(actual, pred, gridsize=45, mincnt=1, cmap="cividis", bins="log")
    lims = [min(actual.min(), pred.min()), max(actual.max(), pred.max())]
    left.plot(lims, lims, color="black", linewidth=1)
    left.set(title="Predicted vs actual", xlabel="actual (S$)", ylabel="predicted (S$)")
    _price_axis(left.xaxis)
    _price_axis(left.yaxis)
    pct = (pred - actual) / actual * 100
    right.hexbin(pred, pct.clip(-40, 40), gridsize=45, mincnt=1, cmap="cividis", bins="log")
    right.axhline(0, color="black", linewidth=1)
    for band in (-10, -5, 5, 10):
        right.axhline(band, color="#555555", linewidth=0.6, linestyle="--")
    right.set(title="Error vs predicted price", xlabel="predicted (S$)", ylabel="error (%)")
    _price_axis(right.xaxis)
    _note(fig, source, "error = (predicted - actual) / actual: above 0 the model priced too high")
    return fig


def model_comparison(
    table: pd.DataFrame, intervals: dict[str, tuple[float, float]], source: str | None = None
) -> Figure:
    """Each model's MAPE (%) as a dot with its 95% bootstrap interval
    (:func:`hdb_mlops.model.evaluate.mape_interval`): overlapping intervals mean the test
    months do not tell the models apart."""
    fig, ax = _figure(7, 0.6 * len(table) + 1.2)
    ordered = table["mape"].sort_values(ascending=False)
    for y, (name, value) in enumerate(ordered.items()):
        low, high = intervals[name]
        ax.errorbar(value, y, xerr=[[value - low], [high - value]], fmt="o", color=BLUE,
                    ecolor=SKY, elinewidth=3, capsize=0)  # fmt: skip
        ax.annotate(f"{value:.2f}%", (high, y), xytext=(6, -3), textcoords="offset points")
    ax.set_yticks(range(len(ordered)), ordered.index)
    ax.set(title="Holdout MAPE by model, with 95% intervals", xlabel="MAPE (%)")
    ax.set_xlim(left=0, right=ordered.max() * 1.25)
    _note(fig, source)
    return fig


def _line(ax: Axes, series: pd.Series, **kw: object) -> None:
    ax.plot(series.index.to_timestamp(), series.to_numpy(), **kw)


def level_drift(
    drift: pd.DataFrame, rolling_per_month: pd.Series | None = None, source: str | None = None
) -> Figure:
    """Holdout error by month, with and without the market-level part
    (:func:`hdb_mlops.model.evaluate.level_drift`), next to the rolling protocol's error over
    the months it covers."""
    fig, ax = _figure()
    _line(ax, drift["mape"], label="trained once (holdout)", color=VERMILLION)
    _line(ax, drift["level_adjusted_mape"], label="trained once, market level known",
          color=ORANGE, linestyle="--")  # fmt: skip
    if rolling_per_month is not None:
        first, last = rolling_per_month.index.min(), rolling_per_month.index.max()
        _line(ax, rolling_per_month, label=f"retrained monthly (rolling, {first} to {last})",
              color=BLUE, marker="o", markersize=3)  # fmt: skip
    ax.set(title="Error by month after the cut-off", xlabel="month", ylabel="MAPE (%)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    _note(fig, source)
    return fig
