"""Drift maths (hdb_mlops.monitoring.drift) against hand computations and scipy, the profile's
reference sample (version 2) and the drift window's ring buffer and cache.

The window is driven here with a stand-in for the served model (an engine whose features are
the rows' own numbers): what it is compared with is the profile, which is real. The service
tests (test_serve_monitoring.py) run it behind a real uvicorn with a real model.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hdb_mlops.model.profile import (
    PROFILE_VERSION,
    SAMPLE_SIZE,
    bin_shares,
    categorical_profile,
    numeric_profile,
    reference_profile,
    reference_sample,
)
from hdb_mlops.monitoring import drift
from hdb_mlops.monitoring.window import DriftWindow


@pytest.fixture
def rng():
    """A fresh seeded generator per test (results do not depend on the tests' order)."""
    return np.random.default_rng(7)


def test_psi_by_hand():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    assert drift.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # symmetric in its arguments, always >= 0
    assert drift.psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(expected, rel=1e-12)


def test_psi_floors_an_empty_bin():
    floor = drift.PSI_FLOOR
    got = drift.psi([0.5, 0.5, 0.0], [0.5, 0.25, 0.25])
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.25 - floor) * math.log(0.25 / floor)
    assert math.isfinite(got) and got == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="2 expected shares for 3"):
        drift.psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_numeric_psi_uses_the_reference_bins(rng):
    train = rng.normal(100, 20, 20_000)
    column = numeric_profile(train)
    assert drift.numeric_psi(train, column) == pytest.approx(0, abs=1e-6)
    live = rng.normal(115, 20, 1000)
    shares = bin_shares(live, column["bins"]["edges"])
    by_hand = drift.psi(column["bins"]["shares"], shares)
    assert drift.numeric_psi(live, column) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand > 0.25  # a shift of 0.75 sd is "significant" by the usual rule
    assert drift.numeric_psi(np.array([]), column) is None


def test_numeric_psi_counts_missing_values_as_a_bin():
    train = np.arange(1000, dtype="float64")
    column = numeric_profile(train)
    live = train.copy()
    live[::5] = np.nan  # 20 % missing, the rest spread like the reference
    ref, got = drift.numeric_shares(live, column)
    assert len(ref) == len(column["bins"]["shares"]) + 1 and ref[-1] == 0
    assert got[-1] == pytest.approx(0.2) and got.sum() == pytest.approx(1)
    by_hand = drift.psi(ref, got)
    assert drift.numeric_psi(live, column) == pytest.approx(by_hand)
    assert by_hand > drift.numeric_psi(train, column) + 0.5


def test_categorical_psi_and_other_bin():
    column = categorical_profile(pd.Series(["A"] * 50 + ["B"] * 30 + ["C"] * 20))
    assert drift.categories(column) == ["A", "B", "C", drift.OTHER]
    counts = drift.category_counts(["A", "A", "B", "Z", None], column)
    assert counts.tolist() == [2, 1, 0, 1]  # the missing value is left out, Z is "other"
    got = drift.categorical_psi(counts, column)
    f = drift.PSI_FLOOR
    by_hand = (
        (0.5 - 0.5) * math.log(1)
        + (0.25 - 0.3) * math.log(0.25 / 0.3)
        + (f - 0.2) * math.log(f / 0.2)
        + (0.25 - f) * math.log(0.25 / f)
    )
    assert got == pytest.approx(by_hand, rel=1e-9)
    assert drift.categorical_psi(np.zeros(4), column) is None


def test_chi2_is_scipys_on_reference_and_live_counts():
    from scipy.stats import chi2_contingency

    column = categorical_profile(pd.Series(["A"] * 500 + ["B"] * 300 + ["C"] * 200))
    live = np.array([60.0, 25.0, 15.0, 0.0])
    table = np.array([[500.0, 300.0, 200.0], [60.0, 25.0, 15.0]])  # the empty "other" dropped
    expected = chi2_contingency(table, correction=False).pvalue
    assert drift.chi2_pvalue(live, column) == pytest.approx(expected, rel=1e-12)
    # a category expected fewer than 5 times in the window is merged with the other rare ones
    column = categorical_profile(pd.Series(["A"] * 900 + ["B"] * 80 + ["C"] * 15 + ["D"] * 5))
    # 50 live rows: A is expected 44.8 times, B 4.05, C 0.86, D 0.33: B, C and D are merged
    live = np.array([40.0, 5.0, 3.0, 2.0, 0.0])
    merged = np.array([[900.0, 100.0], [40.0, 10.0]])
    expected = chi2_contingency(merged, correction=False).pvalue
    assert drift.chi2_pvalue(live, column) == pytest.approx(expected, rel=1e-12)
    assert drift.chi2_pvalue(np.zeros(5), column) is None


