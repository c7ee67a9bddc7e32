"""Fairness of the valuations (chapter 8): fairlearn's figures against a hand computation on
a small frame, small groups flagged and left out of the comparison, seeded intervals, and
(on the real data, where present) the slices a learner sees."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.course import fairness

# errors (%): A +10, -10, 0, +4 | B -20, -5, -2, -1 | C +50 (one sale: too small to rank)
FRAME = pd.DataFrame(
    {
        "resale_price": [100.0, 200.0, 300.0, 500.0, 100.0, 400.0, 500.0, 1000.0, 200.0],
        "prediction": [110.0, 180.0, 300.0, 520.0, 80.0, 380.0, 490.0, 990.0, 300.0],
        "town": ["A", "A", "A", "A", "B", "B", "B", "B", "C"],
    }
)


@pytest.fixture(scope="module")
def towns() -> fairness.GroupFairness:
    return fairness.group_fairness(FRAME, "town", min_n=3, n_boot=300, seed=1)


def test_group_metrics_by_hand(towns):
    a, b = towns.groups.loc["A"], towns.groups.loc["B"]
    assert a["mape"] == pytest.approx((10 + 10 + 0 + 4) / 4)
    assert a["median_ape"] == pytest.approx((4 + 10) / 2)
    assert a["mean_pct_error"] == pytest.approx((10 - 10 + 0 + 4) / 4)  # over-valued
    assert a["within_5"] == pytest.approx(50.0)  # 0 % and 4 %
    assert b["mape"] == pytest.approx((20 + 5 + 2 + 1) / 4)
    assert b["mean_pct_error"] == pytest.approx(-7.0)  # under-valued
    assert b["within_5"] == pytest.approx(75.0)  # 5 % counts as within
    assert (a["n"], b["n"]) == (4, 4)


def test_small_groups_are_shown_but_not_ranked_or_compared(towns):
    c = towns.groups.loc["C"]
    assert bool(c["small"]) and np.isnan(c["rank"]) and c["mape"] == pytest.approx(50.0)
    assert towns.ranked.index.tolist() == ["A", "B"]  # 6 % before 7 %
    s = towns.summary
    # differences and ratios between A and B only: C's 50 % would dominate them
    assert s.loc["mape", "difference"] == pytest.approx(7.0 - 6.0)
    assert s.loc["mape", "ratio"] == pytest.approx(6.0 / 7.0)
    assert s.loc["mean_pct_error", "difference"] == pytest.approx(1.0 - -7.0)
    assert np.isnan(s.loc["mean_pct_error", "ratio"])  # a ratio of signed errors means nothing
    assert (s.loc["mape", "best"], s.loc["mape", "worst"]) == ("A", "B")
    assert (s.loc["within_5", "best"], s.loc["within_5", "worst"]) == ("B", "A")
    # the bias: best nearest zero (A, +1 %), worst farthest from it (B, -7 %), not the lowest
    assert (s.loc["mean_pct_error", "best"], s.loc["mean_pct_error", "worst"]) == ("A", "B")


def test_intervals_are_seeded_and_bracket_the_figures(towns):
    again = fairness.group_fairness(FRAME, "town", min_n=3, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(towns.groups, again.groups)
    g = towns.groups.loc[["A", "B"]]
    assert (g["mape_low"] <= g["mape"]).all() and (g["mape"] <= g["mape_high"]).all()
    mape = towns.summary.loc["mape"]
    assert mape["difference_low"] <= mape["difference"] <= mape["difference_high"]
    assert np.isnan(towns.groups.loc["C", "mape_low"])
    bare = fairness.group_fairness(FRAME, "town", min_n=3, n_boot=0)
    assert "mape_low" not in bare.groups and "difference_low" not in bare.summary


def test_the_gap_interval_brackets_the_gap_of_many_alike_groups():
    """Twenty towns valued alike: the largest minus the smallest of each bootstrap draw would
    sit above the measured gap (the noisiest towns land at the extremes of every draw); the
    interval of the two extreme towns, re-measured in each draw, holds it."""
    rng = np.random.default_rng(7)
    actual = rng.uniform(300_000, 900_000, size=20 * 60)
    frame = pd.DataFrame(
        {
            "resale_price": actual,
            "prediction": actual * (1 + rng.normal(0, 0.07, size=actual.size)),
            "town": np.repeat([f"T{i:02d}" for i in range(20)], 60),
        }
    )
    result = fairness.group_fairness(frame, "town", min_n=30, n_boot=400, seed=3)
    row = result.summary.loc["mape"]
    assert row["difference_low"] <= row["difference"] <= row["difference_high"]
    assert row["ratio_low"] <= row["ratio"] <= row["ratio_high"]


def test_bootstrap_replicates_keep_group_sizes():
    reps = fairness.bootstrap({"A": np.array([1.0, -1.0]), "B": np.array([3.0, 3.0, 3.0])}, 50)
    assert reps["mape"].shape == (50, 2)
    assert (reps["mape"]["B"] == 3.0).all()  # every resample of identical errors
    assert set(np.round(reps["mean_pct_error"]["A"], 6)) <= {-1.0, 0.0, 1.0}


def test_price_quintiles_and_report_json():
    rng = np.random.default_rng(0)
    prices = pd.Series(rng.uniform(300_000, 900_000, 500))
    bands = fairness.price_quintiles(prices)
    assert bands.value_counts().tolist() == [100] * 5
    assert bands.cat.categories[0].startswith("Q1 <=") and bands.cat.categories[4].startswith(
        "Q5 >"
    )
    frame = pd.DataFrame({"resale_price": prices, "prediction": prices * rng.normal(1, 0.05, 500),
                          "town": rng.choice(["X", "Y"], 500), "flat_type": "4 ROOM"})  # fmt: skip
    report = fairness.fairness_report(frame, min_n=30, n_boot=50)
    assert list(report) == ["town", "flat_type", "price_band"]
    assert report["price_band"].groups["n"].sum() == 500
    assert "fewer than two groups" in fairness.disparity_advice(report["flat_type"])
    assert "gap of" in fairness.disparity_advice(report["price_band"])
    json.dumps({by: r.to_dict() for by, r in report.items()})
    table = fairness.display_table(report["town"])
    assert list(table.columns)[:2] == ["MAPE %", "95% interval"]


def test_a_shortened_table_keeps_the_worst_groups():
    rng = np.random.default_rng(2)
    towns = np.repeat([f"T{i:02d}" for i in range(10)], 40)
    noise = np.repeat(np.linspace(0.01, 0.10, 10), 40)  # T09 is valued worst
    price = rng.uniform(300_000, 900_000, 400)
    frame = pd.DataFrame({"resale_price": price, "town": towns,
                          "prediction": price * (1 + rng.choice([-1, 1], 400) * noise)})  # fmt: skip
    table = fairness.display_table(fairness.group_fairness(frame, "town", n_boot=0), top=2)
    assert table.index.tolist() == ["T00", "T01", "T08", "T09"]


def test_a_missing_column_is_named():
    with pytest.raises(KeyError, match="no column 'flat_type'"):
        fairness.group_fairness(FRAME, "flat_type")


@pytest.mark.slow
def test_real_data_slices(real_data_dir, tmp_path):
    """The median-price baseline on the real sales of 2023 on, tested from 2025: every test
    sale lands in one group, and the rare flat types are flagged, not ranked."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model.evaluate import holdout
    from hdb_mlops.model.models import make_model

    tx = prepare(real_data_dir, tmp_path).transactions()
    tx = tx[tx["month"] >= pd.Period("2023-01", freq="M")]
    preds = holdout(tx, lambda: make_model("median_ppsm"), cutoff="2024-12").predictions
    report = fairness.fairness_report(preds, n_boot=50)
    for result in report.values():
        assert result.groups["n"].sum() == len(preds)
    flat_types = report["flat_type"].groups
    assert flat_types.loc["1 ROOM", "small"] or flat_types.loc["1 ROOM", "n"] >= 30
    assert flat_types["small"].any()  # 1-room or multi-generation flats are rare
    assert report["town"].summary.loc["mape", "difference"] > 0


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_cli_fairness_on_the_sample(tmp_path, capsys, monkeypatch):
    from hdb_mlops import cli

    argv = ["fairness", "--model", "median_ppsm", "--data-dir", str(tmp_path), "--n-boot", "20"]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictions"].startswith("median_ppsm trained up to 2024-12")
    assert set(out["groupings"]) == {"town", "flat_type", "price_band"}
    towns = out["groupings"]["town"]["groups"]
    assert sum(g["n"] for g in towns) == out["overall"]["n"]
    assert cli.main([*argv, "--top", "3"]) == 0
    assert "By town (best first; 95% bootstrap intervals, 20 draws)" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HDB_MLOPS_MODEL_CACHE", str(tmp_path / "cache"))
    assert cli.main(["fairness", "--registered", "champion", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no registered model" in err
