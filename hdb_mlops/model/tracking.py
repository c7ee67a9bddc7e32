"""Experiment tracking with MLflow, on a local sqlite store unless told otherwise.

* Store: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project>/mlruns/mlflow.db``.
* Artifacts: ``$HDB_MLOPS_MLFLOW_ARTIFACTS`` when set, else an ``artifacts`` folder beside a
  sqlite store (``<project>/mlruns/artifacts`` by default); a server store decides itself.
* Offline: this module switches off MLflow's usage telemetry (``MLFLOW_DISABLE_TELEMETRY``
  and ``DO_NOT_TRACK``), async logging and system-metrics sampling before mlflow is
  imported, so nothing calls out and no background thread needs the network.
* Models: :func:`log_training` logs each bundle as an MLflow pyfunc model (an MLflow 3
  LoggedModel of the run, see :mod:`hdb_mlops.model.pyfunc`), which the registry registers.

mlflow is imported inside functions only: ``import hdb_mlops`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdb_mlops import config

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from hdb_mlops.model.evaluate import Evaluation
    from hdb_mlops.model.models import PriceModel

DEFAULT_EXPERIMENT = "hdb-resale-price"
MLRUNS_DIR = config.PROJECT_DIR / "mlruns"
ARTIFACTS_ENV = "HDB_MLOPS_MLFLOW_ARTIFACTS"
CACHE_ENV = "HDB_MLOPS_MODEL_CACHE"
#: Where runs logged before the pyfunc models kept their bundle (inside the run's artifacts);
#: a bundle is now logged inside its MLflow model (see :mod:`hdb_mlops.model.pyfunc`).
BUNDLE_ARTIFACT_PATH = "bundle"
#: Run tags naming the run's MLflow model: its id (``m-...``) and URI (``models:/m-...``).
MODEL_ID_TAG = "model_id"
MODEL_URI_TAG = "model_uri"
#: Where the bundle directory sits inside a logged MLflow model (pyfunc artifact "bundle").
MODEL_BUNDLE_PATH = "artifacts/bundle"

#: Environment that keeps MLflow offline and in the foreground. Forced, not defaulted:
#: telemetry and async logging stay off even when the shell says otherwise.
OFFLINE_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow >= 3.2 usage telemetry
    "DO_NOT_TRACK": "true",  # the cross-tool opt-out MLflow also honours
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
}
#: Defaulted, so a user can turn them back on: no progress bars, and MLflow's own INFO lines
#: ("Creating initial MLflow database tables...") stay out of notebooks, where they land in
#: stderr boxes that read like warnings.
_QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def offline_env() -> None:
    """Set the environment that keeps MLflow offline (see :data:`OFFLINE_ENV`)."""
    os.environ.update(OFFLINE_ENV)
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


offline_env()  # before anything can import mlflow through this package


def _mlflow():
    """Import mlflow offline. If it was imported elsewhere first and started a telemetry
    client, stop that client and drop it (the telemetry switch is read at import)."""
    offline_env()
    import mlflow
    from mlflow.telemetry import get_telemetry_client, set_telemetry_client

    telemetry = get_telemetry_client()
    if telemetry is not None:
        with contextlib.suppress(Exception):  # a private API, hence the guard
            telemetry._clean_up()  # stops its threads
        set_telemetry_client()  # telemetry is disabled now, so this sets None
    return mlflow


@contextlib.contextmanager
def fluent_tracking(uri: str | None = None) -> Iterator[str]:
    """MLflow's process-wide tracking URI set to ``uri`` (default :func:`tracking_uri`) for
    the block, for the MLflow calls that take no URI: ``mlflow.pyfunc.log_model`` and the
    ``MlflowClient()`` the registry store makes to look up a logged model. The previous
    setting, the ``MLFLOW_TRACKING_URI`` environment variable included, comes back after."""
    mlflow = _mlflow()
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = uri or tracking_uri()
    if mlflow.get_tracking_uri() == uri:
        yield uri
        return
    saved = getattr(tracking_utils, "_tracking_uri", None)  # set by mlflow.set_tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved)  # sets (or, for None, unsets) the variable too
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's sqlite store (folder created)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    MLRUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{MLRUNS_DIR / 'mlflow.db'}"


def use_store(folder: Path | str, *, fresh: bool = False) -> str:
    """Point tracking and the registry at a sqlite store in ``folder`` for this process
    (artifacts and the model cache beside it) and return its URI.

    ``fresh=True`` empties the folder first: the notebooks use it for a sandbox registry
    whose story is the same on every run. Only a folder that holds an MLflow store (or
    nothing) is emptied.
    """
    import shutil

    folder = Path(folder).expanduser().resolve()
    if fresh and folder.exists():
        known = {"mlflow.db", "artifacts", "model-cache"}
        unknown = [p.name for p in folder.iterdir() if p.name not in known]
        if unknown:
            raise FileExistsError(
                f"{folder} holds files that are not an MLflow store ({', '.join(unknown[:3])}): "
                "not emptying it"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop(ARTIFACTS_ENV, None)
    os.environ.pop(CACHE_ENV, None)
    return uri


def _sqlite_dir(uri: str) -> Path | None:
    """Folder of a sqlite store's database file, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(db).expanduser().resolve().parent


def artifact_root() -> str | None:
    """Root URI for new experiments' artifacts: ``$HDB_MLOPS_MLFLOW_ARTIFACTS``, else an
    ``artifacts`` folder beside a sqlite store, else None (the server's default)."""
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return env if "://" in env else Path(env).expanduser().resolve().as_uri()
    folder = _sqlite_dir(tracking_uri())
    return (folder / "artifacts").as_uri() if folder is not None else None


