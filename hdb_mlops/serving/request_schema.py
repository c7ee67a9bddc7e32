"""Request and response models of the prediction service, built from a model's feature spec.

:func:`build_schemas` makes the pydantic (v2) models at app creation, so the OpenAPI schema
lists exactly the towns, flat types and flat models the served model knows. A request row has
the official column names of the data.gov.sg files (``resale_price`` left out) and is checked
with the loader's own rules (:mod:`hdb_mlops.data.validate`):

* ``month`` is ``YYYY-MM``, from 1990-01 to ``max_month`` (default: December of next year);
* ``town``, ``flat_type`` and ``flat_model`` are one of the spec's categories, in any case and
  with surrounding spaces, like the loader's ``clean_text`` ("Model A" and "MODEL A" are the
  same). flat_type "MULTI GENERATION" (the 1990s spelling) is accepted and priced as
  "MULTI-GENERATION", as the loader does;
* ``storey_range`` is ``"NN TO NN"`` with 1 <= low <= high (any case);
* ``floor_area_sqm`` is 20..400; ``lease_commence_date`` a year from 1960 to this year and no
  later than the year after the sale;
* ``remaining_lease`` is optional: a string as the files write it (``"61 years 04 months"``,
  ``"62 years"``, or whole years such as ``"70"`` as in 2015-2016) or an integer number of
  **months**; at most 99 years. Absent, it is derived from the lease start like the loader does;
* ``block`` and ``street_name`` are optional: they only feed location features, and a missing
  or unknown address gives NaN location features, never an error;
* any other field is rejected (``extra="forbid"``).

Category, storey and month checks run in pydantic-core (Rust); four small Python validators
do the cross-field rules. After validation a row holds normalised values (upper-case
categories and storey band, remaining lease in months or None), which is what the service's
fast path turns into model features.
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
    GetPydanticSchema,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic_core import core_schema

from hdb_mlops.data.normalise import LEASE_PATTERN
from hdb_mlops.data.schema import (
    FIRST_MONTH,
    FLAT_TYPE_ALIASES,
    FLOOR_AREA_RANGE,
    LEASE_YEAR_MIN,
    LEASE_YEARS,
    OFFICIAL_2017_COLUMNS,
)
from hdb_mlops.model.features import FeatureSpec

#: Columns a request row may have, in the official (2017-onwards) order, without the price.
REQUEST_COLUMNS: tuple[str, ...] = tuple(c for c in OFFICIAL_2017_COLUMNS if c != "resale_price")
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
#: "NN TO NN" with storeys from 01, in any case (the value is upper-cased after the check).
STOREY_PATTERN = r"^(0[1-9]|[1-9]\d) [Tt][Oo] (0[1-9]|[1-9]\d)$"
#: remaining_lease as a string: the loader's forms ("61 years 04 months", "62 years", "70");
#: an empty string means "not given", as a blank field of the files does.
REMAINING_LEASE_PATTERN = rf"{LEASE_PATTERN}|^\d{{1,2}}$|^$"
MAX_LEASE_MONTHS = LEASE_YEARS * 12
_LEASE_RE = re.compile(LEASE_PATTERN)


def year_range_pattern(first: int, last: int) -> str:
    """A regular expression for the years ``first..last``, decade by decade
    (1990..2027: ``199\\d|200\\d|201\\d|202[0-7]``)."""
    if not 1000 <= first <= last <= 9999:
        raise ValueError(f"not a range of 4-digit years: {first}..{last}")
    parts = []
    for decade in range(first // 10, last // 10 + 1):
        lo, hi = max(first, decade * 10) % 10, min(last, decade * 10 + 9) % 10
        digits = r"\d" if (lo, hi) == (0, 9) else str(lo) if lo == hi else f"[{lo}-{hi}]"
        parts.append(f"{decade}{digits}")
    return "|".join(parts)


def month_pattern(first_month: str, last_month: str) -> str:
    """``YYYY-MM`` with a year from ``first_month``'s to ``last_month``'s (the exact bounds are
    checked by a validator)."""
    years = year_range_pattern(int(first_month[:4]), int(last_month[:4]))
    return f"^({years})-(0[1-9]|1[0-2])$"


def lease_months(value: int | str | None) -> int | None:
    """Remaining lease in months from an integer (months) or a string as the files write it
    (``"61 years 04 months"``, ``"62 years"``, whole years ``"70"``); None when not given."""
    if value is None or isinstance(value, int):
        return value
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return int(value) * 12
    match = _LEASE_RE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not like '61 years 04 months'")
    return int(match.group(1)) * 12 + int(match.group(2) or 0)


def category_type(values: tuple[str, ...], accept: tuple[str, ...] = ()) -> Any:
    """A string that must be one of ``values`` after stripping and upper-casing (like the
    loader's clean_text), validated in pydantic-core; ``accept`` are extra spellings that are
    valid but not advertised (e.g. "MULTI GENERATION", which the loader maps to
    "MULTI-GENERATION"). The JSON schema is an enum of ``values``."""
    if not values:
        raise ValueError("a category field needs at least one category")
    schema = core_schema.chain_schema(
        [
            core_schema.str_schema(strip_whitespace=True, to_upper=True),
            core_schema.literal_schema([*values, *(a for a in accept if a not in values)]),
        ]
    )
    return Annotated[
        str,
        GetPydanticSchema(lambda _type, _handler: schema),
        WithJsonSchema({"type": "string", "enum": list(values)}),
    ]


class RecordBase(BaseModel):
    """Fields of a request row that do not depend on the model (see the module docstring);
    :func:`build_schemas` adds town, flat_type and flat_model."""

    model_config = ConfigDict(extra="forbid")

    #: Latest sale month accepted (set per service by :func:`build_schemas`).
    max_month: ClassVar[str] = "2099-12"

    month: Annotated[
        str,
        StringConstraints(strip_whitespace=True, pattern=MONTH_PATTERN),
        Field(
            description="Month of the sale, YYYY-MM (1990-01 up to the service's max_month).",
            examples=["2025-06"],
        ),
    ]
    block: Annotated[
        Annotated[str, StringConstraints(max_length=16)] | None,
        Field(description="Block number (location features only).", examples=["406"]),
    ] = None
    street_name: Annotated[
        Annotated[str, StringConstraints(max_length=120)] | None,
        Field(
            description="Street name (location features only).",
            examples=["ANG MO KIO AVE 10"],
        ),
    ] = None
    storey_range: Annotated[
        str,
        StringConstraints(strip_whitespace=True, to_upper=True, pattern=STOREY_PATTERN),
        Field(
            description="Storey band 'NN TO NN' (1 <= low <= high; any case).",
            examples=["07 TO 09"],
        ),
    ]
    floor_area_sqm: Annotated[
        float,
        Field(
            ge=FLOOR_AREA_RANGE[0],
            le=FLOOR_AREA_RANGE[1],
            allow_inf_nan=False,
            description="Floor area in square metres.",
            examples=[92.0],
        ),
    ]
    lease_commence_date: Annotated[
        int,
        Field(
            ge=LEASE_YEAR_MIN,
            description="Year the 99-year lease started (no later than the year after the sale).",
            examples=[1979],
        ),
    ]
    remaining_lease: Annotated[
        Annotated[int, Field(ge=0, le=MAX_LEASE_MONTHS)]
        | Annotated[str, StringConstraints(strip_whitespace=True, pattern=REMAINING_LEASE_PATTERN)]
        | None,
        Field(
            description=(
                "Remaining lease: a string as the files write it ('61 years 04 months', "
                "'62 years', whole years '70') or an integer number of MONTHS; at most 99 "
                "years. Optional: derived from lease_commence_date when absent. Validated "
                "rows hold it in months (or null)."
            ),
            examples=["52 years 03 months", 627],
        ),
    ] = None

    @field_validator("month")
    @classmethod
    def _month_in_range(cls, value: str) -> str:
        if value < FIRST_MONTH or value > cls.max_month:
            raise ValueError(f"month must be between {FIRST_MONTH} and {cls.max_month}")
        return value

    @field_validator("storey_range")
    @classmethod
    def _storey_order(cls, value: str) -> str:
        low, high = int(value[:2]), int(value[-2:])
        if low < 1 or low > high:
            raise ValueError("storey_range must be 'NN TO NN' with 1 <= low <= high")
        return value

    @field_validator("lease_commence_date")
    @classmethod
    def _lease_before_sale(cls, value: int, info: ValidationInfo) -> int:
        month = info.data.get("month")
        if month is not None and value > int(month[:4]) + 1:
            raise ValueError(f"the lease cannot start more than a year after the sale ({month})")
        return value

    @field_validator("remaining_lease")
    @classmethod
    def _lease_to_months(cls, value: int | str | None) -> int | None:
        months = lease_months(value)
        if months is not None and months > MAX_LEASE_MONTHS:
            raise ValueError(f"remaining_lease must be at most {LEASE_YEARS} years")
        return months


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
            Field(description="HDB town (any case).", examples=["ANG MO KIO"]),
        ),
        flat_type=(
            category_type(tuple(cats["flat_type"]), accept=tuple(FLAT_TYPE_ALIASES)),
            Field(description="Flat type (any case).", examples=["4 ROOM"]),
        ),
        flat_model=(
            category_type(tuple(cats["flat_model"])),
            Field(description="Flat model (any case).", examples=["NEW GENERATION"]),
        ),
        month=(
            Annotated[
                str,
                StringConstraints(
                    strip_whitespace=True, pattern=month_pattern(FIRST_MONTH, max_month)
                ),
            ],
            Field(
                description=f"Month of the sale, YYYY-MM, {FIRST_MONTH} to {max_month}.",
                examples=["2025-06"],
            ),
        ),
        lease_commence_date=(
            int,
            Field(
                ge=LEASE_YEAR_MIN,
                le=date.today().year,
                description=(
                    "Year the 99-year lease started (no later than the year after the sale)."
                ),
                examples=[1979],
            ),
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
