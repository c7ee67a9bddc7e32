"""The pipeline's "Evaluate" step: score the trained model on the months after the cut-off.

Reads the training job's ``model.tar.gz`` (or an unpacked bundle) from ``<base>/model`` and
the test table from ``<base>/input/test``; verifies the bundle (every file's sha256) before
unpickling it; writes ``<base>/output/evaluation/evaluation.json``::

    {"regression_metrics": {"mape": {"value": 7.5}, "mae": {"value": ...}, ...},
     "n": 138, "by_month": {"2026-05": {"mape": ..., "n": ...}, ...},
     "model": {"bundle_sha256": ..., "model_sha256": ..., "booster_sha256": ...},
     "split": {... Prepare's split.json ...}}

``regression_metrics`` follows SageMaker's model-quality statistics layout, so the file is
also the registered model package's ``ModelQuality.Statistics``; the pipeline's CheckMape
condition reads ``regression_metrics.mape.value`` through a PropertyFile.

Run in a container as ``python -m hdb_mlops.cloud.sagemaker.entrypoints.evaluate``.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hdb_mlops.cloud.sagemaker.entrypoints.contract import (
    EVALUATION_FILE,
    PROCESSING_DIR,
    ROW_ID,
    SPLIT_FILE,
    read_json,
    read_table,
    run_entry,
    write_json,
)

#: The name SageMaker gives a training job's model archive.
MODEL_ARCHIVE = "model.tar.gz"


def unpack_model(model_dir: Path | str, into: Path | str) -> Path:
    """The bundle folder of ``model_dir``: ``model.tar.gz`` unpacked into ``into`` (members
    that would land outside it are refused), or ``model_dir`` itself when it is a bundle."""
    model_dir = Path(model_dir)
    archives = sorted(model_dir.glob("*.tar.gz"))
    if not archives:
        return model_dir
    target = Path(into)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0], "r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


def evaluation_report(bundle: Any, test: Any, split: dict[str, Any] | None = None) -> dict:
    """The evaluation report of a loaded bundle on the test table."""
    from hdb_mlops.model.evaluate import metrics

    test = test.drop(columns=ROW_ID, errors="ignore")
    predicted = bundle.predict(test)
    overall = metrics(test["resale_price"], predicted)
    by_month = {}
    for month, rows in test.assign(prediction=predicted).groupby("month"):
        scored = metrics(rows["resale_price"], rows["prediction"])
        by_month[str(month)] = {"mape": scored["mape"], "n": scored["n"]}
    return {
        "regression_metrics": {k: {"value": v} for k, v in overall.items() if k != "n"},
        "n": overall["n"],
        "by_month": by_month,
        "model": {
            "name": bundle.name,
            "bundle_sha256": bundle.sha256,
            "model_sha256": bundle.metadata.get("model_sha256"),
            "booster_sha256": bundle.metadata.get("booster_sha256"),
        },
        "split": split or {},
    }


def evaluate_model(model_dir: Path | str, test_dir: Path | str, out_file: Path | str) -> dict:
    """Evaluate the model in ``model_dir`` on the table in ``test_dir``; write the report."""
    from hdb_mlops.model.bundle import load_bundle

    split_path = Path(test_dir) / SPLIT_FILE
    split = read_json(split_path) if split_path.is_file() else None
    with tempfile.TemporaryDirectory(prefix="hdb-evaluate-") as work:
        bundle = load_bundle(unpack_model(model_dir, work))
        report = evaluation_report(bundle, read_table(test_dir), split)
    write_json(out_file, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    """The script's arguments."""
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--base-dir", type=Path, default=PROCESSING_DIR)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the step; print the MAPE."""
    base = build_parser().parse_args(argv).base_dir
    report = evaluate_model(
        base / "model",
        base / "input" / "test",
        base / "output" / "evaluation" / EVALUATION_FILE,
    )
    mape = report["regression_metrics"]["mape"]["value"]
    print(f"evaluate: MAPE {mape:.3f}% on {report['n']} rows")
    return 0


if __name__ == "__main__":
    run_entry(main)
