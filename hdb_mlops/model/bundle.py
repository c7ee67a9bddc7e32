"""The stored model artifact: a directory that is verified before anything in it is unpickled.

Layout of a bundle directory::

    model.joblib             the fitted PriceModel (joblib pickle)
    feature_spec.json        FeatureSpec.to_dict() of the model (human-readable copy)
    reference_profile.json   hdb_mlops.model.profile.reference_profile() of the training data
    metadata.json            model name and class, params, metrics, residual quantiles,
                             data_hash, git, created_at, library versions, model hashes,
                             ``files``: {file name: sha256} of every other file,
                             ``digest``: sha256 of the canonical JSON of the rest of metadata

:func:`load_bundle` checks ``digest`` (so an edited metadata.json is caught), then every
file's sha256 against ``files``, and only then unpickles ``model.joblib``. The sha256 of the
metadata.json bytes is the bundle's identity (:attr:`Bundle.sha256`); the model registry
stores it with each version and checks it again on download.

Reproducibility: the model hash is the sha256 of ``model.joblib``. joblib pickles of the
models in :mod:`hdb_mlops.model.models` are byte-stable (checked across processes and hash seeds
with the pinned numpy/pandas/scikit-learn/XGBoost), so the same data, parameters and seed
give the same ``model_sha256``. A pickle's bytes may still change with a library upgrade;
for XGBoost models metadata.json therefore also records ``booster_sha256``, the sha256 of
the booster's UBJSON model (``Booster.save_raw("ubj")``), which depends only on the trees.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.data.ingest import sha256_file  # one implementation, re-exported here
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.model.models import PriceModel

BUNDLE_FORMAT = 1
MODEL_FILE = "model.joblib"
SPEC_FILE = "feature_spec.json"
PROFILE_FILE = "reference_profile.json"
METADATA_FILE = "metadata.json"
#: Files every bundle has besides metadata.json (all listed in ``metadata["files"]``).
REQUIRED_FILES: tuple[str, ...] = (MODEL_FILE, SPEC_FILE, PROFILE_FILE)
#: Quantiles of log(actual / predicted) stored by default: intervals at 50/80/90/95 %.
DEFAULT_RESIDUAL_QUANTILES: tuple[float, ...] = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    0.9,
    0.95,
    0.975,
)
_LIBRARIES = ("numpy", "pandas", "scikit-learn", "xgboost", "xgboost-cpu", "joblib", "hdb-mlops")


class BundleError(Exception):
    """A directory that is not a valid model bundle."""


class IntegrityError(BundleError):
    """A bundle file whose sha256 is not the recorded one (or that is missing)."""

    def __init__(self, file: str, expected: str | None, actual: str | None, detail: str = ""):
        self.file = file
        self.expected = expected
        self.actual = actual
        if actual is None:
            message = f"{file} is missing from the bundle (expected sha256 {expected})"
        else:
            message = f"{file} has sha256 {actual}, but the bundle records {expected}"
        self.detail = detail
        super().__init__(f"{message}{': ' + detail if detail else ''}")

    def __reduce__(self):  # picklable despite the custom signature
        return (type(self), (self.file, self.expected, self.actual, self.detail))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy/pandas scalars, tuples and paths (NaN/inf become None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a pickled model depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in _LIBRARIES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def residual_quantiles(
    y_true: np.ndarray | pd.Series,
    y_pred: np.ndarray | pd.Series,
    quantiles: tuple[float, ...] = DEFAULT_RESIDUAL_QUANTILES,
) -> dict[str, float]:
    """Quantiles of log(actual / predicted) on validation data, keyed ``"0.05"`` etc.: the
    basis of :meth:`Bundle.predict_with_interval`."""
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    ok = np.isfinite(y_true) & np.isfinite(y_pred) & (y_true > 0) & (y_pred > 0)
    if not ok.any():
        raise ValueError("no finite, positive (actual, predicted) pairs")
    resid = np.log(y_true[ok] / y_pred[ok])
    return {
        f"{q:g}": float(x) for q, x in zip(quantiles, np.quantile(resid, quantiles), strict=True)
    }


def booster_sha256(model: PriceModel) -> str | None:
    """sha256 of an XGBoost model's trees (UBJSON), or None for models without a booster."""
    booster = getattr(model, "booster_", None)
    if booster is None or not hasattr(booster, "get_booster"):
        return None
    return sha256_bytes(bytes(booster.get_booster().save_raw("ubj")))


