"""The pipeline's "Prepare" step: raw resale files -> validated data -> time-aware split.

Reads the resale files in ``<base>/input/raw`` (the official CSV schema, as downloaded or
the bundled sample), runs :func:`hdb_mlops.data.storage.prepare` on them (validation,
quarantine, derived columns, the optional seeded subset), and writes three tables:

- ``<base>/output/train``: the months up to the cut-off, less the last ``valid_months``;
- ``<base>/output/validation``: those last ``valid_months`` months of the training period
  (the months the XGBoost model holds out for early stopping);
- ``<base>/output/test``: every month after the cut-off (Evaluate scores the model on them).

train + validation is exactly what the local path (:func:`hdb_mlops.model.train.train`)
fits on; every table carries ``row_id`` so that their union keeps its original order.
``split.json`` beside each table records the cut-off, the counts and the data hash.

Run in a container as ``python -m hdb_mlops.cloud.sagemaker.entrypoints.prepare``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.cloud.sagemaker.entrypoints.contract import (
    PROCESSING_DIR,
    ROW_ID,
    SPLIT_FILE,
    run_entry,
    write_json,
    write_table,
)

#: ``auto``: the cut-off of the local path, three months before the latest month.
AUTO = "auto"


def default_valid_months() -> int:
    """The XGBoost model's own early-stopping window (``XGBoostModel.valid_months``)."""
    from hdb_mlops.model.models import XGBoostModel

    return next(f.default for f in fields(XGBoostModel) if f.name == "valid_months")  # type: ignore[return-value]


def split_tables(
    transactions: pd.DataFrame, cutoff: str | None = None, valid_months: int = 3
) -> tuple[dict[str, pd.DataFrame], str]:
    """The train / validation / test tables of ``transactions`` and the cut-off used
    (``None``: :func:`hdb_mlops.model.train.default_cutoff`)."""
    from hdb_mlops.model.evaluate import split_holdout
    from hdb_mlops.model.train import default_cutoff

    if valid_months < 0:
        raise ValueError(f"valid_months must be 0 or more, not {valid_months}")
    cutoff = cutoff or default_cutoff(transactions)
    train_all, test = split_holdout(transactions, cutoff)
    last = train_all["month"].max()
    held = train_all["month"] > last - valid_months
    tables = {"train": train_all[~held], "validation": train_all[held], "test": test}
    return tables, cutoff


def _months(frame: pd.DataFrame) -> list[str] | None:
    if frame.empty:
        return None
    return [str(frame["month"].min()), str(frame["month"].max())]


def prepare_split(
    raw_dir: Path | str,
    out_dir: Path | str,
    *,
    cutoff: str | None = None,
    valid_months: int = 3,
    rows: int | None = None,
    seed: int = config.DEFAULT_SEED,
    since: str | None = None,
) -> dict[str, Any]:
    """Prepare the resale files of ``raw_dir`` and write the split tables into
    ``out_dir/<train|validation|test>``; return the split description."""
    from hdb_mlops.data.storage import prepare

    with tempfile.TemporaryDirectory(prefix="hdb-prepare-") as work:
        prepared = prepare(Path(raw_dir), Path(work), rows=rows, seed=seed)
        transactions = prepared.transactions(since).reset_index(drop=True)
        report = prepared.report.to_dict()
        data_hash = prepared.data_hash
    transactions[ROW_ID] = range(len(transactions))
    tables, used = split_tables(transactions, cutoff, valid_months)
    split = {
        "cutoff": used,
        "valid_months": valid_months,
        "rows": rows,
        "seed": seed,
        "since": since,
        "data_hash": data_hash,
        "load": report,
        "counts": {name: len(frame) for name, frame in tables.items()},
        "months": {name: _months(frame) for name, frame in tables.items()},
    }
    for name, frame in tables.items():
        write_table(frame, Path(out_dir) / name)
        write_json(Path(out_dir) / name / SPLIT_FILE, split)
    return split


def build_parser() -> argparse.ArgumentParser:
    """The script's arguments (the pipeline passes them as ContainerArguments)."""
    p = argparse.ArgumentParser(prog="prepare", description=__doc__.splitlines()[0])
    p.add_argument("--base-dir", type=Path, default=PROCESSING_DIR)
    p.add_argument("--cutoff", default=AUTO, help="last training month YYYY-MM, or auto")
    p.add_argument("--valid-months", type=int, default=None)
    p.add_argument("--rows", type=int, default=0, help="a seeded subset (0: every row)")
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.add_argument("--since", default="", help="first month YYYY-MM ('': every month)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the step; print the counts."""
    args = build_parser().parse_args(argv)
    split = prepare_split(
        args.base_dir / "input" / "raw",
        args.base_dir / "output",
        cutoff=None if args.cutoff in (AUTO, "") else args.cutoff,
        valid_months=default_valid_months() if args.valid_months is None else args.valid_months,
        rows=args.rows or None,
        seed=args.seed,
        since=args.since or None,
    )
    print(f"prepare: cut-off {split['cutoff']}, rows {split['counts']}")
    return 0


if __name__ == "__main__":
    run_entry(main)
