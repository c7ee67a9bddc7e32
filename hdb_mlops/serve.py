"""The prediction service (chapter 3, "deploying your first model"): FastAPI + uvicorn.

Routes
------
=======================  ======================================================================
``POST /predict``        one flat (a JSON object, :class:`~hdb_mlops.api_schema.RecordBase`
                         fields) -> one :class:`~hdb_mlops.api_schema.Prediction`
``POST /predict/batch``  ``{"records": [...]}`` (1..max_batch rows) -> ``{"count",
                         "predictions"}``, in the order of the records
``GET /health``          liveness: 200 while the process serves requests (no model check)
``GET /ready``           readiness: 200 ``{"ready": true, ...}`` once the model is loaded,
                         else 503
``GET /model``           the served model: name, version, sha256, metrics, residual quantiles
``GET /metrics``         Prometheus exposition (one registry per app)
``GET /ping``            SageMaker health check: 200 when the model is loaded, else 503
``POST /invocations``    SageMaker inference: JSON (a row, ``{"records": [...]}``,
                         ``{"instances": [...]}`` or a bare list of rows) or ``text/csv``
=======================  ======================================================================

Single rows and batches are two endpoints (not one polymorphic body) so that each has a plain
OpenAPI schema and validation errors name the field without union noise. A prediction is::

    {"prediction_id": "<uuid4>", "price": 512345.6,
     "interval": {"level": 0.9, "lower": 468000.1, "upper": 561000.2},
     "model": {"name": "xgboost", "version": "3", "sha256": "<12 hex digits>"}}

``interval`` is ``price * exp(q)`` for the (1-level)/2 and (1+level)/2 quantiles of the
validation residuals log(actual/predicted) stored in the bundle, exactly as
:meth:`hdb_mlops.bundle.Bundle.predict_with_interval`. ``version`` is the registry version,
or null for a bundle served from a directory.

Errors are always JSON, ``{"error": "<kind>", "detail": [{"field", "reason"}], "request_id"}``:
400 malformed JSON/CSV, 404/405 unknown route or method, 406 unsupported ``Accept``,
413 batch over ``max_batch`` rows (the reason names the limit) or body over ``max_body_bytes``,
415 wrong ``Content-Type``, 422 invalid fields (e.g. ``records.0.town``), 503 model not loaded,
500 only for a bug (logged with its traceback; never for bad input).

CSV on ``/invocations``
-----------------------
Rows in the official column order of the data.gov.sg files. **With or without a header**:
a first row naming ``month`` and ``town`` is a header, and then columns are matched by name
(any order; ``resale_price`` is ignored, so an official file can be sent as it is). Without a
header a row has 9 fields (the pre-2015 order: month .. lease_commence_date), 10 (the 2017+
order without the price: ... remaining_lease) or 11 (the 2017+ order with resale_price, which
is ignored). Blank optional fields are missing values. The response is JSON
(``{"count", "predictions"}``) unless ``Accept: text/csv`` asks for one ``price,lower,upper``
line per row, without a header (what SageMaker batch transform joins back to its input).

Choosing the model
------------------
``create_app(model_ref)`` takes a bundle directory, a registry version number (``3``) or a
registry alias (``champion``); ``None`` means ``$HDB_MLOPS_MODEL``, else ``champion``. At app
creation the reference is resolved and only the feature spec is read (its sha256 checked
against the bundle's metadata, nothing unpickled) to build the request models, whose enums are
the model's categories. The model itself is loaded **once, in the lifespan**, with every file's
sha256 verified by :func:`hdb_mlops.bundle.load_bundle` (a registry version is pinned at
creation, so a promotion in between cannot swap it). If loading fails the process **does not
start**: uvicorn exits with status 3 after logging the reason, which names the file
(``model.joblib has sha256 ..., but the bundle records ...``). ``/ready`` is therefore true
whenever the server accepts connections; it is false only for an app used without its
lifespan. The loaded model lives on ``app.state.model`` and endpoints reach it through the
:func:`get_model` dependency (no module globals, so tests can run several apps side by side).

Fast path
---------
The generic path, :func:`hdb_mlops.features.transactions_from_records` then
``model.predict``, builds and parses pandas frames for every request. Measured on this
project's 2-core machine (busy with other jobs) for one row and a 50-tree XGBoost model:
about 70 ms median through ``transactions_from_records``, 24 ms with the transactions frame
built directly, and 0.26 ms with the ``xgboost`` engine below (0.45 ms through the public
``inplace_predict`` wrapper). The pandas paths alone would break the 10 ms p99 target, so
the service builds the model's input directly from the validated rows (pydantic has already
checked every format):

* ``xgboost`` engine (an :class:`~hdb_mlops.models.XGBoostModel`): the feature matrix is made
  with plain Python/numpy (the same arithmetic as ``parse_fields`` + ``build_features``;
  categories as the codes of the model's own spec; location features from a lookup table
  precomputed from the model's geocodes; the model's address encoding, when it has one, from
  dictionaries of the encoder's tables, see :class:`AddressEncoding`), scored by the booster
  (:class:`BoosterCall`), and the market index is added back from a precomputed array.
* ``frame`` engine (any other model): the normalised transactions frame is built directly
  from the rows and passed to ``model.predict``.
* ``loader`` engine (``fast_path=False`` or ``$HDB_MLOPS_FAST_PATH=0``): the generic path,
  kept as the reference and as a kill switch.

At start-up the chosen engine is compared with the ``loader`` engine on probe rows; if any
prediction differs (relative 1e-9) the service logs a warning and falls back to the next
engine. tests/test_serve.py checks the fast path against ``transactions_from_records`` on a
few hundred sample rows (identical floats), tests/test_serve_schemathesis.py on rows
generated from the OpenAPI schema.

``POST /predict`` is an ``async def`` that scores on the event loop: for a sub-millisecond
model the thread-pool hop of a plain ``def`` costs more than the work (in-process, 0.7 ms per
request against 1.3-1.5 ms as ``def``). ``/predict/batch`` is a plain ``def`` (thread pool),
and ``/invocations`` moves batches of more than ``INLINE_ROWS`` rows to the thread pool.
Responses are serialised by pydantic-core (FastAPI's response-model path, or ``to_json``);
``ORJSONResponse`` is deprecated in this FastAPI and orjson is not installed.

Running it
----------
:func:`serve` (what ``hdb-mlops serve`` calls) runs uvicorn with JSON logs, one log line per
request carrying the request id (``X-Request-ID`` is echoed, or a fresh one is issued) and a
graceful shutdown timeout. With ``workers > 1`` uvicorn starts each worker from the import
string factory ``hdb_mlops.serve:app_from_env`` (model from ``$HDB_MLOPS_MODEL``); Prometheus
metrics are then per worker (prefer one worker per container and scale containers).
:func:`serve_in_thread` runs an app in a background thread (notebooks, tests).
"""

import contextlib
import csv
import io
import json
import logging
import logging.config
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from hdb_mlops.api_schema import (
    REQUEST_COLUMNS,
    BatchPredictions,
    ErrorResponse,
    Prediction,
    RecordBase,
    Schemas,
    build_schemas,
)
from hdb_mlops.bundle import (
    METADATA_FILE,
    SPEC_FILE,
    Bundle,
    IntegrityError,
    load_bundle,
    read_metadata,
    sha256_bytes,
    sha256_file,
)
from hdb_mlops.features import EPOCH, LOCATION_FEATURES, FeatureSpec
from hdb_mlops.schema import BASE_COLUMNS, FLAT_TYPE_ALIASES, LEASE_YEARS, OFFICIAL_2017_COLUMNS

