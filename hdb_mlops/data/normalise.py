"""Vectorised parsers for the quirky columns of the resale files.

Each parser takes a pandas Series of strings and returns numbers, with NaN where a value
cannot be parsed, so the validation rules can say which rows failed and why.

The arithmetic behind the parsed columns (month counts, storey mid, the lease taken to start
mid-year, the derived remaining lease) is in small functions that take Python numbers, numpy
arrays or pandas Series alike (:func:`month_count`, :func:`storey_mid`,
:func:`lease_age_months`, :func:`derived_remaining_lease_months`): the loader applies them
to whole columns and the prediction service to one request row, so there is one copy of
each formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import numpy as np
import pandas as pd

from hdb_mlops.data.schema import FLAT_TYPE_ALIASES, LEASE_YEARS

STOREY_PATTERN = r"^(\d{2}) TO (\d{2})$"
MONTH_PATTERN = r"^(\d{4})-(0[1-9]|1[0-2])$"
# "61 years 04 months", "62 years 01 month", "62 years", "66 years 0 months"
LEASE_PATTERN = r"^(\d{1,2}) years?(?: (\d{1,2}) months?)?$"
#: A full lease in months (the derived remaining lease is capped at it).
LEASE_MONTHS = LEASE_YEARS * 12
#: Only the commencement year of a lease is published: it is taken to start in July.
LEASE_START_MONTH = 7

#: A Python number, a numpy array or a pandas Series (the arithmetic helpers take any).
Num: TypeAlias = float | np.ndarray | pd.Series


# --------------------------------------------------------------------------- arithmetic


def month_count(year: Num, month: Num) -> Num:
    """Months since January of year 0 (``year * 12 + month - 1``, month 1..12): the scale
    the month and lease arithmetic is done on."""
    return year * 12 + (month - 1)


def storey_mid(storey_low: Num, storey_high: Num) -> Num:
    """The middle storey of a band ("10 TO 12" -> 11.0)."""
    return (storey_low + storey_high) / 2


def lease_age_months(sale_month: Num, lease_commence_year: Num) -> Num:
    """Months from the start of the lease (taken to be July of its commencement year) to the
    sale; ``sale_month`` is a :func:`month_count`. Negative for a sale before that July."""
    return sale_month - month_count(lease_commence_year, LEASE_START_MONTH)


def derived_remaining_lease_months(age_months: Num) -> Num:
    """Remaining lease from the lease's age in months (:func:`lease_age_months`): a full
    lease minus the age, capped at 99 years (a flat sold in its first months). NaN stays NaN."""
    remaining = LEASE_MONTHS - age_months
    if isinstance(remaining, np.ndarray | pd.Series):
        return np.minimum(remaining, float(LEASE_MONTHS))
    return float(LEASE_MONTHS) if remaining > LEASE_MONTHS else remaining


def fill_missing(values: Num, fallback: Num) -> Num:
    """``values`` with NaN replaced by ``fallback`` (element-wise for arrays and Series)."""
    if isinstance(values, pd.Series):
        return values.fillna(fallback)
    if isinstance(values, np.ndarray):
        return np.where(np.isnan(values), fallback, values)
    return fallback if values != values else values  # NaN is the one value unequal to itself


# --------------------------------------------------------------------------- parsers


def on_unique(values: pd.Series, parse: Callable[[pd.Series], pd.Series | pd.DataFrame]):
    """Apply ``parse`` to the distinct values only, then spread the results back.

    The resale columns have few distinct values (115 months, 17 storey bands), so parsing
    each once keeps a million-row load to a few seconds.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = parse(pd.Series(uniques, dtype=values.dtype if len(uniques) else "str"))
    taken = (
        parsed.iloc[np.where(codes < 0, 0, codes)]
        if len(parsed)
        else parsed.reindex(range(len(codes)))
    )
    taken = taken.set_axis(values.index, axis=0)
    missing = codes < 0
    if missing.any():
        taken = taken.mask(pd.Series(missing, index=values.index), axis=0)
    return taken


