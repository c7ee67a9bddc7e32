"""Helpers the test modules share (imported as ``from helpers import ...``; fixtures stay in
conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: The tests' training cut-off: fit up to it, serve what comes after.
CUTOFF = pd.Period("2024-12", freq="M")
#: A small, fast XGBoost (50 trees of depth 4).
FAST_XGB = {"n_estimators": 50, "max_depth": 4, "learning_rate": 0.2}


def xgboost_model(**kwargs):
    """The course's XGBoost pipeline with :data:`FAST_XGB`, on one thread."""
    from hdb_mlops.model import train

    model = train.build_model("xgboost", params=FAST_XGB, **kwargs)
    model.n_jobs = 1
    return model


def fast_bundle(
    model, tx: pd.DataFrame, out: Path, seed: int = 1, *, profiled: bool = True
) -> Path:
    """Fit ``model`` on 4,000 rows up to :data:`CUTOFF`, take the residual quantiles from the
    next six months and save a bundle; ``profiled``: with the reference profile that
    :func:`hdb_mlops.model.train.publish` writes (features and predictions of the fit rows)."""
    import numpy as np

    from hdb_mlops.model.bundle import residual_quantiles, save_bundle
    from hdb_mlops.model.profile import reference_profile

    months = tx["month"]
    fit = tx[months <= CUTOFF].sample(4000, random_state=seed).sort_values("month", kind="stable")
    valid = tx[(months > CUTOFF) & (months <= CUTOFF + 6)]
    model.fit(fit)
    pred = model.predict(valid)
    return save_bundle(
        model,
        out,
        metrics={
            "mape": float(np.mean(np.abs(pred / valid["resale_price"] - 1)) * 100),
            "n": len(valid),
        },
        residual_quantiles=residual_quantiles(valid["resale_price"], pred),
        profile=reference_profile(model.features(fit), model.predict(fit)) if profiled else {},
        data_hash=None,
        git=None,
    )


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


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        sample_name, _, rest = key.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample_name == name and found == want:
            return float(value)
    return 0.0
