"""Field types of a request row, each enforcing exactly what its published JSON schema says.

A JSON request is checked in pydantic-core (Rust) against the same facts the OpenAPI document
publishes, with no coercion the schema does not admit:

* ``number`` fields take JSON numbers only (no strings, no booleans, no NaN or infinities);
* ``integer`` fields take JSON integers, which JSON Schema says include ``1979.0`` but not
  ``1979.5``, ``"1979"`` or ``true``;
* ``pattern`` fields are matched as they are sent (no trimming), with ECMA-262 semantics:
  ``$`` is the end of the string, so ``"2025-03\\n"`` does not match. The patterns are exact:
  a month pattern spells the service's month range, the storey pattern only admits bands
  with low <= high, the remaining-lease pattern 0-11 months and at most 99 years;
* category fields (town, flat type, flat model) are one of the model's categories in any
  ASCII case with optional surrounding spaces, tabs or newlines (the loader's
  ``clean_text``): their schema is the enum of categories **or** a pattern that spells that
  tolerance, so that a client generated from the schema sees it.

Each type states its reason in the error (``month must be YYYY-MM from ...``) rather than
repeating a long pattern. The rule that ties remaining_lease to lease_commence_date and
month is :func:`lease_conflict`, applied by the service after validation.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import GetPydanticSchema, WithJsonSchema
from pydantic_core import core_schema

from hdb_mlops.data.normalise import (
    LEASE_PATTERN,
    derived_remaining_lease_months,
    lease_age_months,
    month_count,
)
from hdb_mlops.data.schema import LEASE_YEARS

MAX_LEASE_MONTHS = LEASE_YEARS * 12
#: How far a given remaining lease may be from the one implied by the lease start and the
#: sale month. The files round it to months, 2015-2016 and early 2017 rows to whole years
#: (up to -17 months on the 2017+ file), and only the start year is published (taken as
#: mid-year, +-6 months): on the 2017+ file, 18 months refuses 1 row in 236,273.
LEASE_TOLERANCE_MONTHS = 18
#: "NN TO NN" with 01 <= low <= high; "TO" in any case (the value is upper-cased after).
_TO = "[Tt][Oo]"
#: Surrounding whitespace a category may have (stripped, as the loader's clean_text does).
_SPACE = "[ \\t\\r\\n]*"
_LEASE_RE = re.compile(LEASE_PATTERN)
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")


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


def _months(first: int, last: int) -> str:
    if (first, last) == (1, 12):
        return "0[1-9]|1[0-2]"
    return "|".join(f"{m:02d}" for m in range(first, last + 1))


def month_pattern(first_month: str, last_month: str) -> str:
    """Exactly the months ``first_month..last_month`` (``YYYY-MM``), bounds included."""
    (fy, fm), (ly, lm) = (map(int, m.split("-")) for m in (first_month, last_month))
    if (fy, fm) > (ly, lm):
        raise ValueError(f"empty month range {first_month}..{last_month}")
    if fy == ly:
        return f"^{fy}-(?:{_months(fm, lm)})$"
    parts = [f"{fy}-(?:{_months(fm, 12)})"]
    if ly - fy > 1:
        parts.append(f"(?:{year_range_pattern(fy + 1, ly - 1)})-(?:{_months(1, 12)})")
    parts.append(f"{ly}-(?:{_months(1, lm)})")
    return f"^(?:{'|'.join(parts)})$"


def storey_pattern() -> str:
    """``"NN TO NN"`` for exactly the bands 01 <= low <= high <= 99 ("TO" in any case)."""
    parts = []
    for tens in range(10):
        if tens < 9:  # a high storey in a higher decade
            low = "[1-9]" if tens == 0 else r"\d"
            higher = "9" if tens == 8 else f"[{tens + 1}-9]"
            parts.append(f"{tens}{low} {_TO} {higher}\\d")
        for unit in range(1 if tens == 0 else 0, 10):  # the same decade, unit >= low's
            high = "9" if unit == 9 else f"[{unit}-9]"
            parts.append(f"{tens}{unit} {_TO} {tens}{high}")
    return f"^(?:{'|'.join(parts)})$"


def remaining_lease_pattern() -> str:
    """The remaining-lease strings of the files: ``"61 years 04 months"``, ``"62 years"``,
    ``"1 year 01 month"`` (0-11 months, at most 99 years), whole years ``"70"`` (as in
    2015-2016), or ``""`` (not given)."""
    years = r"(?:\d|[0-8]\d|9[0-8])"
    months = r"(?: (?:0?\d|1[01]) months?)?"
    return rf"^(?:{years} years?{months}|99 years?(?: 0?0 months?)?|\d{{1,2}})?$"


STOREY_PATTERN = storey_pattern()
REMAINING_LEASE_PATTERN = remaining_lease_pattern()


def any_case_pattern(values: tuple[str, ...]) -> str:
    """One of ``values`` in any ASCII case, with optional surrounding spaces, tabs or newlines."""

    def spell(value: str) -> str:
        return "".join(
            f"[{c.upper()}{c.lower()}]"
            if c.isascii() and c.isalpha()
            else f"\\{c}"
            if c in _REGEX_SPECIAL
            else c
            for c in value
        )

    return f"^{_SPACE}(?:{'|'.join(spell(v) for v in values)}){_SPACE}$"


def pattern_str(pattern: str, reason: str, **transforms: bool) -> Any:
    """A JSON string matching ``pattern`` as sent (then ``transforms`` such as
    ``to_upper``); an error says ``reason``. Its schema is ``{"type": "string", "pattern"}``."""
    schema = core_schema.custom_error_schema(
        core_schema.str_schema(strict=True, pattern=pattern, **transforms),  # type: ignore[arg-type]
        custom_error_type="invalid_format",
        custom_error_message=reason,
    )
    return Annotated[
        str,
        GetPydanticSchema(lambda _type, _handler: schema),
        WithJsonSchema({"type": "string", "pattern": pattern}),
    ]


def json_integer(ge: int, le: int) -> Any:
    """A JSON integer from ``ge`` to ``le``: an int, or a float with no fractional part
    (JSON Schema's ``integer`` includes ``1979.0``); never a string or a boolean."""
    whole = core_schema.union_schema(
        [
            core_schema.int_schema(strict=True),
            core_schema.chain_schema(
                [core_schema.float_schema(strict=True), core_schema.int_schema()]
            ),
        ],
        mode="left_to_right",
    )
    schema = core_schema.chain_schema(
        [
            core_schema.custom_error_schema(whole, custom_error_type="int_type"),
            core_schema.int_schema(ge=ge, le=le),
        ]
    )
    return Annotated[
        int,
        GetPydanticSchema(lambda _type, _handler: schema),
        WithJsonSchema({"type": "integer", "minimum": ge, "maximum": le}),
    ]


def category_type(values: tuple[str, ...], accept: tuple[str, ...] = ()) -> Any:
    """One of ``values`` in any ASCII case with optional surrounding whitespace (like the
    loader's clean_text), validated in pydantic-core and normalised to upper case;
    ``accept`` are extra spellings that are valid but not advertised in the enum (e.g.
    "MULTI GENERATION", which the loader maps to "MULTI-GENERATION"). The JSON schema is
    ``anyOf`` the enum of ``values`` and the pattern of every accepted spelling."""
    if not values:
        raise ValueError("a category field needs at least one category")
    spellings = (*values, *(a for a in accept if a not in values))
    pattern = any_case_pattern(spellings)
    shown = ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")
    schema = core_schema.chain_schema(
        [
            core_schema.custom_error_schema(
                core_schema.str_schema(strict=True, pattern=pattern),
                custom_error_type="invalid_category",
                custom_error_message=f"must be one of {shown} (any case; see the enum)",
            ),
            core_schema.str_schema(strip_whitespace=True, to_upper=True),
            core_schema.literal_schema(list(spellings)),
        ]
    )
    return Annotated[
        str,
        GetPydanticSchema(lambda _type, _handler: schema),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "enum": list(values)},
                    {"type": "string", "pattern": pattern},
                ]
            }
        ),
    ]


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


