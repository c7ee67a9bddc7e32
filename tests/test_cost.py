"""The cost estimate of chapter 8: a dated price table for the Stage 2 set-up, and arithmetic
checked by hand on made-up prices (so the test does not restate the table)."""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest

from hdb_mlops import cli
from hdb_mlops.course import cost

PRICES = pd.DataFrame(
    [
        [
            "SageMaker",
            "training ml.m5.xlarge",
            "ap-southeast-1",
            "instance-hour",
            0.5,
            "x",
            "2026-01-01",
        ],
        ["S3", "Standard storage", "ap-southeast-1", "GB-month", 0.02, "x", "2026-01-01"],
        ["KMS", "customer managed key", "ap-southeast-1", "key-month", 1.0, "x", "2026-02-01"],
    ],
    columns=list(cost.COLUMNS),
)


def test_the_table_is_dated_and_prices_the_stage_2_items():
    prices = cost.load_prices()
    assert list(prices.columns) == list(cost.COLUMNS)
    assert set(prices["region"]) == {"ap-southeast-1"}
    for as_of in prices["as_of"]:
        date.fromisoformat(as_of)
    assert prices["source_note"].str.contains("check").all()  # each says to check the price
    needed = {"training ml.m5.xlarge", "real-time inference ml.t2.medium",
              "real-time inference ml.m5.large", "Standard storage", "customer managed key",
              "API requests", "interface endpoint", "interface endpoint data processed",
              "Logs ingestion"}  # fmt: skip
    assert needed <= set(prices["item"])
    for usage in cost.SCENARIOS.values():
        assert set(usage) <= set(prices["item"])


def test_estimate_by_hand():
    out = cost.estimate({"training ml.m5.xlarge": 7.5, "Standard storage": 120}, PRICES)
    assert out["cost_usd"].tolist() == pytest.approx([3.75, 2.4])
    assert out.attrs["total"] == pytest.approx(6.15)
    assert out.attrs["as_of"] == ["2026-01-01"]
    assert out["unit"].tolist() == ["instance-hour", "GB-month"]


def test_unknown_items_and_negative_quantities_are_refused():
    with pytest.raises(KeyError, match=r"unknown item.*GPU hours.*priced items: training"):
        cost.estimate({"GPU hours": 1}, PRICES)
    with pytest.raises(ValueError, match="at least 0: Standard storage"):
        cost.estimate({"Standard storage": -1}, PRICES)


def test_scenarios_beside_the_offline_path():
    scenarios = {"week": {"training ml.m5.xlarge": 2, "customer managed key": 1},
                 "month": {"Standard storage": 50}}  # fmt: skip
    table = cost.estimate_scenarios(scenarios, PRICES)
    assert list(table.columns) == [cost.OFFLINE, "week", "month"]
    assert (table[cost.OFFLINE] == 0).all()
    assert table.loc["total", "week"] == pytest.approx(2 * 0.5 + 1.0)
    assert table.loc["total", "month"] == pytest.approx(50 * 0.02)
    assert table.loc["Standard storage", "week"] == 0


def test_cli_cost_says_the_prices_are_dated_list_prices(capsys):
    assert cli.main(["cost", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    as_of = sorted(set(cost.load_prices()["as_of"]))
    assert all(d in out["disclaimer"] for d in as_of)
    assert "List prices" in out["disclaimer"] and "check" in out["disclaimer"]
    assert out["monthly_usd"][cost.OFFLINE]["total"] == 0
    assert (
        out["monthly_usd"]["small team month"]["total"]
        > out["monthly_usd"]["workshop week"]["total"]
    )
    assert cli.main(["cost"]) == 0
    assert "List prices in USD for ap-southeast-1" in capsys.readouterr().out