log = logging.getLogger(__name__)

MODEL_ENV = "HDB_MLOPS_MODEL"
MODEL_NAME_ENV = "HDB_MLOPS_MODEL_NAME"
MAX_BATCH_ENV = "HDB_MLOPS_MAX_BATCH"
#: "0" serves through the generic loader path (a kill switch for the fast path).
FAST_PATH_ENV = "HDB_MLOPS_FAST_PATH"
DEFAULT_ALIAS = "champion"
DEFAULT_MAX_BATCH = 1000
DEFAULT_LEVEL = 0.9
#: SageMaker's real-time payload limit.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
#: Rows scored on the event loop; larger batches go to the thread pool.
INLINE_ROWS = 16
GRACEFUL_SHUTDOWN_S = 20
WORKER_HEALTHCHECK_S = 120
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: Sale months are counted from this year in the loader's lease arithmetic.
_EPOCH_YEAR = EPOCH.year
_MAX_LEASE_MONTHS = LEASE_YEARS * 12
_CSV_PRICE = "resale_price"
_CSV_LAYOUTS: dict[int, tuple[str, ...]] = {
    9: tuple(c for c in BASE_COLUMNS if c != _CSV_PRICE),
    10: REQUEST_COLUMNS,
    11: OFFICIAL_2017_COLUMNS,
}
_CSV_OPTIONAL = frozenset({"block", "street_name", "remaining_lease"})
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


class ModelLoadError(RuntimeError):
    """The model could not be resolved, verified or loaded: the service must not start."""


class PredictionError(RuntimeError):
    """The model returned something that is not a positive, finite price."""