def test_ks_is_scipys_against_the_reference_sample(rng):
    train = rng.gamma(4, 20, 20_000)
    column = numeric_profile(train)
    live = rng.gamma(4, 22, 800)
    live[:10] = np.nan  # missing values are left out of the test
    expected = stats.ks_2samp(live[10:], np.asarray(column["sample"], dtype="float64"))
    statistic, pvalue = drift.ks_test(live, column["sample"])
    assert statistic == pytest.approx(expected.statistic) and pvalue == pytest.approx(
        expected.pvalue
    )
    assert drift.ks_test(live, None) is None and drift.ks_test(live, []) is None
    assert drift.ks_test(np.array([np.nan]), column["sample"]) is None


def test_ks_and_psi_tell_a_shift_from_noise(rng):
    train = rng.lognormal(13, 0.3, 20_000)
    column = numeric_profile(train)
    same = rng.lognormal(13, 0.3, 1000)
    shifted = same * 1.10  # prices up 10 %
    assert drift.ks_test(same, column["sample"])[1] > 0.01
    assert drift.ks_test(shifted, column["sample"])[1] < 1e-3
    assert drift.numeric_psi(same, column) < 0.1 < drift.numeric_psi(shifted, column)


def test_reference_sample_is_deterministic_and_like_the_column(rng):
    values = rng.integers(0, 400, 20_000).astype("float64")
    sample = reference_sample(values)
    assert len(sample) == SAMPLE_SIZE == 500
    assert sample == reference_sample(values[::-1])  # order does not matter
    assert all(isinstance(x, int) for x in sample)  # integers stay integers (compact JSON)
    assert sample == sorted(sample)
    probs = (np.arange(500) + 0.5) / 500
    assert sample == [int(x) for x in np.quantile(values, probs, method="inverted_cdf")]
    floats = reference_sample(rng.normal(size=1000))
    assert all(isinstance(x, float) for x in floats)
    assert reference_sample(np.array([np.nan])) == []


def test_profile_version_2_carries_samples_and_stays_compatible(rng):
    features = pd.DataFrame(
        {
            "floor_area_sqm": rng.normal(95, 20, 5000),
            "town": pd.Categorical(rng.choice(["A", "B", "C"], 5000)),
        }
    )
    profile = reference_profile(features, features["floor_area_sqm"].to_numpy() * 5000)
    assert profile["version"] == PROFILE_VERSION == 2
    assert len(profile["numeric"]["floor_area_sqm"]["sample"]) == 500
    assert len(profile["prediction"]["sample"]) == 500
    # a version 1 profile (no sample) still gets PSI and chi-squared, no KS
    old = {**profile["numeric"]["floor_area_sqm"]}
    del old["sample"]
    live = features["floor_area_sqm"].to_numpy()[:1000]
    assert (
        drift.numeric_psi(live, old) is not None and drift.ks_test(live, old.get("sample")) is None
    )


def test_drift_table_lists_every_feature_and_the_prediction(rng):
    features = pd.DataFrame(
        {
            "floor_area_sqm": rng.normal(95, 20, 5000),
            "town": pd.Categorical(rng.choice(["A", "B", "C"], 5000, p=[0.5, 0.3, 0.2])),
        }
    )
    profile = reference_profile(features, features["floor_area_sqm"].to_numpy() * 5000)
    live = features.iloc[:1000]
    table = drift.drift_table(live, profile, live["floor_area_sqm"].to_numpy() * 5000)
    assert table["feature"].tolist() == ["floor_area_sqm", "town", "prediction"]
    assert table["kind"].tolist() == ["numeric", "categorical", "prediction"]
    assert (table["psi"] < 0.05).all()
    assert table.loc[1, "chi2_pvalue"] > 0.01 and np.isnan(table.loc[1, "ks_pvalue"])
    assert table.loc[0, "ks_pvalue"] > 0.01 and np.isnan(table.loc[0, "chi2_pvalue"])


