"""Shared fixtures: the real-data folder (skipped with a reason where absent) and offline guards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach AWS or the SageMaker SDK's telemetry: dummy credentials, a fixed region.
os.environ.setdefault("AWS_DEFAULT_REGION", "ap-southeast-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder with the real data.gov.sg resale files; skips the test where there is none."""
    from hdb_mlops.config import REAL_DATA_ENV, real_data_dir

    path = real_data_dir()
    if path is None:
        pytest.skip(
            f"real HDB data not found: set {REAL_DATA_ENV} to a folder with the data.gov.sg "
            "resale files, or place them in ../shared/data/hdb"
        )
    return path


def made_up_locations(transactions):
    """Made-up coordinates for every other address of ``transactions``, and three stations:
    the tests' stand-in for the real geocode and station tables."""
    import numpy as np
    import pandas as pd

    addresses = transactions[["block", "street_name"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(0)
    geocodes = addresses.iloc[::2].assign(
        latitude=lambda d: 1.30 + 0.12 * rng.random(len(d)),
        longitude=lambda d: 103.70 + 0.25 * rng.random(len(d)),
    )
    stations = pd.DataFrame(
        {
            "name": ["A", "B", "C"],
            "latitude": [1.30, 1.35, 1.42],
            "longitude": [103.8, 103.85, 103.9],
        }
    )
    return geocodes, stations


def request_rows(transactions, n: int, seed: int = 3, *, odd: bool = False) -> list[dict]:
    """``n`` request bodies from ``transactions``, in the files' own spellings (title-case flat
    models); remaining lease as the files write it, as months, or left out. ``odd`` also
    leaves out the address of every 17th row and writes every 19th in lower case."""
    from hdb_mlops.data import examples
    from hdb_mlops.data.normalise import format_remaining_lease

    sample = transactions.sample(n, random_state=seed)
    lease_text = format_remaining_lease(sample["remaining_lease_months"])
    rows = []
    for i, (row, lease) in enumerate(
        zip(examples.request_records(sample), lease_text, strict=True)
    ):
        if i % 3 == 0:
            row["remaining_lease"] = lease
        elif i % 3 == 2:
            del row["remaining_lease"]
        if odd and i % 17 == 0:
            row = {k: v for k, v in row.items() if k not in ("block", "street_name")}
        if odd and i % 19 == 0:
            row["flat_model"] = row["flat_model"].lower()
            row["storey_range"] = row["storey_range"].lower()
        rows.append(row)
    return rows
