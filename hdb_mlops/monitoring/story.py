"""Chapter 6B's drift scenario, one stage at a time: the helpers its notebook calls.

:func:`~hdb_mlops.monitoring.closed_loop.run_drift_loop` runs the whole loop and stops every
part before it returns. The notebook wants to look at each stage while it happens, and at
Prometheus afterwards, so :class:`DriftLoop` starts the same parts one by one (the scenario's
champion, the monitored service, the retraining receiver, Prometheus and Alertmanager, the
replay of the later sales) and keeps them running until :meth:`DriftLoop.close`. A watcher
thread notes when each step of the loop happens (the first model alert, Alertmanager's call
of the webhook, the promotion, the new version answering), whatever cell the notebook is at.

Where Prometheus and Alertmanager are not installed, :meth:`DriftLoop.start_stack` prints the
install command and the watcher plays Alertmanager's part: once a feature's drift gauge on the
service's ``/metrics`` passes the alert's threshold and enough feedback has arrived, it posts
a hand-made ``HdbFeatureDrift`` alert to the receiver (:func:`alert_payload`), so the
retraining, the gate and the reload still run.

Everything the notebook prints must be the same on every run; timings, ports and the exact
MAPEs of a retraining whose window depends on timing are left to figures and tables the
notebook does not compare.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.monitoring import promql, tour
from hdb_mlops.monitoring.audit import read_audit
from hdb_mlops.monitoring.closed_loop import LOOP_PARAMS
from hdb_mlops.monitoring.retrain import RetrainSettings
from hdb_mlops.monitoring.retrainer import Retrainer
from hdb_mlops.monitoring.simulate import SimulationSummary, prepare_scenario, simulate
from hdb_mlops.monitoring.stack import Stack, StackInfo
from hdb_mlops.monitoring.story_views import (
    DRIFT_THRESHOLD,
    NOT_ALERTED,
    STEPS,
    alert_payload,
    alertmanager_alerts,
    merge_summaries,
    post_alert,
)

#: The loops of this process by work folder (a notebook cell run twice closes the first).
_LIVE: dict[Path, DriftLoop] = {}


def fresh_workdir(path: Path | str) -> Path:
    """An empty folder for a :class:`DriftLoop`: a loop of this process still running there
    is closed, and a stack left running in its ``monitor/`` folder (a kernel that died) is
    stopped, before the folder is emptied."""
    path = Path(path).expanduser().resolve()
    live = _LIVE.pop(path, None)
    if live is not None:
        live.close()
    if (path / "monitor").is_dir():
        Stack(path / "monitor").stop()
    return tour.fresh_workdir(path)


# ----------------------------------------------------------------------------- the loop


class DriftLoop:
    """Chapter 6's closed loop on the ``drift`` scenario, started stage by stage in
    ``workdir`` and the current MLflow store (point it at a sandbox first, e.g.
    :func:`hdb_mlops.model.tracking.use_store`).

    Call, in order: :meth:`prepare_champion`, :meth:`start_service`, :meth:`start_receiver`,
    :meth:`start_stack`, :meth:`start_drift`; then the ``wait_for_*`` methods, which return
    as soon as their step has happened (the watcher notes when, in :attr:`moments`), and
    :meth:`stop_drift`. :meth:`close` stops everything (idempotent; also run at exit).
    ``months`` are the replayed sales (default: 2025-01 to the data's last month); ``cooldown_s``
    is the receiver's cool-down in wall-clock seconds, which ``speed`` does not shorten."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        speed: float = 60.0,
        rate: float = 40.0,
        seed: int = 42,
        data: str = "sample",
        months: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
        cooldown_s: float = 3600.0,
        min_window_rows: int = 200,
        timeout_s: float = 600.0,
        poll_s: float = 0.25,
    ):
        from hdb_mlops.data.storage import prepare

        self.workdir = Path(workdir)
        self.speed, self.rate, self.seed, self.data = float(speed), float(rate), seed, data
        self.params = {**LOOP_PARAMS, **(params or {})}
        self.cooldown_s, self.min_window_rows = cooldown_s, min_window_rows
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.transactions = prepare(data, self.workdir / "data").transactions()
        last = str(self.transactions["month"].max())
        self.months = months or ("2025-01", last)
        self.token = secrets.token_urlsafe(16)
        self.prediction_log_path = self.workdir / "predictions.sqlite"
        self.audit_path = self.workdir / "retraining-audit.jsonl"
        self.champion: dict[str, Any] | None = None
        self.app: Any = None
        self.api_url: str | None = None
        self.retrainer: Retrainer | None = None
        self.retrainer_url: str | None = None
        self.stack = Stack(self.workdir / "monitor")
        self.info: StackInfo | None = None
        self._summaries: list[SimulationSummary] = []
        #: Wall-clock seconds from the drift's start to each of :data:`STEPS` (None: not yet).
        self.moments: dict[str, float | None] = dict.fromkeys(STEPS)
        #: What the watcher saw: the first model alert, the alerts the receiver got, the
        #: version promoted, a hand-made alert posted (no Prometheus), an error.
        self.seen: dict[str, Any] = {}
        self.started: tuple[float, float] | None = None  # monotonic, Unix
        self._running = contextlib.ExitStack()
        self._stop_traffic = threading.Event()
        self._stop_watch = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        _LIVE[self.workdir.resolve()] = self
        atexit.register(self.close)

    # ---- starting

    def prepare_champion(self) -> dict[str, Any]:
        """Train, register and make champion the scenario's model (2017-01..2020-09)."""
        self.champion = prepare_scenario(
            "drift",
            data=self.transactions,
            out_dir=self.workdir / "models",
            params=self.params,
            seed=self.seed,
        )
        return self.champion

    def start_service(self) -> str:
        """Serve ``champion`` with drift gauges, the prediction log and ``/admin/reload``."""
        from hdb_mlops.monitoring.service import create_monitored_app
        from hdb_mlops.serving.server import serve_in_thread

        self.app = create_monitored_app(
            "champion", prediction_log=self.prediction_log_path, reload_token=self.token
        )
        self.api_url = self._running.enter_context(serve_in_thread(self.app))
        return self.api_url

    def start_receiver(self) -> str:
        """Serve the retraining webhook (its guard rails, retraining and reload)."""
        from hdb_mlops.monitoring.webhook import create_receiver_app
        from hdb_mlops.serving.server import serve_in_thread

        settings = RetrainSettings(
            data=str(self.data),
            prediction_log=str(self.prediction_log_path),
            work_dir=str(self.workdir / "retraining"),
            params=self.params,
            min_window_rows=self.min_window_rows,
            timeout_s=self.timeout_s,
            latency_budget_ms=1000.0,  # a broken model, not a machine this loop keeps busy
            seed=self.seed,
        )
        self.retrainer = Retrainer(
            settings,
            audit_log=self.audit_path,
            service_url=self.api_url,
            cooldown_s=self.cooldown_s,
            reload_token=self.token,
        )
        app = create_receiver_app(self.retrainer)
        self.retrainer_url = self._running.enter_context(serve_in_thread(app))
        self._running.callback(self.retrainer.wait, self.timeout_s)
        return self.retrainer_url

    def start_stack(self) -> StackInfo | None:
        """Prometheus and Alertmanager at :attr:`speed`, scraping the service and the
        receiver; None (the install command printed) where they are not installed."""
        self.info = tour.start_stack(
            self.stack, self.api_url, speed=self.speed, retrainer_url=self.retrainer_url
        )
        if self.info is not None:
            self._running.callback(self.stack.stop)
        return self.info

    def start_drift(self) -> None:
        """Start replaying the later sales (the drift) and the watcher."""
        if self.started is not None:
            raise RuntimeError("the drift has already started")
        self.started = (time.monotonic(), time.time())
        for target, name in ((self._traffic, "drift-traffic"), (self._watch, "drift-watcher")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _traffic(self) -> None:
        """Replay :attr:`months` until stopped, from the start again when the sales run out
        (a slow retraining must not find the traffic over)."""
        while not self._stop_traffic.is_set():
            self._summaries.append(
                simulate(
                    self.api_url,
                    scenario="drift",
                    speed=self.speed,
                    data=self.transactions,
                    rate=self.rate,
                    months=self.months,
                    stop=self._stop_traffic,
                    seed=self.seed,
                )
            )

    @property
    def summary(self) -> SimulationSummary | None:
        """What the replay sent and what came back, every pass of it together."""
        return merge_summaries(self._summaries)

    # ---- watching

    def wall(self) -> float:
        """Wall-clock seconds since the drift started."""
        return round(time.monotonic() - self.started[0], 2) if self.started else 0.0

    def _watch(self) -> None:
        while not self._stop_watch.is_set():
            try:
                self._look()
            except Exception as exc:  # a server busy for a moment: look again
                self.seen["last_error"] = f"{type(exc).__name__}: {exc}"
            if self.moments["serving"] is not None:
                return
            self._stop_watch.wait(self.poll_s)

    def _look(self) -> None:
        import httpx

        now, m = self.wall(), self.moments
        if m["first_alert"] is None:
            firing = self._firing() if self.info else self._hand_made_alert()
            if firing:
                m["first_alert"], self.seen["first_alert"] = now, firing[0]
        received = self.alerts_received()
        if m["webhook"] is None and received:
            m["webhook"] = now
        if m["retraining"] is None and self.retrainer.busy:
            m["retraining"] = now
        if m["promoted"] is None and (record := self.retraining_record()) is not None:
            self.seen["outcome"] = record.get("outcome")
            if record.get("outcome") != "promoted":
                self._stop_watch.set()  # the cool-down keeps another retraining from starting
                return
            finished = pd.Timestamp(record["run"]["finished_at"]).timestamp()
            m["promoted"] = round(finished - self.started[1], 2)
            self.seen["promoted_version"] = record.get("version")
        if m["promoted"] is not None and m["serving"] is None:
            served = httpx.get(f"{self.api_url}/model", timeout=10).json().get("version")
            if served is not None and int(served) == int(self.seen["promoted_version"]):
                m["serving"] = now

    def _firing(self) -> list[str]:
        frame = promql.query(
            self.info.prometheus_url, 'ALERTS{category="model", alertstate="firing"}'
        )
        return sorted(set(frame["alertname"])) if len(frame) else []

    def _hand_made_alert(self) -> list[str]:
        """Without Prometheus: post ``HdbFeatureDrift`` once a feature's PSI on the service's
        ``/metrics`` passes the threshold and the window has enough feedback."""
        import httpx

        text = httpx.get(f"{self.api_url}/metrics", timeout=10).text
        psi = tour.gauge_values(text, "hdb_drift_psi")
        psi = psi.drop([f for f in NOT_ALERTED if f in psi.index])
        enough = self.app.state.prediction_log.counts()["labelled"] >= self.min_window_rows
        if not (len(psi) and psi.max() > DRIFT_THRESHOLD and enough):
            return []
        labels = {"category": "model", "severity": "warning", "feature": str(psi.idxmax())}
        self.seen["hand_made_alert"] = post_alert(
            self.retrainer_url, alert_payload("HdbFeatureDrift", labels=labels)
        )
        return ["HdbFeatureDrift"]

    def wait_for_step(self, step: str, timeout: float | None = None) -> float:
        """Until the watcher has seen ``step`` (a key of :data:`STEPS`); its wall-clock
        seconds since the drift started. RuntimeError when the retraining ended without a
        promotion, TimeoutError after ``timeout`` seconds (default: the loop's)."""
        deadline = time.monotonic() + (timeout or self.timeout_s)
        while self.moments[step] is None:
            if self.seen.get("outcome") not in (None, "promoted"):
                raise RuntimeError(
                    f"the retraining ended {self.seen['outcome']}: {self.retraining_record()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {step!r} within {timeout or self.timeout_s:g} s; the watcher saw "
                    f"{self.seen}, moments {self.moments}"
                )
            time.sleep(0.1)
        return self.moments[step]

    def wait_for_alert(self, alertname: str = "HdbFeatureDrift", timeout: float = 180) -> None:
        """Until ``alertname`` fires in Prometheus (without Prometheus: until the hand-made
        alert is posted)."""
        self.wait_for_step("first_alert", timeout)
        if self.info is not None:
            expr = f'ALERTS{{alertname="{alertname}", alertstate="firing"}}'
            promql.wait_for(self.info.prometheus_url, expr, timeout=timeout, interval=0.25)

    def wait_for_alertmanager(
        self, alertname: str = "HdbFeatureDrift", timeout: float = 60
    ) -> pd.DataFrame:
        """Until Alertmanager holds ``alertname``; its active alerts (Alertmanager's API v2):
        alert name, feature, state and receivers, one row an alert."""
        deadline = time.monotonic() + timeout
        while True:
            table = alertmanager_alerts(self.info.alertmanager_url)
            if (table["alertname"] == alertname).any() or time.monotonic() > deadline:
                return table
            time.sleep(0.25)

    def wait_for_webhook(
        self, alertname: str = "HdbFeatureDrift", timeout: float = 120
    ) -> dict[str, float]:
        """Until the receiver has received ``alertname``; the alerts it received, by name."""
        self.wait_for_step("webhook", timeout)
        deadline = time.monotonic() + timeout
        while alertname not in self.alerts_received() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.alerts_received()

    def wait_for_retraining(self, timeout: float | None = None) -> dict[str, Any]:
        """Until the first retraining has finished (and the service has been told to reload
        after a promotion); its audit record."""
        self.wait_for_step("retraining", timeout)
        deadline = time.monotonic() + (timeout or self.timeout_s)
        while (record := self.retraining_record()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the retraining did not finish within {timeout} s")
            time.sleep(0.25)
        return record

    def wait_for_serving(self, timeout: float = 60) -> dict[str, Any]:
        """Until the promoted version answers; the service's ``GET /model``."""
        import httpx

        self.wait_for_step("serving", timeout)
        return httpx.get(f"{self.api_url}/model", timeout=10).json()

    def stop_drift(self, after_s: float = 5.0, timeout: float = 60) -> SimulationSummary:
        """Let the new version answer for ``after_s`` more seconds, stop the replay, wait for
        the last feedback to be logged and (with Prometheus) scraped; the replay's summary."""
        time.sleep(after_s)
        self._stop_traffic.set()
        for thread in self._threads:
            thread.join(timeout)
        self.app.state.prediction_log.flush()
        if self.info is not None:
            labelled = len(self.labelled())
            expr = "sum(hdb_prediction_absolute_percentage_error_count)"

            def scraped(frame: pd.DataFrame) -> bool:
                return bool(len(frame)) and int(frame["value"].iloc[0]) == labelled

            promql.wait_for(
                self.info.prometheus_url, expr, timeout=timeout, interval=0.25, predicate=scraped
            )
        return self.summary

    # ---- reading

    def alerts_received(self) -> dict[str, float]:
        """The receiver's ``hdb_alerts_received_total`` by alert name."""
        return {
            sample.labels["alertname"]: sample.value
            for metric in self.retrainer.metrics.alerts.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }

    def retraining_record(self) -> dict[str, Any] | None:
        """The audit record of the first retraining (None until it has finished)."""
        return next(
            (r for r in self.retrainer.audit.records() if r.get("decision") == "retrain"), None
        )

    def audit(self) -> pd.DataFrame:
        """The audit log, one row a decision (:func:`~hdb_mlops.monitoring.audit.read_audit`)."""
        return read_audit(self.audit_path)

    def labelled(self) -> pd.DataFrame:
        """The prediction log's predictions with their actual prices (accepted feedback)."""
        return self.app.state.prediction_log.labelled()

    def unix(self, step: str) -> float | None:
        """The Unix time of a step (None when it has not happened)."""
        wall = self.moments.get(step)
        return None if wall is None or self.started is None else self.started[1] + wall

    # ---- stopping

    def close(self) -> None:
        """Stop the replay, the watcher, the stack, the receiver (after the retraining in
        progress, if any) and the service. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop_traffic.set()
        self._stop_watch.set()
        for thread in self._threads:
            thread.join(60)
        self._running.close()
