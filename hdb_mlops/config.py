"""Paths and defaults shared by the package, the CLI and the notebooks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
#: The project checkout (the package is installed editable from it).
PROJECT_DIR = PACKAGE_DIR.parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
NOTEBOOKS_DIR = PROJECT_DIR / "notebooks"
RUNS_DIR = PROJECT_DIR / "runs"
DATA_DIR = PROJECT_DIR / "data"
SAMPLE_DIR = DATA_DIR / "sample"
SAMPLE_FILE = SAMPLE_DIR / "resale-flat-prices-sample.csv"
CALIBRATION_FILE = RESOURCES_DIR / "calibration.json"

#: Environment variable naming a folder with the real data.gov.sg resale files.
REAL_DATA_ENV = "HDB_MLOPS_REAL_DATA"
DEFAULT_SEED = 42
#: Median single-row latency a candidate must keep to pass the promotion gate's sanity check
#: (``hdb-mlops train --promote``, ``hdb-mlops model promote`` and ``registry.promote`` alike).
#: Generous: it catches a model that is broken or far too big, not a slow or busy laptop.
GATE_LATENCY_BUDGET_MS = 250.0


def data_dir() -> Path:
    """Root of the raw/interim/processed layers (``HDB_MLOPS_DATA_DIR`` or ``data/``)."""
    return Path(os.environ.get("HDB_MLOPS_DATA_DIR", DATA_DIR))


def real_data_dir() -> Path | None:
    """The folder with the real resale files, or None when there is none on this machine.

    Looks at ``$HDB_MLOPS_REAL_DATA`` first, then at ``../shared/data/hdb`` beside the checkout.
    """
    env = os.environ.get(REAL_DATA_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_DIR.parent / "shared" / "data" / "hdb")
    for path in candidates:
        if path.is_dir() and any(path.glob("*resale*")):
            return path
    return None


#: Knobs that differ between the quick profile (bundled sample, minutes on a laptop) and the
#: full profile (the real data, as long as it takes). Notebooks read them with
#: ``profile_settings(profile)``; their own parameters override them.
PROFILE_SETTINGS: dict[str, dict] = {
    "quick": {
        "xgb_params": {"n_estimators": 600, "learning_rate": 0.1, "max_depth": 6},
        # no time limit: the number of trials, not the machine's speed, decides the result
        "tuning_trials": 4,
        "tuning_timeout_s": None,
        "retrain_every_months": 6,
        "rolling_months": 6,
        # the sample starts in 2017 anyway
        "model_since": None,
    },
    "full": {
        # the model's defaults (hdb_mlops.model.models.DEFAULT_XGB_PARAMS), with early stopping
        "xgb_params": {"n_estimators": 2000},
        "tuning_trials": 20,
        "tuning_timeout_s": 900,
        "retrain_every_months": 3,
        "rolling_months": 19,
        # models learn from the 2017+ schema (remaining lease as published); the older files
        # are for the data chapter's long view
        "model_since": "2017-01",
    },
}


def profile_settings(profile: str) -> dict:
    """The settings of a pipeline profile (``quick`` or ``full``)."""
    try:
        return PROFILE_SETTINGS[profile]
    except KeyError:
        raise ValueError(
            f"unknown profile {profile!r}: use one of {', '.join(PROFILE_SETTINGS)}"
        ) from None


def git_commit(project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (None outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