# ------------------------------------------------------------------------- the window


class _Engine:
    """An engine whose feature matrix is the rows' own (area, town code) numbers."""

    def __init__(self):
        self.columns = ["floor_area_sqm", "town"]

    def features(self, records):
        return np.array([[r.area, r.town] for r in records], dtype="float64").reshape(-1, 2)


def _served(profile):
    spec = SimpleNamespace(
        columns=["floor_area_sqm", "town"], categorical={"town": ("A", "B", "C")}
    )
    bundle = SimpleNamespace(profile=profile, model=SimpleNamespace(spec=spec))
    return SimpleNamespace(bundle=bundle, engine=_Engine(), info={"sha256": "x", "version": None})


def _profile(rng, n=20_000):
    features = pd.DataFrame(
        {
            "floor_area_sqm": rng.normal(95, 20, n),
            "town": pd.Categorical(rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2])),
        }
    )
    return reference_profile(features, features["floor_area_sqm"].to_numpy() * 5000)


def _rows(rng, n, area_mean=95.0, towns=(0.5, 0.3, 0.2)):
    areas = rng.normal(area_mean, 20, n)
    codes = rng.choice(3, n, p=towns)
    rows = [SimpleNamespace(area=a, town=c) for a, c in zip(areas, codes, strict=True)]
    return rows, [{"price": a * 5000} for a in areas]


def _gauges(window):
    return {
        (family.name, sample.labels.get("feature")): sample.value
        for family in window.collect()
        for sample in family.samples
    }


def test_window_keeps_the_last_rows_and_compares_them_with_the_profile(rng):
    window = DriftWindow(size=1000, max_age_s=0)
    model = _served(_profile(rng))
    window.model_changed(model)
    assert _gauges(window) == {("hdb_drift_window_rows", None): 0.0}
    drifted, drifted_prices = _rows(rng, 600, area_mean=140, towns=(0.1, 0.1, 0.8))
    window.observe("/predict/batch", drifted, drifted_prices, model)
    gauges = _gauges(window)
    assert gauges[("hdb_drift_window_rows", None)] == 600
    assert gauges[("hdb_drift_psi", "floor_area_sqm")] > 1
    assert gauges[("hdb_drift_ks_pvalue", "floor_area_sqm")] < 1e-10
    assert gauges[("hdb_drift_chi2_pvalue", "town")] < 1e-10
    assert gauges[("hdb_drift_psi", "prediction")] > 1
    # 1000 normal rows, one at a time: the drifted ones leave the window
    for _ in range(1000):
        rows, prices = _rows(rng, 1)
        window.observe("/predict", rows, prices, model)
    gauges = _gauges(window)
    assert gauges[("hdb_drift_window_rows", None)] == 1000
    assert gauges[("hdb_drift_psi", "floor_area_sqm")] < 0.1
    assert gauges[("hdb_drift_ks_pvalue", "floor_area_sqm")] > 0.001
    assert gauges[("hdb_drift_chi2_pvalue", "town")] > 0.001
    assert ("hdb_drift_ks_pvalue", "town") not in gauges  # KS is for numeric columns
    stats_ = {row["feature"]: row for row in window.statistics()}
    assert stats_["prediction"]["kind"] == "prediction"


def test_window_caches_for_max_age_and_resets_on_a_new_model(rng):
    window = DriftWindow(size=100, max_age_s=60)
    model = _served(_profile(rng))
    window.model_changed(model)
    rows, prices = _rows(rng, 50)
    window.observe("/predict/batch", rows, prices, model)
    first = _gauges(window)
    window.observe("/predict/batch", *_rows(rng, 50), model)
    assert _gauges(window) == first  # cached: computed at most once per max_age_s
    other = _served(_profile(rng))
    window.model_changed(other)
    window.observe("/predict/batch", *_rows(rng, 10), model)  # late rows of the old model: out
    window.max_age_s = 0
    assert _gauges(window)[("hdb_drift_window_rows", None)] == 0
    window.observe("/predict/batch", *_rows(rng, 10), other)
    assert _gauges(window)[("hdb_drift_window_rows", None)] == 10


