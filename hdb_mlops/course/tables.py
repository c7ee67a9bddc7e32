"""Tables the notebooks show, at the precision that carries meaning.

A figure printed with more digits than it can hold on another machine makes the notebook
check (nbval) fail there: BLAS kernels and thread counts change the last digits of a linear
model's errors, for example. So every table goes through one of these functions, which round
each kind of figure once, here:

* percentages (MAPE, median APE, the shares within ±5% and ±10%): 0.01 points;
* money (MAE, RMSE): S$1,000, shown in thousands (``S$k``); a single price: the dollar;
* R²: 3 places;
* counts: whole numbers.

Key figures keep their full precision in the pipeline manifest; only their display is rounded.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import pandas as pd

#: metric name -> (column title, kind)
METRIC_COLUMNS: dict[str, tuple[str, str]] = {
    "mape": ("MAPE %", "percent"),
    "median_ape": ("median APE %", "percent"),
    "mean_monthly_mape": ("mean monthly MAPE %", "percent"),
    "mae": ("MAE S$k", "money"),
    "rmse": ("RMSE S$k", "money"),
    "r2": ("R²", "ratio"),
    "within_5": ("within ±5% (%)", "percent"),
    "within_10": ("within ±10% (%)", "percent"),
    "n": ("n", "count"),
}
DEFAULT_METRICS: tuple[str, ...] = (
    "mape",
    "median_ape",
    "mae",
    "rmse",
    "r2",
    "within_5",
    "within_10",
    "n",
)


def rounded(value: Any, kind: str) -> Any:
    """One figure at the precision of its kind (see the module docstring)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if kind == "percent":
        return round(float(value), 2)
    if kind == "money":
        return round(float(value) / 1000)
    if kind == "dollars":
        return round(float(value))
    if kind == "ratio":
        return round(float(value), 3)
    if kind == "count":
        return int(value)
    return value


def metrics_table(
    results: Mapping[str, Mapping[str, float]] | pd.DataFrame,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    *,
    index_name: str | None = None,
) -> pd.DataFrame:
    """Metrics per model (or per group) as a display table: one row per key of ``results``
    (a mapping of name -> metrics dict, or a frame with metric columns), one column per
    metric, each rounded by its kind and titled with its unit."""
    frame = (
        results.copy()
        if isinstance(results, pd.DataFrame)
        else pd.DataFrame.from_dict(dict(results), orient="index")
    )
    out = pd.DataFrame(index=frame.index)
    for name in metrics:
        title, kind = METRIC_COLUMNS[name]
        out[title] = [rounded(v, kind) for v in frame[name]]
    if index_name is not None:
        out.index.name = index_name
    return out


def group_table(
    by_group: pd.DataFrame,
    metrics: tuple[str, ...] = ("mape", "within_5", "within_10", "n"),
    *,
    min_n: int = 30,
) -> pd.DataFrame:
    """:func:`metrics_table` for groups (towns, flat types, bands), without the groups of
    fewer than ``min_n`` sales: a MAPE over a handful of sales is noise, not a result. The
    table's ``attrs["hidden"]`` says how many groups (and sales) were left out."""
    small = by_group["n"] < min_n
    table = metrics_table(by_group[~small], metrics)
    table.attrs["hidden"] = {
        "groups": int(small.sum()),
        "sales": int(by_group.loc[small, "n"].sum()),
    }
    return table


def figures_table(
    figures: Mapping[str, Any], kinds: Mapping[str, str] | None = None, title: str = "key figures"
) -> pd.DataFrame:
    """Key figures as a one-column table of text: integers as integers, ``kinds`` (name ->
    percent/money/ratio) rounded by kind, other floats to 2 places. Text, so that a mix of
    counts, prices and MAPEs does not print as ``-15.000000``."""
    kinds = dict(kinds or {})
    shown: dict[str, str] = {}
    for name, value in figures.items():
        kind = kinds.get(name)
        if kind is not None:
            value = rounded(value, kind)
        if isinstance(value, bool) or value is None:
            shown[name] = str(value)
        elif isinstance(value, int):
            shown[name] = f"{value:,}"
        elif isinstance(value, float):
            shown[name] = f"{value:,.2f}"
        else:
            shown[name] = str(value)
    return pd.Series(shown, dtype="str").to_frame(title)


def shown(answer: Any, places: int = 2) -> Any:
    """An exercise's answer as the notebook shows it: a number, or the numbers of a tuple or
    list, rounded to ``places`` decimals (as plain floats); anything else (a blank answer's
    ``...`` or ``None``) as it is.

    Only the display is rounded: the checks see the learner's full-precision value. Shown in
    full, the last digits of a mean differ between CPUs (the order numpy adds in depends on
    the vector instructions it uses), and the committed output would fail nbval there.
    """
    if isinstance(answer, (tuple, list)):
        return type(answer)(shown(v, places) for v in answer)
    if isinstance(answer, numbers.Integral) or not isinstance(answer, numbers.Real):
        return answer  # counts and flags as they are, and whatever is not a number
    value = float(answer)
    return round(value, places) if math.isfinite(value) else value
