"""What the course's Stage 2 set-up (chapter 4) costs on AWS, next to the offline path.

``resources/aws-prices.csv`` is a dated table of the list prices needed (region
ap-southeast-1, Singapore): SageMaker training and real-time endpoint instance-hours, S3
storage, a KMS key and its requests, interface VPC endpoints and the data they process, and
CloudWatch Logs. They are **on-demand list prices as of the date in the table**, written
down by hand, not a quote: AWS changes them, and the table's ``source_note`` says which page
to check. Free tiers, taxes, savings plans and data transfer out are not included.

:func:`estimate` prices a usage (item -> quantity per month, in the item's unit);
:func:`estimate_scenarios` prices the course's scenarios (a workshop week, a small team's
month) beside the offline path, which costs nothing: every chapter runs on a laptop, with
moto standing in for AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hdb_mlops import config

PRICES_FILE = config.RESOURCES_DIR / "aws-prices.csv"
COLUMNS = ("service", "item", "region", "unit", "price_usd", "source_note", "as_of")
OFFLINE = "offline (local + moto)"
DISCLAIMER = (
    "List prices in USD for ap-southeast-1 as of {as_of}, written down by hand: check them on "
    "the AWS pricing pages before budgeting. No free tier, tax, savings plan or data transfer."
)
HOURS_PER_MONTH = 730

#: Usage per scenario, item -> quantity a month in the item's unit (see the CSV).
SCENARIOS: dict[str, dict[str, float]] = {
    # 10 learners for 5 days: 3 short training jobs each, an endpoint 8 hours a day, and the
    # private network (5 interface endpoints in 2 AZs) up for the week
    "workshop week": {
        "training ml.m5.xlarge": 10 * 3 * 0.25,
        "real-time inference ml.t2.medium": 10 * 8 * 5,
        "Standard storage": 5,
        "customer managed key": 1,
        "API requests": 2,
        "interface endpoint": 5 * 2 * 24 * 7,
        "interface endpoint data processed": 10,
        "Logs ingestion": 2,
        "Logs storage": 2,
    },
    # a team of three for a month: daily retraining plus tuning, a dev endpoint and a prod
    # endpoint always on, the private network always up
    "small team month": {
        "training ml.m5.xlarge": 30 * 0.5 + 20,
        "real-time inference ml.t2.medium": HOURS_PER_MONTH,
        "real-time inference ml.m5.large": HOURS_PER_MONTH,
        "Standard storage": 50,
        "customer managed key": 2,
        "API requests": 20,
        "interface endpoint": 5 * 2 * HOURS_PER_MONTH,
        "interface endpoint data processed": 50,
        "Logs ingestion": 10,
        "Logs storage": 20,
    },
}


def load_prices(path: Path | str | None = None) -> pd.DataFrame:
    """The price table, one row per item (checked: the columns, unique items, prices >= 0)."""
    path = Path(path or PRICES_FILE)
    prices = pd.read_csv(path, dtype={"price_usd": "float64", "as_of": "str"})
    missing = [c for c in COLUMNS if c not in prices]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {COLUMNS})")
    if prices["item"].duplicated().any():
        raise ValueError(
            f"{path}: item(s) listed twice: {list(prices['item'][prices['item'].duplicated()])}"
        )
    if (prices["price_usd"] < 0).any() or prices["price_usd"].isna().any():
        raise ValueError(f"{path}: every price_usd must be a number of at least 0")
    return prices


def estimate(usage: Mapping[str, float], prices: pd.DataFrame | None = None) -> pd.DataFrame:
    """The monthly cost of ``usage`` (item -> quantity in the item's unit): one row per item
    used, with service, unit, quantity, price_usd and cost_usd. ``attrs["total"]`` is the
    sum and ``attrs["as_of"]`` the prices' date(s)."""
    prices = load_prices() if prices is None else prices
    table = prices.set_index("item")
    unknown = sorted(set(usage) - set(table.index))
    if unknown:
        raise KeyError(
            f"unknown item(s) {', '.join(unknown)} (priced items: {', '.join(table.index)})"
        )
    negative = [item for item, q in usage.items() if q < 0]
    if negative:
        raise ValueError(f"quantities must be at least 0: {', '.join(negative)}")
    rows = [
        {
            "service": table.loc[item, "service"],
            "item": item,
            "unit": table.loc[item, "unit"],
            "quantity": float(quantity),
            "price_usd": float(table.loc[item, "price_usd"]),
            "cost_usd": float(quantity) * float(table.loc[item, "price_usd"]),
        }
        for item, quantity in usage.items()
    ]
    out = pd.DataFrame(
        rows, columns=["service", "item", "unit", "quantity", "price_usd", "cost_usd"]
    )
    out.attrs["total"] = float(out["cost_usd"].sum())
    out.attrs["as_of"] = sorted(set(prices.loc[prices["item"].isin(list(usage)), "as_of"]))
    return out


def estimate_scenarios(
    scenarios: Mapping[str, Mapping[str, float]] | None = None,
    prices: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Monthly cost (USD) per item and scenario, with a total row, and the offline path's
    column of zeros first."""
    prices = load_prices() if prices is None else prices
    scenarios = SCENARIOS if scenarios is None else scenarios
    columns = {OFFLINE: pd.Series(0.0, index=prices["item"])}
    for name, usage in scenarios.items():
        costs = estimate(usage, prices).set_index("item")["cost_usd"]
        columns[name] = costs.reindex(prices["item"], fill_value=0.0)
    table = pd.DataFrame(columns)
    table.index.name = "item"
    table.loc["total"] = table.sum()
    return table


def disclaimer(prices: pd.DataFrame | None = None) -> str:
    """The sentence every cost table is shown with (the prices' date filled in)."""
    prices = load_prices() if prices is None else prices
    return DISCLAIMER.format(as_of=", ".join(sorted(set(prices["as_of"]))))
