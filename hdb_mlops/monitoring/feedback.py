"""Live accuracy: ``POST /feedback`` takes the actual price of a flat the service priced,
matches it with the logged prediction (:mod:`hdb_mlops.monitoring.predlog`) and adds its
absolute percentage error (APE, a ratio: 0.05 is 5 %) to a Prometheus histogram by model
version. Rolling MAPE is then ``rate(_sum[w]) / rate(_count[w])`` in a recording rule.

A body is ``{"prediction_id": "...", "actual_price": 512000}`` or a batch
``{"feedback": [...]}`` of at most 1000 such items (strict: unknown fields are refused). Each
item gets an outcome, counted in ``hdb_feedback_total{outcome}``:

* ``accepted`` (202): stored, APE observed;
* ``late`` (202): the prediction is older than ``feedback_max_age_s`` (90 days): stored, but
  not live accuracy any more (not in the histogram);
* ``duplicate`` (409): the prediction already has feedback; nothing changes;
* ``pending`` (202): the prediction is not in the log (yet: another worker may not have
  written it). It is held for ``grace_s`` (30 s) and matched when the prediction lands,
  then counted again as ``accepted`` or ``late``, or as ``unknown`` when the grace ends;
* ``unknown`` (404): no such prediction, and no grace (``grace_s`` 0, or too many pending);
* ``invalid`` (400/422/413): a body that fails validation (the whole request).

Predictions that get no feedback within ``feedback_max_age_s`` are marked expired by a sweep
on the log's writer thread and counted in ``hdb_feedback_expired_total`` ("never comes").
In a batch answer the items' outcomes are listed and the status is 202 whatever they are.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json

from hdb_mlops.monitoring.predlog import PredictionLog
from hdb_mlops.serving.errors import error_response, is_json, too_long, validation_details
from hdb_mlops.serving.jsonbody import MalformedJSON, loads
from hdb_mlops.serving.metrics import FeedbackMetrics, version_label

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 90 * 86400.0
DEFAULT_GRACE_S = 30.0
DEFAULT_MAX_ITEMS = 1000
#: Feedback items held for a prediction not in the log yet (beyond: ``unknown``).
MAX_PENDING = 10_000
#: Seconds between sweeps for predictions whose feedback window passed.
EXPIRE_EVERY_S = 60.0
#: Seconds before the last sweep's cut-off that the next sweep looks at again.
EXPIRE_OVERLAP_S = 300.0


@dataclass(frozen=True)
class Feedback:
    """What became of one actual price."""

    prediction_id: str
    outcome: str  # one of hdb_mlops.serving.metrics.FEEDBACK_OUTCOMES
    ape: float | None = None
    model_version: str | None = None


def record_feedback(
    plog: PredictionLog,
    prediction_id: str,
    actual_price: float,
    *,
    received_at: float | None = None,
    max_age_s: float | None = None,
) -> Feedback | None:
    """Store the actual price of a logged prediction; None when it is not in the log (yet).
    The outcome is ``accepted``, ``late`` (older than ``max_age_s``) or ``duplicate``
    (feedback was stored before: nothing changes). The APE is |price - actual| / actual."""
    received_at = time.time() if received_at is None else float(received_at)
    with plog.database() as db:
        found = db.execute(
            "SELECT price, model_version, logged_at FROM predictions WHERE prediction_id = ?",
            (prediction_id,),
        ).fetchone()
        if found is None:
            return None
        price, version, logged_at = found
        ape = abs(price - actual_price) / actual_price
        late = max_age_s is not None and received_at - logged_at > max_age_s
        outcome = "late" if late else "accepted"
        cursor = db.execute(
            "INSERT OR IGNORE INTO feedback (prediction_id, received_at, actual_price, ape, "
            "outcome) VALUES (?, ?, ?, ?, ?)",
            (prediction_id, received_at, float(actual_price), ape, outcome),
        )
        if cursor.rowcount == 0:
            outcome = "duplicate"
    return Feedback(prediction_id, outcome, ape, version)


def known_ids(plog: PredictionLog, prediction_ids: Iterable[str]) -> set[str]:
    """The ids among ``prediction_ids`` that are in the log."""
    ids = list(prediction_ids)
    found: set[str] = set()
    with plog.database() as db:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT prediction_id FROM predictions WHERE prediction_id IN ({marks})"
            found.update(row[0] for row in db.execute(sql, chunk))
    return found


def expire_predictions(
    plog: PredictionLog, max_age_s: float, now: float | None = None, since: float = 0.0
) -> int:
    """Mark the predictions logged from ``since`` until ``max_age_s`` ago that never got
    feedback as expired; returns how many were newly marked."""
    now = time.time() if now is None else now
    with plog.database() as db:
        cursor = db.execute(
            "UPDATE predictions SET expired_at = ? WHERE logged_at >= ? AND logged_at < ? "
            "AND expired_at IS NULL AND NOT EXISTS (SELECT 1 FROM feedback f "
            "WHERE f.prediction_id = predictions.prediction_id)",
            (now, since, now - max_age_s),
        )
        return int(cursor.rowcount)


class FeedbackDesk:
    """Matches actual prices with logged predictions (see the module docstring)."""

    def __init__(
        self,
        plog: PredictionLog,
        metrics: FeedbackMetrics,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        grace_s: float = DEFAULT_GRACE_S,
        max_pending: int = MAX_PENDING,
        expire_every_s: float = EXPIRE_EVERY_S,
    ):
        self.log = plog
        self.metrics = metrics
        self.max_age_s = max_age_s
        self.grace_s = grace_s
        self.max_pending = max_pending
        self.expire_every_s = expire_every_s
        self._pending: dict[str, tuple[float, float]] = {}  # id -> (actual, received_at)
        self._lock = threading.Lock()
        self._expired_until = 0.0
        self._last_expiry = -math.inf
        plog.on_written = self._written
        plog.on_tick = self.sweep
        plog.on_dropped = metrics.log_dropped.inc
        metrics.pending.set_function(lambda: len(self._pending))
        metrics.log_rows.set_function(lambda: plog.rows)

    def _count(self, result: Feedback) -> Feedback:
        self.metrics.feedback.labels(result.outcome).inc()
        if result.outcome == "accepted" and result.ape is not None:
            self.metrics.ape.labels(version_label({"version": result.model_version})).observe(
                result.ape
            )
        return result

    def submit(self, prediction_id: str, actual_price: float, *, flush: bool = True) -> Feedback:
        """Take one actual price (blocking: sqlite). Counted by outcome. ``flush``: when the
        prediction is not in the log, wait for the log's queue to be written and look again
        (a batch flushes once, first)."""
        now = time.time()
        with self._lock:
            if prediction_id in self._pending:
                return self._count(Feedback(prediction_id, "duplicate"))
        result = record_feedback(
            self.log, prediction_id, actual_price, received_at=now, max_age_s=self.max_age_s
        )
        if result is None and flush and self.log.flush(timeout=2.0):  # still in the queue?
            result = record_feedback(
                self.log, prediction_id, actual_price, received_at=now, max_age_s=self.max_age_s
            )
        if result is not None:
            return self._count(result)
        with self._lock:
            if prediction_id in self._pending:
                return self._count(Feedback(prediction_id, "duplicate"))
            if self.grace_s > 0 and len(self._pending) < self.max_pending:
                self._pending[prediction_id] = (actual_price, now)
                return self._count(Feedback(prediction_id, "pending"))
        return self._count(Feedback(prediction_id, "unknown"))

    def _resolve(self, ids: Iterable[str]) -> None:
        for prediction_id in ids:
            with self._lock:
                held = self._pending.pop(prediction_id, None)
            if held is None:
                continue
            actual, received_at = held
            result = record_feedback(
                self.log,
                prediction_id,
                actual,
                received_at=received_at,
                max_age_s=self.max_age_s,
            )
            self._count(result or Feedback(prediction_id, "unknown"))

    def _written(self, ids: list[str]) -> None:
        """Writer-thread hook: match pending items with predictions just written."""
        if self._pending:
            with self._lock:
                hits = [i for i in ids if i in self._pending]
            self._resolve(hits)

    def sweep(self, now: float | None = None) -> None:
        """Resolve pending items whose prediction is now in the log (from any worker), count
        those past their grace as unknown, and (every ``expire_every_s``) mark predictions
        past ``max_age_s`` without feedback as expired. Runs on the log's writer thread."""
        now = time.time() if now is None else now
        if self._pending:
            with self._lock:
                held = list(self._pending)
            self._resolve(known_ids(self.log, held))
            with self._lock:
                gone = [i for i, (_, t) in self._pending.items() if now - t >= self.grace_s]
                for prediction_id in gone:
                    del self._pending[prediction_id]
            for prediction_id in gone:
                self._count(Feedback(prediction_id, "unknown"))
        if now >= self._last_expiry + self.expire_every_s:
            self._last_expiry = now
            # from a little before the last sweep's cut-off: rows another worker wrote late
            since = max(0.0, self._expired_until - EXPIRE_OVERLAP_S)
            expired = expire_predictions(self.log, self.max_age_s, now, since)
            self._expired_until = now - self.max_age_s
            if expired:
                self.metrics.expired.inc(expired)

    @property
    def pending(self) -> int:
        """Feedback items held now."""
        return len(self._pending)


