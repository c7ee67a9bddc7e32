"""The bundled synthetic sample: official formats, reproducible, and faithful to the real market.

The format and reproducibility tests always run. The fidelity tests compare the sample with the
real 2017+ file and skip (with the reason) where the real data is not on this machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.config import CALIBRATION_FILE, SAMPLE_FILE
from hdb_mlops.data.calibrate import REAL_FILE_NAMES, find_real_file, load_calibration
from hdb_mlops.data.normalise import (
    MONTH_PATTERN,
    STOREY_PATTERN,
    derive_remaining_lease,
    parse_month,
    parse_remaining_lease,
    parse_storey_range,
)
from hdb_mlops.data.schema import FLAT_TYPES, OFFICIAL_2017_COLUMNS, TOWNS
from hdb_mlops.data.synth import generate_sample, write_sample

SAMPLE_ROWS = 30_000
SAMPLE_SEED = 42
#: The flat models of the 2017+ file, in its spelling.
FLAT_MODELS_2017 = frozenset(
    {
        "2-room", "3Gen", "Adjoined flat", "Apartment", "DBSS", "Improved",
        "Improved-Maisonette", "Maisonette", "Model A", "Model A-Maisonette", "Model A2",
        "Multi Generation", "New Generation", "Premium Apartment", "Premium Apartment Loft",
        "Premium Maisonette", "Simplified", "Standard", "Terrace", "Type S1", "Type S2",
    }
)  # fmt: skip
REMAINING_LEASE_FORMAT = r"^\d{2} years(?: 01 month| (?:0[2-9]|1[01]) months)?$"
FEATURES = (
    "floor_area_sqm",
    "storey_mid",
    "remaining_lease_months",
    "lease_commence_date",
    "months_since_2017",
    "town",
    "flat_type",
    "flat_model",
)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The committed sample, every field as the text in the file."""
    return pd.read_csv(SAMPLE_FILE, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def real(real_data_dir: Path) -> pd.DataFrame:
    """The real 2017+ file as published (skips when the folder has no copy of it)."""
    path = find_real_file(real_data_dir)
    if path is None:
        pytest.skip(f"no 2017+ resale file in {real_data_dir} (looked for {REAL_FILE_NAMES})")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"block": str, "month": str})


def _year(df: pd.DataFrame) -> pd.Series:
    return df["month"].astype(str).str[:4]