def implied_remaining_lease(month: str, lease_commence_date: int) -> int:
    """Months of lease left at the sale ``month`` (``YYYY-MM``) for a lease that started in
    ``lease_commence_date``, taken to start mid-year, at most 99 years: the arithmetic of
    :func:`hdb_mlops.data.normalise.derive_remaining_lease`, for one row (the same functions)."""
    sale = month_count(int(month[:4]), int(month[5:7]))
    return int(derived_remaining_lease_months(lease_age_months(sale, lease_commence_date)))


def format_months(months: int) -> str:
    """``"53 years 01 month"`` for 637 (the files' spelling)."""
    years, rest = divmod(months, 12)
    if rest == 0:
        return f"{years} years"
    return f"{years} years {rest:02d} month{'s' if rest > 1 else ''}"


def lease_conflict(record: Any) -> str | None:
    """Why a validated row's remaining_lease contradicts its lease_commence_date and month
    (more than :data:`LEASE_TOLERANCE_MONTHS` from :func:`implied_remaining_lease`), or None."""
    given = record.remaining_lease
    if given is None:
        return None
    expected = implied_remaining_lease(record.month, record.lease_commence_date)
    if abs(given - expected) <= LEASE_TOLERANCE_MONTHS:
        return None
    shown = format_months(expected) if expected >= 0 else f"{expected} months"
    return (
        f"remaining_lease is {given} months ({format_months(given)}), but a lease from "
        f"lease_commence_date {record.lease_commence_date} (taken to start mid-year) has "
        f"{expected} months ({shown}) left at the sale month {record.month}: give a value "
        f"within {LEASE_TOLERANCE_MONTHS} months of that, or leave remaining_lease out"
    )
