"""The hedonic log-price model of the calibration: its design and its ridge least-squares fit.

The hedonic model of log(resale_price) is additive: a (town, flat type) cell effect, a month
effect (the monthly price index, 0 in the first month), storey range and flat model effects, a
slope on log floor area per flat type (centred on the type's median area) and a piecewise-linear
curve in the remaining lease (knots every 5 years); then, fitted on what those leave, a
town x 5-year lease era effect (older and newer estates of a town sit in different places) and a
town x sale year effect (towns' prices move at different speeds). Both stages are ridge least
squares on a sparse one-hot design: a few seconds on 236,000 rows.

:func:`fit_hedonic` returns only the coefficients (no row of the data), which
:mod:`hdb_mlops.data.calibrate` stores in the calibration and :mod:`hdb_mlops.data.synth` prices
the synthetic flats with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Knots (in years) of the piecewise-linear remaining-lease curve; values outside are clamped.
LEASE_KNOTS_YEARS: tuple[float, ...] = tuple(float(k) for k in range(40, 101, 5))
#: Ridge penalty of the hedonic fit (tiny next to 200,000 rows; it resolves collinear dummies).
RIDGE_ALPHA = 1.0
#: Ridge penalty of the interactions (town x lease era, town x year), fitted second.
RIDGE_INTERACTION = 20.0
MAIN_TERMS: tuple[str, ...] = ("cell", "month", "storey_range", "flat_model")
INTERACTION_TERMS: tuple[str, ...] = ("town_lease_era", "town_year")
#: Reference categories of the hedonic model (their effects are 0).
REFERENCE_STOREY = "01 TO 03"
REFERENCE_FLAT_MODEL = "Model A"
REFERENCE_LEASE_YEARS = 70.0

_COEF_DIGITS = 5


def _lease_basis(years: np.ndarray) -> sp.csr_matrix:
    """Hat-function basis of the piecewise-linear remaining-lease curve (2 non-zeros per row)."""
    knots = np.asarray(LEASE_KNOTS_YEARS)
    x = np.clip(years, knots[0], knots[-1])
    left = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    frac = (x - knots[left]) / (knots[left + 1] - knots[left])
    n = len(x)
    rows = np.repeat(np.arange(n), 2)
    cols = np.column_stack([left, left + 1]).ravel()
    vals = np.column_stack([1 - frac, frac]).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, len(knots)))


def _one_hot(codes: np.ndarray, size: int) -> sp.csr_matrix:
    n = len(codes)
    return sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, size))


def _categorical_terms(df: pd.DataFrame) -> dict[str, pd.Series]:
    """The categorical terms of the hedonic model, as one string key per row."""
    return {
        "cell": df["town"] + "|" + df["flat_type"],
        "month": df["month"],
        "storey_range": df["storey_range"],
        "flat_model": df["flat_model"],
        "town_lease_era": df["town"] + "|" + df["era"].astype("str"),
        "town_year": df["town"] + "|" + df["year"].astype("str"),
    }


def _ridge(blocks: list[sp.csr_matrix], y: np.ndarray, alpha: float):
    """Ridge least squares on sparse column blocks: (coefficients per block, residuals)."""
    x = sp.hstack(blocks, format="csr")
    gram = (x.T @ x).toarray() + alpha * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, x.T @ y)
    sizes = np.cumsum([b.shape[1] for b in blocks])[:-1]
    return np.split(beta, sizes), y - x @ beta


def _centre(effect: pd.Series, counts: pd.Series, by: pd.Index) -> pd.Series:
    """Row-weighted mean of `effect` within each group of `by` (aligned with effect's index)."""
    return (effect * counts).groupby(by).sum() / counts.groupby(by).sum()


def fit_hedonic(df: pd.DataFrame) -> dict[str, Any]:
    """Fit the additive log-price model on the real rows and return only its coefficients.

    log(price) = cell[town, flat type] + month[month] + storey[storey range] + model[flat model]
               + town_lease_era[town, 5-year lease era] + town_year[town, sale year]
               + slope[flat type] * log(area / median area of the flat type)
               + lease_curve(remaining lease in years) + noise

    The interaction terms are centred (row-weighted mean 0 within each town, and for town_year
    also within each year), so the month effects are the market-wide monthly price index; the
    reference levels (first month, storey 01 TO 03, Model A, 70 years of lease) are 0.
    """
    y = np.log(df["resale_price"].to_numpy(dtype="float64"))
    terms = _categorical_terms(df)
    cats = {name: sorted(keys.unique()) for name, keys in terms.items()}
    one_hot = {
        name: _one_hot(pd.Categorical(keys, cats[name]).codes, len(cats[name]))
        for name, keys in terms.items()
    }
    types = sorted(df["flat_type"].unique())
    centre = df.groupby("flat_type")["floor_area_sqm"].median()
    log_area = np.log(df["floor_area_sqm"].to_numpy()) - np.log(
        centre.reindex(df["flat_type"]).to_numpy()
    )
    type_codes = pd.Categorical(df["flat_type"], types).codes
    main = [one_hot[name] for name in MAIN_TERMS]
    main.append(_one_hot(type_codes, len(types)).multiply(log_area[:, None]).tocsr())
    main.append(_lease_basis(df["remaining_lease"].to_numpy(dtype="float64") / 12))
    # Stage 1: the main effects. Stage 2: the interactions, on the stage-1 residuals, shrunk
    # harder; so a flat model found in one town and era only (e.g. Type S1) keeps its own effect
    # instead of trading it against that town and era.
    beta_main, resid = _ridge(main, y, RIDGE_ALPHA)
    beta_int, resid = _ridge(
        [one_hot[name] for name in INTERACTION_TERMS], resid, RIDGE_INTERACTION
    )
    n_coef = sum(b.shape[1] for b in main) + sum(one_hot[n].shape[1] for n in INTERACTION_TERMS)
    dof = max(len(y) - n_coef, 1)
    eff = {
        name: pd.Series(part, index=cats[name])
        for name, part in zip(
            (*MAIN_TERMS, *INTERACTION_TERMS),
            (*beta_main[: len(MAIN_TERMS)], *beta_int),
            strict=True,
        )
    }
    slope = pd.Series(beta_main[-2], index=types)
    lease = beta_main[-1]
    counts = {name: keys.value_counts().reindex(cats[name]) for name, keys in terms.items()}

    # Centre the interactions, moving their means into the main effects (same predictions).
    def split(name: str) -> tuple[pd.Index, pd.Index]:
        parts = eff[name].index.str.split("|")
        return pd.Index(parts.str[0]), pd.Index(parts.str[1])

    cell_town = pd.Index(eff["cell"].index.str.split("|").str[0])
    month_year = pd.Index(eff["month"].index.str[:4])
    town, _ = split("town_lease_era")
    mean = _centre(eff["town_lease_era"], counts["town_lease_era"], town)
    eff["town_lease_era"] -= mean.reindex(town).to_numpy()
    eff["cell"] += mean.reindex(cell_town).fillna(0).to_numpy()
    town, year = split("town_year")
    for _ in range(50):
        mean = _centre(eff["town_year"], counts["town_year"], town)
        eff["town_year"] -= mean.reindex(town).to_numpy()
        eff["cell"] += mean.reindex(cell_town).fillna(0).to_numpy()
        mean = _centre(eff["town_year"], counts["town_year"], year)
        eff["town_year"] -= mean.reindex(year).to_numpy()
        eff["month"] += mean.reindex(month_year).fillna(0).to_numpy()

    # Reference levels: first month, storey, flat model and lease curve at the reference = 0.
    shift = 0.0
    for name, ref in (
        ("month", eff["month"].index[0]),
        ("storey_range", REFERENCE_STOREY),
        ("flat_model", REFERENCE_FLAT_MODEL),
    ):
        shift += eff[name][ref]
        eff[name] -= eff[name][ref]
    ref_lease = float(np.interp(REFERENCE_LEASE_YEARS, LEASE_KNOTS_YEARS, lease))
    lease = lease - ref_lease
    eff["cell"] += shift + ref_lease

    def rounded(series: pd.Series) -> dict[str, float]:
        return {str(k): round(float(v), _COEF_DIGITS) for k, v in series.items()}

    def nested(series: pd.Series) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for key, value in rounded(series).items():
            outer, inner = key.split("|")
            out.setdefault(outer, {})[inner] = value
        return out

    return {
        "target": "log(resale_price)",
        "reference": {
            "month": cats["month"][0],
            "storey_range": REFERENCE_STOREY,
            "flat_model": REFERENCE_FLAT_MODEL,
            "remaining_lease_years": REFERENCE_LEASE_YEARS,
            "floor_area": "the flat type's median floor area",
        },
        "town_flat_type": nested(eff["cell"]),
        "month": rounded(eff["month"]),
        "storey_range": rounded(eff["storey_range"]),
        "flat_model": rounded(eff["flat_model"]),
        "town_lease_era": nested(eff["town_lease_era"]),
        "town_year": nested(eff["town_year"]),
        "log_floor_area_slope": rounded(slope),
        "floor_area_centre": {str(k): round(float(v), 2) for k, v in centre.items()},
        "remaining_lease_knots_years": list(LEASE_KNOTS_YEARS),
        "remaining_lease": [round(float(v), _COEF_DIGITS) for v in lease],
        "residual_sd": round(float(np.sqrt(resid @ resid / dof)), _COEF_DIGITS),
        "r2": round(float(1 - resid.var() / y.var()), 4),
        "ridge_alpha": {"main": RIDGE_ALPHA, "interactions": RIDGE_INTERACTION},
    }
