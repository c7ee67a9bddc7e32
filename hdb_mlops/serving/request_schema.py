"""Request and response models of the prediction service, built from a model's feature spec.

:func:`build_schemas` makes the pydantic (v2) models at app creation, so the OpenAPI schema
lists exactly the towns, flat types and flat models the served model knows. A request row has
the official column names of the data.gov.sg files (``resale_price`` left out) and is checked
with the loader's own rules (:mod:`hdb_mlops.data.validate`), enforcing exactly what the
published JSON schema says (see :mod:`hdb_mlops.serving.request_fields`: no coercion of
strings to numbers, of booleans to integers, no trimming of pattern fields):

* ``month`` is ``YYYY-MM``, from 1990-01 to ``max_month`` (default: December of next year);
  the pattern spells that range;
* ``town``, ``flat_type`` and ``flat_model`` are one of the spec's categories, in any ASCII
  case and with surrounding spaces, like the loader's ``clean_text`` ("Model A" and
  "MODEL A" are the same). flat_type "MULTI GENERATION" (the 1990s spelling) is accepted and
  priced as "MULTI-GENERATION", as the loader does;
* ``storey_range`` is ``"NN TO NN"`` with 1 <= low <= high ("to" in any case; the pattern
  only admits such bands);
* ``floor_area_sqm`` is a JSON number 20..400; ``lease_commence_date`` a JSON integer from
  1960 to this year and no later than the year after the sale;
* ``remaining_lease`` is optional: a string as the files write it (``"61 years 04 months"``,
  ``"62 years"``, or whole years such as ``"70"`` as in 2015-2016; 0-11 months, at most 99
  years) or an integer number of **months** (0..1188). Absent, it is derived from the lease
  start like the loader does. Given, it must agree with lease_commence_date and month within
  :data:`~hdb_mlops.serving.request_fields.LEASE_TOLERANCE_MONTHS` (checked by the service
  after validation, :func:`~hdb_mlops.serving.request_fields.lease_conflict`);
* ``block`` and ``street_name`` are optional: they only feed location features, and a missing
  or unknown address gives NaN location features, never an error;
* any other field is rejected (``extra="forbid"``).

Every per-field check runs in pydantic-core (Rust); two small Python validators do the
cross-field lease-start rule and turn remaining_lease into months. After validation a row
holds normalised values (upper-case categories and storey band, remaining lease in months or
None), which is what the service's fast path turns into model features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    create_model,
    field_validator,
)

from hdb_mlops.data.schema import (
    FIRST_MONTH,
    FLAT_TYPE_ALIASES,
    FLOOR_AREA_RANGE,
    LEASE_YEAR_MIN,
    OFFICIAL_2017_COLUMNS,
)
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.serving.request_fields import (
    LEASE_TOLERANCE_MONTHS,
    MAX_LEASE_MONTHS,
    REMAINING_LEASE_PATTERN,
    STOREY_PATTERN,
    category_type,
    json_integer,
    lease_conflict,
    lease_months,
    month_pattern,
    pattern_str,
    year_range_pattern,
)

__all__ = [  # the field types and rules of request_fields are re-exported
    "MAX_LEASE_MONTHS",
    "MONTH_PATTERN",
    "REMAINING_LEASE_PATTERN",
    "REQUEST_COLUMNS",
    "STOREY_PATTERN",
    "BatchPredictions",
    "ErrorItem",
    "ErrorResponse",
    "Interval",
    "ModelInfo",
    "Prediction",
    "RecordBase",
    "Schemas",
    "build_schemas",
    "category_type",
    "default_max_month",
    "lease_conflict",
    "lease_months",
    "month_pattern",
    "year_range_pattern",
]

#: Columns a request row may have, in the official (2017-onwards) order, without the price.
REQUEST_COLUMNS: tuple[str, ...] = tuple(c for c in OFFICIAL_2017_COLUMNS if c != "resale_price")
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
_LAST_MONTH = "2099-12"


def month_type(first_month: str, last_month: str) -> Any:
    """A sale month ``YYYY-MM`` from ``first_month`` to ``last_month`` (an exact pattern)."""
    return pattern_str(
        month_pattern(first_month, last_month),
        f"month must be YYYY-MM from {first_month} to {last_month}",
    )


def lease_start_type(last_year: int) -> Any:
    """The lease commencement year, a JSON integer from 1960 to ``last_year``."""
    return json_integer(LEASE_YEAR_MIN, last_year)


_LEASE_START_DESCRIPTION = (
    "Year the 99-year lease started. It may be no later than the year after the sale month "
    "(a rule across fields, refused with 422)."
)
_REMAINING_LEASE_DESCRIPTION = (
    "Remaining lease at the sale: a string as the files write it ('61 years 04 months', "
    "'62 years', whole years '70'; 0-11 months, at most 99 years) or an integer number of "
    "MONTHS (0-1188); no booleans. Optional: derived from lease_commence_date when absent "
    "or ''. When given it must agree with lease_commence_date and month: within "
    f"{LEASE_TOLERANCE_MONTHS} months of (lease_commence_date + 99) years + 6 months minus "
    "the sale month (the lease taken to start mid-year), else 422. Validated rows hold it "
    "in months (or null)."
)
_ANY_CASE = (
    " One of the enum, in any (ASCII) case; surrounding spaces, tabs and newlines are ignored "
    "(the second schema of anyOf spells exactly that)."
)
_STOREY_REASON = "storey_range must be 'NN TO NN' with 01 <= low <= high, e.g. '07 TO 09'"
_LEASE_REASON = (
    "remaining_lease must be a string like '61 years 04 months' (0-11 months, at most "
    "99 years), '62 years' or whole years '70', or an integer number of months"
)


_Month = month_type(FIRST_MONTH, _LAST_MONTH)
_Storey = pattern_str(STOREY_PATTERN, _STOREY_REASON, to_upper=True)
_LeaseStart = lease_start_type(9999)
_LeaseMonths = json_integer(0, MAX_LEASE_MONTHS)
_LeaseText = pattern_str(REMAINING_LEASE_PATTERN, _LEASE_REASON)


class RecordBase(BaseModel):
    """Fields of a request row that do not depend on the model (see the module docstring);
    :func:`build_schemas` adds town, flat_type and flat_model."""

    model_config = ConfigDict(extra="forbid")

    #: Latest sale month accepted (set per service by :func:`build_schemas`).
    max_month: ClassVar[str] = _LAST_MONTH

    month: Annotated[
        _Month,
        Field(
            description="Month of the sale, YYYY-MM (1990-01 up to the service's max_month).",
            examples=["2025-06"],
        ),
    ]
    block: Annotated[
        Annotated[str, StringConstraints(strict=True, max_length=16)] | None,
        Field(description="Block number (location features only).", examples=["406"]),
    ] = None
    street_name: Annotated[
        Annotated[str, StringConstraints(strict=True, max_length=120)] | None,
        Field(
            description="Street name (location features only).",
            examples=["ANG MO KIO AVE 10"],
        ),
    ] = None
    storey_range: Annotated[
        _Storey,
        Field(
            description="Storey band 'NN TO NN' with 01 <= low <= high ('to' in any case).",
            examples=["07 TO 09"],
        ),
    ]
    floor_area_sqm: Annotated[
        float,
        Field(
            strict=True,
            ge=FLOOR_AREA_RANGE[0],
            le=FLOOR_AREA_RANGE[1],
            allow_inf_nan=False,
            description="Floor area in square metres (a JSON number).",
            examples=[92.0],
        ),
    ]
    lease_commence_date: Annotated[
        _LeaseStart,
        Field(description=_LEASE_START_DESCRIPTION, examples=[1979]),
    ]
    remaining_lease: Annotated[
        _LeaseMonths | _LeaseText | None,
        Field(description=_REMAINING_LEASE_DESCRIPTION, examples=["52 years 03 months", 627]),
    ] = None

    @field_validator("lease_commence_date")
    @classmethod
    def _lease_before_sale(cls, value: int, info: ValidationInfo) -> int:
        month = info.data.get("month")
        if month is not None and value > int(month[:4]) + 1:
            raise ValueError(
                f"the lease cannot start more than a year after the sale (month {month})"
            )
        return value

    @field_validator("remaining_lease")
    @classmethod
    def _lease_to_months(cls, value: int | str | None) -> int | None:
        return lease_months(value)


class Interval(BaseModel):
    """A prediction interval from the validation residuals of the model."""

    level: float = Field(description="Nominal coverage, e.g. 0.9.")
    lower: float
    upper: float


class ModelInfo(BaseModel):
    """Which model made a prediction."""

    name: str = Field(description="Model name (xgboost, linear, median_ppsm).")
    version: str | None = Field(
        description="Registry version number, or null for a bundle served from a directory."
    )
    sha256: str = Field(description="First 12 hex digits of the bundle's sha256.")


class Prediction(BaseModel):
    """One predicted price."""

    prediction_id: str = Field(description="A fresh uuid4 for this prediction.")
    price: float = Field(description="Predicted resale price in SGD.")
    interval: Interval
    model: ModelInfo


class BatchPredictions(BaseModel):
    """Predictions for a batch, in the order of the request's records."""

    count: int
    predictions: list[Prediction]


