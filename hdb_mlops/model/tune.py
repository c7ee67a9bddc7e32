"""Hyper-parameter search for the XGBoost model with Optuna: the local counterpart of a
SageMaker tuning job.

Each trial trains on the training months except the last ``valid_months`` and is scored by
MAPE on those last months, so the search never looks at the test period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hdb_mlops.model.evaluate import metrics
from hdb_mlops.model.features import FeatureSpec, month_index
from hdb_mlops.model.models import DEFAULT_XGB_PARAMS, XGBoostModel

log = logging.getLogger(__name__)


def search_space(trial: Any) -> dict[str, Any]:
    """The parameters a trial tries (ranges that matter for tabular price data)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.04, 0.3, log=True),
        "max_depth": trial.suggest_int("max_depth", 4, 10),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


@dataclass
class TuningResult:
    """Best parameters, their validation MAPE, and every trial."""

    best_params: dict[str, Any]
    best_mape: float
    trials: pd.DataFrame
    seconds: float


def tune(
    train: pd.DataFrame,
    *,
    n_trials: int = 20,
    timeout: float | None = None,
    seed: int = 42,
    valid_months: int = 6,
    max_estimators: int = 2000,
    spec: FeatureSpec | None = None,
    locations: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    make_model: Callable[..., XGBoostModel] = XGBoostModel,
    start_from: dict[str, Any] | None = None,
) -> TuningResult:
    """Search XGBoost parameters on ``train`` (a seeded TPE search, ``n_trials`` or until
    ``timeout`` seconds). Returns the best parameters merged into the defaults.

    ``start_from`` (parameters merged into the defaults) is tried first, as trial 0: the
    search then keeps the starting model unless a trial beats it on the validation months, so
    the choice between "as configured" and "tuned" is made there, never on the test months."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    idx = month_index(train["month"])
    valid_mask = idx > idx.max() - valid_months
    fit_part, valid_part = train[~valid_mask], train[valid_mask]
    if fit_part.empty or valid_part.empty:
        raise ValueError(f"the training data is too short for {valid_months} validation months")

    def objective(trial: Any) -> float:
        params = {**DEFAULT_XGB_PARAMS, **search_space(trial), "n_estimators": max_estimators}
        model = make_model(
            params_=params, spec=spec or FeatureSpec(), seed=seed, locations=locations
        )
        model.fit(fit_part)
        score = metrics(valid_part["resale_price"], model.predict(valid_part))["mape"]
        trial.set_user_attr("n_estimators_used", model.n_estimators_)
        return score

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    if start_from is not None:
        first = {**DEFAULT_XGB_PARAMS, **start_from}
        names = ("learning_rate", "max_depth", "min_child_weight", "subsample")
        names += ("colsample_bytree", "reg_lambda")
        study.enqueue_trial({k: first[k] for k in names})
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, timeout=timeout)
    seconds = time.perf_counter() - start
    trials = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "duration"))
    trials = trials.rename(columns={"value": "valid_mape"})
    best = {**DEFAULT_XGB_PARAMS, **study.best_params, "n_estimators": max_estimators}
    log.info(
        "tuning: %d trials in %.0f s, best MAPE %.3f", len(study.trials), seconds, study.best_value
    )
    return TuningResult(best, float(study.best_value), trials, seconds)
