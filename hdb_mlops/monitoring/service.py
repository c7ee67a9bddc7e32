"""The monitored prediction service: chapter 3's service (:func:`hdb_mlops.serving.app.create_app`)
plus chapter 6's monitoring, plugged in through its observer hook.

:func:`create_monitored_app` adds to the service:

* the drift monitor (:class:`~hdb_mlops.monitoring.window.DriftWindow`): the last
  ``drift_window`` rows against the served bundle's reference profile, as ``hdb_drift_*``
  gauges computed when ``/metrics`` is scraped, in a child process of the service
  (:mod:`hdb_mlops.monitoring.window_stats`);
* the prediction log (:class:`~hdb_mlops.monitoring.predlog.PredictionLog`, sqlite) and
  ``POST /feedback`` (:mod:`hdb_mlops.monitoring.feedback`): actual prices matched with logged
  predictions, their APE in ``hdb_prediction_absolute_percentage_error``.

``hdb-mlops serve`` serves this app unless given ``--no-monitoring``. The prediction path's
code is the bare service's: the observers only queue what they see.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from hdb_mlops.monitoring.feedback import (
    DEFAULT_GRACE_S,
    DEFAULT_MAX_AGE_S,
    FeedbackDesk,
    install_feedback,
)
from hdb_mlops.monitoring.predlog import PREDICTION_LOG_ENV, PredictionLog, default_path
from hdb_mlops.monitoring.window import DEFAULT_WINDOW, DriftWindow
from hdb_mlops.serving.app import (
    DEFAULT_MAX_BATCH,
    MAX_BATCH_ENV,
    body_timeout_from_env,
    create_app,
    fast_path_from_env,
)
from hdb_mlops.serving.loading import MODEL_ENV
from hdb_mlops.serving.metrics import FeedbackMetrics

log = logging.getLogger(__name__)

DRIFT_WINDOW_ENV = "HDB_MLOPS_DRIFT_WINDOW"
#: Values of ``$HDB_MLOPS_PREDICTION_LOG`` that turn the prediction log off.
OFF = ("0", "off", "false", "no", "none")


def prediction_log_path(prediction_log: Path | str | bool | None) -> Path | None:
    """Where the prediction log goes: a path as given; True or None the default
    (``$HDB_MLOPS_PREDICTION_LOG``, else ``runs/monitor/predictions.sqlite``; the variable set
    to ``off`` turns it off); False: no log."""
    if prediction_log is False:
        return None
    if prediction_log is None or prediction_log is True:
        env = os.environ.get(PREDICTION_LOG_ENV, "").strip()
        if env.lower() in OFF:
            return None
        return default_path()
    return Path(prediction_log).expanduser()


def create_monitored_app(
    model_ref: str | Path | int | None = None,
    *,
    prediction_log: Path | str | bool | None = None,
    drift_window: int = DEFAULT_WINDOW,
    feedback_max_age_s: float = DEFAULT_MAX_AGE_S,
    feedback_grace_s: float = DEFAULT_GRACE_S,
    **create_app_kwargs: Any,
) -> FastAPI:
    """The prediction service with drift gauges, the prediction log and ``POST /feedback``.

    ``model_ref`` and ``create_app_kwargs`` are :func:`~hdb_mlops.serving.app.create_app`'s.
    ``prediction_log``: see :func:`prediction_log_path` (False: no log and no /feedback).
    ``drift_window``: rows in the drift window. ``feedback_max_age_s``: feedback for an older
    prediction is ``late``, and a prediction with no feedback by then is expired.
    ``feedback_grace_s``: how long feedback for a prediction not in the log yet is held.
    The app's ``state`` has ``drift``, ``prediction_log`` and ``feedback`` (None when off).
    """
    if feedback_max_age_s <= 0:
        raise ValueError(f"feedback_max_age_s must be positive, not {feedback_max_age_s}")
    if feedback_grace_s < 0:
        raise ValueError(f"feedback_grace_s must be 0 or more, not {feedback_grace_s}")
    app = create_app(model_ref, **create_app_kwargs)
    registry = app.state.metrics.registry
    window = DriftWindow(drift_window, statistics_process=True)
    app.state.observers.add(window)
    registry.register(window)
    app.state.drift = window
    app.state.prediction_log = None
    app.state.feedback = None
    path = prediction_log_path(prediction_log)
    if path is not None:
        plog = PredictionLog(path)
        desk = FeedbackDesk(
            plog, FeedbackMetrics(registry), max_age_s=feedback_max_age_s, grace_s=feedback_grace_s
        )
        app.state.observers.add(plog)
        install_feedback(app, desk)
        app.state.prediction_log = plog
        app.state.feedback = desk
    log.info(
        "monitoring on",
        extra={"drift_window": drift_window, "prediction_log": str(path) if path else None},
    )
    return app


def drift_window_from_env() -> int:
    """``$HDB_MLOPS_DRIFT_WINDOW`` rows, else the default (1000)."""
    return int(os.environ.get(DRIFT_WINDOW_ENV) or DEFAULT_WINDOW)


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` and multi-worker serving: the monitored app for
    the model in ``$HDB_MLOPS_MODEL`` (else ``champion``), with the serving variables of
    :func:`hdb_mlops.serving.app.app_from_env` plus ``$HDB_MLOPS_PREDICTION_LOG`` (a path, or
    ``off``) and ``$HDB_MLOPS_DRIFT_WINDOW``."""
    return create_monitored_app(
        os.environ.get(MODEL_ENV) or None,
        drift_window=drift_window_from_env(),
        max_batch=int(os.environ.get(MAX_BATCH_ENV) or DEFAULT_MAX_BATCH),
        fast_path=fast_path_from_env(),
        body_timeout=body_timeout_from_env(),
        tune_process=True,
    )
