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
