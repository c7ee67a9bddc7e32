"""The model registry: every trained model is a version of ``hdb-resale-price`` in MLflow's
registry (same store as tracking), and a promotion gate decides which version is champion.

* :func:`register` makes a version from a run's MLflow model (the pyfunc model that
  :func:`hdb_mlops.model.tracking.log_training` logs, see :mod:`hdb_mlops.model.pyfunc`), so
  ``mlflow.pyfunc.load_model("models:/hdb-resale-price@champion")`` works like any MLflow
  model. The bundle's identity (sha256 of its metadata.json) is recorded as a version tag.
* :func:`load` downloads a version's bundle (``artifacts/bundle`` inside the model) into a
  local cache and verifies every file's hash (and the identity recorded at registration)
  before unpickling anything.
* :func:`promote` is the gate (in :mod:`hdb_mlops.model.gate`). Candidate and current
  champion are scored on the same recent window of sales. The candidate becomes
  ``champion`` only if it passes the sanity checks (finite, positive predictions; single-row
  latency within budget) and there is no champion yet or it beats the champion's MAPE by at
  least ``margin`` percentage points. A sane candidate that loses becomes ``challenger``;
  one that fails a sanity check gets no alias. The decision is written to the version's tags
  (``gate.*``) and description.

Versions registered before the MLflow models (source: the run's ``bundle/`` folder) still
load and show.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hdb_mlops.model import tracking
from hdb_mlops.model.bundle import (
    METADATA_FILE,
    Bundle,
    BundleError,
    IntegrityError,
    load_bundle,
    read_metadata,
    sha256_file,
    verify_bundle,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    # registry.promote and registry.GateDecision, see __getattr__
    from hdb_mlops.model.gate import GateDecision as GateDecision
    from hdb_mlops.model.gate import promote as promote

log = logging.getLogger(__name__)

DEFAULT_NAME = "hdb-resale-price"
CHAMPION = "champion"
CHALLENGER = "challenger"
#: Hints that end a RegistryError message, per what is missing.
TRAIN_HINT = "run `hdb-mlops train` to train and register one"
LIST_HINT = "`hdb-mlops model list` shows the registered versions"
VERSION_COLUMNS = [
    "version",
    "aliases",
    "model",
    "mape",
    "created",
    "data_hash",
    "run_id",
    "gate",
]


class RegistryError(LookupError):
    """A registered model, version or alias that does not exist. ``problem`` says what is
    missing, ``hint`` what to do about it; the message is both."""

    def __init__(self, problem: str, hint: str = ""):
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}: {hint}" if hint else problem)

    def __reduce__(self):  # picklable despite the custom signature
        return (type(self), (self.problem, self.hint))


def __getattr__(attr: str) -> Any:
    """``registry.promote`` and ``registry.GateDecision`` live in :mod:`hdb_mlops.model.gate`
    (imported on first use: the gate module imports this one)."""
    if attr in ("promote", "GateDecision", "LATENCY_CALLS"):
        from hdb_mlops.model import gate

        return getattr(gate, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# ------------------------------------------------------------------------- helpers


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return (
        code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
        or "not found" in str(exc).lower()
    )


def _version(client: MlflowClient, name: str, ref: str | int) -> ModelVersion:
    """A model version by number (``3``, ``"3"``) or alias (``"champion"``)."""
    from mlflow.exceptions import MlflowException

    by_number = isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit())
    try:
        if by_number:
            return client.get_model_version(name, str(int(ref)))
        return client.get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        cause = exc
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        raise RegistryError(f"there is no registered model {name!r} yet", TRAIN_HINT) from cause
    if by_number:
        raise RegistryError(f"registered model {name!r} has no version {ref}", LIST_HINT) from cause
    raise RegistryError(
        f"registered model {name!r} has no version with alias {ref!r}", TRAIN_HINT
    ) from cause


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(_version(client, name, alias).version)
    except RegistryError:
        return None


def _aliases(client: MlflowClient, name: str) -> dict[int, list[str]]:
    """Version -> its aliases (search results do not carry aliases on every store)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if _is_missing(exc):
            return {}
        raise
    out: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(int(version), []).append(alias)
    return {v: sorted(a) for v, a in out.items()}


def bundle_uri(client: MlflowClient, mv: ModelVersion) -> str:
    """Artifact URI of a version's bundle directory: ``artifacts/bundle`` inside its MLflow
    model (source ``models:/m-...``), or the source itself for a version registered before
    the MLflow models (the run's ``bundle/`` folder)."""
    if not str(mv.source).startswith("models:/"):
        return str(mv.source).rstrip("/")
    storage = client.get_model_version_download_uri(mv.name, str(mv.version))
    return f"{storage.rstrip('/')}/{tracking.MODEL_BUNDLE_PATH}"


def _download(uri: str, dst: Path) -> Path:
    mlflow = tracking._mlflow()
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking.tracking_uri()
        )
    )


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


# ------------------------------------------------------------------------- register / load


def _run_model_id(client: MlflowClient, run_id: str, bundle_artifact_path: str) -> str:
    """Id of run ``run_id``'s MLflow model. A run logged before the MLflow models has only
    a bundle at ``bundle_artifact_path``: it is downloaded, verified and logged as one now."""
    from hdb_mlops.model.pyfunc import log_bundle_model

    run = client.get_run(run_id)
    model_id = run.data.tags.get(tracking.MODEL_ID_TAG)
    if model_id:
        return model_id
    legacy = f"{run.info.artifact_uri.rstrip('/')}/{bundle_artifact_path.strip('/')}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = _download(legacy, Path(tmp))
        except Exception as exc:
            raise RegistryError(
                f"run {run_id} has no MLflow model and no bundle at {bundle_artifact_path!r}",
                "log it with hdb_mlops.model.tracking.log_training",
            ) from exc
        model_id = log_bundle_model(client, run_id, local)  # verifies it first
    client.set_tag(run_id, tracking.MODEL_ID_TAG, model_id)
    client.set_tag(run_id, tracking.MODEL_URI_TAG, f"models:/{model_id}")
    return model_id


