"""One feature function for training and serving alike.

:func:`build_features` turns validated transactions (the frame of :mod:`hdb_mlops.data.ingest`)
into the model's input. Serving calls the same function on request rows after
:func:`transactions_from_records` has normalised them with the loader's own parsers, so a
model never sees features computed two different ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

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


def month_index(month: pd.Series) -> pd.Series:
    """Months since 1990-01 (a monthly Period column to integers)."""
    return ((month.dt.year - EPOCH.year) * 12 + month.dt.month - 1).astype("int32")


def build_features(
    transactions: pd.DataFrame,
    spec: FeatureSpec | None = None,
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Feature frame for ``transactions`` (normalised rows as the loader returns them).

    Categories outside the spec become missing values (the model treats them as unknown).
    With ``spec.location``, coordinates and distances come from ``locations`` (geocodes,
    stations); rows without a geocode get NaN, never an error.
    """
    spec = spec or FeatureSpec()
    t = transactions
    out = pd.DataFrame(index=t.index)
    idx = month_index(t["month"])
    out["floor_area_sqm"] = t["floor_area_sqm"].astype("float64")
    out["storey_mid"] = t["storey_mid"].astype("float64")
    out["remaining_lease_months"] = t["remaining_lease_months"].astype("float64")
    out["lease_commence_date"] = t["lease_commence_date"].astype("float64")
    lease_start = (t["lease_commence_date"].astype("int32") - EPOCH.year) * 12 + 6
    out["flat_age_months"] = (idx - lease_start).astype("float64")
    out["month_index"] = idx.astype("float64")
    out = out[list(spec.numeric)]
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
        values = t[col].astype("str")
        known = values.where(values.isin(categories))  # unknown -> missing
        out[col] = pd.Categorical(known, categories=list(categories))
    return out[spec.columns]


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