# --------------------------------------------------------------------------- model source


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: where the bundle comes from and its feature spec.

    ``kind`` is ``"path"`` (a bundle directory) or ``"registry"`` (a registered version,
    pinned to its number at resolution). ``expected_sha256`` is the bundle identity (sha256
    of metadata.json) seen at resolution; loading checks it again.
    """

    kind: str
    ref: str
    spec: FeatureSpec
    expected_sha256: str
    path: Path | None = None
    registry_name: str | None = None
    version: int | None = None

    def describe(self) -> str:
        """Human-readable origin, for messages."""
        if self.kind == "path":
            return f"bundle directory {self.path}"
        return f"registry model {self.registry_name!r} version {self.version} (ref {self.ref!r})"


def _spec_from_metadata(spec_bytes: bytes, metadata: dict[str, Any], where: str) -> FeatureSpec:
    expected = (metadata.get("files") or {}).get(SPEC_FILE)
    actual = sha256_bytes(spec_bytes)
    if expected != actual:
        raise IntegrityError(SPEC_FILE, expected, actual, where)
    return FeatureSpec.from_dict(json.loads(spec_bytes))


def _looks_like_path(ref: str) -> bool:
    return Path(ref).expanduser().is_dir() or not _ALIAS_RE.match(ref)


def resolve_model_ref(
    model_ref: str | Path | int | None = None, *, registry_name: str | None = None
) -> ModelSource:
    """Resolve a model reference without unpickling anything.

    ``model_ref`` is a bundle directory (a :class:`~pathlib.Path`, an existing directory or
    any string that is not a plain name), a registry version number (``3`` or ``"3"``) or a
    registry alias (``"champion"``); ``None`` means ``$HDB_MLOPS_MODEL``, else ``champion``.
    The bundle's metadata digest and feature spec hash are checked. Raises
    :class:`ModelLoadError` with the reason.
    """
    if model_ref is None or (isinstance(model_ref, str) and not model_ref.strip()):
        model_ref = os.environ.get(MODEL_ENV, "").strip() or DEFAULT_ALIAS
    registry_name = registry_name or os.environ.get(MODEL_NAME_ENV) or None
    try:
        if isinstance(model_ref, Path) or (
            isinstance(model_ref, str) and not model_ref.isdigit() and _looks_like_path(model_ref)
        ):
            return _resolve_path(Path(model_ref).expanduser())
        return _resolve_registry(model_ref, registry_name)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot resolve model {str(model_ref)!r}: {exc}") from exc


def _resolve_path(path: Path) -> ModelSource:
    path = path.resolve()
    if not path.is_dir():
        raise ModelLoadError(f"no bundle directory at {path}")
    metadata = read_metadata(path)
    spec_file = path / SPEC_FILE
    if not spec_file.is_file():
        raise IntegrityError(SPEC_FILE, (metadata.get("files") or {}).get(SPEC_FILE), None)
    spec = _spec_from_metadata(spec_file.read_bytes(), metadata, str(path))
    return ModelSource(
        kind="path",
        ref=str(path),
        spec=spec,
        expected_sha256=sha256_file(path / METADATA_FILE),
        path=path,
    )


def _resolve_registry(ref: str | int, registry_name: str | None) -> ModelSource:
    import tempfile

    from hdb_mlops import registry, tracking

    name = registry_name or registry.DEFAULT_NAME
    shown = registry.show(ref, name=name)  # metadata.json downloaded and checked
    version = int(shown["version"])
    expected = (shown.get("tags") or {}).get("bundle_sha256")
    if not expected:
        raise ModelLoadError(f"registry model {name!r} version {version} has no bundle_sha256 tag")
    import mlflow  # imported (offline) by registry.show

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{shown['source'].rstrip('/')}/{SPEC_FILE}",
            dst_path=tmp,
            tracking_uri=tracking.tracking_uri(),
        )
        spec_bytes = Path(local).read_bytes()
    where = f"registry model {name!r} version {version}"
    spec = _spec_from_metadata(spec_bytes, shown["metadata"], where)
    return ModelSource(
        kind="registry",
        ref=str(ref),
        spec=spec,
        expected_sha256=expected,
        registry_name=name,
        version=version,
    )


def load_model(source: ModelSource) -> Bundle:
    """Load and verify the bundle of a resolved source (every file's sha256, then unpickle).

    The bundle must still be the one seen at resolution and its feature spec the one the
    request models were built from. Raises :class:`ModelLoadError` naming the problem.
    """
    try:
        if source.kind == "path":
            assert source.path is not None
            bundle = load_bundle(source.path, expected_sha256=source.expected_sha256)
        else:
            from hdb_mlops import registry

            bundle = registry.load(source.version, name=source.registry_name)
            if bundle.sha256 != source.expected_sha256:
                raise IntegrityError(
                    METADATA_FILE,
                    source.expected_sha256,
                    bundle.sha256,
                    "not the registered bundle",
                )
    except Exception as exc:
        raise ModelLoadError(f"cannot load {source.describe()}: {exc}") from exc
    if bundle.spec != source.spec:
        raise ModelLoadError(f"{source.describe()}: the feature spec changed while starting up")
    return bundle


# --------------------------------------------------------------------------- feature building


def _flat_type(value: str) -> str:
    return FLAT_TYPE_ALIASES.get(value, value)


def raw_records(records: Sequence[RecordBase]) -> list[dict[str, Any]]:
    """The rows as raw string records for :func:`hdb_mlops.features.transactions_from_records`
    (the generic path); the remaining lease in months is written as the files write it."""
    out = []
    for r in records:
        months = r.remaining_lease
        lease = "" if months is None else f"{months // 12} years {months % 12:02d} months"
        out.append(
            {
                "month": r.month,
                "town": r.town,
                "flat_type": r.flat_type,
                "block": r.block or "",
                "street_name": r.street_name or "",
                "storey_range": r.storey_range,
                "floor_area_sqm": repr(float(r.floor_area_sqm)),
                "flat_model": r.flat_model,
                "lease_commence_date": str(r.lease_commence_date),
                "remaining_lease": lease,
                # transactions_from_records parses every official column, the price included
                "resale_price": "",
            }
        )
    return out


def _numeric_rows(records: Sequence[RecordBase]) -> dict[str, np.ndarray]:
    """The numeric features of ``build_features`` (and the loader's parsed columns), computed
    from validated rows with the loader's arithmetic: month index from 1990-01, storey mid,
    remaining lease reported or derived (lease taken to start mid-year, capped at 99 years)."""
    n = len(records)
    month_index = np.empty(n, dtype="float64")
    storey_mid = np.empty(n, dtype="float64")
    floor_area = np.empty(n, dtype="float64")
    lease_start = np.empty(n, dtype="float64")
    remaining = np.empty(n, dtype="float64")
    flat_age = np.empty(n, dtype="float64")
    for i, r in enumerate(records):
        month = r.month
        year, mon = int(month[:4]), int(month[5:7])
        idx = (year - _EPOCH_YEAR) * 12 + mon - 1
        lcd = r.lease_commence_date
        storey = r.storey_range
        month_index[i] = idx
        storey_mid[i] = (int(storey[:2]) + int(storey[-2:])) / 2
        floor_area[i] = r.floor_area_sqm
        lease_start[i] = lcd
        reported = r.remaining_lease
        if reported is None:
            reported = min((lcd + LEASE_YEARS) * 12 + 6 - (year * 12 + mon - 1), _MAX_LEASE_MONTHS)
        remaining[i] = reported
        flat_age[i] = idx - ((lcd - _EPOCH_YEAR) * 12 + 6)
    return {
        "floor_area_sqm": floor_area,
        "storey_mid": storey_mid,
        "remaining_lease_months": remaining,
        "lease_commence_date": lease_start,
        "flat_age_months": flat_age,
        "month_index": month_index,
    }


def records_frame(records: Sequence[RecordBase]) -> pd.DataFrame:
    """The normalised transactions frame (as :func:`transactions_from_records` returns it)
    built directly from validated rows, without re-parsing strings. Missing block or
    street_name are missing values (NaN location features, never an error)."""
    n = len(records)
    num = _numeric_rows(records)
    storey_low = np.array([int(r.storey_range[:2]) for r in records], dtype="float64")
    storey_high = np.array([int(r.storey_range[-2:]) for r in records], dtype="float64")
    reported = np.array(
        [np.nan if r.remaining_lease is None else r.remaining_lease for r in records],
        dtype="float64",
    )
    return pd.DataFrame(
        {
            "month": pd.PeriodIndex([r.month for r in records], freq="M"),
            "town": pd.array([r.town for r in records], dtype="str"),
            "flat_type": pd.array([_flat_type(r.flat_type) for r in records], dtype="str"),
            "block": pd.array([r.block for r in records], dtype="str"),
            "street_name": pd.array([r.street_name for r in records], dtype="str"),
            "storey_range": pd.array([r.storey_range for r in records], dtype="str"),
            "storey_low": storey_low,
            "storey_high": storey_high,
            "storey_mid": num["storey_mid"],
            "floor_area_sqm": num["floor_area_sqm"],
            "flat_model": pd.array([r.flat_model for r in records], dtype="str"),
            "lease_commence_date": num["lease_commence_date"],
            "remaining_lease_reported": reported,
            "remaining_lease_months": num["remaining_lease_months"],
            "remaining_lease_derived": np.isnan(reported),
            "resale_price": np.full(n, np.nan),
        },
        index=pd.RangeIndex(n),
    )


class _Engine:
    """Scores validated rows; subclasses are the three paths of the module docstring."""

    name = "engine"

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class LoaderEngine(_Engine):
    """The generic path: transactions_from_records, then model.predict (the reference)."""

    name = "loader"

    def __init__(self, bundle: Bundle):
        self.model = bundle.model

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        from hdb_mlops.features import transactions_from_records

        frame = transactions_from_records(raw_records(records))
        return np.asarray(self.model.predict(frame), dtype="float64")


class FrameEngine(_Engine):
    """The normalised frame built directly from the rows, then model.predict."""

    name = "frame"

    def __init__(self, bundle: Bundle):
        self.model = bundle.model

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        return np.asarray(self.model.predict(records_frame(records)), dtype="float64")


class BoosterCall:
    """``Booster.inplace_predict`` on a dense float64 matrix, minus the wrapper's per-call
    Python overhead (about 0.3 ms of its 0.4 ms for one row: argument checks, a JSON array
    interface built with ``json.dumps``, a class built per result).

    It calls the same C function as the wrapper (``XGBoosterPredictFromDense``) through
    XGBoost's private ``xgboost.core`` names of the pinned version, so :meth:`create`
    returns None (use the wrapper) when they are missing or the two disagree on a probe.
    """

    def __init__(self, booster: Any):
        import ctypes

        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

        self._ctypes = ctypes
        self._predict = _LIB.XGBoosterPredictFromDense
        self._check = _check_call
        self._ulong = c_bst_ulong
        self._handle = booster.handle
        self._args = make_jcargs(
            type=0,
            training=False,
            iteration_begin=0,
            iteration_end=0,
            missing=math.nan,
            strict_shape=False,
            cache_id=0,
        )

    @classmethod
    def create(cls, booster: Any, probe: np.ndarray) -> "BoosterCall | None":
        """A direct caller that agrees with ``booster.inplace_predict`` on ``probe``."""
        try:
            call = cls(booster)
            ok = np.array_equal(call(probe), booster.inplace_predict(probe))
        except Exception as exc:  # another XGBoost version: keep the public wrapper
            log.warning("direct XGBoost prediction unavailable: %s", exc)
            return None
        if not ok:
            log.warning("direct XGBoost prediction disagrees with inplace_predict: not used")
        return call if ok else None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Margins (float32) for a C-contiguous float64 matrix."""
        ct = self._ctypes
        data = np.ascontiguousarray(features, dtype="float64")
        rows, cols = data.shape
        interface = (
            b'{"data": [%d, true], "strides": null, "descr": [["", "<f8"]], '
            b'"typestr": "<f8", "shape": [%d, %d], "version": 3}' % (data.ctypes.data, rows, cols)
        )
        preds = ct.POINTER(ct.c_float)()
        shape = ct.POINTER(self._ulong)()
        dims = self._ulong()
        self._check(
            self._predict(
                self._handle,
                interface,
                self._args,
                None,
                ct.byref(shape),
                ct.byref(dims),
                ct.byref(preds),
            )
        )
        size = 1
        for i in range(dims.value):
            size *= int(shape[i])
        if size != rows:
            raise PredictionError(f"expected {rows} predictions, XGBoost returned {size}")
        # the buffer belongs to XGBoost (thread-local): copy it before the next call
        return np.ctypeslib.as_array(preds, shape=(rows,)).copy()


class AddressEncoding:
    """:meth:`hdb_mlops.models.AddressEncoder.transform` for validated rows, without its
    per-call pandas cost (about 10 ms for one row on a busy 2-core machine): the keys of an
    address from :func:`hdb_mlops.models.row_keys` (plain Python), the encoder's per-key sums
    from dictionaries made once from its tables, and the encoder's own arithmetic
    (:meth:`~hdb_mlops.models.AddressEncoder.feature_arrays`) on arrays."""

    def __init__(self, encoder: Any):
        from hdb_mlops.models import ENCODING_LEVELS

        self.encoder = encoder
        self.levels = tuple(ENCODING_LEVELS)
        self.tables = {
            level: {
                key: (float(w), float(wr), float(wm))
                for key, w, wr, wm in zip(
                    table.index, table["w"], table["wr"], table["wm"], strict=True
                )
            }
            for level, table in encoder.tables_.items()
        }
        self.columns = self._encode(np.zeros(0, dtype="int64"), [])[0]

    def _encode(self, months: np.ndarray, keys: Sequence[tuple]) -> tuple[list[str], np.ndarray]:
        zero = (0.0, 0.0, 0.0)
        sums = {
            level: np.array(
                [self.tables.get(level, {}).get(k[j], zero) for k in keys], dtype="float64"
            ).reshape(len(keys), 3)
            for j, level in enumerate(self.levels)
        }
        return self.encoder.feature_arrays(months, sums, self.encoder.scale(months))

    def features(self, records: Sequence[RecordBase], month_index: np.ndarray) -> np.ndarray:
        """The encoder's features for ``records`` (rows x :attr:`columns`, the model's order)."""
        from hdb_mlops.models import row_keys

        keys = [row_keys(r.town, r.block, r.street_name, _flat_type(r.flat_type)) for r in records]
        return self._encode(month_index.astype("int64"), keys)[1]


class XGBoostEngine(_Engine):
    """XGBoost without pandas: a float64 feature matrix in the model's column order scored
    with the booster (see :class:`BoosterCall`), plus the model's market index
    (precomputed as an array)."""

    name = "xgboost"

    def __init__(self, bundle: Bundle, *, nthread: int = 1, direct: bool = True):
        model = bundle.model
        self.model = model
        spec: FeatureSpec = model.spec  # the pickled order (feature_spec.json has sorted keys)
        self.columns = list(spec.columns)
        self.month_col = self.columns.index("month_index")
        self.booster = model.booster_.get_booster()
        encoder = getattr(model, "encoder_", None)
        self.encoding = AddressEncoding(encoder) if encoder is not None else None
        extra = self.encoding.columns if self.encoding is not None else []
        names = self.booster.feature_names
        if names is not None and list(names) != [*self.columns, *extra]:
            raise ValueError(f"booster features {names} are not {[*self.columns, *extra]}")
        if nthread:
            self.booster.set_param({"nthread": int(nthread)})
        self.codes = {
            col: {cat: float(i) for i, cat in enumerate(cats)}
            for col, cats in spec.categorical.items()
        }
        self.location = spec.location
        self.locations = _location_lookup(model.locations) if spec.location else {}
        self.detrend = bool(getattr(model, "detrend", False))
        if self.detrend:
            index = model.index_
            self.first, self.last = int(index.first_), int(index.last_)
            values = index.values_.reindex(range(self.first, self.last + 1))
            self.index_values = values.to_numpy(dtype="float64")
            self.slope = float(index.slope_)
        self.call = None
        if direct:
            probe = np.zeros((3, len(self.columns) + len(extra)), dtype="float64")
            probe[1] = np.nan
            probe[2] = 1.0
            self.call = BoosterCall.create(self.booster, probe)

    def _market_index(self, month_index: np.ndarray) -> np.ndarray:
        """TrendIndex.__call__ on an array: the index, carried along its slope after the
        last training month."""
        idx = month_index.astype("int64")
        known = self.index_values[np.minimum(np.maximum(idx, self.first), self.last) - self.first]
        return known + self.slope * np.maximum(idx - self.last, 0)

    def features(self, records: Sequence[RecordBase]) -> np.ndarray:
        """The feature matrix (rows x spec columns), categories as codes, NaN for unknown."""
        cols: dict[str, Any] = _numeric_rows(records)
        if self.location:
            from hdb_mlops.location import address_key

            nan4 = (math.nan,) * 4
            located = np.array(
                [
                    self.locations.get(address_key(r.block, r.street_name), nan4)
                    if r.block is not None and r.street_name is not None
                    else nan4
                    for r in records
                ],
                dtype="float64",
            ).reshape(len(records), 4)
            for j, col in enumerate(LOCATION_FEATURES):
                cols[col] = located[:, j]
        for col, codes in self.codes.items():
            if col == "flat_type":
                values = [codes.get(_flat_type(r.flat_type), math.nan) for r in records]
            else:
                values = [codes.get(getattr(r, col), math.nan) for r in records]
            cols[col] = np.array(values, dtype="float64")
        matrix = np.column_stack([cols[c] for c in self.columns])
        if self.encoding is not None:
            encoded = self.encoding.features(records, cols["month_index"])
            matrix = np.concatenate([matrix, encoded], axis=1)
        return matrix

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        features = self.features(records)
        if self.call is not None:
            log_rel = self.call(features)
        else:
            log_rel = self.booster.inplace_predict(features, validate_features=False)
        if self.detrend:
            log_rel = log_rel + self._market_index(features[:, self.month_col])
        return np.exp(np.asarray(log_rel)).astype("float64", copy=False)


def _location_lookup(
    locations: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> dict[str, tuple[float, float, float, float]]:
    """Address key -> (latitude, longitude, dist_mrt_km, dist_cbd_km), computed once with
    :func:`hdb_mlops.location.add_location_features` for every geocoded address."""
    if locations is None:
        return {}
    from hdb_mlops.location import add_location_features, address_key, make_geocode_table

    geocodes, stations = locations
    table = make_geocode_table(geocodes)[["block", "street_name"]]
    feats = add_location_features(table, geocodes, stations)
    values = feats[list(LOCATION_FEATURES)].to_numpy(dtype="float64")
    return {
        address_key(b, s): tuple(row)
        for b, s, row in zip(table["block"], table["street_name"], values, strict=True)
    }


def _probe_records(
    record_type: type[RecordBase],
    spec: FeatureSpec,
    max_month: str,
    places: Sequence[dict[str, str]] = (),
) -> list:
    """Valid rows that cover every category, with and without remaining lease, at known
    ``places`` (block and street_name, maybe town and flat_type) and at an unknown one."""
    cats = spec.categorical
    n = max((len(v) for v in cats.values()), default=0)
    places = [*places, {"block": "1", "street_name": "NOWHERE"}]
    n = max(n, len(places))
    months = [m for m in ("1995-03", "2012-11", "2019-06", "2024-01") if m < max_month]
    months.append(max_month)
    this_year = datetime.now(UTC).year
    rows = []
    for i in range(n):
        month = months[i % len(months)]
        lcd = min(1966 + 3 * i, int(month[:4]), this_year)
        rows.append(
            record_type.model_validate(
                {
                    "month": month,
                    "town": cats["town"][i % len(cats["town"])],
                    "flat_type": cats["flat_type"][i % len(cats["flat_type"])],
                    "flat_model": cats["flat_model"][i % len(cats["flat_model"])],
                    "storey_range": f"{1 + 3 * (i % 10):02d} TO {3 + 3 * (i % 10):02d}",
                    "floor_area_sqm": 35.0 + 7.5 * (i % 40),
                    "lease_commence_date": lcd,
                    "remaining_lease": None
                    if i % 2
                    else f"{max(1, 90 - i)} years 0{i % 10} months",
                    **places[i % len(places)],
                }
            )
        )
    return rows


def _known_places(bundle: Bundle, n: int = 8) -> list[dict[str, str]]:
    """A few addresses the model knows (geocoded, or in its address encoding), so that the
    start-up check compares engines on rows that hit the lookups."""
    model = bundle.model
    places: list[dict[str, str]] = []
    if bundle.spec.location and getattr(model, "locations", None) is not None:
        geocodes = model.locations[0]
        for block, street in zip(geocodes["block"][:n], geocodes["street_name"][:n], strict=True):
            places.append({"block": str(block), "street_name": str(street)})
    encoder = getattr(model, "encoder_", None)
    tables = getattr(encoder, "tables_", None) or {}
    if "address_type" in tables:
        cats = bundle.spec.categorical
        for key in list(tables["address_type"].index[:n]):
            parts = str(key).split("|")  # "TOWN|BLOCK|STREET|FLAT TYPE" (best effort)
            if len(parts) != 4:
                continue
            town, block, street, flat_type = parts
            if town in cats.get("town", ()) and flat_type in cats.get("flat_type", ()):
                places.append(
                    {"town": town, "block": block, "street_name": street, "flat_type": flat_type}
                )
    return places


def choose_engine(
    bundle: Bundle,
    record_type: type[RecordBase],
    max_month: str,
    *,
    fast_path: bool = True,
    nthread: int = 1,
) -> _Engine:
    """The fastest engine that gives the loader path's predictions on probe rows."""
    reference = LoaderEngine(bundle)
    if not fast_path:
        return reference
    from hdb_mlops.models import XGBoostModel

    candidates: list[_Engine] = []
    if isinstance(bundle.model, XGBoostModel) and hasattr(bundle.model, "booster_"):
        try:
            candidates.append(XGBoostEngine(bundle, nthread=nthread))
        except Exception as exc:
            log.warning("xgboost fast path unavailable: %s", exc)
    candidates.append(FrameEngine(bundle))
    probe = _probe_records(record_type, bundle.spec, max_month, _known_places(bundle))
    expected = reference.predict(probe)
    for engine in candidates:
        try:
            got = engine.predict(probe)
        except Exception as exc:
            log.warning("%s engine failed on the probe rows: %s", engine.name, exc)
            continue
        if got.shape == expected.shape and np.allclose(got, expected, rtol=1e-9, atol=0):
            return engine
        log.warning(
            "%s engine disagrees with the loader path on the probe rows (max rel. diff %.3g)",
            engine.name,
            float(np.nanmax(np.abs(got / expected - 1))) if got.shape == expected.shape else -1,
        )
    return reference


# --------------------------------------------------------------------------- loaded model


def _quantile(quantiles: dict[str, float], q: float) -> float:
    for key, value in quantiles.items():
        if abs(float(key) - q) < 1e-9:
            return float(value)
    raise ModelLoadError(
        f"the bundle has no {q:g} residual quantile, needed for a {1 - 2 * min(q, 1 - q):g} "
        f"interval (it has {sorted(quantiles)})"
    )


@dataclass
class ServedModel:
    """What ``app.state.model`` holds: the verified bundle and how it is served."""

    bundle: Bundle
    source: ModelSource
    engine: _Engine
    level: float
    lower_factor: float
    upper_factor: float
    info: dict[str, Any]
    loaded_at: str

    @classmethod
    def load(
        cls,
        source: ModelSource,
        schemas: Schemas,
        *,
        level: float = DEFAULT_LEVEL,
        fast_path: bool = True,
        nthread: int = 1,
    ) -> "ServedModel":
        """Load, verify and prepare a model (see :func:`load_model`, :func:`choose_engine`)."""
        bundle = load_model(source)
        quantiles = bundle.metadata.get("residual_quantiles") or {}
        lo = _quantile(quantiles, (1 - level) / 2)
        hi = _quantile(quantiles, (1 + level) / 2)
        engine = choose_engine(
            bundle, schemas.record, schemas.max_month, fast_path=fast_path, nthread=nthread
        )
        version = None if source.version is None else str(source.version)
        return cls(
            bundle=bundle,
            source=source,
            engine=engine,
            level=level,
            lower_factor=math.exp(lo),
            upper_factor=math.exp(hi),
            info={"name": bundle.name, "version": version, "sha256": bundle.sha256[:12]},
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def predict(self, records: Sequence[RecordBase]) -> list[dict[str, Any]]:
        """One prediction dict (the :class:`~hdb_mlops.api_schema.Prediction` shape) per row."""
        prices = self.engine.predict(records)
        if prices.shape != (len(records),) or not np.all(np.isfinite(prices) & (prices > 0)):
            raise PredictionError(f"the model returned non-finite or non-positive prices: {prices}")
        lower = (prices * self.lower_factor).tolist()
        upper = (prices * self.upper_factor).tolist()
        level, info = self.level, self.info
        return [
            {
                "prediction_id": str(uuid.uuid4()),
                "price": p,
                "interval": {"level": level, "lower": lo, "upper": hi},
                "model": info,
            }
            for p, lo, hi in zip(prices.tolist(), lower, upper, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        """The ``GET /model`` document."""
        meta = self.bundle.metadata
        source: dict[str, Any] = {"kind": self.source.kind, "ref": self.source.ref}
        if self.source.kind == "registry":
            source.update(registered_model=self.source.registry_name, version=self.source.version)
        else:
            source["path"] = str(self.source.path)
        return {
            **self.info,
            "bundle_sha256": self.bundle.sha256,
            "model_sha256": meta.get("model_sha256"),
            "model_class": meta.get("model_class"),
            "created_at": meta.get("created_at"),
            "loaded_at": self.loaded_at,
            "source": source,
            "metrics": meta.get("metrics") or {},
            "residual_quantiles": meta.get("residual_quantiles") or {},
            "interval_level": self.level,
            "params": meta.get("params") or {},
            "data_hash": meta.get("data_hash"),
            "git": meta.get("git"),
            "extra": meta.get("extra") or {},
            "feature_spec": self.bundle.model.spec.to_dict(),
            "engine": self.engine.name,
        }


# --------------------------------------------------------------------------- metrics


LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PRICE_BUCKETS = tuple(float(x) for x in range(200_000, 1_600_001, 100_000))


class ServiceMetrics:
    """The service's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["method", "endpoint", "status"]
        self.requests = Counter(
            "hdb_http_requests", "HTTP requests by route and status.", labels, registry=r
        )
        self.latency = Histogram(
            "hdb_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "hdb_predictions", "Prices predicted, by route.", ["endpoint"], registry=r
        )
        self.batch_rows = Histogram(
            "hdb_prediction_rows",
            "Rows per prediction request.",
            ["endpoint"],
            buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.price = Histogram(
            "hdb_predicted_price_sgd", "Predicted prices (SGD).", buckets=PRICE_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "hdb_model_info",
            "The served model (value 1), labelled with its name, version and sha256 prefix.",
            ["name", "version", "sha256"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "hdb_model_loaded", "1 when a model is loaded and the service is ready.", registry=r
        )
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (the lookup is a measurable part of a request)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def observe_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """Count a request and record its latency."""
        self._child(self.requests, method, endpoint, status).inc()
        self._child(self.latency, method, endpoint, status).observe(seconds)

    def observe_predictions(self, endpoint: str, predictions: list[dict[str, Any]]) -> None:
        """Count predictions and add their prices to the histogram."""
        self._child(self.predictions, endpoint).inc(len(predictions))
        self._child(self.batch_rows, endpoint).observe(len(predictions))
        observe = self.price.observe
        for p in predictions:
            observe(p["price"])


# --------------------------------------------------------------------------- logging


_LOG_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ts, level, logger, msg, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _LOG_RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(level: str = "info") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for uvicorn and the service: JSON to stderr."""
    lvl = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "hdb_mlops": {"handlers": ["default"], "level": lvl, "propagate": False},
        },
    }


# --------------------------------------------------------------------------- errors


def _error_body(
    error: str, detail: list[dict[str, str]], request: Request | None = None
) -> dict[str, Any]:
    rid = _request_id(request) if request is not None else None
    return {"error": error, "detail": detail, "request_id": rid}


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def error_response(
    status: int, error: str, detail: list[dict[str, str]], request: Request | None = None
) -> Response:
    """A JSON error response in the service's error shape."""
    return Response(
        content=to_json(_error_body(error, detail, request)),
        status_code=status,
        media_type="application/json",
    )


_RECORD_FIELDS = frozenset(REQUEST_COLUMNS) | {"town", "flat_type", "flat_model"}
_CONTAINERS = frozenset({"records", "instances"})


def _field_path(loc: Sequence[Any], error_type: str) -> str:
    """A dotted field path from a pydantic error location, without union member tags."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(str(item))
        elif item in _RECORD_FIELDS:
            parts.append(item)
            break  # record fields are leaves: what follows names union members
        elif item in _CONTAINERS or error_type == "extra_forbidden" or not parts:
            parts.append(str(item))
    return ".".join(parts) or "body"


def _reason(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "missing":
        return "field required"
    if err.get("type") == "extra_forbidden":
        return "unknown field (not one of the official columns)"
    return msg


def validation_details(errors: Sequence[dict[str, Any]], strip: int = 0) -> list[dict[str, str]]:
    """``[{"field", "reason"}]`` from pydantic errors; ``strip`` leading loc items dropped
    (``("body",)`` for FastAPI). Errors on the same field (union branches) are merged."""
    merged: dict[str, list[str]] = {}
    for err in errors:
        path = _field_path(tuple(err.get("loc", ()))[strip:], str(err.get("type")))
        reason = _reason(err)
        reasons = merged.setdefault(path, [])
        if reason not in reasons:
            reasons.append(reason)
    return [{"field": f, "reason": "; or ".join(r)} for f, r in merged.items()]


def _too_long(errors: Sequence[dict[str, Any]], max_batch: int) -> dict[str, str] | None:
    for err in errors:
        if err.get("type") == "too_long":
            loc = [x for x in err.get("loc", ()) if x != "body"]
            actual = (err.get("ctx") or {}).get("actual_length")
            got = f", got {actual}" if actual is not None else ""
            return {
                "field": ".".join(map(str, loc)) or "body",
                "reason": f"at most {max_batch} rows per request{got}: split the batch",
            }
    return None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class _BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body over the limit (an HTTPException so that FastAPI's body
    parsing passes it through to the JSON handler instead of turning it into a 400)."""

    def __init__(self, limit: int):
        super().__init__(
            413, f"the request body is over {limit} bytes: send fewer rows per request"
        )


# --------------------------------------------------------------------------- middleware


class RequestContextMiddleware:
    """Pure ASGI middleware: request id (``X-Request-ID`` set or echoed), body size limit,
    metrics by route template and status, one JSON log line per request, and a JSON 500 for
    any unhandled exception (never an HTML or plain-text page)."""

    def __init__(self, app: Any, metrics: ServiceMetrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._paths: frozenset[str] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        content_length = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _REQUEST_ID_RE.match(candidate) else None
            elif key == b"content-length":
                content_length = value
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        too_large = {"field": "body", "reason": str(_BodyTooLarge(limit).detail)}
        try:
            if content_length is not None and int(content_length) > limit:
                await self._send_error(send_with_id, 413, "payload_too_large", [too_large], rid)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except _BodyTooLarge:
            if not started:
                await self._send_error(send_with_id, 413, "payload_too_large", [too_large], rid)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid, "path": scope.get("path")})
            if not started:
                detail = [{"field": "", "reason": "internal error; see the logs for request_id"}]
                await self._send_error(send_with_id, 500, "internal_error", detail, rid)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = self._endpoint(scope)
            method = scope.get("method", "")
            method = method if method in _HTTP_METHODS else "OTHER"  # bounded label values
            self.metrics.observe_request(method, endpoint, str(status), elapsed)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": method,
                        "path": scope.get("path"),
                        "endpoint": endpoint,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )

    def _endpoint(self, scope: dict) -> str:
        """The route template for metrics: the matched route's path, else the request path
        when it is one of the app's (static) routes, else "unmatched" (bounded labels)."""
        route_path = getattr(scope.get("route"), "path", None)
        if route_path:
            return route_path
        if self._paths is None:
            app = scope.get("app")
            self._paths = frozenset(getattr(r, "path", "") for r in getattr(app, "routes", ()))
        path = scope.get("path", "")
        return path if path in self._paths else "unmatched"

    @staticmethod
    async def _send_error(
        send: Any, status: int, error: str, detail: list[dict[str, str]], rid: str
    ) -> None:
        body = to_json({"error": error, "detail": detail, "request_id": rid})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app


async def get_model(request: Request) -> ServedModel:
    """FastAPI dependency: the model loaded at start-up (503 when there is none)."""
    model = getattr(request.app.state, "model", None)
    if model is None:
        raise StarletteHTTPException(503, "the model is not loaded (the service is starting)")
    return model


ModelDep = Annotated[ServedModel, Depends(get_model)]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or CSV.",
        413: "Too many rows (over max_batch) or a body over the size limit.",
        415: "Unsupported Content-Type.",
        422: "A field is invalid; `detail` names it (e.g. `records.0.town`).",
        503: "The model is not loaded.",
    }.items()
}
_ERROR_NAMES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "not_ready",
}


