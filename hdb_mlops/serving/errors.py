"""The service's JSON error shape, the translation of validation errors into it, and the
app's exception handlers (:func:`install_error_handlers`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import PydanticSerializationError, to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from hdb_mlops.serving.engines import PredictionError
from hdb_mlops.serving.jsonbody import MalformedJSON
from hdb_mlops.serving.request_fields import lease_conflict
from hdb_mlops.serving.request_schema import REQUEST_COLUMNS, ErrorResponse

log = logging.getLogger(__name__)

#: Where :func:`error_response` leaves the error code in ``scope["state"]``.
ERROR_CODE_KEY = "error_code"


def _error_body(
    error: str, detail: list[dict[str, str]], request: Request | None = None
) -> dict[str, Any]:
    rid = request_id_of(request) if request is not None else None
    return {"error": error, "detail": detail, "request_id": rid}


def request_id_of(request: Request) -> str | None:
    """The request id the middleware gave this request (None outside the middleware)."""
    return request.scope.get("state", {}).get("request_id")


def error_json(body: dict[str, Any]) -> bytes:
    """``body`` as JSON; a lone surrogate (a field name such as ``"\\ud800"``, which
    ``json.loads`` lets through) is written as its ``\\u`` escape instead of failing."""
    try:
        return to_json(body)
    except PydanticSerializationError:
        return json.dumps(body).encode()


def error_response(
    status: int,
    error: str,
    detail: list[dict[str, str]],
    request: Request | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error response in the service's error shape. With ``request``, the error code
    is also left in the request's scope for the middleware's ``hdb_rejected_requests_total``."""
    if request is not None:
        request.scope.setdefault("state", {})[ERROR_CODE_KEY] = error
    return Response(
        content=error_json(_error_body(error, detail, request)),
        status_code=status,
        media_type="application/json",
        headers=headers,
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


def lease_details(rows: Sequence[Any], prefix: str | None = None) -> list[dict[str, str]]:
    """``[{"field", "reason"}]`` for the validated rows whose remaining_lease contradicts
    their lease_commence_date and month. ``prefix`` None: one row (``remaining_lease``);
    ``""``: a bare list (``3.remaining_lease``); ``"records"``: ``records.3.remaining_lease``."""
    detail = []
    for i, row in enumerate(rows):
        reason = lease_conflict(row)
        if reason is not None:
            where = "" if prefix is None else f"{prefix}.{i}." if prefix else f"{i}."
            detail.append({"field": f"{where}remaining_lease", "reason": reason})
    return detail


def too_long(errors: Sequence[dict[str, Any]], max_batch: int) -> dict[str, str] | None:
    """The 413 detail when a validation error is a batch over ``max_batch`` rows."""
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


def is_json(content_type: str | None) -> bool:
    """Whether ``content_type`` is application/json or an ``application/*+json`` type."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body over the limit (an HTTPException so that FastAPI's body
    parsing passes it through to the JSON handler instead of turning it into a 400)."""

    def __init__(self, limit: int):
        super().__init__(
            413, f"the request body is over {limit} bytes: send fewer rows per request"
        )


class BodyTimeout(StarletteHTTPException):
    """Raised when the body has not fully arrived within the body timeout (a client that
    declared more bytes than it sends): 408, and the connection is closed."""

    def __init__(self, timeout: float):
        super().__init__(
            408,
            f"the request body did not arrive within {timeout:g} s: send the whole body "
            "(as many bytes as Content-Length says) without pauses",
            headers={"connection": "close"},
        )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or CSV (also duplicate keys, NaN, nesting too deep).",
        408: "The body did not arrive within the body timeout.",
        413: "Too many rows (over max_batch) or a body over the size limit.",
        415: "Unsupported Content-Type.",
        422: "A field is invalid; `detail` names it (e.g. `records.0.town`).",
        503: "The model is not loaded.",
    }.items()
}


ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "not_ready",
}


def install_error_handlers(app: FastAPI, max_batch: int) -> None:
    """The app's exception handlers: every error is the JSON error shape (``max_batch`` is
    named by the 413 for a batch over it)."""

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        invalid_json = [e for e in errors if e.get("type") == "json_invalid"]
        if invalid_json:  # FastAPI's own decoding (a route without StrictJSONRoute)
            err = invalid_json[0]
            reason = str((err.get("ctx") or {}).get("error") or "invalid JSON")
            pos = tuple(err.get("loc", ()))[-1:]
            where = f" at character {pos[0]}" if pos and isinstance(pos[0], int) else ""
            return error_response(
                400, "malformed_json", [{"field": "body", "reason": reason + where}], request
            )
        content_type = request.headers.get("content-type")
        body_errors = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
        if body_errors and not is_json(content_type):
            missing_body = all(
                e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",)
                for e in body_errors
            )
            if not (missing_body and not content_type):
                reason = (
                    f"{content_type or 'no content type'} is not supported: send application/json"
                )
                return error_response(
                    415,
                    "unsupported_media_type",
                    [{"field": "content-type", "reason": reason}],
                    request,
                )
        oversize = too_long(errors, max_batch)
        if oversize is not None:
            return error_response(413, "batch_too_large", [oversize], request)
        detail = validation_details(errors, strip=1)
        for item in detail:
            if item["field"] == "body" and item["reason"] == "field required":
                item["reason"] = "a JSON body is required"
        return error_response(422, "invalid_request", detail, request)

    @app.exception_handler(MalformedJSON)
    async def on_malformed_json(request: Request, exc: MalformedJSON) -> Response:
        detail = [{"field": exc.field, "reason": exc.reason}]
        return error_response(400, "malformed_json", detail, request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        where = {404: "path", 405: "method", 408: "body", 413: "body"}.get(status, "")
        if status == 404:
            reason = f"no route {request.url.path}"
        elif status == 405:
            reason = f"{request.method} is not allowed on {request.url.path}"
        else:
            reason = str(exc.detail)
        return error_response(
            status,
            ERROR_NAMES.get(status, f"http_{status}"),
            [{"field": where, "reason": reason}],
            request,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(PredictionError)
    async def on_prediction_error(request: Request, exc: PredictionError) -> Response:
        log.error("prediction failed: %s", exc, extra={"request_id": request_id_of(request)})
        return error_response(
            500, "prediction_failed", [{"field": "", "reason": "the model failed"}], request
        )