def _price(df: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(df["resale_price"]).astype("float64")


# --- always run: format and reproducibility ---------------------------------------------------


def test_sample_has_the_official_header_and_30000_rows():
    lines = SAMPLE_FILE.read_text(encoding="utf-8").split("\n")
    assert lines[0] == ",".join(OFFICIAL_2017_COLUMNS)
    assert lines[-1] == ""  # ends with one newline
    assert len(lines) - 2 == SAMPLE_ROWS
    assert b"\r" not in SAMPLE_FILE.read_bytes()


def test_every_field_has_the_official_format(sample: pd.DataFrame):
    def ok(column: str, pattern: str) -> bool:
        return bool(sample[column].str.fullmatch(pattern).all())

    assert ok("month", MONTH_PATTERN)
    assert sample["month"].min() >= "2017-01"
    assert set(sample["town"]) <= set(TOWNS)
    assert set(sample["flat_type"]) <= set(FLAT_TYPES)
    assert ok("block", r"\d{1,3}[A-D]?")
    assert ok("street_name", r"[A-Z][A-Z/ ]* [A-Z]+ \d{1,2}")
    assert ok("storey_range", STOREY_PATTERN)
    storey = parse_storey_range(sample["storey_range"])
    assert (storey["storey_high"] - storey["storey_low"] == 2).all()
    assert (storey["storey_low"] % 3 == 1).all()
    assert ok("floor_area_sqm", r"\d{2,3}(?:\.\d)?")
    assert set(sample["flat_model"]) <= FLAT_MODELS_2017
    assert ok("lease_commence_date", r"(?:19|20)\d{2}")
    assert ok("remaining_lease", REMAINING_LEASE_FORMAT)
    assert ok("resale_price", r"[1-9]\d{5,6}")


def test_fields_are_consistent(sample: pd.DataFrame):
    month = parse_month(sample["month"])
    lease_year = sample["lease_commence_date"].astype(int)
    assert (lease_year < month.dt.year).all()
    # The official remaining lease: 99 years from (about) mid-year, minus the sale month.
    remaining = parse_remaining_lease(sample["remaining_lease"])
    assert (remaining - derive_remaining_lease(month, lease_year)).abs().max() <= 7
    price = _price(sample)
    assert price.between(140_000, 1_800_000).all()
    assert (price % 1_000 == 0).all()
    area = pd.to_numeric(sample["floor_area_sqm"]).groupby(sample["flat_type"]).median()
    sizes = ["1 ROOM", "2 ROOM", "3 ROOM", "4 ROOM", "5 ROOM", "EXECUTIVE"]
    assert area[sizes].is_monotonic_increasing
    assert area["1 ROOM"] < 40 and area["EXECUTIVE"] > 130
    # One address, one lease: the made-up blocks behave like real ones.
    address = sample.groupby(["town", "block", "street_name"])["lease_commence_date"]
    assert address.nunique().max() == 1


def test_regenerating_with_seed_42_gives_the_committed_files(tmp_path: Path):
    path = write_sample(tmp_path, n_rows=SAMPLE_ROWS, seed=SAMPLE_SEED)
    assert path.read_bytes() == SAMPLE_FILE.read_bytes()
    readme = SAMPLE_FILE.parent / "README.md"
    assert (tmp_path / "README.md").read_bytes() == readme.read_bytes()


def test_a_different_seed_gives_different_rows():
    a = generate_sample(n_rows=2_000, seed=SAMPLE_SEED)
    b = generate_sample(n_rows=2_000, seed=SAMPLE_SEED + 1)
    assert list(a.columns) == list(b.columns) == list(OFFICIAL_2017_COLUMNS)
    rows_a = set(map(tuple, a.astype(str).to_numpy()))
    rows_b = set(map(tuple, b.astype(str).to_numpy()))
    assert len(rows_a & rows_b) < 0.01 * len(rows_a)


def test_calibration_is_small_and_describes_the_2017_file():
    assert CALIBRATION_FILE.stat().st_size < 200_000
    cal = load_calibration()
    assert cal["source"]["first_month"] == "2017-01"
    assert cal["source"]["last_month"] == max(cal["month_share"])
    assert cal["source"]["rows"] > 100_000
    assert sum(cal["month_share"].values()) == pytest.approx(1, abs=1e-3)


# --- real data: the sample is faithful to the market ------------------------------------------


def test_median_price_by_year_within_5_percent(sample: pd.DataFrame, real: pd.DataFrame):
    real_median = _price(real).groupby(_year(real)).median()
    sample_median = _price(sample).groupby(_year(sample)).median()
    assert list(sample_median.index) == list(real_median.index)
    ratio = sample_median / real_median - 1
    assert ratio.abs().max() <= 0.05, ratio.round(4).to_dict()


@pytest.mark.parametrize("column", ["town", "flat_type"])
def test_category_shares_within_1_5_points(sample: pd.DataFrame, real: pd.DataFrame, column: str):
    real_share = real[column].value_counts(normalize=True)
    sample_share = sample[column].value_counts(normalize=True)
    diff = sample_share.sub(real_share, fill_value=0.0).abs()
    assert diff.max() <= 0.015, diff.sort_values().tail(3).round(4).to_dict()


def test_no_real_street_name_in_the_sample_or_the_calibration(
    sample: pd.DataFrame, real: pd.DataFrame
):
    real_streets = set(real["street_name"].astype(str).str.strip().str.upper())
    assert not set(sample["street_name"]) & real_streets
    text = CALIBRATION_FILE.read_text(encoding="utf-8")
    assert not [name for name in real_streets if f'"{name}"' in text]


def _features(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The same simple numeric features on the sample and on the real file."""
    month = parse_month(df["month"].astype(str))
    x = pd.DataFrame(
        {
            "floor_area_sqm": pd.to_numeric(df["floor_area_sqm"]).astype("float64"),
            "storey_mid": parse_storey_range(df["storey_range"])["storey_mid"],
            "remaining_lease_months": parse_remaining_lease(df["remaining_lease"]),
            "lease_commence_date": pd.to_numeric(df["lease_commence_date"]).astype("float64"),
            "months_since_2017": ((month.dt.year - 2017) * 12 + month.dt.month - 1).astype(float),
        }
    )
    for column in ("town", "flat_type", "flat_model"):
        x[column] = pd.Categorical(df[column].astype(str)).codes.astype("float64")
    return x[list(FEATURES)], np.log(_price(df))


def _importance(df: pd.DataFrame, seed: int = 0) -> pd.Series:
    """Permutation importance of an XGBoost on log price, on a held-out quarter."""
    from sklearn.inspection import permutation_importance
    from xgboost import XGBRegressor

    x, y = _features(df.reset_index(drop=True))
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.75 * len(x))
    train, test = order[:cut], order[cut:]
    model = XGBRegressor(
        n_estimators=300, max_depth=6, learning_rate=0.1, n_jobs=2, random_state=seed
    )
    model.fit(x.iloc[train], y.iloc[train])
    result = permutation_importance(
        model, x.iloc[test], y.iloc[test], n_repeats=3, random_state=seed, n_jobs=1
    )
    return pd.Series(result.importances_mean, index=x.columns).sort_values(ascending=False)


def test_xgboost_on_the_sample_ranks_the_drivers_as_on_real_data(
    sample: pd.DataFrame, real: pd.DataFrame
):
    from scipy.stats import spearmanr

    real_importance = _importance(real.sample(n=min(60_000, len(real)), random_state=0))
    sample_importance = _importance(sample)
    top_real, top_sample = set(real_importance.index[:3]), set(sample_importance.index[:3])
    assert top_real == top_sample, (real_importance.round(3), sample_importance.round(3))
    rho = spearmanr(real_importance, sample_importance.reindex(real_importance.index)).statistic
    assert rho >= 0.7, (rho, real_importance.round(3), sample_importance.round(3))