def model_cache_dir() -> Path:
    """Local folder for bundles downloaded from the registry: ``$HDB_MLOPS_MODEL_CACHE``,
    else ``model-cache`` beside a sqlite store, else ``<project>/mlruns/model-cache``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        folder = _sqlite_dir(tracking_uri())
        path = (folder if folder is not None else MLRUNS_DIR) / "model-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_client() -> MlflowClient:
    """An MlflowClient on :func:`tracking_uri` for both tracking and the model registry."""
    mlflow = _mlflow()
    uri = tracking_uri()
    folder = _sqlite_dir(uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str = DEFAULT_EXPERIMENT, client: MlflowClient | None = None) -> str:
    """Id of experiment ``name``, created (with artifacts under :func:`artifact_root`) if new."""
    from mlflow.exceptions import MlflowException

    client = client or get_client()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    root = artifact_root()
    location = f"{root.rstrip('/')}/{sanitise(name)}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def sanitise(text: str) -> str:
    """A metric/artifact-safe name: runs of anything but letters, digits, ``_``, ``-`` and
    ``.`` become ``_`` (``KALLANG/WHAMPOA`` -> ``KALLANG_WHAMPOA``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "_"


def _param_value(value: Any) -> str:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def log_training(
    model: PriceModel,
    evaluation: Evaluation,
    bundle_dir: Path | str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    params: Mapping[str, Any] | None = None,
    data_hash: str | None = None,
    git: Mapping[str, Any] | None = None,
    figures: Mapping[str, Figure] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Record one training run in MLflow and return its run id.

    Logs ``model.params()`` and ``params`` as parameters; ``evaluation.overall`` and
    ``mape_town_<TOWN>`` as metrics; ``feature_spec.json``, ``reference_profile.json``, the
    per-town and per-month metric tables (``evaluation/``) and ``figures``
    (``figures/<name>.png``) as artifacts; and tags ``data_hash``, ``git_commit``,
    ``git_dirty``, ``protocol``, ``model_name``, ``bundle_sha256``. The bundle itself is
    logged as the run's MLflow model (:func:`hdb_mlops.model.pyfunc.log_bundle_model`: a
    pyfunc model with the bundle under ``artifacts/bundle/``), whose id and URI are the run
    tags ``model_id`` and ``model_uri``. The bundle is verified before it is logged.
    ``data_hash`` and ``git`` default to the bundle's own.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NAME

    from hdb_mlops.model.bundle import PROFILE_FILE, SPEC_FILE, verify_bundle
    from hdb_mlops.model.bundle import sha256_file as _sha256
    from hdb_mlops.model.pyfunc import log_bundle_model

    bundle_dir = Path(bundle_dir)
    metadata = verify_bundle(bundle_dir)
    bundle_sha256 = _sha256(bundle_dir / "metadata.json")
    data_hash = data_hash if data_hash is not None else metadata.get("data_hash")
    git = dict(git) if git is not None else dict(metadata.get("git") or {})

    all_params = {**model.params(), **(params or {}), "model": model.name}
    metric_values: dict[str, float] = {}
    for key, value in evaluation.overall.items():
        if (v := _finite(value)) is not None:
            metric_values[sanitise(key)] = v
    by_town = None
    if "town" in evaluation.predictions.columns and len(evaluation.predictions):
        by_town = evaluation.by("town")
        for town, mape in by_town["mape"].items():
            if (v := _finite(mape)) is not None:
                metric_values[f"mape_town_{sanitise(town)}"] = v

    run_tags: dict[str, str] = {
        "protocol": evaluation.protocol,
        "model_name": model.name,
        "bundle_sha256": bundle_sha256,
        "model_sha256": str(metadata.get("model_sha256")),
        "data_hash": str(data_hash),
        "git_commit": str(git.get("commit")),
        "git_dirty": str(git.get("dirty")),
    }
    if git.get("commit"):
        run_tags[MLFLOW_GIT_COMMIT] = str(git["commit"])
    run_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    run_tags.setdefault(MLFLOW_RUN_NAME, f"{model.name}-{evaluation.protocol}")

    client = get_client()
    experiment_id = ensure_experiment(experiment, client)
    run = client.create_run(experiment_id, run_name=run_tags[MLFLOW_RUN_NAME])
    run_id = run.info.run_id
    try:
        timestamp = int(run.info.start_time)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, timestamp, 0) for k, v in metric_values.items()],
            params=[Param(str(k), _param_value(v)) for k, v in all_params.items()],
            tags=[RunTag(k, v) for k, v in run_tags.items()],
        )
        client.log_artifact(run_id, str(bundle_dir / SPEC_FILE))
        client.log_artifact(run_id, str(bundle_dir / PROFILE_FILE))
        model_id = log_bundle_model(client, run_id, bundle_dir, metrics=metric_values)
        client.set_tag(run_id, MODEL_ID_TAG, model_id)
        client.set_tag(run_id, MODEL_URI_TAG, f"models:/{model_id}")
        with tempfile.TemporaryDirectory() as tmp:
            tables = Path(tmp)
            if by_town is not None:
                by_town.rename_axis("town").to_csv(tables / "metrics_by_town.csv")
            if len(evaluation.per_month):
                per_month = evaluation.per_month.rename_axis("month")
                per_month.to_csv(tables / "metrics_by_month.csv")
            if any(tables.iterdir()):
                client.log_artifacts(run_id, tmp, "evaluation")
        for name, figure in (figures or {}).items():
            client.log_figure(run_id, figure, f"figures/{sanitise(name)}.png")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