def clean_text(values: pd.Series) -> pd.Series:
    """Strip surrounding spaces and upper-case (the official files mix cases across years)."""
    return on_unique(values.astype("str"), lambda u: u.str.strip().str.upper())


def normalise_flat_type(values: pd.Series) -> pd.Series:
    """Upper-case and unify spellings ("MULTI GENERATION" -> "MULTI-GENERATION")."""
    return on_unique(
        values.astype("str"), lambda u: u.str.strip().str.upper().replace(FLAT_TYPE_ALIASES)
    )


def parse_number(values: pd.Series) -> pd.Series:
    """A number from text (surrounding spaces allowed); NaN when it is not one."""
    return on_unique(
        values, lambda u: pd.to_numeric(u.str.strip(), errors="coerce").astype("float64")
    )


def parse_month(values: pd.Series) -> pd.Series:
    """Parse "YYYY-MM" to a monthly Period; anything else becomes NaT."""
    return on_unique(values, _parse_month)


def _parse_month(values: pd.Series) -> pd.Series:
    text = values.astype("str").str.strip()
    ok = text.str.fullmatch(MONTH_PATTERN).fillna(False).astype(bool)
    out = pd.Series(pd.NaT, index=values.index, dtype="period[M]")
    if ok.any():
        out[ok] = pd.PeriodIndex(text[ok], freq="M")
    return out


def parse_storey_range(values: pd.Series) -> pd.DataFrame:
    """Split "10 TO 12" into storey_low, storey_high and storey_mid (NaN when malformed)."""
    return on_unique(values, _parse_storey_range)


def _parse_storey_range(values: pd.Series) -> pd.DataFrame:
    parts = values.astype("str").str.strip().str.upper().str.extract(STOREY_PATTERN)
    low = pd.to_numeric(parts[0], errors="coerce")
    high = pd.to_numeric(parts[1], errors="coerce")
    return pd.DataFrame(
        {"storey_low": low, "storey_high": high, "storey_mid": storey_mid(low, high)},
        index=values.index,
    )


def parse_remaining_lease(values: pd.Series) -> pd.Series:
    """Remaining lease in months from "61 years 04 months", "62 years" or plain years ("70").

    Empty values and values in no known form give NaN.
    """
    return on_unique(values, _parse_remaining_lease)


def _parse_remaining_lease(values: pd.Series) -> pd.Series:
    text = values.astype("str").str.strip()
    months = pd.Series(np.nan, index=values.index, dtype="float64")
    plain = text.str.fullmatch(r"\d{1,2}").fillna(False).astype(bool)
    months[plain] = pd.to_numeric(text[plain]) * 12
    parts = text[~plain].str.extract(LEASE_PATTERN)
    years = pd.to_numeric(parts[0], errors="coerce")
    extra = pd.to_numeric(parts[1], errors="coerce").fillna(0)
    months[~plain] = years * 12 + extra
    return months


def derive_remaining_lease(month: pd.Series, lease_commence_year: pd.Series) -> pd.Series:
    """Remaining lease in months at the month of sale, for files without the column.

    Only the commencement year is published, so the lease is taken to start mid-year: on the
    2017+ file, where both are published, this matches the reported value with a median error
    of 0 months (interquartile range -3 to +3 months). A flat sold in its first months is
    given the full 99 years. (The arithmetic: :func:`lease_age_months`,
    :func:`derived_remaining_lease_months`.)
    """
    sale = month_count(month.dt.year, month.dt.month)
    age = lease_age_months(sale, lease_commence_year).astype("float64")
    return derived_remaining_lease_months(age).where(month.notna())


def format_remaining_lease(months: pd.Series) -> pd.Series:
    """Months as the 2017+ file writes them: "61 years 04 months", "62 years 01 month"."""
    months = months.astype("int64")
    years, rest = months // 12, months % 12
    out = years.astype("str") + " years"
    one = rest == 1
    many = rest > 1
    out[one] = out[one] + " 01 month"
    out[many] = out[many] + " " + rest[many].map("{:02d}".format).astype("str") + " months"
    return out
