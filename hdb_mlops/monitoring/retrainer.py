"""The guard rails of the retraining loop and the loop itself: what an alert payload
triggers, one retraining at a time in the background, and the service's reload after a
promotion. :mod:`hdb_mlops.monitoring.webhook` serves it over HTTP.

The guard rails, in the order they are checked for a payload:

1. only firing alerts labelled ``category="model"`` retrain (anything else: ``ignored``);
2. an alert already retrained on (same fingerprint and ``startsAt``, as Alertmanager resends
   it every ``repeat_interval``) is never retrained on again (``skipped_duplicate``);
3. one retraining at a time, across processes (:class:`RetrainLock`; ``skipped_busy``);
4. a cool-down after every retraining, whatever its outcome (``skipped_cooldown``): a
   retraining that fails must not be retried in a tight loop.

Each decision is one record of the audit log (:mod:`hdb_mlops.monitoring.audit`), which is
also where the guard rails read the past from, so a restarted receiver keeps them. The job
runs in a child process (:func:`hdb_mlops.monitoring.retrain.run_job`); when the gate
promotes, ``POST /admin/reload`` on the service makes the new champion serve and ``GET
/model`` checks that it does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdb_mlops.monitoring.audit import AuditLog, alert_key, now_iso
from hdb_mlops.monitoring.retrain import RetrainSettings, run_job

if TYPE_CHECKING:
    from hdb_mlops.monitoring.webhook import Alert, AlertPayload

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN_S = 3600.0
#: The service's reload token (``POST /admin/reload``, ``Authorization: Bearer ...``).
RELOAD_TOKEN_ENV = "HDB_MLOPS_RELOAD_TOKEN"
RUN_OUTCOMES = (
    "promoted",
    "rejected",
    "failed",
    "skipped_duplicate",
    "skipped_cooldown",
    "skipped_busy",
    "ignored",
)


# ------------------------------------------------------------------------- one at a time


class RetrainBusy(RuntimeError):
    """Another retraining holds the lock; ``holder`` is what its lock file says."""

    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        super().__init__(
            f"a retraining is running (pid {holder.get('pid')}, started {holder.get('started_at')})"
        )


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie counts as dead)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


class RetrainLock:
    """A lock file naming the process that retrains (``pid``, and the job's ``worker_pid``).

    :meth:`acquire` creates it, or raises :class:`RetrainBusy` while any of its pids lives;
    a lock whose pids are all dead (a receiver killed mid-retraining) is stale: it is taken
    over, logged, and what it said is returned. Check-and-take runs under an ``flock`` on a
    guard file beside it, so two receivers never both win.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.guard = self.path.with_name(self.path.name + ".guard")
        self.mine = False

    @contextlib.contextmanager
    def _guarded(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def holder(self) -> dict[str, Any] | None:
        """What the lock file says (None when there is none; {} when it is unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _live(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") not in (None, socket.gethostname()):
            return True  # another machine's process: cannot tell, so respect it
        return any(_alive(holder.get(key)) for key in ("pid", "worker_pid"))

    def acquire(self, **details: Any) -> dict[str, Any] | None:
        """Take the lock for this process; returns the stale lock taken over, if any."""
        with self._guarded():
            holder = self.holder()
            if holder is not None and self._live(holder):
                raise RetrainBusy(holder)
            if holder is not None:
                log.warning("taking over the stale retraining lock %s: %s", self.path, holder)
            self._write({"pid": os.getpid(), "host": socket.gethostname(), **details})
            self.mine = True
            return holder

    def update(self, **details: Any) -> None:
        """Add to what the lock file says (the job's ``worker_pid`` once it runs)."""
        with self._guarded():
            self._write({**(self.holder() or {}), **details})

    def _write(self, content: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(content, default=str))
        tmp.replace(self.path)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        with self._guarded():
            holder = self.holder() or {}
            if self.mine and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.mine = False


# ------------------------------------------------------------------------- metrics


class ReceiverMetrics:
    """The receiver's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        self.runs = Counter(
            "hdb_retraining_runs", "Webhook decisions and retraining outcomes.", ["outcome"],
            registry=r,
        )  # fmt: skip
        for outcome in RUN_OUTCOMES:
            self.runs.labels(outcome)
        self.in_progress = Gauge(
            "hdb_retraining_in_progress", "1 while a retraining runs.", registry=r
        )
        self.last_run = Gauge(
            "hdb_retraining_last_run_timestamp_seconds",
            "When the latest retraining finished (Unix time).",
            registry=r,
        )
        self.alerts = Counter(
            "hdb_alerts_received", "Alerts received, by alert name.", ["alertname"], registry=r
        )


# ------------------------------------------------------------------------- the loop


def reload_service(
    service_url: str, token: str | None, expected_version: int | None, timeout: float = 60.0
) -> dict[str, Any]:
    """``POST /admin/reload`` on the service, then ``GET /model``: returns the answer, the
    version now served and whether it is ``expected_version``. Never raises."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, Any] = {"url": service_url, "reloaded": False}
    try:
        with httpx.Client(base_url=service_url, timeout=timeout) as client:
            answer = client.post("/admin/reload", headers=headers)
            out["status"] = answer.status_code
            body = answer.json() if "json" in answer.headers.get("content-type", "") else {}
            out["answer"] = body
            out["reloaded"] = answer.status_code == 200 and bool(body.get("reloaded", True))
            served = client.get("/model").json().get("version")
    except Exception as exc:  # a service down or confused must not break the receiver
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["served_version"] = int(served) if str(served).isdigit() else served
    out["serves_expected"] = expected_version is not None and out["served_version"] == int(
        expected_version
    )
    if not out["reloaded"]:
        out["error"] = f"the service answered {answer.status_code} to POST /admin/reload"
    return out


def _is_model_alert(alert: Alert) -> bool:
    return alert.labels.get("category") == "model"


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not gate:
        return None
    keys = ("promoted", "candidate_version", "candidate_mape", "champion_version")
    out = {k: gate.get(k) for k in (*keys, "champion_mape", "margin", "reasons")}
    checks = gate.get("checks") or {}
    out["sane"] = checks.get("sane")
    out["latency_ms"] = checks.get("latency_ms")
    return out


class Retrainer:
    """Decides what an alert payload triggers and runs the retraining in a background
    thread (the job itself in a child process). See the module docstring."""

    def __init__(
        self,
        settings: RetrainSettings | None = None,
        *,
        audit_log: Path | str | None = None,
        lock_path: Path | str | None = None,
        service_url: str | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        reload_token: str | None = None,
    ):
        if not cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be a number of at least 0, not {cooldown_s}")
        self.settings = settings or RetrainSettings()
        self.audit = AuditLog(audit_log)
        self.lock = RetrainLock(lock_path or Path(self.settings.work_dir) / "retraining.lock")
        self.service_url = service_url.rstrip("/") if service_url else None
        self.cooldown_s = float(cooldown_s)
        self.reload_token = reload_token or os.environ.get(RELOAD_TOKEN_ENV) or None
        self.metrics = ReceiverMetrics()
        self._mutex = threading.Lock()
        self._in_flight: set[str] = set()
        self._thread: threading.Thread | None = None
        finished = [
            (r.get("run") or {}).get("finished_at")
            for r in self.audit.records()
            if r.get("decision") == "retrain"
        ]
        if any(finished):  # a restarted receiver reports the last run it did not see
            self.metrics.last_run.set(
                max(datetime.fromisoformat(t) for t in finished if t).timestamp()
            )

    @property
    def busy(self) -> bool:
        """Whether this receiver is running a retraining."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running retraining (if any); False when it is still running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _decide(
        self, payload: AlertPayload, decision: str, reason: str, alerts: list[Alert]
    ) -> dict[str, Any]:
        record = self.audit.append(
            {
                "decision": decision,
                "outcome": decision,
                "reason": reason,
                "alerts": [a.record() for a in alerts],
                "group_key": payload.groupKey,
                "receiver": payload.receiver,
            }
        )
        self.metrics.runs.labels(decision).inc()
        log.info("alert payload %s: %s (%s)", payload.groupKey, decision, reason)
        return {"decision": decision, "reason": reason, "time": record["time"]}

    def handle(self, payload: AlertPayload) -> tuple[int, dict[str, Any]]:
        """Decide on one payload; returns the HTTP status and body to answer with (202 when
        a retraining started in the background, else 200)."""
        for alert in payload.alerts:
            self.metrics.alerts.labels(alert.labels["alertname"]).inc()
        model = [a for a in payload.alerts if a.status == "firing" and _is_model_alert(a)]
        if not model:
            names = sorted({f"{a.labels['alertname']} ({a.status})" for a in payload.alerts})
            reason = "no firing alert labelled category=model: " + ", ".join(names)
            return 200, self._decide(payload, "ignored", reason, payload.alerts)
        with self._mutex:
            done = self.audit.retrained_keys() | self._in_flight
            new = [a for a in model if alert_key(a.model_dump()) not in done]
            if not new:
                reason = "already retrained on these firings (same fingerprint and startsAt)"
                return 200, self._decide(payload, "skipped_duplicate", reason, model)
            keys = [alert_key(a.model_dump()) for a in new]
            try:
                stale = self.lock.acquire(started_at=now_iso(), alerts=keys)
            except RetrainBusy as exc:
                return 200, self._decide(payload, "skipped_busy", str(exc), new)
            last = self.audit.last_retrain_started()
            if last is not None and self.cooldown_s > 0:
                until = last + timedelta(seconds=self.cooldown_s)
                if datetime.now(UTC) < until:
                    self.lock.release()
                    reason = (
                        f"cool-down: the last retraining started {last.isoformat()}, "
                        f"the next may start after {until.isoformat(timespec='seconds')}"
                    )
                    return 200, self._decide(payload, "skipped_cooldown", reason, new)
            self._in_flight.update(keys)
            self.metrics.in_progress.set(1)
            self._thread = threading.Thread(
                target=self._run, args=(payload, new, keys, stale), name="retraining", daemon=True
            )
            self._thread.start()
        names = ", ".join(sorted({a.labels["alertname"] for a in new}))
        return 202, {"decision": "retrain", "reason": f"retraining started for {names}"}

    def _run(
        self, payload: AlertPayload, alerts: list[Alert], keys: list[str], stale: dict | None
    ) -> None:
        started, clock = now_iso(), time.monotonic()
        names = ", ".join(sorted({a.labels["alertname"] for a in alerts}))
        record: dict[str, Any] = {
            "decision": "retrain",
            "alerts": [a.record() for a in alerts],
            "group_key": payload.groupKey,
            "receiver": payload.receiver,
            "reason": f"firing model alert: {names}",
            "settings": {
                k: getattr(self.settings, k)
                for k in ("data", "prediction_log", "window_months", "margin", "params")
            },
        }  # fmt: skip
        if stale is not None:
            record["lock"] = {"took_over": stale}
        try:
            job_dir = Path(self.settings.work_dir) / "jobs" / started.replace(":", "")
            result = run_job(
                self.settings, job_dir, on_start=lambda pid: self.lock.update(worker_pid=pid)
            )
            record.update(self._outcome(result))
        except Exception as exc:  # the audit record must be written whatever happens
            log.exception("retraining failed")
            record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            record["run"] = {
                "started_at": started,
                "finished_at": now_iso(),
                "seconds": round(time.monotonic() - clock, 2),
            }
            try:
                self.audit.append(record)
            finally:
                self.lock.release()
                with self._mutex:
                    self._in_flight.difference_update(keys)
                self.metrics.runs.labels(record.get("outcome", "failed")).inc()
                self.metrics.last_run.set(time.time())
                self.metrics.in_progress.set(0)
        log.info("retraining finished: %s", record.get("outcome"))

    def _outcome(self, result: dict[str, Any]) -> dict[str, Any]:
        """The audit fields of a finished job, with the reload after a promotion."""
        out: dict[str, Any] = {
            "job": {
                k: result.get(k) for k in ("pid", "exit_code", "job_seconds", "phases_s", "log")
            },
            "training": result.get("training"),
            "version": result.get("version"),
            "run_id": result.get("run_id"),
            "gate": _gate_summary(result.get("gate")),
            "champion_before": result.get("champion_before"),
            "champion_after": result.get("champion_after"),
        }
        if not result.get("ok"):
            return {**out, "outcome": "failed", "error": result.get("error")}
        if not (result.get("gate") or {}).get("promoted"):
            return {**out, "outcome": "rejected"}
        out["outcome"] = "promoted"
        if self.service_url is None:
            out["reload"] = {"reloaded": False, "error": "no service URL: nothing to reload"}
        else:
            out["reload"] = reload_service(self.service_url, self.reload_token, out["version"])
        return out
