"""The FastAPI application factory: routes, dependencies and error handlers.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at run
time, and the request models are local to :func:`create_app`.
"""

import gc
import logging
import os
import sys
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from hdb_mlops.serving.errors import (
    ERROR_RESPONSES,
    error_response,
    install_error_handlers,
    is_json,
    lease_details,
    too_long,
    validation_details,
)
from hdb_mlops.serving.jsonbody import StrictJSONRoute, loads
from hdb_mlops.serving.loading import MODEL_ENV, ModelLoadError, resolve_model_ref
from hdb_mlops.serving.metrics import ServiceMetrics, version_label
from hdb_mlops.serving.middleware import DEFAULT_BODY_TIMEOUT_S, RequestContextMiddleware
from hdb_mlops.serving.observers import Observers, PredictionObserver
from hdb_mlops.serving.reload import activate, install_reload, load_served
from hdb_mlops.serving.request_schema import (
    BatchPredictions,
    ErrorResponse,
    Prediction,
    build_schemas,
)
from hdb_mlops.serving.sagemaker import install_openapi, parse_csv, wants_csv
from hdb_mlops.serving.served import DEFAULT_LEVEL, ServedModel

log = logging.getLogger(__name__)


MAX_BATCH_ENV = "HDB_MLOPS_MAX_BATCH"
#: Seconds a client has to send the whole request body (408 after that).
BODY_TIMEOUT_ENV = "HDB_MLOPS_BODY_TIMEOUT"
#: "0" serves through the generic loader path (a kill switch for the fast path).
FAST_PATH_ENV = "HDB_MLOPS_FAST_PATH"


DEFAULT_MAX_BATCH = 1000
#: SageMaker's real-time payload limit.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024


#: Rows scored on the event loop; larger batches go to the thread pool.
INLINE_ROWS = 16


async def get_model(request: Request) -> ServedModel:
    """FastAPI dependency: the model loaded at start-up (503 when there is none)."""
    model = getattr(request.app.state, "model", None)
    if model is None:
        raise StarletteHTTPException(503, "the model is not loaded (the service is starting)")
    return model


