"""The retraining job of the monitoring loop: retrain on the newest data, then let the
promotion gate compare the challenger with the champion on the same recent window.

The recipe, time-aware as in chapter 5 (no row of the evaluation window is ever trained on):

1. **The window** is the newest labelled feedback in the prediction log: the sales the
   service priced and whose actual price came back, in the latest ``window_months`` sale
   months (by the sale's ``month``, not by when the price arrived). These are the sales the
   alert was about, and the only data both models are judged on.
2. **The training set** is everything strictly before the window's first month: the rows of
   the data files (``data``: the bundled sample by default, or the real files) before that
   month, plus the labelled feedback of months the data files do not cover yet (newer than
   their last month, older than the window). The files are authoritative for the months
   they cover: a sale that is both in the files and in the feedback is counted once.
3. **The challenger** is trained with the package's own training path
   (:func:`hdb_mlops.model.train.train`: cut-off = the month before the window, so its
   holdout score *is* its score on the window), tracked in MLflow and registered.
4. **The gate** (:func:`hdb_mlops.model.gate.promote`) scores challenger and champion on
   the window and moves the ``champion`` alias only if the challenger wins by ``margin``
   percentage points.

The job runs in a child process (``python -m hdb_mlops.monitoring.retrain --settings S
--result R``, started by :func:`run_job`), so a crash, a kill or a memory blow-up in training
cannot take the receiver down; a job that dies before the gate leaves the aliases as they
were. ``$HDB_MLOPS_RETRAIN_FAULT`` injects such a failure for tests and workshops:
``after_train`` (the process dies once the model is trained and tracked, before it is
registered), ``after_register`` (dies before the gate) or ``hang`` (never finishes: the
receiver's timeout kills it).

The guard rails around it (one at a time, cool-down, duplicates) are in
:mod:`hdb_mlops.monitoring.retrainer`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.model.registry import CHAMPION, DEFAULT_NAME

log = logging.getLogger(__name__)

FAULT_ENV = "HDB_MLOPS_RETRAIN_FAULT"
FAULTS = ("after_train", "after_register", "hang")
#: Exit status of a job killed by an injected fault (as a crash would end it).
FAULT_EXIT = 70
DEFAULT_WORK_DIR = config.RUNS_DIR / "monitor" / "retraining"
DEFAULT_WINDOW_MONTHS = 3
DEFAULT_MIN_WINDOW_ROWS = 200
#: Percentage points of MAPE the challenger must win by. Stricter than ``hdb-mlops train``'s
#: 0.1: nobody looks at an automatic promotion before it serves.
DEFAULT_MARGIN = 0.5
DEFAULT_TIMEOUT_S = 1800.0


class RetrainError(RuntimeError):
    """The retraining cannot run as asked (too little feedback, no training rows...)."""


@dataclass
class RetrainSettings:
    """What one retraining uses; JSON-ready, as it is handed to the child process."""

    data: str = "sample"
    prediction_log: str | None = None
    work_dir: str = str(DEFAULT_WORK_DIR)
    window_months: int = DEFAULT_WINDOW_MONTHS
    min_window_rows: int = DEFAULT_MIN_WINDOW_ROWS
    #: Earliest month trained on (None: everything the files have).
    train_since: str | None = None
    margin: float = DEFAULT_MARGIN
    model: str = "xgboost"
    #: XGBoost parameters (None: the quick profile's).
    params: dict[str, Any] | None = None
    registry_name: str = DEFAULT_NAME
    latency_budget_ms: float = 250.0
    seed: int = config.DEFAULT_SEED
    timeout_s: float = DEFAULT_TIMEOUT_S
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window_months < 1:
            raise ValueError(f"window_months must be at least 1, not {self.window_months}")
        if self.min_window_rows < 1:
            raise ValueError(f"min_window_rows must be at least 1, not {self.min_window_rows}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a number of at least 0, not {self.margin}")


# ------------------------------------------------------------------------- the data


def feedback_transactions(labelled: pd.DataFrame) -> pd.DataFrame:
    """Normalised transactions (the data files' frame) from the prediction log's labelled
    rows (:meth:`~hdb_mlops.monitoring.predlog.PredictionLog.labelled`), parsed as the
    loader parses the files, ``resale_price`` the actual price fed back. Rows without a
    month, a floor area or a positive price are left out."""
    from hdb_mlops.monitoring.predlog import labelled_transactions

    frame = labelled_transactions(labelled)
    ok = frame["month"].notna() & frame["floor_area_sqm"].notna() & (frame["resale_price"] > 0)
    return frame[ok].reset_index(drop=True)


@dataclass
class Assembled:
    """The challenger's training rows, the evaluation window and how they were made."""

    train: pd.DataFrame
    window: pd.DataFrame
    info: dict[str, Any]


def _span(months: pd.Series) -> list[str] | None:
    return [str(months.min()), str(months.max())] if len(months) else None


def assemble(
    history: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    window_months: int = DEFAULT_WINDOW_MONTHS,
    min_window_rows: int = DEFAULT_MIN_WINDOW_ROWS,
    train_since: str | None = None,
) -> Assembled:
    """Split the newest data into the challenger's training rows and the evaluation window
    (see the module docstring): ``history`` are the data files' transactions, ``feedback``
    the labelled feedback as :func:`feedback_transactions` gives it. Raises
    :class:`RetrainError` when the window is smaller than ``min_window_rows`` or nothing is
    left to train on."""
    if feedback.empty:
        raise RetrainError(
            "the prediction log has no labelled feedback yet: the window needs sales with "
            "their actual prices (POST /feedback)"
        )
    last = feedback["month"].max()
    # the latest window_months of feedback, never starting before the first month fed back:
    # a month before it would be in neither the window nor the training rows
    first = max(last - (window_months - 1), feedback["month"].min())
    window = feedback[feedback["month"] >= first].reset_index(drop=True)
    if len(window) < min_window_rows:
        raise RetrainError(
            f"the window {first}..{last} has {len(window)} labelled sales, fewer than "
            f"min_window_rows={min_window_rows}: wait for more feedback or lower it"
        )
    older = history[history["month"] < first]
    if train_since is not None:
        older = older[older["month"] >= pd.Period(train_since, freq="M")]
    files_last = older["month"].max() if len(older) else None
    fresh = feedback[feedback["month"] < first]
    if files_last is not None:
        fresh = fresh[fresh["month"] > files_last]
    train = pd.concat([older, fresh], ignore_index=True).sort_values("month", kind="stable")
    train = train.reset_index(drop=True)
    if train.empty:
        raise RetrainError(
            f"no sales before the window's first month {first} to train on: the data files "
            "and the feedback both start in the window"
        )
    assert train["month"].max() < first  # the time-aware protocol: nothing from the window
    info = {
        "train_months": _span(train["month"]),
        "train_rows": len(train),
        "train_rows_files": len(older),
        "train_rows_feedback": len(fresh),
        "window_months": [str(first), str(last)],
        "window_rows": len(window),
        "feedback_rows": len(feedback),
        "cutoff": str(first - 1),
    }
    return Assembled(train, window, info)


def _fault(point: str) -> None:
    """Die here (or hang) when ``$HDB_MLOPS_RETRAIN_FAULT`` names this point."""
    wanted = os.environ.get(FAULT_ENV, "").strip()
    if wanted == "hang" and point == "after_train":
        log.warning("%s=hang: the retraining hangs", FAULT_ENV)
        time.sleep(24 * 3600)
    if wanted == point:
        print(f"injected fault {FAULT_ENV}={point}: the retraining process dies", file=sys.stderr)
        sys.stderr.flush()
        os._exit(FAULT_EXIT)


def load_labelled(path: str | Path | None = None) -> pd.DataFrame:
    """The labelled feedback (late feedback included: a true price all the same) of the
    prediction log at ``path`` (default: the service's, ``$HDB_MLOPS_PREDICTION_LOG`` or
    ``runs/monitor/predictions.sqlite``)."""
    from hdb_mlops.monitoring.predlog import PredictionLog, default_path

    path = Path(path) if path is not None else default_path()
    if not path.exists():
        raise RetrainError(
            f"no prediction log at {path}: pass the file the service writes (--prediction-log)"
        )
    return PredictionLog(path).labelled(include_late=True)


def retrain(settings: RetrainSettings) -> dict[str, Any]:
    """Run one retraining in this process (what the child process does): assemble the data,
    train, track and register the challenger, run the gate. Returns the JSON-ready result:
    ``training`` (months, rows), ``version``, ``run_id``, ``gate`` (the decision) and the
    champion before and after."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model import gate, registry, tracking
    from hdb_mlops.model.train import train

    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.perf_counter() - started - sum(phases.values()), 2)

    work = Path(settings.work_dir)
    prepared = prepare(settings.data, work / "data")
    assembled = assemble(
        prepared.transactions(),
        feedback_transactions(load_labelled(settings.prediction_log)),
        window_months=settings.window_months,
        min_window_rows=settings.min_window_rows,
        train_since=settings.train_since,
    )
    info = {**assembled.info, "data": settings.data, "data_hash": prepared.data_hash}
    phase("data")
    client = tracking.get_client()
    champion_before = registry._alias_version(client, settings.registry_name, CHAMPION)
    params = settings.params
    if params is None:
        params = config.profile_settings("quick")["xgb_params"]
    combined = pd.concat([assembled.train, assembled.window], ignore_index=True)
    result = train(
        combined,
        work / "models",
        model=settings.model,
        params=params if settings.model == "xgboost" else None,
        cutoff=info["cutoff"],
        seed=settings.seed,
        data_hash=prepared.data_hash,
        register=False,
    )
    info["fit_seconds"] = round(result.evaluation.fit_seconds, 2)
    phase("train_and_track")
    _fault("after_train")
    version = registry.register(result.run_id, name=settings.registry_name)
    phase("register")
    _fault("after_register")
    decision = gate.promote(
        version,
        assembled.window,
        margin=settings.margin,
        latency_budget_ms=settings.latency_budget_ms,
        name=settings.registry_name,
    )
    phase("gate")
    return {
        "ok": True,
        "training": info,
        "version": version,
        "run_id": result.run_id,
        "bundle": str(result.bundle_dir),
        "gate": decision.to_dict(),
        "champion_before": champion_before,
        "champion_after": registry._alias_version(client, settings.registry_name, CHAMPION),
        "seconds": round(time.perf_counter() - started, 2),
        "phases_s": phases,
    }


# ------------------------------------------------------------------------- the child process


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_job(
    settings: RetrainSettings, job_dir: Path | str, *, on_start: Any = None
) -> dict[str, Any]:
    """Run :func:`retrain` in a child process and wait for it (at most
    ``settings.timeout_s``, then it is killed). Returns its result, or ``{"ok": False,
    "error": ...}`` naming how it failed (its exit status and the end of its log). The
    child's output goes to ``job_dir/retrain.log``. ``on_start(pid)`` is called once it
    runs."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    settings_path, result_path = job_dir / "settings.json", job_dir / "result.json"
    log_path = job_dir / "retrain.log"
    _write_json(settings_path, asdict(settings))
    result_path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "hdb_mlops.monitoring.retrain",
        "--settings", str(settings_path), "--result", str(result_path),
    ]  # fmt: skip
    started = time.monotonic()
    with open(log_path, "ab") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        if on_start is not None:
            on_start(child.pid)
        try:
            status = child.wait(timeout=settings.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            child.kill()
            status = child.wait()
            timed_out = True
    seconds = round(time.monotonic() - started, 2)
    base = {"pid": child.pid, "exit_code": status, "job_seconds": seconds, "log": str(log_path)}
    if result_path.exists():
        return {**json.loads(result_path.read_text()), **base}
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    why = (
        f"killed after the {settings.timeout_s:g} s timeout"
        if timed_out
        else f"exited with status {status} before writing its result"
    )
    return {"ok": False, "error": f"the retraining process {why}: " + " | ".join(tail), **base}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child process: read the settings, retrain, write the result."""
    parser = argparse.ArgumentParser(prog="python -m hdb_mlops.monitoring.retrain")
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = RetrainSettings(**json.loads(args.settings.read_text()))
        result = retrain(settings)
    except Exception as exc:  # the parent records it: one line, the type for the unexpected
        expected = isinstance(exc, RetrainError | ValueError | LookupError | OSError)
        message = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        log.exception("retraining failed")
        _write_json(args.result, {"ok": False, "error": " ".join(message.split())})
        return 1
    _write_json(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
