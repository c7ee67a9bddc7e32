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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.model.evaluate import Evaluation, holdout
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.model.models import DEFAULT_XGB_PARAMS, PriceModel, make_model

log = logging.getLogger(__name__)

DEFAULT_GATE_MONTHS = 3
#: Months at the end of the training window that the drift reference profile describes: the
#: market the model will meet next. Over the whole window, features that age with the calendar
#: (flat age, remaining lease) would drift on the first day of serving, whatever the data.
REFERENCE_MONTHS = 12


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


def reference_months(months: pd.Series, n: int = REFERENCE_MONTHS) -> pd.Series:
    """Which rows fall in the last ``n`` months of ``months`` (the drift reference's window)."""
    periods = pd.PeriodIndex(months.astype("str"), freq="M")
    return pd.Series(periods > periods.max() - n, index=months.index)


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


def publish(
    evaluation: Evaluation,
    transactions: pd.DataFrame,
    out_dir: Path | str,
    *,
    seed: int = config.DEFAULT_SEED,
    data_hash: str | None = None,
    track: bool = True,
    register: bool = True,
    margin: float = 0.1,
    latency_budget_ms: float = config.GATE_LATENCY_BUDGET_MS,
    params: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
) -> TrainResult:
    """Bundle the model of a holdout evaluation, then (by default) log it to MLflow, register
    it and run the promotion gate on the months after its cut-off."""
    from hdb_mlops.model.bundle import residual_quantiles, save_bundle
    from hdb_mlops.model.profile import reference_profile

    if evaluation.fitted is None or evaluation.train is None:
        raise ValueError("publish needs a holdout evaluation (it carries the fitted model)")
    model, train_rows, preds = evaluation.fitted, evaluation.train, evaluation.predictions
    cutoff = str(train_rows["month"].max())
    recent = train_rows[reference_months(train_rows["month"])]
    sample = recent.sample(n=min(len(recent), 20_000), random_state=seed)
    profile = reference_profile(model.features(sample), model.predict(sample))
    git = config.git_commit()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    bundle_dir = save_bundle(
        model,
        Path(out_dir) / f"{model.name}-{cutoff}-{stamp}",
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile=profile,
        data_hash=data_hash,
        git=git,
        extra={"cutoff": cutoff, "train_rows": len(train_rows), "test_rows": len(preds)},
    )
    result = TrainResult(model, evaluation, bundle_dir, cutoff)
    if not track:
        return result
    from hdb_mlops.model import registry, tracking

    result.run_id = tracking.log_training(
        model,
        evaluation,
        bundle_dir,
        params={"cutoff": cutoff, **(params or {})},
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
    latency_budget_ms: float = config.GATE_LATENCY_BUDGET_MS,
    figures: dict[str, Any] | None = None,
) -> TrainResult:
    """Split at ``cutoff`` (default: three months before the latest), optionally tune, fit,
    evaluate on the later months, then :func:`publish`."""
    cutoff = cutoff or default_cutoff(transactions)
    train_rows = transactions[transactions["month"] <= pd.Period(cutoff, freq="M")]
    tuning = None
    if tune_trials and model == "xgboost":
        from hdb_mlops.model.tune import tune

        tuning = tune(
            train_rows,
            n_trials=tune_trials,
            timeout=tune_timeout,
            seed=seed,
            spec=FeatureSpec(location=location),
            locations=locations,
        )
        params = {**(params or {}), **tuning.best_params}

    def factory() -> PriceModel:
        return build_model(model, params=params, location=location, locations=locations, seed=seed)

    evaluation = holdout(transactions, factory, cutoff=cutoff)
    result = publish(
        evaluation,
        transactions,
        out_dir,
        seed=seed,
        data_hash=data_hash,
        track=track,
        register=register,
        margin=margin,
        latency_budget_ms=latency_budget_ms,
        params={"tune_trials": tune_trials},
        figures=figures,
    )
    result.tuning = tuning
    return result
