"""Every model bundle as an MLflow model: a ``python_function`` flavour that wraps the bundle.

A logged model (an MLflow 3 *LoggedModel*, linked to its training run) holds::

    MLmodel                      flavour, signature, input example, model_config
    python_model.pkl             a :class:`BundleModel` (no weights: a reference to this class)
    input_example.json           three request rows (serving_input_example.json likewise)
    requirements.txt, ...        the pinned pip requirements (hdb-mlops and its model libraries)
    artifacts/bundle/            the bundle directory, unchanged (see hdb_mlops.model.bundle)

So ``mlflow.pyfunc.load_model("models:/hdb-resale-price@champion")`` works, and so does
``mlflow models serve -m models:/hdb-resale-price@champion --env-manager local`` in an
environment where this package is installed (it is not on PyPI, so MLflow cannot build the
environment itself). ``load_context`` verifies the bundle exactly as
:func:`~hdb_mlops.model.bundle.load_bundle` does — metadata digest, every file's sha256 and
the bundle identity recorded in ``model_config["bundle_sha256"]`` — before the model is
unpickled; a tampered file makes loading fail with an
:class:`~hdb_mlops.model.bundle.IntegrityError` naming it. (MLflow's own files, MLmodel and
python_model.pkl, are outside the bundle and its hashes: python_model.pkl is a cloudpickle of
an empty :class:`BundleModel`, i.e. a reference to this class, which MLflow unpickles first.)

``predict`` takes a DataFrame of request rows with the official column names
(:data:`REQUEST_COLUMNS`, as ``POST /predict`` and the data.gov.sg files spell them) and
returns the predicted prices in SGD, one float per row. Rows are parsed by the loader's own
parsers (:func:`~hdb_mlops.model.features.transactions_from_records`), like the service's
reference engine.

Logging is fast: the pip requirements are given explicitly (MLflow infers nothing and
downloads nothing) and the signature is written from the request columns, not inferred.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hdb_mlops.data.schema import OFFICIAL_2017_COLUMNS
from hdb_mlops.model import tracking
from hdb_mlops.model.bundle import (
    METADATA_FILE,
    SPEC_FILE,
    Bundle,
    library_versions,
    load_bundle,
    sha256_file,
    verify_bundle,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature

tracking._mlflow()  # offline (telemetry off) before mlflow.pyfunc is imported
import mlflow.pyfunc  # noqa: E402

#: Name of the logged model (and its folder in a run's model outputs).
MODEL_NAME = "model"
#: Where the bundle sits inside a logged model: MLflow puts pyfunc artifacts in
#: ``artifacts/<folder name>``, and the folder is named after the artifact's key.
BUNDLE_SUBPATH = tracking.MODEL_BUNDLE_PATH
#: Key of the bundle directory in the pyfunc ``artifacts`` (``bundle``).
BUNDLE_ARTIFACT = BUNDLE_SUBPATH.removeprefix("artifacts/")
#: Columns of a request row, in the official (2017-onwards) order, without the price
#: (the same tuple as :data:`hdb_mlops.serving.request_schema.REQUEST_COLUMNS`).
REQUEST_COLUMNS: tuple[str, ...] = tuple(c for c in OFFICIAL_2017_COLUMNS if c != "resale_price")
#: Optional request columns (location features only / derived from the lease start).
OPTIONAL_COLUMNS: frozenset[str] = frozenset({"block", "street_name", "remaining_lease"})
#: MLflow column types; every other request column is a string.
_NUMERIC_TYPES = {"floor_area_sqm": "double", "lease_commence_date": "long"}
#: Parsed columns a row cannot be priced without.
_REQUIRED_PARSED = {
    "month": "month",
    "storey_range": "storey_mid",
    "floor_area_sqm": "floor_area_sqm",
    "lease_commence_date": "lease_commence_date",
}
#: pip distributions recorded as requirements, with the versions installed at logging time.
_REQUIREMENT_DISTS = ("hdb-mlops", "numpy", "pandas", "scikit-learn", "xgboost", "xgboost-cpu")


class BundleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: the verified bundle of ``artifacts["bundle"]``, predicting prices
    for request rows."""

    def __init__(self) -> None:
        self.bundle: Bundle | None = None

    def load_context(self, context: Any) -> None:
        """Verify and load the bundle (every file's sha256, and the bundle identity recorded
        when the model was logged) before unpickling it."""
        expected = (context.model_config or {}).get("bundle_sha256")
        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT], expected_sha256=expected)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Prices (SGD, float64 array, one per row) for a DataFrame of request rows."""
        if self.bundle is None:
            raise RuntimeError("no bundle loaded: load the model with mlflow.pyfunc.load_model")
        return self.bundle.predict(request_transactions(model_input))


def _lease_text(value: Any) -> str:
    """remaining_lease as the files write it: a number is months (as in ``POST /predict``)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        months = int(value)
        return f"{months // 12} years {months % 12:02d} months"
    return str(value)