class ErrorItem(BaseModel):
    """One problem with a request: where (dotted path) and why."""

    field: str = Field(examples=["records.0.town"])
    reason: str


class ErrorResponse(BaseModel):
    """Every error the service returns (4xx and 5xx) has this shape."""

    error: str = Field(examples=["invalid_request"])
    detail: list[ErrorItem]
    request_id: str | None = None


@dataclass(frozen=True)
class Schemas:
    """The request models of one service (their enums come from the model's feature spec)."""

    record: type[RecordBase]
    batch: type[BaseModel]
    instances: type[BaseModel]
    #: ``list[record]`` with the batch bounds (a bare JSON list of rows)
    rows: Any
    max_batch: int
    max_month: str


def default_max_month() -> str:
    """December of next year: the latest sale month the service prices by default."""
    return f"{date.today().year + 1}-12"


def build_schemas(
    spec: FeatureSpec, *, max_batch: int = 1000, max_month: str | None = None
) -> Schemas:
    """Request models for a model with feature spec ``spec``: one row (``Record``), a batch
    ``{"records": [...]}`` of at most ``max_batch`` rows, and SageMaker's
    ``{"instances": [...]}``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    max_month = max_month or default_max_month()
    if not re.fullmatch(MONTH_PATTERN, max_month):
        raise ValueError(f"max_month must be YYYY-MM, not {max_month!r}")
    cats = spec.categorical
    missing = [c for c in ("town", "flat_type", "flat_model") if c not in cats]
    if missing:
        raise ValueError(f"the feature spec has no categories for {', '.join(missing)}")
    record = create_model(
        "Record",
        __base__=RecordBase,
        __doc__="One flat to price: the official columns of the resale files, no price.",
        town=(
            category_type(tuple(cats["town"])),
            Field(description=f"HDB town.{_ANY_CASE}", examples=["ANG MO KIO"]),
        ),
        flat_type=(
            category_type(tuple(cats["flat_type"]), accept=tuple(FLAT_TYPE_ALIASES)),
            Field(description=f"Flat type.{_ANY_CASE}", examples=["4 ROOM"]),
        ),
        flat_model=(
            category_type(tuple(cats["flat_model"])),
            Field(description=f"Flat model.{_ANY_CASE}", examples=["NEW GENERATION"]),
        ),
        month=(
            month_type(FIRST_MONTH, max_month),
            Field(
                description=f"Month of the sale, YYYY-MM, {FIRST_MONTH} to {max_month}.",
                examples=["2025-06"],
            ),
        ),
        lease_commence_date=(
            lease_start_type(date.today().year),
            Field(description=_LEASE_START_DESCRIPTION, examples=[1979]),
        ),
    )
    record.max_month = max_month
    rows = Annotated[
        list[record],  # type: ignore[valid-type]
        Field(
            min_length=1,
            max_length=max_batch,
            description=f"1 to {max_batch} rows.",
        ),
    ]
    batch = create_model(
        "BatchRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"Up to {max_batch} rows to price.",
        records=(rows, ...),
    )
    instances = create_model(
        "InstancesRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"SageMaker's JSON convention: up to {max_batch} rows under 'instances'.",
        instances=(rows, ...),
    )
    return Schemas(record, batch, instances, rows, max_batch, max_month)
