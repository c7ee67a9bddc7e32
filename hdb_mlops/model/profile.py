"""A reference profile of the training data, stored with every model for drift monitoring.

:func:`reference_profile` summarises a feature frame (and optionally the model's predictions
on it) into a small JSON-ready dict: per numeric column the count, missing share, mean, std,
quantiles, 10 quantile bins with the share of rows in each and a reference sample; per
categorical column the share of each category. A drift monitor later bins live data with the
same edges (:func:`bin_shares`) and compares shares, e.g. with the population stability
index, and compares live values with the reference sample (a two-sample KS test).

Bins are defined by their edges ``e_0 < e_1 < ... < e_k`` (quantiles of the training data,
duplicates removed, so a discrete column may have fewer than 10 bins). The outer bins are
open-ended: bin 0 holds every value ``<= e_1`` and bin ``k-1`` every value ``> e_{k-1}``, so
values outside the training range still land in a bin. Missing values are counted separately
(``missing_share``) and never enter a bin.

The reference sample (``sample``, profile version 2) is the column's values at
:data:`SAMPLE_SIZE` evenly spaced quantiles, ``(i + 0.5) / SAMPLE_SIZE``, taken as observed
values (``inverted_cdf``: integers stay integers): deterministic, a few KB, and distributed
like the column. Version 1 profiles have no sample; readers must treat it as optional.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

PROFILE_VERSION = 2
#: Quantiles reported per numeric column.
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Number of quantile bins per numeric column (before duplicate edges are merged).
N_BINS = 10
#: Categories kept per categorical column (the rest are summed into ``other_share``).
MAX_CATEGORIES = 100
#: Values in the reference sample of a numeric column (and of the predictions).
SAMPLE_SIZE = 500


def _num(value: float) -> float | None:
    """A JSON-safe float, rounded to 6 significant digits (None for NaN/inf)."""
    value = float(value)
    return float(f"{value:.6g}") if np.isfinite(value) else None


def bin_shares(values: np.ndarray | pd.Series, edges: list[float] | np.ndarray) -> np.ndarray:
    """Share of the non-missing ``values`` in each bin defined by ``edges`` (open-ended outer
    bins, right-closed inner bins, as in the profile). Returns ``len(edges) - 1`` shares that
    sum to 1 (all zeros when there are no values)."""
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    edges = np.asarray(edges, dtype="float64")
    n_bins = max(len(edges) - 1, 1)
    if v.size == 0:
        return np.zeros(n_bins)
    inner = edges[1:-1]
    idx = np.searchsorted(inner, v, side="left")
    counts = np.bincount(idx, minlength=n_bins)[:n_bins]
    return counts / v.size


def _sample_value(value: float) -> float | int:
    """A reference sample value for JSON: an integer when it is one, else 6 significant digits."""
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return float(f"{value:.6g}")


def reference_sample(values: np.ndarray, size: int = SAMPLE_SIZE) -> list[float | int]:
    """The finite ``values`` at ``size`` evenly spaced quantiles ``(i + 0.5) / size``, as
    observed values (see the module docstring); empty when there are none."""
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if v.size == 0 or size < 1:
        return []
    probs = (np.arange(size) + 0.5) / size
    return [_sample_value(float(x)) for x in np.quantile(v, probs, method="inverted_cdf")]


def numeric_profile(
    values: np.ndarray | pd.Series, n_bins: int = N_BINS, sample_size: int = SAMPLE_SIZE
) -> dict[str, Any]:
    """Profile of one numeric column: count, missing share, mean, std, min, max, quantiles,
    quantile bins (``bins.edges``, ``bins.shares``) and the reference ``sample``."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype="float64")
    n = int(v.size)
    finite = v[np.isfinite(v)]
    out: dict[str, Any] = {
        "count": int(finite.size),
        "missing_share": _num(1 - finite.size / n) if n else None,
    }
    if finite.size == 0:
        out.update(mean=None, std=None, min=None, max=None, quantiles={}, bins=None, sample=[])
        return out
    qs = np.quantile(finite, QUANTILES)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:  # a constant column: one bin around its value
        edges = np.array([edges[0], edges[0]])
    out.update(
        mean=_num(finite.mean()),
        std=_num(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        min=_num(finite.min()),
        max=_num(finite.max()),
        quantiles={f"{q:g}": _num(x) for q, x in zip(QUANTILES, qs, strict=True)},
        bins={
            "edges": [float(e) for e in edges],
            "shares": [_num(s) for s in bin_shares(finite, edges)],
        },
        sample=reference_sample(finite, sample_size),
    )
    return out


def categorical_profile(values: pd.Series, max_categories: int = MAX_CATEGORIES) -> dict[str, Any]:
    """Profile of one categorical column: count, missing share and the share of each observed
    category (most frequent first; categories beyond ``max_categories`` go to ``other_share``)."""
    s = pd.Series(values)
    n = len(s)
    present = s.dropna().astype("str")
    counts = present.value_counts()
    total = int(counts.sum())
    kept = counts.iloc[:max_categories]
    return {
        "count": total,
        "missing_share": _num(1 - total / n) if n else None,
        "n_categories": int(counts.size),
        "shares": {str(k): _num(c / total) for k, c in kept.items()} if total else {},
        "other_share": _num(counts.iloc[max_categories:].sum() / total) if total else 0.0,
    }


def _is_numeric(series: pd.Series) -> bool:
    return (
        pd.api.types.is_numeric_dtype(series.dtype)
        and not isinstance(series.dtype, pd.CategoricalDtype)
    ) or pd.api.types.is_bool_dtype(series.dtype)


def reference_profile(
    features: pd.DataFrame, predictions: np.ndarray | None = None
) -> dict[str, Any]:
    """JSON-ready profile of a feature frame (the model's input on its training data) and,
    when given, of the model's predictions on it. A few KB for the default features."""
    numeric: dict[str, Any] = {}
    categorical: dict[str, Any] = {}
    for col in features.columns:
        series = features[col]
        if _is_numeric(series):
            numeric[str(col)] = numeric_profile(series.astype("float64"))
        else:
            categorical[str(col)] = categorical_profile(series)
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "n_rows": len(features),
        "columns": [str(c) for c in features.columns],
        "numeric": numeric,
        "categorical": categorical,
        "prediction": None,
    }
    if predictions is not None:
        predictions = np.asarray(predictions, dtype="float64")
        if len(predictions) != len(features):
            raise ValueError(f"{len(predictions)} predictions for {len(features)} feature rows")
        profile["prediction"] = numeric_profile(predictions)
    return profile
