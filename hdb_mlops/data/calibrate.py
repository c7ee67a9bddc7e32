"""Aggregate statistics of the real 2017+ resale file, from which the bundled sample is generated.

`calibrate_from_file` reads the real data.gov.sg file (parquet, csv or csv.gz) and keeps only
aggregates: shares, quantiles, and the coefficients of a hedonic log-price model. No row, street
name or block number of the real data ends up in the calibration, so it can be committed and
shipped with the package (``hdb_mlops/resources/calibration.json``); `hdb_mlops.data.synth` turns it
into a synthetic sample with the official schema.

The generator draws, in this order (each step conditional on the previous ones):

* the month, by the monthly transaction volume shares;
* the (town, flat type) pair, by their joint share, raked to the sale year's town shares and
  flat-type shares (the mix of the market drifts from year to year);
* the lease commencement year, by its distribution within (town, flat type), re-weighted by sale
  year (a flat is not resold before its minimum occupation period, and the resold stock ages);
* the flat model, by its share within (flat type, 5-year lease era);
* the floor area, by interpolating 21 quantiles within (flat type, flat model, lease decade);
* the storey range, by its distribution within the town;
* the price, from the hedonic model plus normal noise with the residual standard deviation.

The hedonic model and its fit are in :mod:`hdb_mlops.data.hedonic`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.config import CALIBRATION_FILE, real_data_dir
from hdb_mlops.data.hedonic import fit_hedonic
from hdb_mlops.data.normalise import (
    clean_text,
    derive_remaining_lease,
    normalise_flat_type,
    parse_month,
    parse_remaining_lease,
    parse_storey_range,
)
from hdb_mlops.data.schema import OFFICIAL_2017_COLUMNS, dataset

CALIBRATION_VERSION = 1
#: Names the real 2017+ file goes by, in the order `find_real_file` looks for them.
REAL_FILE_NAMES: tuple[str, ...] = (
    "latest_hdb_resale_prices.parquet",
    "latest_hdb_resale_prices.csv.gz",
    "resale-flat-prices-based-on-registration-date-from-jan-2017-onwards.csv",
    "resale-flat-prices-based-on-registration-date-from-jan-2017-onwards.csv.gz",
    "ResaleflatpricesbasedonregistrationdatefromJan2017onwards.csv",
)
#: First month of the 2017+ file, the period the calibration describes.
START_MONTH = "2017-01"
#: Quantile levels of the floor-area distributions (sampled by linear interpolation).
AREA_QUANTILE_LEVELS: tuple[float, ...] = (0.005, *(i / 20 for i in range(1, 20)), 0.995)
#: Width (in years) of the lease-commencement eras used to condition flat model and floor area.
ERA_YEARS = 5
#: Width (in years) of the lease-commencement decades used to condition floor areas.
AREA_ERA_YEARS = 10
#: Minimum rows for a (flat type, flat model, decade) floor-area distribution (else the flat
#: type's distribution is used).
MIN_AREA_ROWS = 50

_SHARE_DIGITS = 5


def era_of(lease_year: Any) -> Any:
    """The lease-commencement era (first year of its 5-year band): 1978 -> 1975."""
    return lease_year // ERA_YEARS * ERA_YEARS


def area_era_of(lease_year: Any) -> Any:
    """The lease-commencement decade used for floor areas: 1978 -> 1970."""
    return lease_year // AREA_ERA_YEARS * AREA_ERA_YEARS


def find_real_file(folder: Path | None = None) -> Path | None:
    """The real 2017+ file in `folder` (default: `config.real_data_dir()`), or None."""
    folder = real_data_dir() if folder is None else Path(folder)
    if folder is None:
        return None
    for name in REAL_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_real_file(path: Path) -> pd.DataFrame:
    """Read the real 2017+ resale file (parquet, csv or csv.gz) into clean, typed columns.

    Text columns are stripped (town and flat type upper-cased, flat model kept in its 2017+
    spelling); rows before 2017-01 or with unparseable values are dropped.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        raw = pd.read_parquet(path)
    else:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in OFFICIAL_2017_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not a 2017+ resale file, missing columns {missing}")
    month = parse_month(raw["month"])
    storey = parse_storey_range(raw["storey_range"])
    df = pd.DataFrame(
        {
            "month": month,
            "town": clean_text(raw["town"]),
            "flat_type": normalise_flat_type(raw["flat_type"]),
            "storey_range": clean_text(raw["storey_range"]),
            "storey_mid": storey["storey_mid"],
            "floor_area_sqm": pd.to_numeric(raw["floor_area_sqm"], errors="coerce"),
            "flat_model": raw["flat_model"].astype("str").str.strip(),
            "lease_commence_date": pd.to_numeric(raw["lease_commence_date"], errors="coerce"),
            "remaining_lease": parse_remaining_lease(raw["remaining_lease"]),
            "resale_price": pd.to_numeric(raw["resale_price"], errors="coerce"),
        }
    )
    derived = derive_remaining_lease(df["month"], df["lease_commence_date"])
    df["remaining_lease"] = df["remaining_lease"].fillna(derived)
    needed = ["month", "storey_mid", "floor_area_sqm", "lease_commence_date", "resale_price"]
    df = df.dropna(subset=needed)
    df = df[(df["month"] >= pd.Period(START_MONTH, "M")) & (df["resale_price"] > 0)]
    df = df.reset_index(drop=True)
    df["lease_commence_date"] = df["lease_commence_date"].astype("int64")
    df["month"] = df["month"].astype("str")
    df["year"] = df["month"].str[:4].astype("int64")
    return df


