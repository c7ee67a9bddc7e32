"""Named validation rules for resale transactions.

Each rule looks at the raw strings and the parsed values of every row at once and returns the
rows that break it, with a reason a person can act on. A row that breaks several rules is
quarantined under the first one (in the order of :data:`RULES`); its reason lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from hdb_mlops.data.schema import (
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
    """A named check: ``failing(raw, parsed, ctx)`` is True on the rows that break it."""

    name: str
    description: str
    failing: Callable[[pd.DataFrame, pd.DataFrame, dict], pd.Series]
    reason: Callable[[pd.DataFrame, pd.DataFrame], pd.Series]


def _q(values: pd.Series) -> pd.Series:
    """Values quoted for a message."""
    return "'" + values.astype("str") + "'"


def _empty_fields(raw: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: raw[c].str.strip() == "" for c in BASE_COLUMNS})


def _bad_utf8(raw: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in raw.columns if c != "source_row"]
    return pd.DataFrame({c: raw[c].str.contains("\ufffd", regex=False) for c in cols})


def _which(mask: pd.DataFrame) -> pd.Series:
    """Comma-separated names of the True columns of each row."""
    return mask.apply(lambda row: ", ".join(row.index[row.to_numpy()]), axis=1)


def _given_lease(raw: pd.DataFrame) -> pd.Series:
    if "remaining_lease" not in raw:
        return pd.Series(False, index=raw.index)
    return raw["remaining_lease"].str.strip() != ""


def _out_of(values: pd.Series, low: float, high: float) -> pd.Series:
    return values.isna() | (values < low) | (values > high)


RULES: tuple[Rule, ...] = (
    Rule(
        "utf8",
        "every field is valid UTF-8",
        lambda raw, p, ctx: _bad_utf8(raw).any(axis=1),
        lambda raw, p: (
            "invalid UTF-8 bytes in " + _which(_bad_utf8(raw)) + "; save the file as UTF-8"
        ),
    ),
    Rule(
        "required_values",
        "no required field is empty",
        lambda raw, p, ctx: _empty_fields(raw).any(axis=1),
        lambda raw, p: "empty " + _which(_empty_fields(raw)),
    ),
    Rule(
        "month_format",
        "month is YYYY-MM",
        lambda raw, p, ctx: p["month"].isna(),
        lambda raw, p: "month=" + _q(raw["month"]) + " is not YYYY-MM (e.g. 2024-07)",
    ),
    Rule(
        "month_range",
        f"month is between {FIRST_MONTH} and the current month",
        lambda raw, p, ctx: (p["month"] < ctx["first_month"]) | (p["month"] > ctx["max_month"]),
        lambda raw, p: "month=" + _q(raw["month"]) + f" is outside {FIRST_MONTH}..today",
    ),
    Rule(
        "town_known",
        "town is one of the 27 HDB towns",
        lambda raw, p, ctx: ~p["town"].isin(TOWNS),
        lambda raw, p: "town=" + _q(raw["town"]) + " is not an HDB town (e.g. 'ANG MO KIO')",
    ),
    Rule(
        "flat_type_known",
        "flat_type is 1 ROOM .. 5 ROOM, EXECUTIVE or MULTI-GENERATION",
        lambda raw, p, ctx: ~p["flat_type"].isin(FLAT_TYPES),
        lambda raw, p: (
            "flat_type=" + _q(raw["flat_type"]) + " is not one of " + ", ".join(FLAT_TYPES)
        ),
    ),
    Rule(
        "storey_pattern",
        "storey_range is 'NN TO NN' with low <= high",
        lambda raw, p, ctx: (
            p["storey_low"].isna() | (p["storey_low"] < 1) | (p["storey_low"] > p["storey_high"])
        ),
        lambda raw, p: "storey_range=" + _q(raw["storey_range"]) + " is not like '10 TO 12'",
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
    ),
    Rule(
        "lease_before_sale",
        "the lease starts no later than the year after the sale",
        lambda raw, p, ctx: p["lease_commence_date"] > p["month"].dt.year + 1,
        lambda raw, p: (
            "lease_commence_date="
            + _q(raw["lease_commence_date"])
            + " is more than a year after the sale month "
            + raw["month"].astype("str")
        ),
    ),
    Rule(
        "remaining_lease_format",
        "remaining_lease, where given, is 'NN years NN months' or whole years, up to 99",
        lambda raw, p, ctx: (
            (_given_lease(raw) & p["remaining_lease_reported"].isna())
            | (p["remaining_lease_months"] > LEASE_YEARS * 12)
            | (p["remaining_lease_months"] < 0)
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
    ),
)

RULE_NAMES: tuple[str, ...] = ("field_count", *(r.name for r in RULES))


def describe_rules() -> pd.DataFrame:
    """The rules as a table (name, description), in the order they are applied."""
    rows = [("field_count", "every line has one field per header column")]
    rows += [(r.name, r.description) for r in RULES]
    return pd.DataFrame(rows, columns=["rule", "description"])


def check(raw: pd.DataFrame, parsed: pd.DataFrame, *, max_month: str | None = None) -> pd.DataFrame:
    """Rows that break at least one rule, indexed like ``raw``, with ``rule`` and ``reason``."""
    max_period = pd.Period(max_month or pd.Timestamp.now().strftime("%Y-%m"), freq="M")
    ctx = {
        "first_month": pd.Period(FIRST_MONTH, freq="M"),
        "max_month": max_period,
        "max_year": max_period.year,
    }
    broken = pd.DataFrame(
        {rule.name: rule.failing(raw, parsed, ctx).fillna(False).astype(bool) for rule in RULES},
        index=raw.index,
    )
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
