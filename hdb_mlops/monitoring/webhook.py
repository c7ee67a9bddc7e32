"""The Alertmanager webhook receiver that closes chapter 6's loop: a firing model alert
starts one retraining in the background (:mod:`hdb_mlops.monitoring.retrain`); when the gate
promotes the challenger, the service is told to reload its champion.

Endpoints (FastAPI, served by uvicorn: :func:`create_receiver_app`, :func:`serve_receiver`):

* ``POST /alerts``: Alertmanager's webhook JSON (version 4), validated; a bad payload gets
  400/422 ``{"error", "detail": [{"field", "reason"}]}``. It answers at once (202 when a
  retraining started, 200 for any other decision): Alertmanager must never time out;
* ``GET /health``, ``GET /metrics`` (``hdb_retraining_runs_total{outcome}``,
  ``hdb_retraining_in_progress``, ``hdb_retraining_last_run_timestamp_seconds``,
  ``hdb_alerts_received_total{alertname}``) and ``GET /audit`` (the audit log as JSON).

The decisions (the guard rails: model alerts only, no duplicate, one at a time, a
cool-down) and the retraining itself are :class:`~hdb_mlops.monitoring.retrainer.Retrainer`'s.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hdb_mlops.monitoring.retrainer import Retrainer

log = logging.getLogger(__name__)

DEFAULT_PORT = 9095
#: Seconds a shutting-down receiver waits for the retraining in progress.
SHUTDOWN_WAIT_S = 60.0


# ------------------------------------------------------------------------- the payload


class Alert(BaseModel):
    """One alert of an Alertmanager webhook payload."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str = Field(min_length=1)

    @field_validator("labels")
    @classmethod
    def _has_alertname(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("labels must include alertname")
        return labels

    @field_validator("startsAt")
    @classmethod
    def _is_time(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("startsAt must be an RFC 3339 time (2025-01-31T08:00:00Z)") from None
        return value

    def record(self) -> dict[str, Any]:
        """What the audit log keeps of it."""
        return {
            "alertname": self.labels.get("alertname"),
            "status": self.status,
            "labels": self.labels,
            "fingerprint": self.fingerprint,
            "startsAt": self.startsAt,
        }


class AlertPayload(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str | None = None
    truncatedAlerts: int = 0
    alerts: list[Alert] = Field(min_length=1)


# ------------------------------------------------------------------------- the app


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc[1:]] if loc[:1] == ("body",) else [str(p) for p in loc]
    return ".".join(parts) or "body"


def create_receiver_app(
    retrainer: Retrainer | None = None, *, shutdown_wait_s: float = SHUTDOWN_WAIT_S, **kwargs: Any
) -> Any:
    """The receiver as a FastAPI app around ``retrainer`` (default: a
    :class:`Retrainer` made with ``kwargs``); the retrainer is ``app.state.retrainer``. On
    shutdown a retraining in progress gets ``shutdown_wait_s`` seconds to finish; after
    that its child process goes on alone (it still holds the lock; its audit record and the
    service's reload are lost)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    retrainer = retrainer or Retrainer(**kwargs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if retrainer.busy:
            log.warning("waiting up to %g s for the retraining in progress", shutdown_wait_s)
            if not await run_in_threadpool(retrainer.wait, shutdown_wait_s):
                log.warning("the retraining goes on without the receiver (see its lock file)")

    app = FastAPI(
        title="HDB retraining webhook",
        description=(__doc__ or "").split("\n\n", 1)[0],
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.retrainer = retrainer
    app.state.startup_error = None

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for err in exc.errors():
            reason = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            if err.get("type") == "json_invalid":
                return JSONResponse(
                    {"error": "malformed_json", "detail": [{"field": "body", "reason": reason}]},
                    status_code=400,
                )
            detail.append({"field": _field(tuple(err.get("loc", ()))), "reason": reason})
        return JSONResponse({"error": "invalid_payload", "detail": detail}, status_code=422)

    @app.post("/alerts", status_code=202, summary="Alertmanager webhook (version 4)")
    def alerts(payload: AlertPayload) -> JSONResponse:
        """Decide on the payload (see the module docstring) and answer at once."""
        status, body = retrainer.handle(payload)
        return JSONResponse(body, status_code=status)

    @app.get("/health", summary="Liveness")
    def health() -> dict[str, Any]:
        """200 while the receiver runs; says whether a retraining is in progress."""
        return {"status": "ok", "retraining": retrainer.busy}

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        """Prometheus text exposition of the receiver's registry."""
        return Response(generate_latest(retrainer.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/audit", summary="The audit log")
    def audit(limit: int | None = None) -> dict[str, Any]:
        """Every decision, oldest first (the latest ``limit`` when given)."""
        records = retrainer.audit.records()
        if limit is not None:
            records = records[-limit:] if limit > 0 else []
        return {"count": len(records), "records": records}

    return app


def serve_receiver(
    host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, log_level: str = "info", **kwargs: Any
) -> None:
    """Run the receiver with uvicorn until SIGINT/SIGTERM (what ``hdb-mlops retrainer``
    calls); ``kwargs`` go to :class:`Retrainer`."""
    import uvicorn

    app = create_receiver_app(**kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
