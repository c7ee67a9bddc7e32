"""Prediction engines: the generic loader path (the reference), the frame path, and the
start-up check that picks the fastest engine agreeing with the reference on probe rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.data.normalise import Num, storey_mid
from hdb_mlops.data.schema import FLAT_TYPE_ALIASES
from hdb_mlops.model.bundle import Bundle
from hdb_mlops.model.features import FeatureSpec, month_index_of, numeric_features
from hdb_mlops.serving.request_schema import RecordBase

log = logging.getLogger(__name__)


class PredictionError(RuntimeError):
    """The model returned something that is not a positive, finite price."""


def flat_type_of(value: str) -> str:
    """A validated flat type as the loader spells it ("MULTI GENERATION" -> "MULTI-GENERATION")."""
    return FLAT_TYPE_ALIASES.get(value, value)


def raw_records(records: Sequence[RecordBase]) -> list[dict[str, Any]]:
    """The rows as raw string records for :func:`hdb_mlops.model.features.transactions_from_records`
    (the generic path); the remaining lease in months is written as the files write it."""
    out = []
    for r in records:
        months = r.remaining_lease
        lease = "" if months is None else f"{months // 12} years {months % 12:02d} months"
        out.append(
            {
                "month": r.month,
                "town": r.town,
                "flat_type": r.flat_type,
                "block": r.block or "",
                "street_name": r.street_name or "",
                "storey_range": r.storey_range,
                "floor_area_sqm": repr(float(r.floor_area_sqm)),
                "flat_model": r.flat_model,
                "lease_commence_date": str(r.lease_commence_date),
                "remaining_lease": lease,
                # transactions_from_records parses every official column, the price included
                "resale_price": "",
            }
        )
    return out


def _parsed(r: RecordBase) -> tuple[int, int, int, float, int, float]:
    """The numeric inputs of one validated row: month index ("2025-03"), storey low and high
    ("10 TO 12"), floor area, lease start year, reported remaining lease (months, NaN)."""
    month, storey, reported = r.month, r.storey_range, r.remaining_lease
    return (
        month_index_of(int(month[:4]), int(month[5:7])),
        int(storey[:2]),
        int(storey[-2:]),
        r.floor_area_sqm,
        r.lease_commence_date,
        math.nan if reported is None else reported,
    )


def _columns(records: Sequence[RecordBase]) -> np.ndarray:
    """:func:`_parsed` of every row as six float64 arrays (a 6 x rows array)."""
    return np.array([_parsed(r) for r in records], dtype="float64").reshape(len(records), 6).T


def numeric_rows(records: Sequence[RecordBase]) -> dict[str, Num]:
    """The numeric features of ``build_features`` for validated rows: the month and storey
    band are parsed here, every formula (storey mid, remaining lease reported or derived, flat
    age) is :func:`hdb_mlops.model.features.numeric_features`'. Python numbers for one row
    (no numpy overhead on the single-row path), float64 arrays otherwise."""
    if len(records) == 1:
        idx, low, high, area, lease_start, reported = _parsed(records[0])
    else:
        idx, low, high, area, lease_start, reported = _columns(records)
    return numeric_features(idx, storey_mid(low, high), area, lease_start, reported)


def records_frame(records: Sequence[RecordBase]) -> pd.DataFrame:
    """The normalised transactions frame (as :func:`transactions_from_records` returns it)
    built directly from validated rows, without re-parsing strings. Missing block or
    street_name are missing values (NaN location features, never an error)."""
    n = len(records)
    idx, low, high, area, lease_start, reported = _columns(records)
    mid = storey_mid(low, high)
    num = numeric_features(idx, mid, area, lease_start, reported)
    return pd.DataFrame(
        {
            "month": pd.PeriodIndex([r.month for r in records], freq="M"),
            "town": pd.array([r.town for r in records], dtype="str"),
            "flat_type": pd.array([flat_type_of(r.flat_type) for r in records], dtype="str"),
            "block": pd.array([r.block for r in records], dtype="str"),
            "street_name": pd.array([r.street_name for r in records], dtype="str"),
            "storey_range": pd.array([r.storey_range for r in records], dtype="str"),
            "storey_low": low,
            "storey_high": high,
            "storey_mid": mid,
            "floor_area_sqm": area,
            "flat_model": pd.array([r.flat_model for r in records], dtype="str"),
            "lease_commence_date": lease_start,
            "remaining_lease_reported": reported,
            "remaining_lease_months": num["remaining_lease_months"],
            "remaining_lease_derived": np.isnan(reported),
            "resale_price": np.full(n, np.nan),
        },
        index=pd.RangeIndex(n),
    )


class Engine:
    """Scores validated rows; subclasses are the three paths of the module docstring."""

    name = "engine"

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class LoaderEngine(Engine):
    """The generic path: transactions_from_records, then model.predict (the reference)."""

    name = "loader"

    def __init__(self, bundle: Bundle):
        self.model = bundle.model

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        from hdb_mlops.model.features import transactions_from_records

        frame = transactions_from_records(raw_records(records))
        return np.asarray(self.model.predict(frame), dtype="float64")


class FrameEngine(Engine):
    """The normalised frame built directly from the rows, then model.predict."""

    name = "frame"

    def __init__(self, bundle: Bundle):
        self.model = bundle.model

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        return np.asarray(self.model.predict(records_frame(records)), dtype="float64")


def _probe_records(
    record_type: type[RecordBase],
    spec: FeatureSpec,
    max_month: str,
    places: Sequence[dict[str, str]] = (),
) -> list:
    """Valid rows that cover every category, with and without remaining lease, at known
    ``places`` (block and street_name, maybe town and flat_type) and at an unknown one."""
    cats = spec.categorical
    n = max((len(v) for v in cats.values()), default=0)
    places = [*places, {"block": "1", "street_name": "NOWHERE"}]
    n = max(n, len(places))
    months = [m for m in ("1995-03", "2012-11", "2019-06", "2024-01") if m < max_month]
    months.append(max_month)
    this_year = datetime.now(UTC).year
    rows = []
    for i in range(n):
        month = months[i % len(months)]
        lcd = min(1966 + 3 * i, int(month[:4]), this_year)
        rows.append(
            record_type.model_validate(
                {
                    "month": month,
                    "town": cats["town"][i % len(cats["town"])],
                    "flat_type": cats["flat_type"][i % len(cats["flat_type"])],
                    "flat_model": cats["flat_model"][i % len(cats["flat_model"])],
                    "storey_range": f"{1 + 3 * (i % 10):02d} TO {3 + 3 * (i % 10):02d}",
                    "floor_area_sqm": 35.0 + 7.5 * (i % 40),
                    "lease_commence_date": lcd,
                    "remaining_lease": None
                    if i % 2
                    else f"{max(1, 90 - i)} years 0{i % 10} months",
                    **places[i % len(places)],
                }
            )
        )
    return rows


def _known_places(bundle: Bundle, n: int = 8) -> list[dict[str, str]]:
    """A few addresses the model knows (geocoded, or in its address encoding), so that the
    start-up check compares engines on rows that hit the lookups."""
    model = bundle.model
    places: list[dict[str, str]] = []
    if bundle.spec.location and getattr(model, "locations", None) is not None:
        geocodes = model.locations[0]
        for block, street in zip(geocodes["block"][:n], geocodes["street_name"][:n], strict=True):
            places.append({"block": str(block), "street_name": str(street)})
    encoder = getattr(model, "encoder_", None)
    tables = getattr(encoder, "tables_", None) or {}
    if "address_type" in tables:
        cats = bundle.spec.categorical
        for key in list(tables["address_type"].index[:n]):
            parts = str(key).split("|")  # "TOWN|BLOCK|STREET|FLAT TYPE" (best effort)
            if len(parts) != 4:
                continue
            town, block, street, flat_type = parts
            if town in cats.get("town", ()) and flat_type in cats.get("flat_type", ()):
                places.append(
                    {"town": town, "block": block, "street_name": street, "flat_type": flat_type}
                )
    return places


def choose_engine(
    bundle: Bundle,
    record_type: type[RecordBase],
    max_month: str,
    *,
    fast_path: bool = True,
    nthread: int = 1,
) -> Engine:
    """The fastest engine that gives the loader path's predictions on probe rows."""
    reference = LoaderEngine(bundle)
    if not fast_path:
        return reference
    from hdb_mlops.model.models import XGBoostModel
    from hdb_mlops.serving.fastpath import XGBoostEngine  # built on this module's Engine

    candidates: list[Engine] = []
    if isinstance(bundle.model, XGBoostModel) and hasattr(bundle.model, "booster_"):
        try:
            candidates.append(XGBoostEngine(bundle, nthread=nthread))
        except Exception as exc:
            log.warning("xgboost fast path unavailable: %s", exc)
    candidates.append(FrameEngine(bundle))
    probe = _probe_records(record_type, bundle.spec, max_month, _known_places(bundle))
    expected = reference.predict(probe)
    for engine in candidates:
        try:
            got = engine.predict(probe)
        except Exception as exc:
            log.warning("%s engine failed on the probe rows: %s", engine.name, exc)
            continue
        if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-9, atol=0):
            return engine
        log.warning(
            "%s engine disagrees with the loader path on the probe rows (max rel. diff %.3g)",
            engine.name,
            float(np.nanmax(np.abs(got / expected - 1))) if got.shape == expected.shape else -1,
        )
    return reference
