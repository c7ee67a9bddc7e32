"""One feature builder for training and serving alike.

:func:`build_features` turns validated transactions (the frame of :mod:`hdb_mlops.data.ingest`)
into the model's input. Its arithmetic is in functions on plain values, which the prediction
service's fast path (:mod:`hdb_mlops.serving`) calls on the validated request rows:

* :func:`numeric_features`: every column of :data:`NUMERIC_FEATURES` from the month index,
  storey mid, floor area, lease start year and the reported remaining lease (NaN: derived
  with the loader's rule, :func:`hdb_mlops.data.normalise.derived_remaining_lease_months`).
  It takes numpy arrays (a whole frame's columns) or Python floats (one request row);
* :func:`category_codes`: a categorical column as the positions of its values in the spec's
  categories, NaN for unknown values (the codes XGBoost sees);
* :func:`location_lookup` and :func:`location_values`: the location features of an address,
  precomputed with :func:`hdb_mlops.data.location.add_location_features` for every geocoded
  address.

The generic path (:func:`transactions_from_records` then :func:`build_features`) is the
reference the service is checked against, so a model never sees features computed two
different ways.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.data.normalise import (
    Num,
    derived_remaining_lease_months,
    fill_missing,
    lease_age_months,
    month_count,
)
from hdb_mlops.data.schema import FLAT_TYPES, TOWNS

FEATURE_VERSION = 1

#: Flat models after normalisation (upper case), as they appear in the data since 1990.
FLAT_MODELS: tuple[str, ...] = (
    "2-ROOM", "3GEN", "ADJOINED FLAT", "APARTMENT", "DBSS", "IMPROVED", "IMPROVED-MAISONETTE",
    "MAISONETTE", "MODEL A", "MODEL A-MAISONETTE", "MODEL A2", "MULTI GENERATION",
    "NEW GENERATION", "PREMIUM APARTMENT", "PREMIUM APARTMENT LOFT", "PREMIUM MAISONETTE",
    "SIMPLIFIED", "STANDARD", "TERRACE", "TYPE S1", "TYPE S2",
)  # fmt: skip

NUMERIC_FEATURES: tuple[str, ...] = (
    "floor_area_sqm",
    "storey_mid",
    "remaining_lease_months",
    "lease_commence_date",
    "flat_age_months",
    "month_index",
)
LOCATION_FEATURES: tuple[str, ...] = ("latitude", "longitude", "dist_mrt_km", "dist_cbd_km")
#: Month 0 of ``month_index``.
EPOCH = pd.Period("1990-01", freq="M")
_EPOCH_COUNT = month_count(EPOCH.year, EPOCH.month)


@dataclass(frozen=True)
class FeatureSpec:
    """What the model consumes: numeric columns, categorical columns with their categories,
    and whether location features are used. Saved with every model."""

    numeric: tuple[str, ...] = NUMERIC_FEATURES
    categorical: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"town": TOWNS, "flat_type": FLAT_TYPES, "flat_model": FLAT_MODELS}
    )
    location: bool = False
    version: int = FEATURE_VERSION

    @property
    def columns(self) -> list[str]:
        """Feature columns in model order."""
        loc = list(LOCATION_FEATURES) if self.location else []
        return [*self.numeric, *loc, *self.categorical]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored beside the model)."""
        out = asdict(self)
        out["numeric"] = list(self.numeric)
        out["categorical"] = {k: list(v) for k, v in self.categorical.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            numeric=tuple(data["numeric"]),
            categorical={k: tuple(v) for k, v in data["categorical"].items()},
            location=bool(data.get("location", False)),
            version=int(data.get("version", FEATURE_VERSION)),
        )


def month_index_of(year: Num, month: Num) -> Num:
    """Months since 1990-01 of ``year``-``month`` (month 1..12; numbers or arrays)."""
    return month_count(year, month) - _EPOCH_COUNT


def month_index(month: pd.Series) -> pd.Series:
    """Months since 1990-01 (a monthly Period column to integers)."""
    return month_index_of(month.dt.year, month.dt.month).astype("int32")


def numeric_features(
    month_index: Num,
    storey_mid: Num,
    floor_area_sqm: Num,
    lease_commence_date: Num,
    remaining_lease_reported: Num = math.nan,
) -> dict[str, Num]:
    """Every column of :data:`NUMERIC_FEATURES`, from float64 numpy arrays (a frame's columns)
    or Python floats (one request row; no numpy overhead), by name.

    ``month_index`` counts months from :data:`EPOCH`; ``remaining_lease_reported`` is in months,
    NaN where not reported: then it is derived from the lease start like the loader does
    (:func:`hdb_mlops.data.normalise.derived_remaining_lease_months`). The flat's age is counted
    from the same lease start (July of the commencement year), so it is negative for a sale
    before that July.
    """
    age = lease_age_months(month_index + _EPOCH_COUNT, lease_commence_date)
    remaining = fill_missing(remaining_lease_reported, derived_remaining_lease_months(age))
    return {
        "floor_area_sqm": floor_area_sqm,
        "storey_mid": storey_mid,
        "remaining_lease_months": remaining,
        "lease_commence_date": lease_commence_date,
        "flat_age_months": age,
        "month_index": month_index,
    }