def request_transactions(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    """Normalised transactions from request rows (a DataFrame or records with the official
    column names), parsed like the published files. ``remaining_lease`` is a string as the
    files write it (``"61 years 04 months"``) or a number of months. Raises
    :class:`ValueError` naming the rows and columns that cannot be priced."""
    from hdb_mlops.model.features import transactions_from_records

    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    unknown = sorted(set(frame.columns) - set(REQUEST_COLUMNS))
    missing = [c for c in REQUEST_COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if unknown or missing:
        problems = [f"missing columns {missing}"] * bool(missing)
        problems += [f"unexpected columns {unknown}"] * bool(unknown)
        raise ValueError(
            f"request rows: {'; '.join(problems)} (the columns are {list(REQUEST_COLUMNS)})"
        )
    records = frame.to_dict("records")
    for record in records:
        record["remaining_lease"] = _lease_text(record.get("remaining_lease"))
        record["resale_price"] = ""  # parsed like every official column; not used
    tx = transactions_from_records(records)
    tx.index = frame.index
    bad = {
        column: tx.index[tx[parsed].isna()].tolist()
        for column, parsed in _REQUIRED_PARSED.items()
        if tx[parsed].isna().any()
    }
    if bad:
        detail = "; ".join(f"{col} in rows {rows[:5]}" for col, rows in bad.items())
        raise ValueError(f"request rows that cannot be priced: invalid {detail}")
    return tx


def model_signature() -> ModelSignature:
    """Input: the request columns, strings but floor_area_sqm (double), lease_commence_date
    (long) and remaining_lease (any: a string as the files write it, or a number of months);
    block, street_name and remaining_lease are optional. Output: one float64 price per row."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    def column_type(column: str) -> Any:
        if column == "remaining_lease":  # "61 years 04 months" or months, as POST /predict
            return AnyType()
        return _NUMERIC_TYPES.get(column, "string")

    inputs = Schema(
        [ColSpec(column_type(c), c, required=c not in OPTIONAL_COLUMNS) for c in REQUEST_COLUMNS]
    )
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,), "resale_price")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(spec_categories: dict[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """Three request rows (the examples of :mod:`hdb_mlops.data.examples`) with the
    signature's types; rows whose town, flat type or flat model the model does not know are
    left out when ``spec_categories`` is given (the first row always stays)."""
    from hdb_mlops.data.examples import BROKEN_EXAMPLE_ROWS, EXAMPLE_REQUEST

    rows = [dict(EXAMPLE_REQUEST)]
    for line in BROKEN_EXAMPLE_ROWS[:2]:  # the first rows are valid ones
        values = dict(zip(OFFICIAL_2017_COLUMNS, line.split(","), strict=True))
        rows.append({c: values[c] for c in REQUEST_COLUMNS})
    if spec_categories:
        known = [
            r
            for r in rows[1:]
            if all(str(r[c]).upper() in cats for c, cats in spec_categories.items() if c in r)
        ]
        rows = rows[:1] + known
    frame = pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))
    frame["floor_area_sqm"] = frame["floor_area_sqm"].astype("float64")
    frame["lease_commence_date"] = frame["lease_commence_date"].astype("int64")
    return frame


def pip_requirements() -> list[str]:
    """This package and the libraries a pickled model needs, pinned to the installed
    versions (explicit, so MLflow neither inspects the model nor downloads anything)."""
    versions = library_versions()
    pins = [f"{dist}=={versions[dist]}" for dist in _REQUIREMENT_DISTS if dist in versions]
    return [*pins, f"mlflow=={mlflow.__version__}"]


class _DropMessages(logging.Filter):
    """Drops MLflow log records that start with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_log_model():
    """Silence what ``log_model`` says on every call about choices made on purpose here: the
    cloudpickle advice (python_model.pkl holds a reference to :class:`BundleModel`, no
    weights; the weights are the hash-checked bundle) and the input-example validation note;
    and pandas 3's deprecation warning about MLflow's own input-example code."""
    logger = logging.getLogger("mlflow.pyfunc")
    drop = _DropMessages("Passing a Python object as `python_model`", "Validating input example")
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Operation with range is deprecated", module="mlflow"
            )
            yield
    finally:
        logger.removeFilter(drop)


def log_bundle_model(
    client: MlflowClient,
    run_id: str,
    bundle_dir: Path | str,
    *,
    metrics: dict[str, float] | None = None,
) -> str:
    """Log the bundle directory as the MLflow pyfunc model of run ``run_id`` (an MLflow 3
    LoggedModel named ``model`` in the run's experiment, listed in the run's outputs, with
    the run's parameters and ``metrics``) and return its id (``m-...``).

    The bundle is copied unchanged to ``artifacts/bundle`` inside the model, verified (raises
    :class:`~hdb_mlops.model.bundle.IntegrityError`), and its identity (sha256 of
    metadata.json) goes to ``model_config``, which loading checks. MLflow infers
    nothing: requirements, signature and input example are given. The input example is
    predicted once while logging (MLflow's serving-input check).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    run = client.get_run(run_id)
    with (
        tempfile.TemporaryDirectory() as tmp,
        tracking.fluent_tracking(),
        _quiet_log_model(),
    ):
        staged = Path(tmp) / BUNDLE_ARTIFACT  # MLflow names the folder after its source
        shutil.copytree(bundle_dir, staged)
        metadata = verify_bundle(staged)  # the copy that is logged is the one checked
        bundle_sha256 = sha256_file(staged / METADATA_FILE)
        categories = json.loads((staged / SPEC_FILE).read_text()).get("categorical")
        logged = client.create_logged_model(
            run.info.experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            tags={"bundle_sha256": bundle_sha256, "model_name": str(metadata.get("model_name"))},
            params=dict(run.data.params),
            model_type="hdb-resale-price",
        )
        try:
            mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=BundleModel(),
                artifacts={BUNDLE_ARTIFACT: str(staged)},
                signature=model_signature(),
                input_example=input_example(categories),
                pip_requirements=pip_requirements(),
                model_config={"bundle_sha256": bundle_sha256},
                metadata={
                    "bundle_sha256": bundle_sha256,
                    "model_name": metadata.get("model_name"),
                    "model_sha256": metadata.get("model_sha256"),
                    "data_hash": metadata.get("data_hash"),
                },
                model_id=logged.model_id,
            )
        except BaseException:
            with contextlib.suppress(Exception):  # log_model marks it FAILED itself when it can
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if metrics:  # the run's metrics, linked to the model too (as MLflow's own log_model does)
        stamp = int(run.info.start_time)
        linked = [
            Metric(k, v, stamp, 0, run_id=run_id, model_id=logged.model_id)
            for k, v in metrics.items()
        ]
        client.log_batch(run_id, metrics=linked)
    return logged.model_id