def register(
    run_id: str, bundle_artifact_path: str = tracking.BUNDLE_ARTIFACT_PATH, name: str = DEFAULT_NAME
) -> int:
    """Register the MLflow model of run ``run_id`` as a new version of ``name``; returns the
    version number. The version's source is the model (``models:/m-...``), so MLflow loads
    it as ``models:/<name>/<version>`` or ``models:/<name>@<alias>``. The bundle's
    metadata.json is downloaded and checked first, and its sha256 recorded (tag
    ``bundle_sha256``) so that :func:`load` can verify the download. ``bundle_artifact_path``
    is only read for runs logged before the MLflow models (whose bundle is logged as a model
    then)."""
    from mlflow.exceptions import MlflowException

    client = tracking.get_client()
    model_id = _run_model_id(client, run_id, bundle_artifact_path)
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = _download(f"{location}/{tracking.MODEL_BUNDLE_PATH}/{METADATA_FILE}", Path(tmp))
        metadata = read_metadata(meta_path.parent)
        bundle_sha256 = sha256_file(meta_path)
    try:
        client.create_registered_model(
            name, description="HDB resale price models (MLflow pyfunc models of hdb_mlops bundles)."
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    metrics = metadata.get("metrics") or {}
    tags = {
        "model_name": str(metadata.get("model_name")),
        "mape": str(metrics.get("mape")),
        "data_hash": str(metadata.get("data_hash")),
        "bundle_sha256": bundle_sha256,
        "model_sha256": str(metadata.get("model_sha256")),
        "bundle_path": tracking.MODEL_BUNDLE_PATH,
    }
    with tracking.fluent_tracking():  # the store looks the model up with a default client
        version = client.create_model_version(
            name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags=tags,
            description=f"{metadata.get('model_name')} from run {run_id}; gate not run yet.",
            model_id=model_id,
        )
    return int(version.version)


def _cached_bundle(client: MlflowClient, name: str, mv: ModelVersion) -> Bundle:
    expected = (mv.tags or {}).get("bundle_sha256")
    cache = tracking.model_cache_dir() / tracking.sanitise(name)
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / f"v{mv.version}-{(expected or 'unknown')[:16]}"
    if dest.exists():
        try:
            return load_bundle(dest, expected_sha256=expected)
        except BundleError as exc:
            log.warning("cached bundle %s is not intact (%s): downloading it again", dest, exc)
            shutil.rmtree(dest, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        local = _download(bundle_uri(client, mv), staging)
        verify_bundle(local, expected_sha256=expected)  # before it goes anywhere near joblib
        try:
            local.rename(dest)
        except OSError:  # another process cached it meanwhile
            if not dest.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(dest, expected_sha256=expected)


def load(ref: str | int = CHAMPION, name: str = DEFAULT_NAME) -> Bundle:
    """The bundle of version ``ref`` (a number or an alias such as ``champion``), downloaded
    to :func:`hdb_mlops.model.tracking.model_cache_dir` and verified (every file's sha256 and the
    identity recorded at registration) before it is unpickled."""
    client = tracking.get_client()
    return _cached_bundle(client, name, _version(client, name, ref))


def list_versions(name: str = DEFAULT_NAME) -> pd.DataFrame:
    """Every version of ``name``: version, aliases, model, mape, created, data_hash, run_id
    and the gate outcome, newest first. Empty when nothing is registered yet."""
    client = tracking.get_client()
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if _is_missing(exc):
            return pd.DataFrame(columns=VERSION_COLUMNS)
        raise
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(int(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        tags = mv.tags or {}
        rows.append(
            {
                "version": int(mv.version),
                "aliases": ",".join(sorted(by_version.get(int(mv.version), []))),
                "model": tags.get("model_name"),
                "mape": _float(tags.get("mape")),
                "created": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True),
                "data_hash": tags.get("data_hash"),
                "run_id": mv.run_id,
                "gate": tags.get("gate.outcome"),
            }
        )
    frame = pd.DataFrame(rows, columns=VERSION_COLUMNS)
    return frame.sort_values("version", ascending=False).reset_index(drop=True)


def show(ref: str | int = CHAMPION, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """One version: number, aliases, run, source (``models:/m-...``), ``model_uri``
    (``models:/<name>/<version>``, for ``mlflow.pyfunc.load_model``), ``bundle_uri`` (the
    artifact URI of its bundle directory), tags, description and its bundle's metadata.json
    (downloaded alone and checked against the registered identity)."""
    client = tracking.get_client()
    mv = _version(client, name, ref)
    tags = dict(mv.tags or {})
    bundle = bundle_uri(client, mv)
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = _download(f"{bundle}/{METADATA_FILE}", Path(tmp))
        metadata = read_metadata(meta_path.parent)
        actual = sha256_file(meta_path)
    expected = tags.get("bundle_sha256")
    if expected and actual != expected:
        raise IntegrityError(METADATA_FILE, expected, actual, f"version {mv.version}")
    return {
        "name": name,
        "version": int(mv.version),
        "aliases": _aliases(client, name).get(int(mv.version), []),
        "run_id": mv.run_id,
        "source": mv.source,
        "model_uri": f"models:/{name}/{mv.version}",
        "bundle_uri": bundle,
        "created": pd.to_datetime(mv.creation_timestamp, unit="ms", utc=True).isoformat(),
        "description": mv.description,
        "tags": tags,
        "metadata": metadata,
    }
