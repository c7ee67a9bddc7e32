"""Fairness of the valuations: are some towns, flat types or price bands valued worse?

For each grouping, a fairlearn ``MetricFrame`` of the valuation errors gives, per group:

* ``mape`` — mean absolute percentage error (%);
* ``median_ape`` — median absolute percentage error (%);
* ``mean_pct_error`` — mean signed percentage error (%), (predicted - actual) / actual: above 0
  the group is over-valued, below 0 under-valued (the bias a seller or a buyer would feel);
* ``within_5`` — share of sales valued within ±5 % (%);
* ``n`` — number of sales.

Groups of fewer than ``min_n`` sales (default 30) are shown but flagged ``small``: they are
not ranked and stay out of the differences and ratios, because a figure over a handful of
sales is noise. Over the other groups, fairlearn's ``difference()`` (largest minus smallest)
and ``ratio()`` (smallest over largest) say how far apart they are. The 95 % intervals come
from a seeded bootstrap within each group (:func:`bootstrap`, which says why it is not
fairlearn's own). The interval of a difference or a ratio is that of the two groups at the
extremes of the point figures, re-measured in each draw: the largest minus the smallest group
of each draw would be biased upwards, since with many groups the noisiest ones land at the
extremes of every draw. A ratio of signed errors means nothing and is not reported; for the
signed error, the best group is the one nearest zero and the worst the one farthest from it.

Price bands are the course's bands of the *actual* price (``price_band`` of the predictions
of :mod:`hdb_mlops.model.evaluate`: <400k ... >=1M) when the predictions carry them, else
quintiles of the actual price. Errors grouped by the actual price are larger at both ends for
any model of noisy prices (the dearest sales are the ones a model under-predicted): read
them next to the other groupings, not alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_MIN_N = 30
DEFAULT_GROUPINGS: tuple[str, ...] = ("town", "flat_type", "price_band")
CI_QUANTILES: tuple[float, float] = (0.025, 0.975)
#: metric -> is a ratio between groups meaningful for it
METRICS: dict[str, bool] = {
    "mape": True,
    "median_ape": True,
    "mean_pct_error": False,
    "within_5": True,
}


def _pct_errors(y_true: Any, y_pred: Any) -> np.ndarray:
    y_true = np.asarray(y_true, dtype="float64")
    return (np.asarray(y_pred, dtype="float64") - y_true) / y_true * 100


def mape(y_true: Any, y_pred: Any) -> float:
    """Mean absolute percentage error, in %."""
    return float(np.mean(np.abs(_pct_errors(y_true, y_pred))))


def median_ape(y_true: Any, y_pred: Any) -> float:
    """Median absolute percentage error, in %."""
    return float(np.median(np.abs(_pct_errors(y_true, y_pred))))


def mean_pct_error(y_true: Any, y_pred: Any) -> float:
    """Mean signed percentage error, in % (above 0: over-valued)."""
    return float(np.mean(_pct_errors(y_true, y_pred)))


def within_5(y_true: Any, y_pred: Any) -> float:
    """Share of predictions within ±5 % of the actual price, in %."""
    return float(np.mean(np.abs(_pct_errors(y_true, y_pred)) <= 5) * 100)


_FUNCTIONS = {
    "mape": mape,
    "median_ape": median_ape,
    "mean_pct_error": mean_pct_error,
    "within_5": within_5,
}


def price_quintiles(prices: pd.Series) -> pd.Series:
    """Quintiles of the actual price, labelled ``Q1 <=420k`` ... ``Q5 >910k``."""
    codes, edges = pd.qcut(prices, 5, labels=False, retbins=True, duplicates="drop")
    labels = []
    for i in range(len(edges) - 1):
        hi = edges[i + 1]
        labels.append(
            f"Q{i + 1} <={hi / 1000:,.0f}k"
            if i < len(edges) - 2
            else f"Q{i + 1} >{edges[i] / 1000:,.0f}k"
        )
    return pd.Series(
        pd.Categorical.from_codes(codes.astype(int), labels, ordered=True),
        index=prices.index,
        name="price_band",
    )


@dataclass
class GroupFairness:
    """The errors of one grouping: per group, the spread between groups, and intervals."""

    by: str
    #: per group: the metrics, their interval bounds (``<metric>_low``/``_high``), n, small,
    #: rank (1 = lowest MAPE; empty for small groups)
    groups: pd.DataFrame
    #: per metric: difference, its interval, ratio, its interval, best and worst group
    summary: pd.DataFrame
    min_n: int
    n_boot: int

    @property
    def ranked(self) -> pd.DataFrame:
        """The groups of at least ``min_n`` sales, best MAPE first."""
        return self.groups[~self.groups["small"]].sort_values("rank")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        groups = self.groups.reset_index().rename(columns={self.groups.index.name: "group"})
        return {
            "by": self.by,
            "min_n": self.min_n,
            "n_boot": self.n_boot,
            "groups": groups.astype(object).where(groups.notna(), None).to_dict("records"),
            "summary": self.summary.astype(object)
            .where(self.summary.notna(), None)
            .to_dict("index"),
        }


def _frame(metric_frame: Any) -> pd.DataFrame:
    return pd.DataFrame(metric_frame.by_group)


def _metric_frame(data: pd.DataFrame, groups_of: pd.Series, with_count: bool = False) -> Any:
    from fairlearn.metrics import MetricFrame, count

    metrics = {**_FUNCTIONS, "n": count} if with_count else dict(_FUNCTIONS)
    return MetricFrame(
        metrics=metrics,
        y_true=data["resale_price"],
        y_pred=data["prediction"],
        sensitive_features=groups_of,
    )


def _best(values: pd.Series, metric: str) -> str:
    """The best-served group for ``metric``: the most within ±5 %, the bias nearest zero,
    else the lowest error."""
    if metric == "within_5":
        return str(values.idxmax())
    return str(values.abs().idxmin() if metric == "mean_pct_error" else values.idxmin())


def _worst(values: pd.Series, metric: str) -> str:
    """The worst-served group for ``metric`` (the opposite of :func:`_best`)."""
    if metric == "within_5":
        return str(values.idxmin())
    return str(values.abs().idxmax() if metric == "mean_pct_error" else values.idxmax())


def bootstrap(errors: dict[str, np.ndarray], n_boot: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Seeded bootstrap replicates of each metric per group: metric -> frame of ``n_boot``
    rows (replicates) by group. Each group's percentage errors are resampled with
    replacement within the group, so every replicate keeps the group sizes.

    fairlearn 0.15 has bootstrap intervals (``MetricFrame(n_boot=..., ci_quantiles=...,
    random_state=...)``), but it recomputes the whole MetricFrame for every resample: about
    3 s per resample for 40,000 sales here, so 200 resamples take ten minutes per grouping.
    These numpy lines do the same 200 in well under a second."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRICS}
    for group, pct in errors.items():
        sample = pct[rng.integers(0, len(pct), size=(n_boot, len(pct)))]
        absolute = np.abs(sample)
        out["mape"][group] = absolute.mean(axis=1)
        out["median_ape"][group] = np.median(absolute, axis=1)
        out["mean_pct_error"][group] = sample.mean(axis=1)
        out["within_5"][group] = (absolute <= 5).mean(axis=1) * 100
    return {m: pd.DataFrame(values) for m, values in out.items()}


def group_fairness(
    predictions: pd.DataFrame,
    by: str,
    *,
    min_n: int = DEFAULT_MIN_N,
    n_boot: int = 200,
    seed: int = 0,
) -> GroupFairness:
    """The valuation errors of ``predictions`` (columns ``resale_price``, ``prediction`` and
    ``by``; ``price_band`` is made from the actual prices when absent) across the groups of
    ``by``. ``n_boot=0`` skips the intervals."""
    if by == "price_band" and by not in predictions:
        predictions = predictions.assign(price_band=price_quintiles(predictions["resale_price"]))
    for column in ("resale_price", "prediction", by):
        if column not in predictions:
            raise KeyError(
                f"the predictions have no column {column!r} (needed: resale_price, "
                f"prediction and the grouping column {by!r})"
            )
    data = predictions[["resale_price", "prediction", by]].dropna()
    if data.empty:
        raise ValueError("no predictions to assess")
    groups_of = data[by].astype(str).rename(by)
    sizes = groups_of.value_counts()
    kept = groups_of.isin(sizes.index[sizes >= min_n])
    parts, summary = [], pd.DataFrame(index=list(METRICS))
    if kept.any():
        frame = _metric_frame(data[kept], groups_of[kept])  # fairlearn: point figures
        parts.append(_frame(frame))
        if kept.sum() and groups_of[kept].nunique() >= 2:
            summary["difference"] = frame.difference()
            ratio = frame.ratio()
            summary["ratio"] = [ratio[m] if ok else np.nan for m, ok in METRICS.items()]
            by_group = _frame(frame)
            summary["best"] = [_best(by_group[m], m) for m in METRICS]
            summary["worst"] = [_worst(by_group[m], m) for m in METRICS]
            extremes = {m: (by_group[m].idxmax(), by_group[m].idxmin()) for m in METRICS}
    if (~kept).any():
        parts.append(_frame(_metric_frame(data[~kept], groups_of[~kept])))
    groups = pd.concat(parts)
    groups["n"] = sizes.reindex(groups.index).astype(int)
    groups["small"] = groups["n"] < min_n
    if n_boot and kept.any():
        pct = (data["prediction"] - data["resale_price"]) / data["resale_price"] * 100
        errors = {g: pct[groups_of == g].to_numpy() for g in groups.index[~groups["small"]]}
        replicates = bootstrap(errors, n_boot, seed)
        low_q, high_q = CI_QUANTILES
        for metric, reps in replicates.items():
            groups[f"{metric}_low"] = reps.quantile(low_q).reindex(groups.index)
            groups[f"{metric}_high"] = reps.quantile(high_q).reindex(groups.index)
        if "difference" in summary:
            # the two groups of the point figures' extremes, in every draw (module docstring)
            spread = {m: reps[hi] - reps[lo] for m, reps in replicates.items()
                      for hi, lo in [extremes[m]]}  # fmt: skip
            ratios = {m: reps[lo] / reps[hi] for m, reps in replicates.items()
                      for hi, lo in [extremes[m]]}  # fmt: skip
            summary["difference_low"] = [spread[m].quantile(low_q) for m in METRICS]
            summary["difference_high"] = [spread[m].quantile(high_q) for m in METRICS]
            summary["ratio_low"] = [ratios[m].quantile(low_q) if ok else np.nan
                                    for m, ok in METRICS.items()]  # fmt: skip
            summary["ratio_high"] = [ratios[m].quantile(high_q) if ok else np.nan
                                     for m, ok in METRICS.items()]  # fmt: skip
    groups["rank"] = groups["mape"].where(~groups["small"]).rank(method="min")
    groups.index.name = by
    return GroupFairness(by, groups.sort_values(["small", "mape"]), summary, min_n, n_boot)


def fairness_report(
    predictions: pd.DataFrame,
    groupings: Sequence[str] = DEFAULT_GROUPINGS,
    **kwargs: Any,
) -> dict[str, GroupFairness]:
    """:func:`group_fairness` for each grouping (default: towns, flat types, price bands)."""
    return {by: group_fairness(predictions, by, **kwargs) for by in groupings}


def display_table(result: GroupFairness, top: int | None = None) -> pd.DataFrame:
    """The groups as a display table: MAPE with its interval, median APE, bias, share within
    ±5 %, n; small groups last and marked. ``top`` keeps the ``top`` best and the ``top``
    worst ranked groups (never only the best: the worst are the point). 0.01-point
    precision, as :mod:`hdb_mlops.course.tables`."""
    ranked, small = result.ranked, result.groups[result.groups["small"]]
    if top is not None and len(ranked) > 2 * top:
        ranked = pd.concat([ranked.head(top), ranked.tail(top)])
    rows = pd.concat([ranked, small])
    out = pd.DataFrame(index=rows.index)
    out["MAPE %"] = rows["mape"].round(2)
    if "mape_low" in rows:
        out["95% interval"] = [
            f"{lo:.2f}-{hi:.2f}" if pd.notna(lo) else ""
            for lo, hi in zip(rows["mape_low"], rows["mape_high"], strict=True)
        ]
    out["median APE %"] = rows["median_ape"].round(2)
    out["bias %"] = rows["mean_pct_error"].round(2)
    out["within ±5% (%)"] = rows["within_5"].round(2)
    out["n"] = rows["n"]
    out["note"] = np.where(rows["small"], f"fewer than {result.min_n} sales: not ranked", "")
    return out


def disparity_advice(result: GroupFairness, threshold_points: float = 2.0) -> str:
    """A short reading of one grouping's spread, and what to do about a large one."""
    if "difference" not in result.summary:
        return (
            f"By {result.by}: fewer than two groups with {result.min_n}+ sales; nothing to compare."
        )
    s = result.summary
    gap, worst, best = s.loc["mape", "difference"], s.loc["mape", "worst"], s.loc["mape", "best"]
    bias = result.groups.loc[worst, "mean_pct_error"]
    low = s.loc["mape", "difference_low"] if "difference_low" in s else np.nan
    sure = (
        ""
        if np.isnan(low)
        else (f" (95% interval of the gap {low:.2f} to {s.loc['mape', 'difference_high']:.2f})")
    )
    text = (
        f"By {result.by}: MAPE runs from {result.groups.loc[best, 'mape']:.2f}% ({best}) to "
        f"{result.groups.loc[worst, 'mape']:.2f}% ({worst}), a gap of {gap:.2f} points{sure}; "
        f"{worst} is {'over' if bias > 0 else 'under'}-valued by {abs(bias):.2f}% on average."
    )
    if gap < threshold_points:
        return text + " The groups are served alike."
    return text + (
        " To act on it: check the group's data (few or unusual sales, missing features such "
        "as location); add the feature that explains it or train with more of its sales; "
        "report the group's error and interval next to the overall one (model card); and "
        "watch it after every retraining. Never hide it by dropping the group."
    )