def test_window_without_samples_or_profile_leaves_gauges_out(caplog, rng):
    profile = _profile(rng)
    for column in [*profile["numeric"].values(), profile["prediction"]]:
        del column["sample"]  # a version 1 profile
    window = DriftWindow(size=100, max_age_s=0)
    model = _served(profile)
    with caplog.at_level("WARNING"):
        window.model_changed(model)
    assert "KS gauges are left out" in caplog.text
    window.observe("/predict/batch", *_rows(rng, 100), model)
    names = {name for name, _ in _gauges(window)}
    assert names == {"hdb_drift_psi", "hdb_drift_chi2_pvalue", "hdb_drift_window_rows"}
    bare = _served({})
    window.model_changed(bare)
    window.observe("/predict/batch", *_rows(rng, 5), bare)
    assert _gauges(window) == {("hdb_drift_window_rows", None): 5.0}


def test_window_queue_stays_bounded_without_scrapes(rng):
    window = DriftWindow(size=1000)
    model = _served(_profile(rng))
    window.model_changed(model)
    rows, prices = _rows(rng, 1)
    for _ in range(20_000):
        window.observe("/predict", rows, prices, model)
    big, big_prices = _rows(rng, 700)
    window.observe("/predict/batch", big, big_prices, model)
    assert window._pending_rows <= 1000 + 700 and len(window._pending) <= 301
    assert _gauges(window)[("hdb_drift_window_rows", None)] == 1000


def _filled_window(rng, statistics_process: bool) -> DriftWindow:
    window = DriftWindow(
        size=500, max_age_s=0, drain_every_s=None, statistics_process=statistics_process
    )
    model = _served(_profile(rng))
    window.model_changed(model)
    window.observe("/predict/batch", *_rows(rng, 400, area_mean=110), model)
    return window


def test_statistics_process_gives_the_statistics_of_this_process():
    in_process = _filled_window(np.random.default_rng(7), statistics_process=False)
    child = _filled_window(np.random.default_rng(7), statistics_process=True)
    try:
        assert child._worker is not None and child._worker._proc is not None
        pid = child._worker._proc.pid
        assert child.statistics() == in_process.statistics()
        assert _gauges(child) == _gauges(in_process)
        assert child._worker.fallbacks == 0 and child._worker._proc.pid == pid  # one child
        assert pid != os.getpid()
    finally:
        child.close()
    assert child._worker._proc is None  # close() stopped it


def test_a_dead_or_stuck_statistics_process_is_replaced_and_no_scrape_fails(caplog):
    window = _filled_window(np.random.default_rng(8), statistics_process=True)
    worker = window._worker
    try:
        expected = window.statistics()
        first = worker._proc
        first.kill()  # died between scrapes: a new child, nothing computed here
        first.wait()
        assert window.statistics() == expected
        second = worker._proc
        assert second.pid != first.pid and worker.fallbacks == 0
        worker.timeout_s = 1e-6  # no answer in time: this scrape computes here
        with caplog.at_level("WARNING"):
            assert window.statistics() == expected
        assert "the statistics process failed (TimeoutError" in caplog.text
        assert worker.fallbacks == 1 and worker._proc is None and second.poll() is not None
        worker.timeout_s = 30
        assert window.statistics() == expected  # and the next one has a new child
        assert worker._proc.pid not in (first.pid, second.pid) and worker.fallbacks == 1
    finally:
        window.close()


def test_statistics_process_exits_when_its_service_goes_away(tmp_path):
    """The child reads jobs until its stdin closes: a parent that dies (kill -9) leaves no
    process behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from hdb_mlops.monitoring.window_stats import StatisticsWorker\n"
        "w = StatisticsWorker(); w.start(); print(w._proc.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"the statistics process {child_pid} outlived its parent")
