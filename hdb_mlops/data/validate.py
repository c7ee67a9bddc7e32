"""Named validation rules for resale transactions.

Each rule looks at the raw strings and the parsed values of every row at once and returns the
rows that break it, with a reason a person can act on.

Every reason is a root cause. A rule declares the fields it reads (:attr:`Rule.inputs`), and
it is not applied to a row where one of those fields has already failed an earlier rule: a
month that does not parse gets ``month_format`` only, never also ``month_range`` or
``lease_before_sale``; an empty town gets ``required_values`` only, not ``town_known``.
Problems that are independent of each other are all reported: the row is quarantined under
the first one (in the order of :data:`RULES`) and its reason lists each of them, so one look
at the quarantine shows everything to fix in that row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hdb_mlops.data.schema import (
    ALL_COLUMNS,
    BASE_COLUMNS,
    FIRST_MONTH,
    FLAT_TYPES,
    FLOOR_AREA_RANGE,
    LEASE_YEAR_MIN,
    LEASE_YEARS,
    PRICE_RANGE,
    TOWNS,
)


@dataclass(frozen=True)
class Rule:
    """A named check: ``failing(raw, parsed, ctx)`` is True on the rows that break it.

    ``inputs`` are the fields the rule reads; the rule is skipped on a row where one of them
    already failed an earlier rule, and a row it fires on has those fields marked as failed
    for the rules after it. A rule with no ``inputs`` looks at every field separately: its
    ``failing`` returns a frame of booleans with one column per field, and only the fields
    it flags are marked.
    """

    name: str
    description: str
    failing: Callable[[pd.DataFrame, pd.DataFrame, dict], pd.Series | pd.DataFrame]
    reason: Callable[[pd.DataFrame, pd.DataFrame], pd.Series]
    inputs: tuple[str, ...] = ()


def _q(values: pd.Series) -> pd.Series:
    """Values quoted for a message."""
    return "'" + values.astype("str") + "'"


def _empty_fields(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: raw[c].str.strip() == "" for c in BASE_COLUMNS})


def _bad_utf8(raw: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in raw.columns if c in ALL_COLUMNS]
    return pd.DataFrame({c: raw[c].str.contains("\ufffd", regex=False) for c in cols})


def _which(mask: pd.DataFrame) -> pd.Series:
    """Comma-separated names of the True columns of each row."""
    return mask.apply(lambda row: ", ".join(row.index[row.to_numpy()]), axis=1)


def _given_lease(raw: pd.DataFrame) -> pd.Series:
    if "remaining_lease" not in raw:
        return pd.Series(False, index=raw.index)
    return raw["remaining_lease"].str.strip() != ""


def _sale_year(parsed: pd.DataFrame) -> pd.Series:
    """Year of the sale month, NaN where the month did not parse (``NaT.year`` is -1)."""
    month = parsed["month"]
    return month.dt.year.where(month.notna())


def _out_of(values: pd.Series, low: float, high: float) -> pd.Series:
    return values.isna() | (values < low) | (values > high)


RULES: tuple[Rule, ...] = (
    Rule(
        "utf8",
        "every field is valid UTF-8",
        lambda raw, p, ctx: _bad_utf8(raw),
        lambda raw, p: (
            "invalid UTF-8 bytes in " + _which(_bad_utf8(raw)) + "; save the file as UTF-8"
        ),
    ),
    Rule(
        "required_values",
        "no required field is empty",
        lambda raw, p, ctx: _empty_fields(raw),
        lambda raw, p: "empty " + _which(_empty_fields(raw)),
    ),
    Rule(
        "month_format",
        "month is YYYY-MM",
        lambda raw, p, ctx: p["month"].isna(),
        lambda raw, p: "month=" + _q(raw["month"]) + " is not YYYY-MM (e.g. 2024-07)",
        inputs=("month",),
    ),
    Rule(
        "month_range",
        f"month is between {FIRST_MONTH} and the current month",
        lambda raw, p, ctx: (p["month"] < ctx["first_month"]) | (p["month"] > ctx["max_month"]),
        lambda raw, p: "month=" + _q(raw["month"]) + f" is outside {FIRST_MONTH}..today",
        inputs=("month",),
    ),
    Rule(
        "town_known",
        "town is one of the 27 HDB towns",
        lambda raw, p, ctx: ~p["town"].isin(TOWNS),
        lambda raw, p: "town=" + _q(raw["town"]) + " is not an HDB town (e.g. 'ANG MO KIO')",
        inputs=("town",),
    ),
    Rule(
        "flat_type_known",
        "flat_type is 1 ROOM .. 5 ROOM, EXECUTIVE or MULTI-GENERATION",
        lambda raw, p, ctx: ~p["flat_type"].isin(FLAT_TYPES),
        lambda raw, p: (
            "flat_type=" + _q(raw["flat_type"]) + " is not one of " + ", ".join(FLAT_TYPES)
        ),
        inputs=("flat_type",),
    ),
    Rule(
        "storey_pattern",
        "storey_range is 'NN TO NN' with low <= high",
        lambda raw, p, ctx: (
            p["storey_low"].isna() | (p["storey_low"] < 1) | (p["storey_low"] > p["storey_high"])
        ),
        lambda raw, p: "storey_range=" + _q(raw["storey_range"]) + " is not like '10 TO 12'",
        inputs=("storey_range",),
    ),
    Rule(
        "floor_area_range",
        f"floor_area_sqm is a number in {FLOOR_AREA_RANGE[0]:g}..{FLOOR_AREA_RANGE[1]:g}",
        lambda raw, p, ctx: _out_of(p["floor_area_sqm"], *FLOOR_AREA_RANGE),
        lambda raw, p: (
            "floor_area_sqm="
            + _q(raw["floor_area_sqm"])
            + f" is not a number in {FLOOR_AREA_RANGE[0]:g}..{FLOOR_AREA_RANGE[1]:g}"
        ),
        inputs=("floor_area_sqm",),
    ),
    Rule(
        "price_range",
        f"resale_price is a number in {PRICE_RANGE[0]:,.0f}..{PRICE_RANGE[1]:,.0f}",
        lambda raw, p, ctx: _out_of(p["resale_price"], *PRICE_RANGE),
        lambda raw, p: (
            "resale_price="
            + _q(raw["resale_price"])
            + f" is not a number in {PRICE_RANGE[0]:,.0f}..{PRICE_RANGE[1]:,.0f}"
        ),
        inputs=("resale_price",),
    ),
    Rule(
        "lease_year_range",
        f"lease_commence_date is a year from {LEASE_YEAR_MIN} to the current year",
        lambda raw, p, ctx: _out_of(p["lease_commence_date"], LEASE_YEAR_MIN, ctx["max_year"]),
        lambda raw, p: (
            "lease_commence_date="
            + _q(raw["lease_commence_date"])
            + f" is not a year from {LEASE_YEAR_MIN} to this year"
        ),
        inputs=("lease_commence_date",),
    ),
    Rule(
        "lease_before_sale",
        "the lease starts no later than the year after the sale",
        lambda raw, p, ctx: p["lease_commence_date"] > _sale_year(p) + 1,
        lambda raw, p: (
            "lease_commence_date="
            + _q(raw["lease_commence_date"])
            + " is more than a year after the sale month "
            + raw["month"].astype("str")
        ),
        inputs=("month", "lease_commence_date"),
    ),
    Rule(
        "remaining_lease_format",
        "remaining_lease, where given, is 'NN years NN months' or whole years, up to 99",
        lambda raw, p, ctx: (
            (_given_lease(raw) & p["remaining_lease_reported"].isna())
            | (p["remaining_lease_reported"] > LEASE_YEARS * 12)
            | (p["remaining_lease_reported"] < 0)
        ),
        lambda raw, p: (
            "remaining_lease="
            + _q(
                raw["remaining_lease"]
                if "remaining_lease" in raw
                else pd.Series("", index=raw.index)
            )
            + " is not like '61 years 04 months'"
        ),
        inputs=("remaining_lease",),
    ),
)

RULE_NAMES: tuple[str, ...] = ("field_count", *(r.name for r in RULES))


def describe_rules() -> pd.DataFrame:
    """The rules as a table (name, description), in the order they are applied."""
    rows = [("field_count", "every line has one field per header column")]
    rows += [(r.name, r.description) for r in RULES]
    return pd.DataFrame(rows, columns=["rule", "description"])


def check(raw: pd.DataFrame, parsed: pd.DataFrame, *, max_month: str | None = None) -> pd.DataFrame:
    """Rows that break at least one rule, indexed like ``raw``, with ``rule`` and ``reason``.

    A rule is not applied to a row where one of its inputs failed an earlier rule, so
    ``reason`` lists root causes only (see the module docstring); ``rule`` is the first.
    """
    max_period = pd.Period(max_month or pd.Timestamp.now().strftime("%Y-%m"), freq="M")
    ctx = {
        "first_month": pd.Period(FIRST_MONTH, freq="M"),
        "max_month": max_period,
        "max_year": max_period.year,
    }
    broken = pd.DataFrame(_root_causes(raw, parsed, ctx), index=raw.index)
    failing = broken.any(axis=1)
    if not failing.any():
        return pd.DataFrame({"rule": pd.Series(dtype="str"), "reason": pd.Series(dtype="str")})
    sub_raw, sub_parsed, sub_broken = raw[failing], parsed[failing], broken[failing]
    reasons = pd.Series("", index=sub_raw.index, dtype="str")
    for rule in RULES:
        rows = sub_broken[rule.name]
        if rows.any():
            text = rule.name + ": " + rule.reason(sub_raw[rows], sub_parsed[rows]).astype("str")
            reasons[rows] = reasons[rows].where(reasons[rows] == "", reasons[rows] + "; ") + text
    first = sub_broken.idxmax(axis=1)
    return pd.DataFrame({"rule": first.astype("str"), "reason": reasons})


def _root_causes(raw: pd.DataFrame, parsed: pd.DataFrame, ctx: dict) -> dict[str, np.ndarray]:
    """For each rule, the rows it fires on once rows whose inputs already failed are skipped."""
    n = len(raw)
    failed: dict[str, np.ndarray] = {}  # field -> rows where the field failed a rule

    def failed_field(col: str) -> np.ndarray:
        return failed.get(col, np.zeros(n, dtype=bool))

    broken: dict[str, np.ndarray] = {}
    for rule in RULES:
        result = rule.failing(raw, parsed, ctx)
        if isinstance(result, pd.DataFrame):  # one column per field
            fires = np.zeros(n, dtype=bool)
            for col in result.columns:
                hits = _as_bool(result[col]) & ~failed_field(col)
                failed[col] = failed_field(col) | hits
                fires |= hits
        else:
            fires = _as_bool(result)
            for col in rule.inputs:
                fires &= ~failed_field(col)
            for col in rule.inputs:
                failed[col] = failed_field(col) | fires
        broken[rule.name] = fires
    return broken


def _as_bool(values: pd.Series) -> np.ndarray:
    """A rule's result as a numpy bool array, with NA (e.g. comparisons with NaN) as False."""
    return values.fillna(False).to_numpy(dtype=bool, copy=True)
