"""The training pipeline of chapter 5: split -> (tune) -> fit -> evaluate -> bundle -> track
-> register -> gate. The CLI (``hdb-mlops train``) and the notebooks call :func:`train`.

The model is fitted on every month up to a cut-off and scored on the months after it. Those
later months are also the window on which the promotion gate compares the new model with the
current champion. The comparison is fair when both were trained with the same cut-off (or
the champion with an earlier one): then neither has seen the window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.evaluate import Evaluation, holdout
from hdb_mlops.features import FeatureSpec
from hdb_mlops.models import DEFAULT_XGB_PARAMS, PriceModel, make_model

log = logging.getLogger(__name__)

DEFAULT_GATE_MONTHS = 3


@dataclass
class TrainResult:
    """Everything one training run produced."""

    model: PriceModel
    evaluation: Evaluation
    bundle_dir: Path
    cutoff: str
    run_id: str | None = None
    version: int | None = None
    decision: Any = None  # registry.GateDecision
    tuning: Any = None  # tune.TuningResult


def default_cutoff(transactions: pd.DataFrame, gate_months: int = DEFAULT_GATE_MONTHS) -> str:
    """The month ``gate_months`` before the latest one: train on everything older."""
    return str(transactions["month"].max() - gate_months)


def build_model(
    name: str,
    *,
    params: dict[str, Any] | None = None,
    location: bool = False,
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    seed: int = config.DEFAULT_SEED,
) -> PriceModel:
    """A model by name with the course's conventions (seeded; XGBoost parameters merged into
    the defaults; location features when asked)."""
    if name == "xgboost":
        return make_model(
            "xgboost",
            params_={**DEFAULT_XGB_PARAMS, **(params or {})},
            spec=FeatureSpec(location=location),
            locations=locations,
            seed=seed,
        )
    return make_model(name, **(params or {}))


def train(
    transactions: pd.DataFrame,
    out_dir: Path | str,
    *,
    model: str = "xgboost",
    params: dict[str, Any] | None = None,
    location: bool = False,
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    cutoff: str | None = None,
    tune_trials: int = 0,
    tune_timeout: float | None = None,
    seed: int = config.DEFAULT_SEED,
    data_hash: str | None = None,
    track: bool = True,
    register: bool = True,
    margin: float = 0.1,
    latency_budget_ms: float = 50.0,
    figures: dict[str, Any] | None = None,
) -> TrainResult:
    """Train, evaluate, bundle, and (by default) log to MLflow, register and gate a model."""
    from hdb_mlops.bundle import residual_quantiles, save_bundle
    from hdb_mlops.pipeline import git_commit
    from hdb_mlops.profile import reference_profile

    cutoff = cutoff or default_cutoff(transactions)
    train_rows = transactions[transactions["month"] <= pd.Period(cutoff, freq="M")]
    tuning = None
    if tune_trials and model == "xgboost":
        from hdb_mlops.tune import tune

        tuning = tune(
            train_rows,
            n_trials=tune_trials,
            timeout=tune_timeout,
            seed=seed,
            spec=FeatureSpec(location=location),
            locations=locations,
        )
        params = {**(params or {}), **tuning.best_params}

    fitted: list[PriceModel] = []

    def factory() -> PriceModel:
        m = build_model(model, params=params, location=location, locations=locations, seed=seed)
        fitted.append(m)
        return m

    evaluation = holdout(transactions, factory, cutoff=cutoff)
    fitted_model = fitted[-1]
    preds = evaluation.predictions
    sample = train_rows.sample(n=min(len(train_rows), 20_000), random_state=seed)
    profile = reference_profile(fitted_model.features(sample), fitted_model.predict(sample))
    git = git_commit()
    bundle_dir = save_bundle(
        fitted_model,
        Path(out_dir) / f"{fitted_model.name}-{cutoff}",
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile=profile,
        data_hash=data_hash,
        git=git,
        extra={"cutoff": cutoff, "train_rows": len(train_rows), "test_rows": len(preds)},
    )
    result = TrainResult(fitted_model, evaluation, bundle_dir, cutoff, tuning=tuning)
    if not track:
        return result
    from hdb_mlops import registry, tracking

    result.run_id = tracking.log_training(
        fitted_model,
        evaluation,
        bundle_dir,
        params={"cutoff": cutoff, "tune_trials": tune_trials},
        data_hash=data_hash,
        git=git,
        figures=figures,
    )
    if register:
        result.version = registry.register(result.run_id)
        window = transactions[transactions["month"] > pd.Period(cutoff, freq="M")]
        result.decision = registry.promote(
            result.version, window, margin=margin, latency_budget_ms=latency_budget_ms
        )
    return result