# ------------------------------------------------------------------------- the route


def _prediction_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(
            "prediction_id must be the prediction_id of a prediction (a UUID)"
        ) from None


class FeedbackItem(BaseModel):
    """The actual price of a flat the service priced."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: Annotated[
        str,
        StringConstraints(strict=True, min_length=1, max_length=64),
        Field(
            description="The prediction_id of the prediction's answer (a UUID).",
            json_schema_extra={"format": "uuid"},
        ),
    ]
    actual_price: Annotated[
        float,
        Field(
            strict=True,
            gt=0,
            le=100_000_000,
            allow_inf_nan=False,
            description="The price the flat sold for (SGD, a JSON number).",
        ),
    ]

    @field_validator("prediction_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return _prediction_id(value)


class FeedbackAnswer(BaseModel):
    """What became of one feedback item."""

    prediction_id: str
    outcome: str = Field(description="accepted, late, pending, duplicate or unknown.")
    absolute_percentage_error: float | None = Field(
        description="|predicted - actual| / actual (a ratio), once matched."
    )


def _answer(result: Feedback) -> dict[str, Any]:
    return {
        "prediction_id": result.prediction_id,
        "outcome": result.outcome,
        "absolute_percentage_error": result.ape if result.outcome != "pending" else None,
    }


def install_feedback(app: FastAPI, desk: FeedbackDesk, max_items: int = DEFAULT_MAX_ITEMS) -> None:
    """Add ``POST /feedback`` (one item or ``{"feedback": [...]}``) to ``app``."""
    from pydantic import create_model

    items = Annotated[list[FeedbackItem], Field(min_length=1, max_length=max_items)]
    Batch = create_model(
        "FeedbackBatch", __config__=ConfigDict(extra="forbid"), feedback=(items, ...)
    )
    single, batch = TypeAdapter(FeedbackItem), TypeAdapter(Batch)
    item_schema = FeedbackItem.model_json_schema()
    body_schema = {
        "anyOf": [
            item_schema,
            {
                "type": "object",
                "properties": {
                    "feedback": {
                        "type": "array",
                        "items": item_schema,
                        "minItems": 1,
                        "maxItems": max_items,
                    }
                },
                "required": ["feedback"],
                "additionalProperties": False,
            },
        ]
    }
    metrics = desk.metrics

    def invalid(status: int, error: str, detail: list, request: Request) -> Response:
        metrics.feedback.labels("invalid").inc()
        return error_response(status, error, detail, request)

    @app.post(
        "/feedback",
        status_code=202,
        summary=f"Actual prices for predictions (one, or up to {max_items})",
        tags=["monitoring"],
        response_model=FeedbackAnswer,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        },
        responses={
            404: {"description": "No such prediction (and no grace)."},
            409: {"description": "The prediction already has feedback."},
        },
    )
    async def feedback(request: Request) -> Response:
        """The actual price of a priced flat: matched with the logged prediction, its
        absolute percentage error observed (see the module docstring for the outcomes)."""
        content_type = request.headers.get("content-type")
        if not is_json(content_type):
            reason = f"{content_type or 'no content type'} is not supported: send application/json"
            return invalid(
                415,
                "unsupported_media_type",
                [{"field": "content-type", "reason": reason}],
                request,
            )
        try:
            payload = loads(await request.body())
        except MalformedJSON as exc:
            return invalid(
                400, "malformed_json", [{"field": exc.field, "reason": exc.reason}], request
            )
        is_batch = isinstance(payload, dict) and "feedback" in payload
        try:
            parsed = (batch if is_batch else single).validate_python(payload)
        except PydanticValidationError as exc:
            errors = exc.errors(include_url=False)
            oversize = too_long(errors, max_items)
            if oversize is not None:
                oversize["reason"] = oversize["reason"].replace("rows", "items")
                return invalid(413, "batch_too_large", [oversize], request)
            return invalid(422, "invalid_request", validation_details(errors), request)
        if not is_batch:
            result = await run_in_threadpool(desk.submit, parsed.prediction_id, parsed.actual_price)
            if result.outcome == "duplicate":
                reason = "this prediction already has feedback (or feedback waiting for it)"
                return error_response(
                    409,
                    "duplicate_feedback",
                    [{"field": "prediction_id", "reason": reason}],
                    request,
                )
            if result.outcome == "unknown":
                reason = "no prediction with this prediction_id in the prediction log"
                return error_response(
                    404,
                    "unknown_prediction",
                    [{"field": "prediction_id", "reason": reason}],
                    request,
                )
            return Response(to_json(_answer(result)), 202, media_type="application/json")

        def submit_all() -> list[Feedback]:
            desk.log.flush(timeout=2.0)
            return [
                desk.submit(i.prediction_id, i.actual_price, flush=False) for i in parsed.feedback
            ]

        results = await run_in_threadpool(submit_all)
        outcomes: dict[str, int] = {}
        for r in results:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        body = {
            "count": len(results),
            "outcomes": outcomes,
            "results": [_answer(r) for r in results],
        }
        return Response(to_json(body), 202, media_type="application/json")
