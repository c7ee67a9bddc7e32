"""The pipeline's "Train" step: the package's price model under SageMaker's training contract.

Reads the ``train`` and ``validation`` channels (parquet tables from Prepare) and the
hyperparameters (``model``, ``seed``, ``validation_report`` and, for XGBoost, any of its
parameters such as ``n_estimators`` or ``max_depth``), then:

1. (``validation_report``, on by default) fits the model on ``train`` alone and scores it on
   ``validation``: the job's validation metrics, printed as ``validation:<name>=<value>;``
   lines (the metric definitions a tuning job reads) and the residual quantiles of the
   bundle's prediction intervals, both from months that model did not see;
2. fits the model on train + validation in their original order: exactly what the local
   path (:func:`hdb_mlops.model.train.train`) fits with the same data, cut-off and seed;
3. writes it as a model bundle (:mod:`hdb_mlops.model.bundle`) into ``$SM_MODEL_DIR``
   (``/opt/ml/model``), which SageMaker tars into ``model.tar.gz``.

Run in a container as ``python -m hdb_mlops.cloud.sagemaker.entrypoints train`` (the word
SageMaker passes to a training image) or as this module.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.cloud.sagemaker.entrypoints.contract import (
    ROW_ID,
    SPLIT_FILE,
    TrainingPaths,
    hyperparameters,
    read_json,
    read_table,
    run_entry,
    training_paths,
)

#: Hyperparameters that configure the script; every other one goes to the model.
SCRIPT_KEYS = ("model", "seed", "validation_report")
#: The metrics printed for the job's metric definitions.
REPORTED = ("mape", "median_ape", "mae", "rmse", "r2", "within_5", "within_10")
#: Metric definitions matching the printed lines (for ModelTrainer and tuning jobs).
METRIC_DEFINITIONS = [
    {"Name": f"validation:{name}", "Regex": f"validation:{name}=([-0-9.eE+]+);"}
    for name in REPORTED
]


def model_settings(hps: dict[str, Any]) -> tuple[str, int, dict[str, Any], bool]:
    """``(model name, seed, model params, validation_report)`` from decoded hyperparameters."""
    name = str(hps.get("model", "xgboost"))
    seed = int(hps.get("seed", config.DEFAULT_SEED))
    report = bool(hps.get("validation_report", True))
    params = {key: value for key, value in hps.items() if key not in SCRIPT_KEYS}
    return name, seed, params, report


def training_rows(train: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """train + validation in the prepared table's order, without ``row_id``."""
    both = pd.concat([train, validation], ignore_index=True)
    if ROW_ID in both:
        both = both.sort_values(ROW_ID, kind="stable").drop(columns=ROW_ID)
    return both.reset_index(drop=True)


def _validation_report(
    name: str, params: dict[str, Any], seed: int, train: pd.DataFrame, validation: pd.DataFrame
) -> tuple[dict[str, float], dict[str, float]] | None:
    """Metrics and residual quantiles on ``validation`` of a model fitted on ``train``."""
    from hdb_mlops.model.bundle import residual_quantiles
    from hdb_mlops.model.evaluate import metrics
    from hdb_mlops.model.train import build_model

    if validation.empty or len(train) <= 100:
        return None
    probe = build_model(name, params=params, seed=seed).fit(train)
    predicted = probe.predict(validation)
    return (
        metrics(validation["resale_price"], predicted),
        residual_quantiles(validation["resale_price"], predicted),
    )


def train_model(paths: TrainingPaths) -> dict[str, Any]:
    """Run the training job described by ``paths``; return a summary."""
    from hdb_mlops.model.bundle import residual_quantiles, save_bundle
    from hdb_mlops.model.profile import reference_profile
    from hdb_mlops.model.train import build_model

    name, seed, params, report = model_settings(hyperparameters(paths))
    train = read_table(paths.channel("train"))
    validation = read_table(paths.channel("validation"))
    split_path = paths.channel("train") / SPLIT_FILE
    split = read_json(split_path) if split_path.is_file() else {}
    rows = training_rows(train, validation)
    checked = None
    if report:
        bare = [frame.drop(columns=ROW_ID, errors="ignore") for frame in (train, validation)]
        checked = _validation_report(name, params, seed, *bare)
    model = build_model(name, params=params, seed=seed).fit(rows)
    if checked is None:  # no months held out: in-sample residuals, and said so
        fitted = model.predict(rows)
        checked = ({}, residual_quantiles(rows["resale_price"], fitted))
        residuals_on = "training rows (in-sample)"
    else:
        residuals_on = "validation months, model fitted without them"
    metrics, quantiles = checked
    for key in REPORTED:
        if key in metrics:
            print(f"validation:{key}={metrics[key]:.6f};")
    sample = rows.sample(n=min(len(rows), 20_000), random_state=seed)
    extra = {
        "cutoff": split.get("cutoff", str(rows["month"].max())),
        "train_rows": len(rows),
        "validation_rows": len(validation),
        "metrics_on": "validation" if metrics else None,
        "residuals_on": residuals_on,
        "trained_by": "hdb_mlops.cloud.sagemaker.entrypoints.train",
    }
    with tempfile.TemporaryDirectory(prefix="hdb-train-") as work:
        bundle = save_bundle(
            model,
            Path(work) / "bundle",
            metrics={f"validation_{k}": v for k, v in metrics.items()},
            residual_quantiles=quantiles,
            profile=reference_profile(model.features(sample), model.predict(sample)),
            data_hash=split.get("data_hash"),
            git=None,
            extra=extra,
        )
        paths.model_dir.mkdir(parents=True, exist_ok=True)
        for file in bundle.iterdir():
            shutil.copy2(file, paths.model_dir / file.name)
    return {"model": name, "rows": len(rows), "validation": metrics, **extra}


def main(argv: list[str] | None = None) -> int:
    """Run the training job (no arguments: everything comes from the contract)."""
    summary = train_model(training_paths())
    print(f"train: {summary['model']} on {summary['rows']} rows -> {training_paths().model_dir}")
    return 0


if __name__ == "__main__":
    run_entry(main, training_paths().failure_file)
