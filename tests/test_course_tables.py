"""What the notebooks show: figures at the precision that holds on any machine, intervals and
coverage measured correctly, and plots that say when they come from the synthetic sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.course import plots, tables
from hdb_mlops.model import evaluate


def test_metrics_table_rounds_each_kind_once():
    overall = {
        "mape": 8.215678,
        "median_ape": 7.0749999,
        "mae": 54250.59,
        "rmse": 71921.86,
        "r2": 0.877052,
        "within_5": 36.607503,
        "within_10": 67.184349,
        "n": 4958,
    }
    row = tables.metrics_table({"linear": overall}).loc["linear"]
    assert row["MAPE %"] == 8.22 and row["median APE %"] == 7.07
    # money to S$1,000: the last digits that BLAS kernels change are gone
    assert row["MAE S$k"] == 54 and row["RMSE S$k"] == 72
    assert row["R²"] == 0.877 and row["n"] == 4958


def test_the_same_figure_from_another_cpu_prints_the_same():
    # the pair seen on two machines (last digits from different BLAS kernels)
    here = {"mae": 54250.50, "rmse": 71922.24, "mape": 8.2157, "n": 10}
    there = {"mae": 54250.59, "rmse": 71921.86, "mape": 8.2157, "n": 10}
    cols = ("mape", "mae", "rmse", "n")
    a, b = tables.metrics_table({"m": here}, cols), tables.metrics_table({"m": there}, cols)
    assert a.to_string() == b.to_string()


def test_an_answer_is_shown_the_same_on_two_cpus_and_a_blank_one_as_it_is():
    # the pair chapter 5B's exercise printed on two machines (numpy's summation order)
    here, there = (7.025147365667232, 42.13392496974587), (7.025147365667234, 42.13392496974587)
    assert repr(tables.shown(here)) == repr(tables.shown(there)) == "(7.03, 42.13)"
    assert repr(tables.shown(np.float64(29.883139534119433))) == "29.88"
    assert tables.shown([0.03736072009151105], places=4) == [0.0374]
    # a blank workbook's answer, counts and flags pass through
    assert tables.shown(...) is Ellipsis and tables.shown(None) is None
    assert tables.shown(True) is True and tables.shown(np.int64(4958)) == 4958
    assert repr(tables.shown(float("nan"))) == "nan"


def test_group_table_hides_groups_too_small_to_rank():
    by = pd.DataFrame(
        {"mape": [6.9, 15.96, 7.3], "within_5": [42.0, 0.0, 40.0], "within_10": [75.0, 0, 70.0],
         "n": [2173, 1, 151]},
        index=["4 ROOM", "MULTI-GENERATION", "2 ROOM"],
    )  # fmt: skip
    table = tables.group_table(by, min_n=30)
    assert list(table.index) == ["4 ROOM", "2 ROOM"]
    assert table.attrs["hidden"] == {"groups": 1, "sales": 1}


def test_figures_table_prints_counts_as_counts():
    shown = tables.figures_table(
        {"exit_status": -15, "first_model_mape": 7.025147, "example_price": 643602.44},
        kinds={"example_price": "dollars"},
    )["key figures"]
    assert shown["exit_status"] == "-15"
    assert shown["first_model_mape"] == "7.03"
    assert shown["example_price"] == "643,602"


def _predictions(ape: np.ndarray) -> pd.DataFrame:
    actual = np.full(len(ape), 500_000.0)
    return pd.DataFrame(
        {"resale_price": actual, "prediction": actual * (1 + ape / 100), "ape": ape}
    )


def test_mape_interval_holds_the_mape_and_narrows_with_more_sales():
    rng = np.random.default_rng(3)
    small = _predictions(rng.gamma(2.0, 3.5, 200))
    large = _predictions(rng.gamma(2.0, 3.5, 5000))
    lo_s, hi_s = evaluate.mape_interval(small, seed=1)
    lo_l, hi_l = evaluate.mape_interval(large, seed=1)
    assert lo_s < small["ape"].mean() < hi_s
    assert lo_l < large["ape"].mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # ~ 1 / sqrt(25)
    assert evaluate.mape_interval(small, seed=1) == (lo_s, hi_s)  # seeded


def test_interval_coverage_counts_inside_below_and_above():
    actual = np.array([100.0, 100.0, 100.0, 100.0])
    predicted = np.array([100.0, 80.0, 125.0, 105.0])
    frame = pd.DataFrame({"resale_price": actual, "prediction": predicted})
    band = {"0.05": np.log(0.9), "0.95": np.log(1.1)}  # actual within -10%..+10% of predicted
    got = evaluate.interval_coverage(frame, band, level=0.9)
    # log(100/80) = +0.22 is above the band; log(100/125) = -0.22 below it
    assert got == {"inside": 50.0, "below": 25.0, "above": 25.0, "n": 4}


@pytest.mark.parametrize("source, noted", [("sample", True), ("/data/real.parquet", False)])
def test_plots_say_when_they_show_the_synthetic_sample(source, noted):
    frame = pd.DataFrame(
        {
            "month": pd.period_range("2024-01", periods=24, freq="M").repeat(20),
            "resale_price": np.linspace(300_000, 900_000, 480),
        }
    )
    fig = plots.volume_by_month(frame, source=source)
    text = fig.supxlabel_text if hasattr(fig, "supxlabel_text") else fig._supxlabel
    assert (text is not None and plots.SAMPLE_NOTE in text.get_text()) is noted
    assert plots.price_label(1_250_000) == "1.2M" and plots.price_label(650_000) == "650k"
