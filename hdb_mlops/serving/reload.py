"""Serving a new model without a restart: ``POST /admin/reload``, and the one place a loaded
model is put in service (:func:`activate`, which start-up uses too).

A reload resolves the app's model reference again: the registry alias ``champion`` may now
name another version, a bundle directory may hold another bundle. The new bundle is loaded
and verified off the event loop while the old model keeps serving; then ``app.state.model``
is replaced in one assignment. A request reads ``app.state.model`` once (its dependency), so
requests in flight finish on the old model and the next ones get the new one: no request
fails across a reload. A load that fails leaves the old model serving (409 with the reason).

The route is guarded by a bearer token from ``$HDB_MLOPS_RELOAD_TOKEN`` (read at each call):
unset, reloading is disabled (403); a missing or wrong token is 401 (compared in constant
time). The request and response bodies are JSON; the request needs no body.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from hdb_mlops.serving.errors import error_response
from hdb_mlops.serving.loading import ModelLoadError, ModelSource, resolve_model_ref
from hdb_mlops.serving.served import ServedModel

log = logging.getLogger(__name__)

RELOAD_TOKEN_ENV = "HDB_MLOPS_RELOAD_TOKEN"
RELOAD_PATH = "/admin/reload"


def load_served(app: FastAPI, source: ModelSource) -> ServedModel:
    """Load, verify and prepare the model of ``source`` with the app's serving options (its
    request schemas, interval level, engine choice and thread count). Blocking."""
    return ServedModel.load(source, app.state.schemas, **app.state.load_options)


def activate(app: FastAPI, served: ServedModel) -> None:
    """Put ``served`` in service: ``app.state.model`` (one assignment), ``hdb_model_info`` and
    ``hdb_model_loaded``, then the observers' ``model_changed``."""
    app.state.model = served
    app.state.source = served.source
    app.state.metrics.set_model(served.info)
    app.state.observers.model_changed(served)


def describe_served(served: ServedModel | None) -> dict[str, Any] | None:
    """The short description of a served model in the reload answer."""
    if served is None:
        return None
    return {**served.info, "loaded_at": served.loaded_at, "source": served.source.describe()}


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_token(request: Request, expected: str | None) -> Response | None:
    """The 403 (reloading disabled) or 401 (no or wrong token) answer, or None when the
    request carries ``Authorization: Bearer <expected>``."""
    if not expected:
        return error_response(
            403,
            "reload_disabled",
            [{"field": "", "reason": f"reload is disabled: set {RELOAD_TOKEN_ENV}"}],
            request,
        )
    given = _bearer(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        reason = (
            "send the header Authorization: Bearer <token>"
            if given is None
            else f"the token is not the service's ${RELOAD_TOKEN_ENV}"
        )
        return error_response(
            401,
            "unauthorized",
            [{"field": "authorization", "reason": reason}],
            request,
            headers={"www-authenticate": "Bearer"},
        )
    return None


async def reload_model(app: FastAPI) -> dict[str, Any]:
    """Resolve the app's model reference again and serve what it names now.

    Returns ``{"reloaded", "previous", "model"}`` (``reloaded`` False when the reference
    still names the served bundle). Raises :class:`ModelLoadError` when the new model
    cannot be resolved or loaded, or needs other request fields (another feature spec): the
    old model keeps serving then. One reload at a time.
    """
    lock: asyncio.Lock = app.state.reload_lock
    async with lock:
        previous: ServedModel | None = app.state.model
        started = time.perf_counter()
        source = await run_in_threadpool(
            resolve_model_ref, app.state.model_ref, registry_name=app.state.registry_name
        )
        if source.spec != app.state.schemas_spec:
            raise ModelLoadError(
                f"{source.describe()} has another feature spec than the served model (its "
                "request fields differ): restart the service to serve it"
            )
        if previous is not None and previous.bundle.sha256 == source.expected_sha256:
            return {
                "reloaded": False,
                "reason": f"{source.describe()} is the served bundle",
                "previous": describe_served(previous),
                "model": describe_served(previous),
            }
        served = await run_in_threadpool(load_served, app, source)
        activate(app, served)
        log.info(
            "model reloaded",
            extra={
                **{f"model_{k}": v for k, v in served.info.items()},
                "previous_version": previous.info["version"] if previous else None,
                "previous_sha256": previous.info["sha256"] if previous else None,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return {
            "reloaded": True,
            "previous": describe_served(previous),
            "model": describe_served(served),
        }


def install_reload(app: FastAPI, token: str | None = None) -> None:
    """Add ``POST /admin/reload`` to ``app`` (``token``: the bearer token; None reads
    ``$HDB_MLOPS_RELOAD_TOKEN`` at each call)."""
    from hdb_mlops.serving.errors import ERROR_RESPONSES
    from hdb_mlops.serving.request_schema import ErrorResponse

    app.state.reload_lock = asyncio.Lock()
    metrics = app.state.metrics

    @app.post(
        RELOAD_PATH,
        summary="Serve the model the reference names now (e.g. a new champion)",
        tags=["ops"],
        responses={
            401: {"model": ErrorResponse, "description": "No or a wrong bearer token."},
            403: {"model": ErrorResponse, "description": f"${RELOAD_TOKEN_ENV} is not set."},
            409: {"model": ErrorResponse, "description": "The new model failed to load."},
            503: ERROR_RESPONSES[503],
        },
    )
    async def reload(request: Request) -> Any:
        """Resolve the model reference again and swap the served model without a restart
        (bearer token from ``$HDB_MLOPS_RELOAD_TOKEN``)."""
        expected = token if token is not None else os.environ.get(RELOAD_TOKEN_ENV, "")
        refused = check_token(request, expected.strip() or None)
        if refused is not None:
            metrics.reloads.labels("unauthorized").inc()
            return refused
        try:
            answer = await reload_model(app)
        except Exception as exc:  # ModelLoadError, a broken bundle, the registry: never a 500
            metrics.reloads.labels("failed").inc()
            log.warning(
                "model reload failed: %s", exc, exc_info=not isinstance(exc, ModelLoadError)
            )
            return error_response(
                409,
                "reload_failed",
                [{"field": "model", "reason": f"{exc}; the previous model is still serving"}],
                request,
            )
        metrics.reloads.labels("ok").inc()
        return answer