ModelDep = Annotated[ServedModel, Depends(get_model)]


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
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT_S,
    observers: Iterable[PredictionObserver] = (),
    reload_token: str | None = None,
    tune_process: bool = False,
) -> FastAPI:
    """The prediction service as a FastAPI app (see the module docstring).

    ``model_ref`` is resolved now (feature spec read and checked, nothing unpickled); the
    model is loaded once in the app's lifespan and start-up fails if it cannot be.
    ``max_batch`` bounds the rows of one request, ``interval_level`` the prediction interval
    (the bundle must have the matching residual quantiles), ``max_month`` the latest sale
    month accepted (default: December of next year). ``fast_path=False`` serves through the
    generic :func:`~hdb_mlops.model.features.transactions_from_records` path. ``nthread`` is
    XGBoost's thread count per prediction. ``max_body_bytes`` bounds a request body and
    ``body_timeout`` the seconds it may take to arrive (413 and 408 beyond; None: no
    bound). ``observers`` see every prediction (:mod:`hdb_mlops.serving.observers`; more can
    be added to ``app.state.observers`` before start-up). ``POST /admin/reload`` serves what
    ``model_ref`` names now (:mod:`hdb_mlops.serving.reload`), guarded by ``reload_token``
    (None: ``$HDB_MLOPS_RELOAD_TOKEN``). ``tune_process``: the process only serves this app
    (``hdb-mlops serve`` and its workers): :func:`tune_interpreter` once the model is loaded.
    """
    if not 0 < interval_level < 1:
        raise ValueError(f"interval_level must be between 0 and 1, not {interval_level}")
    source = resolve_model_ref(model_ref, registry_name=registry_name)
    schemas = build_schemas(source.spec, max_batch=max_batch, max_month=max_month)
    metrics = ServiceMetrics()
    watchers = Observers(observers)
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
            served = load_served(app, source)
        except ModelLoadError as exc:
            log.error("model load failed: %s", exc, extra={"source": source.describe()})
            app.state.startup_error = exc
            raise
        except Exception as exc:
            log.error("model load failed: %s", exc, extra={"source": source.describe()})
            app.state.startup_error = ModelLoadError(f"cannot load {source.describe()}: {exc}")
            raise app.state.startup_error from exc
        activate(app, served)
        if tune_process:
            tune_interpreter()
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
            metrics.set_model(None)
            app.state.model = None
            watchers.close()
            log.info("model unloaded")

    app = FastAPI(
        title="HDB resale price service",
        version=_package_version(),
        description=(__doc__ or "").split("\n\n", 1)[0],
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.router.route_class = StrictJSONRoute  # strict JSON bodies (duplicate keys, nesting)
    app.state.model = None
    app.state.startup_error = None
    app.state.source = source
    app.state.model_ref = model_ref
    app.state.registry_name = registry_name
    app.state.schemas = schemas
    app.state.schemas_spec = source.spec
    app.state.load_options = {"level": interval_level, "fast_path": fast_path, "nthread": nthread}
    app.state.metrics = metrics
    app.state.observers = watchers

    def observed(endpoint: str, rows: Any, out: list[dict[str, Any]], model: ServedModel) -> None:
        metrics.observe_predictions(endpoint, out, version_label(model.info))
        if watchers:
            watchers.observe(endpoint, rows, out, model)

    # ---- routes

    @app.post(
        "/predict",
        response_model=Prediction,
        responses=ERROR_RESPONSES,
        summary="Price one flat",
        tags=["predict"],
    )
    async def predict(record: Record, model: ModelDep, request: Request) -> Any:  # type: ignore[valid-type]
        """One row in, one prediction out (scored on the event loop: well under 1 ms)."""
        conflicts = lease_details([record])
        if conflicts:
            return error_response(422, "invalid_request", conflicts, request)
        rows = [record]
        out = model.predict(rows)
        observed("/predict", rows, out, model)
        return out[0]

    @app.post(
        "/predict/batch",
        response_model=BatchPredictions,
        responses=ERROR_RESPONSES,
        summary=f"Price up to {max_batch} flats",
        tags=["predict"],
    )
    def predict_batch(batch: Batch, model: ModelDep, request: Request) -> Any:  # type: ignore[valid-type]
        """``{"records": [...]}`` in, predictions in the same order out (thread pool)."""
        conflicts = lease_details(batch.records, "records")
        if conflicts:
            return error_response(422, "invalid_request", conflicts, request)
        out = model.predict(batch.records)
        observed("/predict/batch", batch.records, out, model)
        return {"count": len(out), "predictions": out}

    @app.get("/health", summary="Liveness", tags=["ops"])
    async def health() -> dict[str, str]:
        """200 while the process is serving (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness", tags=["ops"], responses={503: ERROR_RESPONSES[503]})
    async def ready(request: Request) -> Any:
        """200 once the model is loaded, 503 before."""
        model: ServedModel | None = request.app.state.model
        if model is None:
            return JSONResponse({"ready": False, "model": None}, status_code=503)
        return {"ready": True, "model": model.info, "engine": model.engine.name}

    @app.get("/model", summary="The served model", tags=["ops"], responses=ERROR_RESPONSES)
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
        """Prometheus text exposition of this app's registry (built in the thread pool: a
        collector such as the drift monitor's computes when scraped)."""
        text = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/ping", summary="SageMaker health check", tags=["sagemaker"], responses=ERROR_RESPONSES
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
            **ERROR_RESPONSES,
        },
    )
    async def invocations(request: Request, model: ModelDep) -> Response:
        """SageMaker's inference contract; see "CSV on /invocations" in the module doc."""
        accept_csv = wants_csv(request.headers.get("accept"))
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
            parsed = parse_csv(body, schemas.max_batch)
            if isinstance(parsed, tuple):
                return error_response(*parsed, request)
            shape, payload, adapter = "records", {"records": parsed}, rows_adapter
        elif is_json(content_type):
            payload = loads(body)  # MalformedJSON: 400
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
            oversize = too_long(errors, schemas.max_batch)
            if oversize is not None:
                return error_response(413, "batch_too_large", [oversize], request)
            return error_response(422, "invalid_request", validation_details(errors), request)
        if shape == "single":
            rows, prefix = [validated], None
        elif shape == "list":
            rows, prefix = validated, ""
        else:
            rows, prefix = getattr(validated, shape), shape
        conflicts = lease_details(rows, prefix)
        if conflicts:
            return error_response(422, "invalid_request", conflicts, request)
        if len(rows) <= INLINE_ROWS:
            out = model.predict(rows)
        else:
            out = await run_in_threadpool(model.predict, rows)
        observed("/invocations", rows, out, model)
        if accept_csv:
            text = "".join(
                f"{p['price']!r},{p['interval']['lower']!r},{p['interval']['upper']!r}\n"
                for p in out
            )
            return Response(text, media_type="text/csv")
        result: Any = out[0] if shape == "single" else {"count": len(out), "predictions": out}
        return Response(to_json(result), media_type="application/json")

    install_reload(app, reload_token)
    install_error_handlers(app, schemas.max_batch)
    install_openapi(app, schemas)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
    )
    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hdb-mlops")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


#: The interpreter's thread switch interval in a serving process (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Tune this interpreter for serving, once everything is loaded.

    * ``gc.freeze()``: the objects alive now (the libraries, the model) leave the garbage
      collector's generations. Otherwise a full collection walks them all, 40-200 ms during
      which no request is answered.
    * ``sys.setswitchinterval(SWITCH_INTERVAL_S)``: a thread that needs the interpreter lock
      gets it from a busy one within 1 ms instead of 5 ms. The event loop's thread shares the
      lock with the thread pool building ``/metrics`` and with chapter 6's featuriser and log
      writer; at 200 requests a second, 5 ms waits took the p99 latency over its bar.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` and multi-worker serving: the model from
    ``$HDB_MLOPS_MODEL`` (else the ``champion`` alias), at most ``$HDB_MLOPS_MAX_BATCH``
    rows per request, ``$HDB_MLOPS_BODY_TIMEOUT`` seconds to send a body, and
    ``$HDB_MLOPS_FAST_PATH=0`` to serve through the loader path."""
    return create_app(
        os.environ.get(MODEL_ENV) or None,
        max_batch=int(os.environ.get(MAX_BATCH_ENV) or DEFAULT_MAX_BATCH),
        fast_path=fast_path_from_env(),
        body_timeout=body_timeout_from_env(),
        tune_process=True,
    )


def body_timeout_from_env() -> float:
    """``$HDB_MLOPS_BODY_TIMEOUT`` seconds, else the default (10 s)."""
    return float(os.environ.get(BODY_TIMEOUT_ENV) or DEFAULT_BODY_TIMEOUT_S)


def fast_path_from_env() -> bool:
    """False when ``$HDB_MLOPS_FAST_PATH`` is 0, false or no (the loader path)."""
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in ("0", "false", "no")
