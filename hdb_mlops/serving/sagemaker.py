"""SageMaker's inference contract: content negotiation and CSV rows on /invocations, and
the OpenAPI description of its two request media types.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Any

from fastapi import FastAPI
from pydantic import TypeAdapter

from hdb_mlops.data.schema import BASE_COLUMNS, OFFICIAL_2017_COLUMNS
from hdb_mlops.serving.request_schema import REQUEST_COLUMNS, Schemas

log = logging.getLogger(__name__)


_CSV_PRICE = "resale_price"


_CSV_LAYOUTS: dict[int, tuple[str, ...]] = {
    9: tuple(c for c in BASE_COLUMNS if c != _CSV_PRICE),
    10: REQUEST_COLUMNS,
    11: OFFICIAL_2017_COLUMNS,
}


_CSV_OPTIONAL = frozenset({"block", "street_name", "remaining_lease"})
#: CSV fields that are JSON numbers in a request row (a CSV cell is text).
_CSV_NUMBERS = frozenset({"floor_area_sqm", "lease_commence_date"})
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_value(column: str, text: str) -> str | int | float:
    """A CSV cell as the JSON value of a request row: surrounding spaces stripped, and a
    number for the numeric columns when the cell is one (an int when it has only digits);
    anything else stays text, which validation then names."""
    text = text.strip()
    if column in _CSV_NUMBERS and _NUMBER_RE.fullmatch(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return text


def wants_csv(accept: str | None) -> bool | None:
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


def parse_csv(body: bytes, max_batch: int) -> list[dict[str, Any]] | tuple[int, str, list]:
    """CSV rows as dicts of the official column names (see the module docstring; cells as
    :func:`csv_value`), or ``(status, error, detail)``."""
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
                col: csv_value(col, value)
                for col, value in zip(columns, row, strict=True)
                if col != _CSV_PRICE and not (col in _CSV_OPTIONAL and not value.strip())
            }
        )
    return records


def install_openapi(app: FastAPI, schemas: Schemas) -> None:
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