def save_bundle(
    model: PriceModel,
    out_dir: Path | str,
    *,
    metrics: dict[str, Any],
    residual_quantiles: dict[str, float],
    profile: dict[str, Any],
    data_hash: str | None,
    git: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle directory at ``out_dir`` and return its path.

    The bundle is written to a temporary sibling and moved into place, so a reader never sees
    half a bundle. An existing ``out_dir`` is replaced only when it is empty or a bundle
    (has a metadata.json); anything else raises :class:`FileExistsError`.
    """
    import joblib

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).exists():
        raise FileExistsError(f"{out_dir} exists and is not a model bundle: not overwriting it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        joblib.dump(model, staging / MODEL_FILE)
        _write_json(staging / SPEC_FILE, model.spec.to_dict())
        _write_json(staging / PROFILE_FILE, _jsonable(profile))
        files = {name: sha256_file(staging / name) for name in REQUIRED_FILES}
        metadata: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "model_name": model.name,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "params": _jsonable(model.params()),
            "metrics": _jsonable(metrics),
            "residual_quantiles": _jsonable(residual_quantiles),
            "data_hash": data_hash,
            "git": _jsonable(git) if git is not None else None,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": library_versions(),
            "model_sha256": files[MODEL_FILE],
            "booster_sha256": booster_sha256(model),
            "extra": _jsonable(extra or {}),
            "files": files,
        }
        metadata["digest"] = sha256_bytes(_canonical(metadata))
        _write_json(staging / METADATA_FILE, metadata)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _interval_key(quantiles: dict[str, float], q: float) -> str:
    for key in quantiles:
        if abs(float(key) - q) < 1e-9:
            return key
    levels = sorted(
        {round(1 - 2 * float(k), 6) for k in quantiles if float(k) < 0.5},
        reverse=True,
    )
    raise ValueError(
        f"the bundle has no {q:g} residual quantile: intervals available at levels {levels}"
    )


@dataclass
class Bundle:
    """A verified, loaded model bundle."""

    model: PriceModel
    spec: FeatureSpec
    metadata: dict[str, Any]
    profile: dict[str, Any]
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        """The model's name (``xgboost``, ``linear``, ...)."""
        return str(self.metadata["model_name"])

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        """Predicted prices (SGD) for normalised transactions."""
        return np.asarray(self.model.predict(transactions), dtype="float64")

    def predict_with_interval(self, transactions: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
        """Predictions with a ``level`` prediction interval from the validation residuals:
        ``prediction * exp(q)`` for the ``(1-level)/2`` and ``(1+level)/2`` quantiles ``q`` of
        log(actual/predicted). Columns prediction, lower, upper; index of ``transactions``."""
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1, not {level}")
        quantiles = self.metadata.get("residual_quantiles") or {}
        lo = quantiles[_interval_key(quantiles, (1 - level) / 2)]
        hi = quantiles[_interval_key(quantiles, (1 + level) / 2)]
        pred = self.predict(transactions)
        return pd.DataFrame(
            {"prediction": pred, "lower": pred * np.exp(lo), "upper": pred * np.exp(hi)},
            index=transactions.index,
        )


def read_metadata(path: Path | str) -> dict[str, Any]:
    """metadata.json of a bundle directory, with its ``digest`` checked (nothing unpickled)."""
    meta_path = Path(path) / METADATA_FILE
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a model bundle: it has no {METADATA_FILE}")
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(METADATA_FILE, None, sha256_file(meta_path), "not valid JSON") from exc
    if not isinstance(metadata, dict) or "digest" not in metadata or "files" not in metadata:
        raise IntegrityError(
            METADATA_FILE, None, sha256_file(meta_path), "no digest or files map recorded"
        )
    body = {k: v for k, v in metadata.items() if k != "digest"}
    try:
        actual = sha256_bytes(_canonical(body))
    except ValueError as exc:  # NaN/inf slipped in by hand
        raise IntegrityError(METADATA_FILE, metadata["digest"], None, str(exc)) from exc
    if actual != metadata["digest"]:
        raise IntegrityError(
            METADATA_FILE, metadata["digest"], actual, "its content was changed after saving"
        )
    return metadata


def verify_bundle(path: Path | str, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check a bundle's metadata digest and every file's sha256 (and, when given, that the
    metadata.json bytes hash to ``expected_sha256``). Returns the metadata; raises
    :class:`IntegrityError` naming the first file that does not match."""
    path = Path(path)
    metadata = read_metadata(path)
    if expected_sha256 is not None:
        actual = sha256_file(path / METADATA_FILE)
        if actual != expected_sha256:
            raise IntegrityError(METADATA_FILE, expected_sha256, actual, "not the expected bundle")
    files: dict[str, str] = metadata["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise IntegrityError(name, None, None, "not listed in metadata.json")
    for name, expected in files.items():
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IntegrityError(name, expected, None, "file names must be inside the bundle")
        if not file.is_file():
            raise IntegrityError(name, expected, None)
        actual = sha256_file(file)
        if actual != expected:
            raise IntegrityError(name, expected, actual)
    return metadata


def load_bundle(path: Path | str, expected_sha256: str | None = None) -> Bundle:
    """Verify a bundle directory (see :func:`verify_bundle`) and load it.

    Nothing is unpickled before every file's hash has been checked.
    """
    import joblib

    path = Path(path)
    metadata = verify_bundle(path, expected_sha256)
    spec = FeatureSpec.from_dict(json.loads((path / SPEC_FILE).read_text()))
    profile = json.loads((path / PROFILE_FILE).read_text())
    model = joblib.load(path / MODEL_FILE)
    if not isinstance(model, PriceModel):
        raise BundleError(f"{path / MODEL_FILE} holds a {type(model).__name__}, not a PriceModel")
    if model.spec != spec:
        raise BundleError(f"{path}: {SPEC_FILE} does not match the pickled model's feature spec")
    return Bundle(
        model=model,
        spec=spec,
        metadata=metadata,
        profile=profile,
        path=path,
        sha256=sha256_file(path / METADATA_FILE),
    )
