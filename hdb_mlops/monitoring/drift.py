"""Drift statistics of live data against a bundle's reference profile
(:mod:`hdb_mlops.model.profile`): pure functions, no state.

* **PSI** (population stability index), ``sum((a - e) * ln(a / e))`` over bins, ``e`` the
  reference share and ``a`` the live share of each bin, both floored at :data:`PSI_FLOOR` so
  that an empty bin gives a large but finite term. Numeric columns are binned on the
  reference's own quantile edges (:func:`hdb_mlops.model.profile.bin_shares`), with one more
  bin for missing values when either side has any; categorical columns on the reference's
  categories, plus an "other" bin for values the reference did not keep. Rules of thumb:
  < 0.1 stable, 0.1-0.2 a moderate shift, > 0.2 a significant one (some texts draw the last
  line at 0.25); the drift alerts (``prometheus/rules/alerts.yml``) fire above 0.2.
* **KS**: :func:`scipy.stats.ks_2samp` of the live values against the profile's reference
  sample (the column at 500 evenly spaced quantiles; profile version 2). Profiles of version
  1 have no sample: no KS then (:func:`ks_test` returns None).
* **Chi-squared**: :func:`scipy.stats.chi2_contingency` on the 2 x K table of reference
  counts (shares x count) and live counts, categories with an expected live count under 5
  merged into one, as the test's approximation needs.

Why our own code rather than a library: Evidently 0.7's PSI ignores its ``n_bins`` and bins
both samples together, and its API broke its users twice; these ~50 lines of numpy/scipy
are ours, checked against hand computations and scipy in tests/test_drift.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.model.profile import bin_shares

#: Floor of a bin's share in PSI (an empty bin would make the index infinite).
PSI_FLOOR = 1e-4
#: Smallest expected live count of a category in the chi-squared test (rarer ones merged).
CHI2_MIN_EXPECTED = 5.0
#: The bin of a categorical column for values the reference profile did not keep.
OTHER = "__other__"


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index of two share vectors over the same bins (each floored
    at ``floor``, not renormalised)."""
    e = np.maximum(np.asarray(expected, dtype="float64"), floor)
    a = np.maximum(np.asarray(actual, dtype="float64"), floor)
    if e.shape != a.shape:
        raise ValueError(f"{e.size} expected shares for {a.size} actual shares")
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_shares(values: np.ndarray, column: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(reference shares, live shares) of a numeric column on the reference's bins, over all
    rows; the last entry is the missing values' bin when either side has missing values."""
    bins = column.get("bins") or {}
    edges = np.asarray(bins.get("edges") or [], dtype="float64")
    ref = np.asarray(bins.get("shares") or [], dtype="float64")
    v = np.asarray(values, dtype="float64")
    finite = v[np.isfinite(v)]
    live_missing = 1 - finite.size / v.size if v.size else 0.0
    ref_missing = float(column.get("missing_share") or 0.0)
    live = bin_shares(finite, edges) * (1 - live_missing)
    ref = ref * (1 - ref_missing)
    if ref_missing > 0 or live_missing > 0:
        live = np.append(live, live_missing)
        ref = np.append(ref, ref_missing)
    return ref, live


def numeric_psi(values: np.ndarray, column: Mapping[str, Any]) -> float | None:
    """PSI of live ``values`` of a numeric column against its profile (None: no live values
    or no reference bins)."""
    bins = column.get("bins") or {}
    if len(values) == 0 or len(bins.get("edges") or ()) < 2:
        return None
    return psi(*numeric_shares(values, column))


def categories(column: Mapping[str, Any]) -> list[str]:
    """The bins of a categorical column: the reference's categories, then :data:`OTHER`."""
    return [*(column.get("shares") or {}), OTHER]


def reference_category_shares(column: Mapping[str, Any]) -> np.ndarray:
    """The reference share of each bin of :func:`categories` (over non-missing values)."""
    shares = list((column.get("shares") or {}).values())
    return np.array([*shares, float(column.get("other_share") or 0.0)], dtype="float64")


def category_counts(values: Sequence[Any] | pd.Series, column: Mapping[str, Any]) -> np.ndarray:
    """Live counts in the bins of :func:`categories` (missing values left out; a value the
    reference did not keep counts as :data:`OTHER`)."""
    bins = categories(column)
    position = {name: i for i, name in enumerate(bins[:-1])}
    present = pd.Series(values, dtype="object").dropna().astype("str")
    counts = np.zeros(len(bins), dtype="float64")
    for name, n in present.value_counts().items():
        counts[position.get(str(name), len(bins) - 1)] += n
    return counts


def categorical_psi(counts: np.ndarray, column: Mapping[str, Any]) -> float | None:
    """PSI of live :func:`category_counts` against the reference's shares (None: no live
    values or no reference categories)."""
    counts = np.asarray(counts, dtype="float64")
    total = counts.sum()
    if total <= 0 or not column.get("shares"):
        return None
    return psi(reference_category_shares(column), counts / total)


def chi2_pvalue(counts: np.ndarray, column: Mapping[str, Any]) -> float | None:
    """p-value of the chi-squared test that live :func:`category_counts` and the reference
    come from one distribution (None: too few values or categories to test)."""
    from scipy.stats import chi2_contingency

    live = np.asarray(counts, dtype="float64")
    n_ref = float(column.get("count") or 0)
    if live.sum() <= 0 or n_ref <= 0 or not column.get("shares"):
        return None
    ref = reference_category_shares(column) * n_ref
    table = np.vstack([ref, live])
    table = table[:, table.sum(axis=0) > 0]
    expected_live = table.sum(axis=0) * live.sum() / table.sum()
    rare = expected_live < CHI2_MIN_EXPECTED
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
        table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return None
    return float(chi2_contingency(table, correction=False).pvalue)


def ks_test(values: np.ndarray, sample: Sequence[float] | None) -> tuple[float, float] | None:
    """(statistic, p-value) of :func:`scipy.stats.ks_2samp` of the finite live ``values``
    against a profile's reference ``sample`` (None: no sample, a version 1 profile, or no
    live values)."""
    from scipy.stats import ks_2samp

    if sample is None or len(sample) == 0:
        return None
    v = np.asarray(values, dtype="float64")
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    result = ks_2samp(v, np.asarray(sample, dtype="float64"))
    return float(result.statistic), float(result.pvalue)


def drift_table(
    features: pd.DataFrame, profile: Mapping[str, Any], predictions: np.ndarray | None = None
) -> pd.DataFrame:
    """Every statistic for a live feature frame (the model's input, ``model.features(...)``)
    and, when given, its predictions against a reference ``profile``: one row per feature
    (``prediction`` last) with kind, rows, psi, ks_statistic, ks_pvalue, chi2_pvalue (NaN
    where a statistic does not apply). What the service's gauges show, for a notebook."""
    rows = []
    numeric = profile.get("numeric") or {}
    for name, column in numeric.items():
        if name in features:
            values = features[name].to_numpy(dtype="float64")
            rows.append(_numeric_row(name, values, column))
    for name, column in (profile.get("categorical") or {}).items():
        if name in features:
            counts = category_counts(features[name], column)
            rows.append(
                {
                    "feature": name,
                    "kind": "categorical",
                    "rows": len(features),
                    "psi": categorical_psi(counts, column),
                    "chi2_pvalue": chi2_pvalue(counts, column),
                }
            )
    if predictions is not None and profile.get("prediction"):
        values = np.asarray(predictions, dtype="float64")
        rows.append(_numeric_row("prediction", values, profile["prediction"]))
    columns = ["feature", "kind", "rows", "psi", "ks_statistic", "ks_pvalue", "chi2_pvalue"]
    return pd.DataFrame(rows, columns=columns).astype({c: "float64" for c in columns[3:]})


def _numeric_row(name: str, values: np.ndarray, column: Mapping[str, Any]) -> dict[str, Any]:
    ks = ks_test(values, column.get("sample"))
    return {
        "feature": name,
        "kind": "prediction" if name == "prediction" else "numeric",
        "rows": len(values),
        "psi": numeric_psi(values, column),
        "ks_statistic": ks[0] if ks else None,
        "ks_pvalue": ks[1] if ks else None,
    }
