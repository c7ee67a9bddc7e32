"""Chapter 6's closed loop, run for real on one machine: drift -> Prometheus alert ->
Alertmanager -> webhook -> retraining -> gate -> promotion -> the service reloads.

:func:`run_drift_loop` starts every part on 127.0.0.1 in a work folder:

1. the ``drift`` scenario's champion (trained on 2017-01..2020-09 of the sample,
   :func:`~hdb_mlops.monitoring.simulate.prepare_scenario`) in the current MLflow store;
2. the monitored service serving ``champion`` (:func:`~hdb_mlops.monitoring.service.
   create_monitored_app`: drift gauges, prediction log, ``POST /feedback``, reloading on);
3. the webhook receiver (:mod:`hdb_mlops.monitoring.webhook`), which retrains on the
   prediction log's feedback and reloads the service after a promotion;
4. Prometheus and Alertmanager (:class:`~hdb_mlops.monitoring.stack.Stack`), every
   duration of their configuration divided by ``speed``;
5. the simulator replaying 2025's sales against the service (its start is "the drift").

It then watches until the promoted model serves and returns a :class:`LoopReport`: when the
first model alert fired in Prometheus, when Alertmanager reached the webhook, when the gate
promoted and when the new version answered, in wall-clock seconds since the drift started
and in simulated time (wall-clock x speed); the evidence of each step; the audit log. The
end-to-end test and ``benchmarks/bench_loop.py`` call it; so can the chapter's notebook.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.monitoring.audit import read_audit
from hdb_mlops.monitoring.retrain import RetrainSettings
from hdb_mlops.monitoring.retrainer import Retrainer
from hdb_mlops.monitoring.simulate import SimulationSummary, prepare_scenario, simulate

log = logging.getLogger(__name__)

#: Small models for the loop: a demonstration in about a minute, not a good model.
LOOP_PARAMS = {"n_estimators": 80, "max_depth": 6, "learning_rate": 0.3}
STEPS = ("first_alert", "webhook", "promoted", "serving")


@dataclass
class LoopReport:
    """What one run of the closed loop did, and when (seconds since the drift started)."""

    speed: float
    champion_version: int | None
    promoted_version: int | None = None
    served_version: int | None = None
    #: Wall-clock seconds from the drift's start to each of :data:`STEPS` (None: not reached).
    wall_s: dict[str, float | None] = field(default_factory=dict)
    first_alert: str | None = None
    prometheus_alerts: list[str] = field(default_factory=list)
    alertmanager_alerts: list[str] = field(default_factory=list)
    webhook_alerts: dict[str, float] = field(default_factory=dict)
    model_info: str | None = None
    #: The first retraining's outcome (promoted, rejected, failed) and error, if any.
    outcome: str | None = None
    error: str | None = None
    gate: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    audit: pd.DataFrame | None = None
    simulation: SimulationSummary | None = None
    timed_out: bool = False

    @property
    def simulated_s(self) -> dict[str, float | None]:
        """The same moments in simulated seconds (wall-clock x speed)."""
        return {k: None if v is None else round(v * self.speed, 1) for k, v in self.wall_s.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest (no frames)."""
        return {
            "speed": self.speed,
            "champion_version": self.champion_version,
            "promoted_version": self.promoted_version,
            "served_version": self.served_version,
            "first_alert": self.first_alert,
            "outcome": self.outcome,
            "error": self.error,
            "wall_s": self.wall_s,
            "simulated_s": self.simulated_s,
            "gate": self.gate,
            "timed_out": self.timed_out,
        }


def _firing_model_alerts(prometheus_url: str) -> list[str]:
    from hdb_mlops.monitoring import promql

    frame = promql.query(prometheus_url, 'ALERTS{category="model",alertstate="firing"}')
    return sorted(set(frame["alertname"])) if len(frame) else []


def _alertmanager_alerts(alertmanager_url: str) -> list[str]:
    import httpx

    answer = httpx.get(f"{alertmanager_url}/api/v2/alerts", timeout=10)
    return sorted({a["labels"].get("alertname") for a in answer.json()})


def _model_info(service_url: str) -> str | None:
    import httpx

    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    return next((line for line in text.splitlines() if line.startswith("hdb_model_info{")), None)