def create_app(
    model_ref: str | Path | int | None = None,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    registry_name: str | None = None,
    interval_level: float = DEFAULT_LEVEL,
    fast_path: bool = True,
    max_month: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    nthread: int = 1,
) -> FastAPI:
    """The prediction service as a FastAPI app (see the module docstring).

    ``model_ref`` is resolved now (feature spec read and checked, nothing unpickled); the
    model is loaded once in the app's lifespan and start-up fails if it cannot be.
    ``max_batch`` bounds the rows of one request, ``interval_level`` the prediction interval
    (the bundle must have the matching residual quantiles), ``max_month`` the latest sale
    month accepted (default: December of next year). ``fast_path=False`` serves through the
    generic :func:`~hdb_mlops.features.transactions_from_records` path. ``nthread`` is
    XGBoost's thread count per prediction.
    """
    if not 0 < interval_level < 1:
        raise ValueError(f"interval_level must be between 0 and 1, not {interval_level}")
    source = resolve_model_ref(model_ref, registry_name=registry_name)
    schemas = build_schemas(source.spec, max_batch=max_batch, max_month=max_month)
    metrics = ServiceMetrics()
    Record = schemas.record
    Batch = schemas.batch
    invocation_adapters = {
        "single": TypeAdapter(Record),
        "records": TypeAdapter(Batch),
        "instances": TypeAdapter(schemas.instances),
        "list": TypeAdapter(schemas.rows),
    }
    rows_adapter = TypeAdapter(Batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = time.perf_counter()
        log.info("loading model", extra={"source": source.describe()})
        try:
            served = ServedModel.load(
                source, schemas, level=interval_level, fast_path=fast_path, nthread=nthread
            )
        except ModelLoadError as exc:
            log.error("model load failed: %s", exc, extra={"source": source.describe()})
            app.state.startup_error = exc
            raise
        except Exception as exc:
            log.error("model load failed: %s", exc, extra={"source": source.describe()})
            app.state.startup_error = ModelLoadError(f"cannot load {source.describe()}: {exc}")
            raise app.state.startup_error from exc
        app.state.model = served
        metrics.model_info.labels(
            served.info["name"], served.info["version"] or "none", served.info["sha256"]
        ).set(1)
        metrics.model_loaded.set(1)
        log.info(
            "model loaded",
            extra={
                **{f"model_{k}": v for k, v in served.info.items()},
                "engine": served.engine.name,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        try:
            yield
        finally:
            metrics.model_loaded.set(0)
            app.state.model = None
            log.info("model unloaded")

    app = FastAPI(
        title="HDB resale price service",
        version=_package_version(),
        description=(__doc__ or "").split("\n\n", 1)[0],
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.model = None
    app.state.startup_error = None
    app.state.source = source
    app.state.schemas = schemas
    app.state.metrics = metrics

    # ---- routes

    @app.post(
        "/predict",
        response_model=Prediction,
        responses=_ERROR_RESPONSES,
        summary="Price one flat",
        tags=["predict"],
    )
    async def predict(record: Record, model: ModelDep) -> Any:  # type: ignore[valid-type]
        """One row in, one prediction out (scored on the event loop: well under 1 ms)."""
        out = model.predict([record])
        metrics.observe_predictions("/predict", out)
        return out[0]

    @app.post(
        "/predict/batch",
        response_model=BatchPredictions,
        responses=_ERROR_RESPONSES,
        summary=f"Price up to {max_batch} flats",
        tags=["predict"],
    )
    def predict_batch(batch: Batch, model: ModelDep) -> Any:  # type: ignore[valid-type]
        """``{"records": [...]}`` in, predictions in the same order out (thread pool)."""
        out = model.predict(batch.records)
        metrics.observe_predictions("/predict/batch", out)
        return {"count": len(out), "predictions": out}

    @app.get("/health", summary="Liveness", tags=["ops"])
    async def health() -> dict[str, str]:
        """200 while the process is serving (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness", tags=["ops"], responses={503: _ERROR_RESPONSES[503]})
    async def ready(request: Request) -> Any:
        """200 once the model is loaded, 503 before."""
        model: ServedModel | None = request.app.state.model
        if model is None:
            return JSONResponse({"ready": False, "model": None}, status_code=503)
        return {"ready": True, "model": model.info, "engine": model.engine.name}

    @app.get("/model", summary="The served model", tags=["ops"], responses=_ERROR_RESPONSES)
    async def model_metadata(model: ModelDep) -> dict[str, Any]:
        """Name, version, hashes, metrics, residual quantiles and feature spec."""
        return {
            **model.describe(),
            "max_batch": schemas.max_batch,
            "max_month": schemas.max_month,
        }

    @app.get(
        "/metrics", summary="Prometheus metrics", tags=["ops"], response_class=PlainTextResponse
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's registry."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/ping", summary="SageMaker health check", tags=["sagemaker"], responses=_ERROR_RESPONSES
    )
    async def ping(request: Request) -> Any:
        """200 when the model is loaded (SageMaker's health check), 503 before."""
        if request.app.state.model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.post(
        "/invocations",
        summary="SageMaker inference (JSON or CSV)",
        tags=["sagemaker"],
        responses={
            200: {
                "description": "A prediction (single row) or a batch; CSV with Accept: text/csv.",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/Prediction"},
                                {"$ref": "#/components/schemas/BatchPredictions"},
                            ]
                        }
                    },
                    "text/csv": {"schema": {"type": "string"}},
                },
            },
            406: {"model": ErrorResponse, "description": "Unsupported Accept."},
            **_ERROR_RESPONSES,
        },
    )
    async def invocations(request: Request, model: ModelDep) -> Response:
        """SageMaker's inference contract; see "CSV on /invocations" in the module doc."""
        accept_csv = _wants_csv(request.headers.get("accept"))
        if accept_csv is None:
            return error_response(
                406,
                "not_acceptable",
                [{"field": "accept", "reason": "answers are application/json or text/csv"}],
                request,
            )
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        body = await request.body()
        if media == "text/csv":
            parsed = _parse_csv(body, schemas.max_batch)
            if isinstance(parsed, tuple):
                return error_response(*parsed, request)
            shape, payload, adapter = "records", {"records": parsed}, rows_adapter
        elif _is_json(content_type):
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                return error_response(
                    400, "malformed_json", [{"field": "body", "reason": str(exc)}], request
                )
            if isinstance(payload, list):
                shape = "list"
            elif isinstance(payload, dict) and "records" in payload:
                shape = "records"
            elif isinstance(payload, dict) and "instances" in payload:
                shape = "instances"
            else:
                shape = "single"
            adapter = invocation_adapters[shape]
        else:
            return error_response(
                415,
                "unsupported_media_type",
                [
                    {
                        "field": "content-type",
                        "reason": f"{media or 'no content type'} is not supported: send "
                        "application/json or text/csv",
                    }
                ],
                request,
            )
        try:
            validated = adapter.validate_python(payload)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            too_long = _too_long(errors, schemas.max_batch)
            if too_long is not None:
                return error_response(413, "batch_too_large", [too_long], request)
            return error_response(422, "invalid_request", validation_details(errors), request)
        if shape == "single":
            rows = [validated]
        elif shape == "list":
            rows = validated
        else:
            rows = getattr(validated, shape)
        if len(rows) <= INLINE_ROWS:
            out = model.predict(rows)
        else:
            out = await run_in_threadpool(model.predict, rows)
        metrics.observe_predictions("/invocations", out)
        if accept_csv:
            text = "".join(
                f"{p['price']!r},{p['interval']['lower']!r},{p['interval']['upper']!r}\n"
                for p in out
            )
            return Response(text, media_type="text/csv")
        result: Any = out[0] if shape == "single" else {"count": len(out), "predictions": out}
        return Response(to_json(result), media_type="application/json")

    # ---- errors

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        invalid_json = [e for e in errors if e.get("type") == "json_invalid"]
        if invalid_json:
            err = invalid_json[0]
            reason = str((err.get("ctx") or {}).get("error") or "invalid JSON")
            pos = tuple(err.get("loc", ()))[-1:]
            where = f" at character {pos[0]}" if pos and isinstance(pos[0], int) else ""
            return error_response(
                400, "malformed_json", [{"field": "body", "reason": reason + where}], request
            )
        content_type = request.headers.get("content-type")
        body_errors = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
        if body_errors and not _is_json(content_type):
            missing_body = all(
                e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",)
                for e in body_errors
            )
            if not (missing_body and not content_type):
                return error_response(
                    415,
                    "unsupported_media_type",
                    [
                        {
                            "field": "content-type",
                            "reason": f"{content_type or 'no content type'} is not supported: "
                            "send application/json",
                        }
                    ],
                    request,
                )
        too_long = _too_long(errors, schemas.max_batch)
        if too_long is not None:
            return error_response(413, "batch_too_large", [too_long], request)
        detail = validation_details(errors, strip=1)
        for item in detail:
            if item["field"] == "body" and item["reason"] == "field required":
                item["reason"] = "a JSON body is required"
        return error_response(422, "invalid_request", detail, request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        where = {404: "path", 405: "method", 413: "body"}.get(status, "")
        if status == 404:
            reason = f"no route {request.url.path}"
        elif status == 405:
            reason = f"{request.method} is not allowed on {request.url.path}"
        else:
            reason = str(exc.detail)
        response = error_response(
            status,
            _ERROR_NAMES.get(status, f"http_{status}"),
            [{"field": where, "reason": reason}],
            request,
        )
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(PredictionError)
    async def on_prediction_error(request: Request, exc: PredictionError) -> Response:
        log.error("prediction failed: %s", exc, extra={"request_id": _request_id(request)})
        return error_response(
            500, "prediction_failed", [{"field": "", "reason": "the model failed"}], request
        )

    _install_openapi(app, schemas)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=max_body_bytes)
    return app


def _wants_csv(accept: str | None) -> bool | None:
    """True for CSV, False for JSON, None when the Accept header allows neither."""
    if not accept or not accept.strip():
        return False
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("application/json", "*/*", "application/*"):
            return False
        if media in ("text/csv", "text/*"):
            return True
    return None


def _parse_csv(body: bytes, max_batch: int) -> list[dict[str, str]] | tuple[int, str, list]:
    """CSV rows as dicts of the official column names (see the module docstring), or
    ``(status, error, detail)``."""
    try:
        text = body.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        return 400, "malformed_csv", [{"field": "body", "reason": f"not UTF-8 ({exc})"}]
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    except csv.Error as exc:
        return 400, "malformed_csv", [{"field": "body", "reason": str(exc)}]
    header: tuple[str, ...] | None = None
    if rows:
        first = [c.strip().lower() for c in rows[0]]
        if "month" in first and "town" in first:
            known = set(OFFICIAL_2017_COLUMNS)
            unknown = [c for c in first if c not in known]
            duplicated = sorted({c for c in first if first.count(c) > 1})
            if unknown or duplicated:
                reason = (
                    f"unknown column(s) {', '.join(map(repr, unknown))}"
                    if unknown
                    else f"duplicated column(s) {', '.join(duplicated)}"
                )
                return (
                    422,
                    "invalid_request",
                    [
                        {
                            "field": "header",
                            "reason": f"{reason}; use {', '.join(OFFICIAL_2017_COLUMNS)}",
                        }
                    ],
                )
            header = tuple(first)
            rows = rows[1:]
    if not rows:
        return 422, "invalid_request", [{"field": "body", "reason": "no CSV rows to price"}]
    if len(rows) > max_batch:
        return (
            413,
            "batch_too_large",
            [
                {
                    "field": "records",
                    "reason": f"at most {max_batch} rows per request, got {len(rows)}: "
                    "split the batch",
                }
            ],
        )
    records = []
    for i, row in enumerate(rows):
        columns = header or _CSV_LAYOUTS.get(len(row))
        if columns is None or len(row) != len(columns):
            expected = str(len(header)) if header else "9, 10 or 11"
            return (
                422,
                "invalid_request",
                [
                    {
                        "field": f"records.{i}",
                        "reason": f"{len(row)} fields, expected {expected} in the official order "
                        f"({', '.join(OFFICIAL_2017_COLUMNS)})",
                    }
                ],
            )
        records.append(
            {
                col: value
                for col, value in zip(columns, row, strict=True)
                if col != _CSV_PRICE and not (col in _CSV_OPTIONAL and not value.strip())
            }
        )
    return records


def _install_openapi(app: FastAPI, schemas: Schemas) -> None:
    """Describe /invocations' two request media types in the OpenAPI document."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = default_openapi()
        ref = "#/components/schemas/{model}"
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        json_schema = TypeAdapter(
            schemas.record | schemas.batch | schemas.instances | list[schemas.record]  # type: ignore[operator]
        ).json_schema(ref_template=ref)
        for name, definition in json_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        operation = doc["paths"]["/invocations"]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "Rows in the official column order, with or without "
                        "a header (see the service documentation).",
                    }
                },
            },
        }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hdb-mlops")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


# --------------------------------------------------------------------------- running it


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` and multi-worker serving: the model from
    ``$HDB_MLOPS_MODEL`` (else the ``champion`` alias), at most ``$HDB_MLOPS_MAX_BATCH``
    rows per request, and ``$HDB_MLOPS_FAST_PATH=0`` to serve through the loader path."""
    return create_app(
        os.environ.get(MODEL_ENV) or None,
        max_batch=int(os.environ.get(MAX_BATCH_ENV) or DEFAULT_MAX_BATCH),
        fast_path=_fast_path_from_env(),
    )


def _fast_path_from_env() -> bool:
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in ("0", "false", "no")


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (a notebook or a test); yields its
    base URL (``port=0``: a free port) once the model is loaded, and stops the server on
    exit. Raises :class:`ModelLoadError` when the app fails to start."""
    import threading

    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)

    def run() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits this way when start-up fails
            server.run()

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            error = getattr(app.state, "startup_error", None)
            raise error or ModelLoadError(f"the server did not start within {timeout:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    model_ref: str | Path | int | None = None,
    log_level: str = "info",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    graceful_timeout: int = GRACEFUL_SHUTDOWN_S,
) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM (what ``hdb-mlops serve`` calls).

    One worker serves an app made here (a bad model reference raises
    :class:`ModelLoadError` before anything listens; a bundle that fails verification stops
    start-up with exit status 3). With ``workers > 1`` each worker builds its app from
    ``hdb_mlops.serve:app_from_env`` (the reference is passed in ``$HDB_MLOPS_MODEL``, after
    a check here). ``$HDB_MLOPS_FAST_PATH=0`` serves through the generic loader path. Logs are
    JSON lines on stderr; in-flight requests get ``graceful_timeout`` seconds on shutdown.
    """
    import uvicorn

    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": logging_config(log_level),
        "log_level": log_level.lower(),
        "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout,
        "server_header": False,
    }
    if workers == 1:
        logging.config.dictConfig(options["log_config"])
        app = create_app(model_ref, max_batch=max_batch, fast_path=_fast_path_from_env())
        uvicorn.run(app, **options)
        return
    source = resolve_model_ref(model_ref)  # fail here, not in every worker
    os.environ[MODEL_ENV] = str(source.path) if source.path else str(source.version)
    if source.registry_name:
        os.environ[MODEL_NAME_ENV] = source.registry_name
    os.environ[MAX_BATCH_ENV] = str(max_batch)
    uvicorn.run(
        f"{__name__}:app_from_env",
        factory=True,
        workers=workers,
        # a worker importing the stack and loading a model holds the GIL for seconds on a
        # busy machine: do not let the supervisor kill it for missing a 5 s health ping
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        **options,
    )