@lru_cache(maxsize=64)
def _positions(categories: tuple[str, ...]) -> dict[str, int]:
    return {cat: i for i, cat in enumerate(categories)}


def category_codes(values: Sequence[Any] | pd.Series, categories: Sequence[str]) -> np.ndarray:
    """The position of each value in ``categories`` as float64, NaN for a value that is not
    one of them (missing values included): XGBoost's input for a categorical column.

    A list or tuple (request rows) is mapped value by value; an array or Series (a frame's
    column) on its distinct values only.
    """
    positions = _positions(tuple(categories))
    if isinstance(values, list | tuple):
        return np.array([positions.get(v, math.nan) for v in values], dtype="float64")
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([positions.get(u, math.nan) for u in uniques], dtype="float64")
    if not len(mapped):
        return np.full(len(codes), math.nan)
    return np.where(codes >= 0, mapped[np.maximum(codes, 0)], math.nan)


def categorical_column(values: pd.Series, categories: Sequence[str]) -> pd.Categorical:
    """``values`` as a pandas Categorical of ``categories`` (:func:`category_codes`; unknown
    values are missing), the dtype the models are fitted on."""
    codes = category_codes(values, categories)
    return pd.Categorical.from_codes(
        np.where(np.isnan(codes), -1, codes).astype("int64"), categories=list(categories)
    )


def build_features(
    transactions: pd.DataFrame,
    spec: FeatureSpec | None = None,
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Feature frame for ``transactions`` (normalised rows as the loader returns them).

    The numeric columns are :func:`numeric_features` of the frame's columns (a remaining
    lease still missing is derived), the categorical ones pandas Categoricals with the codes
    of :func:`category_codes`. Categories outside the spec become missing values (the model
    treats them as unknown).
    With ``spec.location``, coordinates and distances come from ``locations`` (geocodes,
    stations); rows without a geocode get NaN, never an error.
    """
    spec = spec or FeatureSpec()
    t = transactions
    out = pd.DataFrame(index=t.index)
    numeric = numeric_features(
        month_index(t["month"]).to_numpy(dtype="float64"),
        t["storey_mid"].to_numpy(dtype="float64"),
        t["floor_area_sqm"].to_numpy(dtype="float64"),
        t["lease_commence_date"].to_numpy(dtype="float64"),
        t["remaining_lease_months"].to_numpy(dtype="float64"),
    )
    for col in spec.numeric:
        out[col] = numeric[col]
    if spec.location:
        if locations is not None:
            from hdb_mlops.data.location import add_location_features

            located = add_location_features(t, *locations)
            for col in LOCATION_FEATURES:
                out[col] = located[col].to_numpy(dtype="float64")
        else:
            for col in LOCATION_FEATURES:
                out[col] = np.nan
    for col, categories in spec.categorical.items():
        out[col] = categorical_column(t[col].astype("str"), categories)  # unknown -> missing
    return out[spec.columns]


def location_lookup(
    locations: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> dict[str, tuple[float, float, float, float]]:
    """Address key (:func:`hdb_mlops.data.location.address_key`) -> the
    :data:`LOCATION_FEATURES` of every geocoded address, computed once with
    :func:`hdb_mlops.data.location.add_location_features` (what :func:`build_features` joins)."""
    if locations is None:
        return {}
    from hdb_mlops.data.location import add_location_features, address_key, make_geocode_table

    geocodes, stations = locations
    table = make_geocode_table(geocodes)[["block", "street_name"]]
    feats = add_location_features(table, geocodes, stations)
    values = feats[list(LOCATION_FEATURES)].to_numpy(dtype="float64")
    return {
        address_key(b, s): tuple(row)
        for b, s, row in zip(table["block"], table["street_name"], values, strict=True)
    }


def location_values(
    lookup: Mapping[str, tuple[float, float, float, float]],
    blocks: Sequence[str | None],
    streets: Sequence[str | None],
) -> np.ndarray:
    """The :data:`LOCATION_FEATURES` of each address (rows x 4) from a :func:`location_lookup`;
    NaN for an address without a geocode or without a block or street name."""
    from hdb_mlops.data.location import address_key

    nan4 = (math.nan,) * 4
    rows = [
        lookup.get(address_key(b, s), nan4) if b is not None and s is not None else nan4
        for b, s in zip(blocks, streets, strict=True)
    ]
    return np.array(rows, dtype="float64").reshape(len(rows), 4)


def transactions_from_records(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Normalised transactions from raw records (dicts with the official column names).

    Serving uses this so that request rows are parsed exactly like the published files.
    ``block`` and ``street_name`` are optional (they only matter for location features);
    ``remaining_lease`` is optional (derived from the lease start when absent).
    """
    from hdb_mlops.data.ingest import parse_fields

    raw = pd.DataFrame(list(records))
    for col in ("block", "street_name", "remaining_lease"):
        if col not in raw:
            raw[col] = ""
    raw = raw.astype("str").replace({"None": "", "nan": ""})
    return parse_fields(raw)