def _shares(values: pd.Series) -> dict[str, float]:
    """Shares of each value, keyed by its string form, sorted by key."""
    counts = values.astype("str").value_counts().sort_index()
    return {k: round(float(v), _SHARE_DIGITS) for k, v in (counts / counts.sum()).items()}


def _nested_shares(df: pd.DataFrame, keys: list[str], value: str) -> dict[str, Any]:
    """{key1: {key2: ... {value: share within the group}}} for every observed group."""
    out: dict[str, Any] = {}
    for group, part in df.groupby(keys, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        node = out
        for k in group[:-1]:
            node = node.setdefault(str(k), {})
        node[str(group[-1])] = _shares(part[value])
    return out


def _joint_shares(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{town: {flat type: share of all rows}} for the observed pairs."""
    out: dict[str, dict[str, float]] = {}
    for (town, ft), count in df.groupby(["town", "flat_type"], sort=True).size().items():
        out.setdefault(town, {})[ft] = round(count / len(df), _SHARE_DIGITS)
    return out


def _area_quantiles(values: pd.Series) -> list[float]:
    return [round(float(q), 1) for q in np.quantile(values, AREA_QUANTILE_LEVELS)]


def _floor_area(df: pd.DataFrame) -> dict[str, Any]:
    by_type = {str(ft): _area_quantiles(p["floor_area_sqm"]) for ft, p in df.groupby("flat_type")}
    by_model_era: dict[str, dict[str, dict[str, list[float]]]] = {}
    decade = area_era_of(df["lease_commence_date"])
    for (ft, model, era), part in df.groupby(["flat_type", "flat_model", decade], sort=True):
        if len(part) >= MIN_AREA_ROWS:
            node = by_model_era.setdefault(ft, {}).setdefault(model, {})
            node[str(era)] = _area_quantiles(part["floor_area_sqm"])
    decimal = df["floor_area_sqm"] != df["floor_area_sqm"].round()
    return {
        "quantile_levels": list(AREA_QUANTILE_LEVELS),
        "era_years": AREA_ERA_YEARS,
        "by_flat_type": by_type,
        "by_flat_type_model_era": by_model_era,
        "decimal_share": {
            str(ft): round(float(d.mean()), _SHARE_DIGITS)
            for ft, d in decimal.groupby(df["flat_type"])
        },
    }


def _lease_year_weights(
    df: pd.DataFrame, cell_lease: pd.DataFrame, iterations: int = 30
) -> pd.DataFrame:
    """Per (sale year, lease year) weights w so that drawing the lease year from
    P(lease | town, flat type) * w(year, lease) reproduces the real P(lease | sale year).

    Found by iterative proportional fitting; lease years never seen in a sale year get 0
    (so a flat is never sold before its lease starts, nor before its minimum occupation period).
    """
    target = pd.crosstab(df["year"], df["lease_commence_date"], normalize="index")
    target = target.reindex(columns=cell_lease.columns, fill_value=0.0)
    base = cell_lease.to_numpy()  # cells x lease years, rows sum to 1
    cell_share = pd.crosstab([df["town"], df["flat_type"]], df["year"], normalize="columns")
    weights = (target > 0).astype("float64")
    for _ in range(iterations):
        for year in target.index:
            share = cell_share[year].reindex(cell_lease.index, fill_value=0.0).to_numpy()
            w = weights.loc[year].to_numpy()
            p = base * w
            norm = p.sum(axis=1, keepdims=True)
            p = np.divide(p, norm, out=np.zeros_like(p), where=norm > 0)
            fitted = share @ p
            ratio = np.divide(
                target.loc[year].to_numpy(), fitted, out=np.zeros_like(fitted), where=fitted > 0
            )
            weights.loc[year] = w * ratio
    return weights.div(weights.max(axis=1), axis=0)


def _lease_commence(df: pd.DataFrame) -> dict[str, Any]:
    cell_lease = pd.crosstab(
        [df["town"], df["flat_type"]], df["lease_commence_date"], normalize="index"
    )
    weights = _lease_year_weights(df, cell_lease)
    sale_year_weight = {
        str(year): {str(k): round(float(v), 4) for k, v in row.items() if round(float(v), 4) > 0}
        for year, row in weights.iterrows()
    }
    return {
        "by_town_flat_type": _nested_shares(df, ["town", "flat_type"], "lease_commence_date"),
        "sale_year_weight": sale_year_weight,
    }


def calibrate_from_frame(df: pd.DataFrame, source_name: str = "") -> dict[str, Any]:
    """The calibration of a frame as returned by `read_real_file`."""
    df = df.assign(era=era_of(df["lease_commence_date"]))
    ds = dataset("2017-onwards")
    return {
        "version": CALIBRATION_VERSION,
        "source": {
            "dataset_id": ds.dataset_id,
            "title": ds.title,
            "file": source_name,
            "rows": len(df),
            "first_month": str(df["month"].min()),
            "last_month": str(df["month"].max()),
            "note": "aggregates only: shares, quantiles and model coefficients; no rows",
        },
        "month_share": _shares(df["month"]),
        "town_flat_type_share": _joint_shares(df),
        "town_share_by_year": _nested_shares(df, ["year"], "town"),
        "flat_type_share_by_year": _nested_shares(df, ["year"], "flat_type"),
        "flat_model": {
            "era_years": ERA_YEARS,
            "by_flat_type": _nested_shares(df, ["flat_type"], "flat_model"),
            "by_flat_type_era": _nested_shares(df, ["flat_type", "era"], "flat_model"),
        },
        "floor_area": _floor_area(df),
        "lease_commence_date": _lease_commence(df),
        "storey_range": {"by_town": _nested_shares(df, ["town"], "storey_range")},
        "hedonic": fit_hedonic(df),
    }


def calibrate_from_file(path: Path) -> dict[str, Any]:
    """Compute the calibration (aggregates only) from the real 2017+ file at `path`."""
    path = Path(path)
    return calibrate_from_frame(read_real_file(path), source_name=path.name)


def write_calibration(cal: dict[str, Any], path: Path = CALIBRATION_FILE) -> Path:
    """Write the calibration as JSON (sorted keys, indent 1, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cal, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def load_calibration(path: Path = CALIBRATION_FILE) -> dict[str, Any]:
    """Read a calibration written by `write_calibration`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no calibration at {path}: run `hdb-mlops data calibrate` on the real 2017+ file"
        )
    cal = json.loads(path.read_text(encoding="utf-8"))
    if cal.get("version") != CALIBRATION_VERSION:
        raise ValueError(
            f"{path}: calibration version {cal.get('version')!r}, expected {CALIBRATION_VERSION}"
        )
    return cal
