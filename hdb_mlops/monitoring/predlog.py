"""The prediction log: every prediction the service answers, and the actual prices that
come back for them (feedback), in one sqlite file.

The request path only puts one tuple into a bounded queue (:meth:`PredictionLog.observe`,
the service's observer hook); ONE background thread turns the queued rows into SQL and
writes them in batches (one transaction per batch, every ``flush_interval_s`` at most), with
sqlite in WAL mode and ``synchronous=NORMAL`` (a crash may lose the last batch, never corrupt
the file). When the queue is full a prediction is dropped and counted, never waited for.
Several worker processes may share one file (sqlite locks it; writers wait up to 5 s).

Tables::

    predictions(prediction_id TEXT PRIMARY KEY, logged_at REAL (unix seconds),
                model_version TEXT (NULL: a bundle directory), model_sha256 TEXT,
                endpoint TEXT, record TEXT (JSON: the request's fields as the data files
                name them), price REAL, lower REAL, upper REAL,
                expired_at REAL (set when its feedback window passed without feedback))
    feedback(prediction_id TEXT PRIMARY KEY, received_at REAL, actual_price REAL,
             ape REAL (|price - actual| / actual, a ratio), outcome TEXT (accepted | late))

The record holds the validated values: categories and storey band upper case,
``remaining_lease`` spelt as the 2017+ file spells it ("61 years 04 months") or null when
the request left it out. :meth:`PredictionLog.labelled` joins the two tables into a frame in
the data files' schema, which is what retraining reads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.data.schema import OFFICIAL_2017_COLUMNS
from hdb_mlops.serving.request_fields import format_months

log = logging.getLogger(__name__)

PREDICTION_LOG_ENV = "HDB_MLOPS_PREDICTION_LOG"
DEFAULT_QUEUE_ITEMS = 10_000
DEFAULT_FLUSH_INTERVAL_S = 0.1
DEFAULT_BATCH_ROWS = 2000
#: Columns of a logged record (the request's fields, as the data files name them).
RECORD_COLUMNS: tuple[str, ...] = tuple(c for c in OFFICIAL_2017_COLUMNS if c != "resale_price")
LABELLED_EXTRA = (
    "prediction_id", "predicted_price", "lower", "upper", "ape", "model_version",
    "model_sha256", "endpoint", "logged_at", "received_at",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id TEXT PRIMARY KEY, logged_at REAL NOT NULL, model_version TEXT,
    model_sha256 TEXT, endpoint TEXT, record TEXT NOT NULL, price REAL NOT NULL,
    lower REAL, upper REAL, expired_at REAL
);
CREATE INDEX IF NOT EXISTS predictions_logged_at ON predictions (logged_at);
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY, received_at REAL NOT NULL, actual_price REAL NOT NULL,
    ape REAL NOT NULL, outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_received_at ON feedback (received_at);
"""
_INSERT = (
    "INSERT OR IGNORE INTO predictions (prediction_id, logged_at, model_version, model_sha256, "
    "endpoint, record, price, lower, upper) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class PredictionLogError(RuntimeError):
    """The prediction log's file cannot be opened as one."""


def default_path() -> Path:
    """``$HDB_MLOPS_PREDICTION_LOG``, else ``runs/monitor/predictions.sqlite`` in the project."""
    import os

    env = os.environ.get(PREDICTION_LOG_ENV, "").strip()
    return Path(env).expanduser() if env else config.RUNS_DIR / "monitor" / "predictions.sqlite"


def record_json(record: Any) -> str:
    """A validated request row (or a mapping of the official columns) as the JSON the log
    stores: the data files' column names, remaining lease spelt as the files spell it."""
    get = record.get if isinstance(record, Mapping) else lambda k: getattr(record, k, None)
    out = {col: get(col) for col in RECORD_COLUMNS}
    lease = out["remaining_lease"]
    if isinstance(lease, int) and not isinstance(lease, bool):
        out["remaining_lease"] = format_months(lease)
    return json.dumps(out, separators=(",", ":"))


class PredictionLog:
    """The prediction log at ``path`` (see the module docstring); an observer of the service.

    ``on_written(ids)`` is called on the writer thread after each batch of predictions is
    committed, ``on_tick()`` every ``tick_s`` seconds, ``on_dropped(rows)`` when the queue is
    full (the feedback desk uses them). ``queue_items`` bounds the queue in items (one per
    request)."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        queue_items: int = DEFAULT_QUEUE_ITEMS,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        tick_s: float = 0.5,
    ):
        self.path = Path(path) if path is not None else default_path()
        self.flush_interval_s = flush_interval_s
        self.batch_rows = batch_rows
        self.tick_s = tick_s
        self.on_written: Callable[[list[str]], None] | None = None
        self.on_tick: Callable[[], None] | None = None
        self.on_dropped: Callable[[int], None] | None = None
        self.dropped = 0
        self.rows = 0
        self.queue_items = queue_items
        # a deque, not a queue.Queue: an append is atomic and takes no lock (the request
        # path's whole cost); the writer wakes every flush_interval_s, or at once to flush
        self._queue: deque[tuple] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.database() as db:
                db.executescript(_SCHEMA)
                self.rows = self._count_rows(db)
        except sqlite3.Error as exc:
            raise PredictionLogError(
                f"cannot open the prediction log {self.path} ({exc}): give another path, or "
                "move this file away"
            ) from exc

    # ---- connections and the writer thread

    def connect(self) -> sqlite3.Connection:
        """A new connection to the log (WAL, synchronous=NORMAL, 5 s busy timeout)."""
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """A new connection, in a transaction committed on exit, then closed."""
        db = self.connect()
        try:
            with db:
                yield db
        finally:
            db.close()

    def start(self) -> None:
        """Start the writer thread (idempotent; also after :meth:`close`)."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self._writer = self.connect()
        next_tick = time.monotonic() + self.tick_s
        stop = False
        queued = self._queue
        while not stop:
            self._wake.wait(min(self.flush_interval_s, max(0.0, next_tick - time.monotonic())))
            self._wake.clear()
            batch: list[tuple] = []
            waiters: list[threading.Event] = []
            while queued and not stop:
                item = queued.popleft()
                if item[0] == "stop":
                    stop = True
                elif item[0] == "flush":
                    waiters.append(item[1])
                else:
                    batch.extend(self._rows_of(item))
                    if len(batch) >= self.batch_rows:
                        self._write(batch)
                        batch = []
            if batch:
                self._write(batch)
            for event in waiters:
                event.set()
            if time.monotonic() >= next_tick or stop:
                next_tick = time.monotonic() + self.tick_s
                self.rows = self._count_rows(self._writer)  # every worker's rows
                self._call(self.on_tick)
        self._writer.close()
        self._writer = None

    @staticmethod
    def _count_rows(db: sqlite3.Connection) -> int:
        """Rows in the predictions table: its largest rowid (rows are never deleted, and
        an ignored duplicate takes none), read from the index in O(log n)."""
        return int(db.execute("SELECT coalesce(max(rowid), 0) FROM predictions").fetchone()[0])

    @staticmethod
    def _rows_of(item: tuple) -> Iterable[tuple]:
        if item[0] == "row":
            return [item[1]]
        _, logged_at, endpoint, info, records, predictions = item
        version, sha = info.get("version"), info.get("sha256")
        return [
            (
                p["prediction_id"],
                logged_at,
                version,
                sha,
                endpoint,
                record_json(r),
                p["price"],
                p["interval"]["lower"],
                p["interval"]["upper"],
            )
            for r, p in zip(records, predictions, strict=True)
        ]

    def _write(self, batch: list[tuple]) -> None:
        assert self._writer is not None
        try:
            with self._writer:  # one transaction
                self._writer.execute("BEGIN")
                before = self._writer.total_changes
                self._writer.executemany(_INSERT, batch)
                self.rows += self._writer.total_changes - before
        except sqlite3.Error as exc:
            log.error("prediction log: %d rows not written: %s", len(batch), exc)
            self._drop(len(batch))
            return
        if self.on_written is not None:
            self._call(self.on_written, [row[0] for row in batch])

    @staticmethod
    def _call(hook: Callable | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.warning("prediction log: hook %r failed", hook, exc_info=True)

    def _drop(self, rows: int) -> None:
        self.dropped += rows
        if self.on_dropped is not None:
            self._call(self.on_dropped, rows)

    def _put(self, item: tuple, rows: int) -> bool:
        if len(self._queue) >= self.queue_items:
            self._drop(rows)
            return False
        self._queue.append(item)
        return True

    # ---- writing

    def observe(
        self,
        endpoint: str,
        records: Sequence[Any],
        predictions: list[dict[str, Any]],
        model: Any,
    ) -> None:
        """The observer hook: queue the service's predictions (one queue item per request)."""
        item = ("batch", time.time(), endpoint, model.info, records, predictions)
        self._put(item, len(predictions))

    def model_changed(self, model: Any) -> None:
        """Observer hook: the writer thread runs while a model serves."""
        self.start()

    def log(
        self,
        prediction_id: str,
        record: Mapping[str, Any] | Any,
        price: float,
        *,
        lower: float | None = None,
        upper: float | None = None,
        model_version: str | None = None,
        model_sha256: str | None = None,
        endpoint: str | None = None,
        logged_at: float | None = None,
    ) -> bool:
        """Queue one prediction (outside the service: a batch job, a test). False when it
        was dropped because the queue is full."""
        self.start()
        row = (
            prediction_id,
            time.time() if logged_at is None else float(logged_at),
            None if model_version is None else str(model_version),
            model_sha256,
            endpoint,
            record_json(record),
            float(price),
            lower,
            upper,
        )
        return self._put(("row", row), 1)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        self.start()
        done = threading.Event()
        self._queue.append(("flush", done))
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._queue.append(("stop",))
        self._wake.set()
        thread.join(timeout)

    # ---- reading

    def labelled(
        self,
        since: float | None = None,
        model_version: str | None = None,
        *,
        include_late: bool = False,
    ) -> pd.DataFrame:
        """One row per prediction with accepted feedback (``include_late``: late feedback
        too), oldest feedback first: the record's columns in the data files' schema
        (month "YYYY-MM", town, flat_type, block, street_name, storey_range, floor_area_sqm,
        flat_model, lease_commence_date, remaining_lease: the files' spelling or "" when not
        given), ``resale_price`` = the actual price, then ``prediction_id``,
        ``predicted_price``, ``lower``, ``upper``, ``ape``, ``model_version``,
        ``model_sha256``, ``endpoint``, ``logged_at`` and ``received_at`` (unix seconds).

        ``since``: feedback received at or after it (unix seconds); ``model_version``: only
        that version's predictions. :func:`labelled_transactions` normalises the frame like
        the data loader does."""
        outcomes = ("accepted", "late") if include_late else ("accepted",)
        where = [f"f.outcome IN ({','.join('?' * len(outcomes))})"]
        params: list[Any] = list(outcomes)
        if since is not None:
            where.append("f.received_at >= ?")
            params.append(float(since))
        if model_version is not None:
            where.append("p.model_version = ?")
            params.append(str(model_version))
        sql = (
            "SELECT p.record, f.actual_price, p.prediction_id, p.price, p.lower, p.upper, "
            "f.ape, p.model_version, p.model_sha256, p.endpoint, p.logged_at, f.received_at "
            "FROM feedback f JOIN predictions p USING (prediction_id) WHERE "
            + " AND ".join(where)
            + " ORDER BY f.received_at, p.prediction_id"
        )
        with self.database() as db:
            rows = db.execute(sql, params).fetchall()
        records = []
        for record, actual, *extra in rows:
            fields = json.loads(record)
            fields = {c: fields.get(c) for c in RECORD_COLUMNS}
            for col in ("block", "street_name", "remaining_lease"):
                fields[col] = fields[col] if fields[col] is not None else ""
            extras = dict(zip(LABELLED_EXTRA, extra, strict=True))
            records.append({**fields, "resale_price": actual, **extras})
        columns = [*OFFICIAL_2017_COLUMNS, *LABELLED_EXTRA]
        frame = pd.DataFrame(records, columns=columns)
        return frame.astype(
            {
                "floor_area_sqm": "float64",
                "lease_commence_date": "int64",
                "resale_price": "float64",
                "predicted_price": "float64",
                "logged_at": "float64",
                "received_at": "float64",
            }
        )

    def counts(self) -> dict[str, Any]:
        """Rows in the log: ``predictions``, ``feedback`` by outcome, ``expired``,
        ``labelled`` (accepted feedback), and this process's ``dropped`` and ``queued``."""
        with self.database() as db:
            predictions = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
            expired = db.execute(
                "SELECT count(*) FROM predictions WHERE expired_at IS NOT NULL"
            ).fetchone()[0]
            by_outcome = dict(
                db.execute("SELECT outcome, count(*) FROM feedback GROUP BY outcome").fetchall()
            )
        return {
            "predictions": int(predictions),
            "feedback": {k: int(v) for k, v in sorted(by_outcome.items())},
            "labelled": int(by_outcome.get("accepted", 0)),
            "expired": int(expired),
            "dropped": self.dropped,
            "queued": len(self._queue),
        }


def labelled_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    """A :meth:`PredictionLog.labelled` frame normalised like the data loader's transactions
    (:func:`hdb_mlops.model.features.transactions_from_records`: monthly periods, parsed
    storey band and remaining lease), with the log's extra columns kept alongside: what the
    training and gate functions take."""
    from hdb_mlops.model.features import transactions_from_records

    if frame.empty:
        out = transactions_from_records([dict.fromkeys(OFFICIAL_2017_COLUMNS, "")]).iloc[:0]
    else:
        out = transactions_from_records(frame[list(OFFICIAL_2017_COLUMNS)].to_dict("records"))
    out.index = frame.index
    for col in LABELLED_EXTRA:
        out[col] = frame[col].to_numpy() if len(frame) else pd.Series(dtype="object")
    return out