def _alerts_received(retrainer: Retrainer) -> dict[str, float]:
    """The receiver's ``hdb_alerts_received_total`` by alert name."""
    return {
        sample.labels["alertname"]: sample.value
        for metric in retrainer.metrics.alerts.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def _first_retraining(retrainer: Retrainer) -> dict[str, Any] | None:
    for record in retrainer.audit.records():
        if record.get("decision") == "retrain":
            return record
    return None


def run_drift_loop(
    workdir: Path | str,
    *,
    speed: float = 60.0,
    rate: float = 40.0,
    data: str | Path = "sample",
    params: dict[str, Any] | None = None,
    timeout_s: float = 240.0,
    cooldown_s: float = 3600.0,
    min_window_rows: int = 200,
    poll_s: float = 0.25,
    after_s: float = 2.0,
    latency_budget_ms: float = 1000.0,
) -> LoopReport:
    """Run the closed loop on the ``drift`` scenario (see the module docstring) in
    ``workdir`` and the current MLflow store (point it at a sandbox first, e.g.
    :func:`hdb_mlops.model.tracking.use_store`). ``data`` is a data source (``sample``, a
    file or a folder): the champion, the replay and the retraining all read it. Stops once
    the promoted version has served for ``after_s`` more seconds, when the retraining ends
    without a promotion (``outcome``, ``error``), or after ``timeout_s`` wall-clock seconds
    (``timed_out``); then stops everything it started."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.monitoring.service import create_monitored_app
    from hdb_mlops.monitoring.stack import Stack
    from hdb_mlops.monitoring.webhook import create_receiver_app
    from hdb_mlops.serving.server import serve_in_thread

    work = Path(workdir)
    params = {**LOOP_PARAMS, **(params or {})}
    transactions = prepare(data, work / "data").transactions()
    champion = prepare_scenario("drift", data=transactions, out_dir=work / "models", params=params)
    report = LoopReport(speed=speed, champion_version=champion["version"])
    report.wall_s = dict.fromkeys(STEPS)
    token = secrets.token_urlsafe(16)
    service = create_monitored_app(
        "champion", prediction_log=work / "predictions.sqlite", reload_token=token
    )
    settings = RetrainSettings(
        data=str(data),
        prediction_log=str(work / "predictions.sqlite"),
        work_dir=str(work / "retraining"),
        params=params,
        min_window_rows=min_window_rows,
        timeout_s=timeout_s,
        # the gate's latency check catches a broken model, not a machine this loop keeps busy
        latency_budget_ms=latency_budget_ms,
    )
    stop = threading.Event()
    outcome: dict[str, SimulationSummary] = {}
    with contextlib.ExitStack() as running:
        api_url = running.enter_context(serve_in_thread(service))
        retrainer = Retrainer(
            settings,
            audit_log=work / "retraining-audit.jsonl",
            service_url=api_url,
            cooldown_s=cooldown_s,
            reload_token=token,
        )
        retrainer_url = running.enter_context(serve_in_thread(create_receiver_app(retrainer)))
        stack = running.enter_context(Stack(work / "stack"))
        info = stack.start(api_url, retrainer_url, speed=speed)
        running.callback(retrainer.wait, timeout_s)

        def traffic() -> None:
            outcome["summary"] = simulate(
                api_url, scenario="drift", speed=speed, data=transactions, rate=rate, stop=stop
            )

        simulator = threading.Thread(target=traffic, name="simulator", daemon=True)
        started = (time.monotonic(), time.time())
        simulator.start()
        running.callback(simulator.join, 60)
        running.callback(stop.set)
        served = _watch(report, retrainer, info, api_url, started, timeout_s, poll_s)
        report.timed_out = not served and report.outcome is None
        if served:
            time.sleep(after_s)  # the traffic goes on: the new version answers it
        # alerts resolve once the new champion serves: keep those seen while they fired
        report.alertmanager_alerts = sorted(
            set(report.alertmanager_alerts) | set(_alertmanager_alerts(info.alertmanager_url))
        )
        report.model_info = _model_info(api_url)
        report.webhook_alerts = _alerts_received(retrainer)
    report.simulation = outcome.get("summary")
    report.audit = read_audit(retrainer.audit.path)
    return report


def _watch(
    report: LoopReport,
    retrainer: Retrainer,
    info: Any,
    api_url: str,
    started: tuple[float, float],
    timeout_s: float,
    poll_s: float,
) -> bool:
    """Poll each step until the promoted version serves; False on timeout. ``started`` is
    the drift's start (monotonic and Unix time)."""
    import httpx

    wall = report.wall_s
    while time.monotonic() - started[0] < timeout_s:
        now = round(time.monotonic() - started[0], 2)
        if wall["first_alert"] is None:
            firing = _firing_model_alerts(info.prometheus_url)
            if firing:
                wall["first_alert"], report.first_alert = now, firing[0]
                report.prometheus_alerts = firing
        if wall["webhook"] is None and _alerts_received(retrainer):
            wall["webhook"] = now
            report.alertmanager_alerts = _alertmanager_alerts(info.alertmanager_url)
        if report.outcome is None and (record := _first_retraining(retrainer)) is not None:
            report.outcome, report.error = record.get("outcome"), record.get("error")
            report.gate, report.training = record.get("gate"), record.get("training")
            if report.outcome != "promoted":
                return False  # the cool-down keeps another retraining from starting
            finished = pd.Timestamp(record["run"]["finished_at"]).timestamp()
            wall["promoted"] = round(finished - started[1], 2)
            report.promoted_version = record.get("version")
        if report.promoted_version is not None:
            served = httpx.get(f"{api_url}/model", timeout=10).json().get("version")
            if served is not None and int(served) == int(report.promoted_version):
                wall["serving"], report.served_version = now, int(served)
                report.prometheus_alerts = sorted(
                    set(report.prometheus_alerts) | set(_firing_model_alerts(info.prometheus_url))
                )
                return True
        time.sleep(poll_s)
    return False
