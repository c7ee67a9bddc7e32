"""Helpers the test modules share (imported as ``from helpers import ...``; fixtures stay in
conftest.py)."""

from __future__ import annotations


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
