"""The retraining loop's audit log: one JSON line per decision, append-only.

Every call of the alert webhook ends in exactly one record, whatever was decided: what fired
(alert names, labels, fingerprints, ``startsAt``), the decision (``retrain``,
``skipped_duplicate``, ``skipped_cooldown``, ``skipped_busy`` or ``ignored``) and why, and for
a retraining what it was trained on (months and rows, from the data files and from the
feedback), the gate's numbers (candidate and champion MAPE on the same window, the margin,
the reasons), the outcome (``promoted``, ``rejected`` or ``failed`` with the error) and the
service's answer to the reload.

The log is the loop's memory as well as its record: the receiver reads it back to know which
alerts it has already retrained on and when the last retraining started, so a restarted
receiver keeps the same guard rails. Records are appended under an exclusive ``flock`` and
fsynced; a line torn by a crash mid-write (only ever the last one) is skipped when reading.

:func:`read_audit` gives the log as a DataFrame, one row per decision, for the notebook.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config

log = logging.getLogger(__name__)

#: Where the receiver keeps its log unless told otherwise.
DEFAULT_AUDIT_LOG = config.RUNS_DIR / "monitor" / "retraining-audit.jsonl"
DECISIONS = ("retrain", "skipped_duplicate", "skipped_cooldown", "skipped_busy", "ignored")
OUTCOMES = ("promoted", "rejected", "failed", *DECISIONS[1:])
#: Columns of :func:`read_audit`, in order.
AUDIT_COLUMNS = [
    "time",
    "decision",
    "outcome",
    "alertnames",
    "fingerprints",
    "reason",
    "version",
    "train_months",
    "train_rows",
    "train_rows_feedback",
    "window_months",
    "window_rows",
    "candidate_mape",
    "champion_mape",
    "champion_version",
    "margin",
    "gate_reasons",
    "reloaded",
    "served_version",
    "seconds",
    "error",
]


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (the log's time stamps)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def alert_key(alert: dict[str, Any]) -> str:
    """What identifies one firing of an alert: its fingerprint and ``startsAt``. Alertmanager
    resends the same firing (``repeat_interval``) with the same key; a new firing after it
    resolved has a new ``startsAt``."""
    return f"{alert.get('fingerprint', '')}@{alert.get('startsAt', '')}"


class AuditLog:
    """An append-only JSON-lines file of decisions (see the module docstring)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else DEFAULT_AUDIT_LOG

    @contextlib.contextmanager
    def _locked(self, mode: str) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, mode, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if "a" in mode else fcntl.LOCK_SH)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one decision (``time`` is added when missing) and return it as written."""
        if record.get("decision") not in DECISIONS:
            raise ValueError(f"audit record decision must be one of {', '.join(DECISIONS)}")
        record = {"time": now_iso(), **record}
        line = json.dumps(record, sort_keys=True, default=str, allow_nan=False)
        with self._locked("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first ([] when the log does not exist yet). A torn last line
        is skipped with a warning; a broken line elsewhere raises ValueError naming it."""
        if not self.path.exists():
            return []
        with self._locked("r") as handle:
            text = handle.read()
        lines = text.split("\n")
        out = []
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines) - 1:  # no newline after it: a write cut short
                    log.warning("%s: skipping the torn last line %d", self.path, number + 1)
                    continue
                raise ValueError(
                    f"{self.path}: line {number + 1} is not a JSON record ({exc.msg}): "
                    "the audit log is append-only, restore it from a backup or move it away"
                ) from None
        return out

    def retrained_keys(self) -> set[str]:
        """:func:`alert_key` of every alert that has started a retraining."""
        return {
            alert_key(alert)
            for record in self.records()
            if record.get("decision") == "retrain"
            for alert in record.get("alerts") or []
        }

    def last_retrain_started(self) -> datetime | None:
        """When the latest retraining started (None when there has been none)."""
        times = [
            (record.get("run") or {}).get("started_at") or record.get("time")
            for record in self.records()
            if record.get("decision") == "retrain"
        ]
        parsed = [datetime.fromisoformat(t) for t in times if t]
        return max(parsed) if parsed else None


def _joined(values: list[Any]) -> str:
    return ",".join(str(v) for v in values if v not in (None, ""))


def _months(span: Any) -> str | None:
    if not span:
        return None
    first, last = span
    return first if first == last else f"{first}..{last}"


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One record as a flat row of :data:`AUDIT_COLUMNS`."""
    alerts = record.get("alerts") or []
    training = record.get("training") or {}
    gate = record.get("gate") or {}
    reload = record.get("reload") or {}
    run = record.get("run") or {}
    return {
        "time": pd.Timestamp(record["time"]) if record.get("time") else pd.NaT,
        "decision": record.get("decision"),
        "outcome": record.get("outcome"),
        "alertnames": _joined(sorted({(a.get("labels") or {}).get("alertname") for a in alerts})),
        "fingerprints": _joined(sorted({a.get("fingerprint") for a in alerts})),
        "reason": record.get("reason"),
        "version": record.get("version"),
        "train_months": _months(training.get("train_months")),
        "train_rows": training.get("train_rows"),
        "train_rows_feedback": training.get("train_rows_feedback"),
        "window_months": _months(training.get("window_months")),
        "window_rows": training.get("window_rows"),
        "candidate_mape": gate.get("candidate_mape"),
        "champion_mape": gate.get("champion_mape"),
        "champion_version": gate.get("champion_version"),
        "margin": gate.get("margin"),
        "gate_reasons": " | ".join(gate.get("reasons") or []) or None,
        "reloaded": reload.get("reloaded"),
        "served_version": reload.get("served_version"),
        "seconds": run.get("seconds"),
        "error": record.get("error"),
    }


def read_audit(path: Path | str | None = None) -> pd.DataFrame:
    """The audit log as a DataFrame, one row per decision, oldest first (columns
    :data:`AUDIT_COLUMNS`; empty when nothing has been decided yet)."""
    rows = [flatten(r) for r in AuditLog(path).records()]
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)
