"""The service's JSON error shape and the translation of validation errors into it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from hdb_mlops.serving.request_schema import REQUEST_COLUMNS, ErrorResponse

log = logging.getLogger(__name__)


def _error_body(
    error: str, detail: list[dict[str, str]], request: Request | None = None
) -> dict[str, Any]:
    rid = request_id_of(request) if request is not None else None
    return {"error": error, "detail": detail, "request_id": rid}


def request_id_of(request: Request) -> str | None:
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


def too_long(errors: Sequence[dict[str, Any]], max_batch: int) -> dict[str, str] | None:
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed JSON or CSV.",
        413: "Too many rows (over max_batch) or a body over the size limit.",
        415: "Unsupported Content-Type.",
        422: "A field is invalid; `detail` names it (e.g. `records.0.town`).",
        503: "The model is not loaded.",
    }.items()
}


ERROR_NAMES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "not_ready",
}
