"""Chapter 6B's views of the closed loop: the helpers its notebook calls to look at what
:class:`~hdb_mlops.monitoring.story.DriftLoop` runs, and to poke at it.

* alerts: an Alertmanager webhook payload made by hand (:func:`alert_payload`), posted to
  the receiver (:func:`post_alert`), and the receiver's guard rails tried on four of them
  (:func:`guard_rail_cases`); Alertmanager's own view of its alerts
  (:func:`alertmanager_alerts`);
* the pace of the loop: the durations of the committed configuration next to this run's
  (:func:`durations_table`);
* live accuracy: the rolling MAPE from the prediction log (:func:`rolling_live_mape`) and
  each model version's MAPE from the log and from Prometheus (:func:`mape_by_version`);
* a timeline of the drift and the live MAPE with the loop's steps (:func:`timeline_figure`).

What they return for the notebook to print reads the same on every run (time stamps in the
receiver's reasons are scrubbed); timings and MAPEs that depend on them go to figures.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hdb_mlops.monitoring import promql
from hdb_mlops.monitoring.simulate import SimulationSummary
from hdb_mlops.monitoring.stack import StackInfo
from hdb_mlops.monitoring.stack_config import CONFIG_DIR, load_yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hdb_mlops.monitoring.story import DriftLoop

#: The steps of the loop a :class:`~hdb_mlops.monitoring.story.DriftLoop` times, in order.
STEPS = {
    "first_alert": "a model alert fires in Prometheus",
    "webhook": "Alertmanager calls the retraining webhook",
    "retraining": "the receiver starts a retraining",
    "promoted": "the gate promotes the challenger",
    "serving": "the new version answers",
}
#: The drift alert's threshold and the features it leaves out (prometheus/rules/alerts.yml).
DRIFT_THRESHOLD = 0.2
NOT_ALERTED = ("prediction", "month_index")
_ISO_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
#: Okabe-Ito colours of :mod:`hdb_mlops.course.plots` (that layer sits above this one).
_BLUE, _ORANGE, _GREY = "#0072B2", "#E69F00", "#555555"


# ----------------------------------------------------------------------------- alerts


def alert_payload(
    alertname: str,
    *,
    labels: Mapping[str, str] | None = None,
    starts_at: str | None = None,
    status: str = "firing",
    fingerprint: str | None = None,
    receiver: str = "hdb-retrainer",
) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4) holding one alert, as Alertmanager would
    send it: ``labels`` beside the alert name (a model alert has ``category="model"``),
    ``starts_at`` (RFC 3339, default now) and a ``fingerprint`` (default: a hash of the
    labels, as Alertmanager's is)."""
    labels = {"alertname": alertname, **dict(labels or {})}
    if fingerprint is None:
        text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    starts_at = starts_at or datetime.now(UTC).isoformat(timespec="milliseconds")
    alert = {
        "status": status,
        "labels": labels,
        "annotations": {},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "alerts": [alert],
    }


def post_alert(retrainer_url: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """POST ``payload`` to the receiver's ``/alerts``: its HTTP status, decision and reason."""
    import httpx

    answer = httpx.post(f"{retrainer_url.rstrip('/')}/alerts", json=dict(payload), timeout=10)
    body = answer.json()
    return {
        "status": answer.status_code,
        "decision": body.get("decision"),
        "reason": body.get("reason"),
    }


def scrub_times(text: str | None) -> str | None:
    """``text`` with every ISO 8601 time stamp replaced by ``<time>`` (a reason that names
    when the last retraining started reads the same on every run)."""
    return None if text is None else _ISO_TIME_RE.sub("<time>", text)


def guard_rail_cases(retrainer_url: str, retrained_alert: Mapping[str, Any]) -> pd.DataFrame:
    """Post four payloads to the receiver after a retraining and tabulate its decisions:
    the alert that started the retraining again (same fingerprint and ``startsAt``, as
    Alertmanager resends it), a new firing of it, a service alert, and the alert resolved.
    ``retrained_alert`` is one of the ``alerts`` of the retraining's audit record."""
    name = retrained_alert["labels"]["alertname"]
    labels = {k: v for k, v in retrained_alert["labels"].items() if k != "alertname"}
    same = dict(fingerprint=retrained_alert["fingerprint"], starts_at=retrained_alert["startsAt"])
    cases = {
        "the same firing, resent": alert_payload(name, labels=labels, **same),
        "a new firing of the same alert": alert_payload(name, labels=labels),
        "a service alert (HdbHighLatencyP99)": alert_payload(
            "HdbHighLatencyP99", labels={"category": "service", "severity": "warning"}
        ),
        "the alert, resolved": alert_payload(name, labels=labels, status="resolved", **same),
    }
    rows = []
    for case, payload in cases.items():
        answer = post_alert(retrainer_url, payload)
        rows.append(
            {
                "payload": case,
                "HTTP status": answer["status"],
                "decision": answer["decision"],
                "reason": scrub_times(answer["reason"]),
            }
        )
    return pd.DataFrame(rows).set_index("payload")


def _model_alerts(path: Path) -> dict[str, str]:
    return {
        rule["alert"]: str(rule.get("for", "0s"))
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if rule.get("labels", {}).get("category") == "model"
    }


def _retrainer_route(path: Path) -> dict[str, Any]:
    routes = load_yaml(path)["route"].get("routes", [])
    return next(r for r in routes if r.get("receiver") == "hdb-retrainer")


def _live_mape_window(path: Path) -> str:
    rule = next(
        r
        for g in load_yaml(path)["groups"]
        for r in g["rules"]
        if r.get("record") == "hdb:live_mape:ratio_rate15m"
    )
    return re.search(r"\[(\w+)\]", rule["expr"]).group(1)


def durations_table(
    info: StackInfo, cooldown_s: float, config_dir: Path = CONFIG_DIR
) -> pd.DataFrame:
    """The durations that set the loop's pace, as committed (real time) and as this run's
    stack uses them (divided by its speed, with floors): the scrape interval, each model
    alert's ``for``, the live-MAPE window, the retraining route's Alertmanager timers, and
    the receiver's cool-down (``cooldown_s``, wall-clock: the speed does not shorten it)."""
    committed, rendered = folders = Path(config_dir), Path(info.workdir)
    scrape = [load_yaml(d / "prometheus.yml")["global"]["scrape_interval"] for d in folders]
    rows = [("scrape interval", *scrape)]
    real_for = _model_alerts(committed / "rules" / "alerts.yml")
    run_for = _model_alerts(rendered / "rules" / "alerts.yml")
    rows += [(f"{name}: for", real_for[name], run_for[name]) for name in real_for]
    rows.append(
        (
            "live MAPE window",
            _live_mape_window(committed / "rules" / "recording.yml"),
            _live_mape_window(rendered / "rules" / "recording.yml"),
        )
    )
    real_route = _retrainer_route(committed / "alertmanager.yml")
    run_route = _retrainer_route(rendered / "alertmanager.yml")
    rows += [
        (f"Alertmanager {key}", real_route[key], run_route[key])
        for key in ("group_wait", "group_interval", "repeat_interval")
    ]
    cooldown = f"{cooldown_s / 60:g}m"
    rows.append(("receiver cool-down", cooldown, cooldown))
    return pd.DataFrame(rows, columns=["duration", "production", "this run"]).set_index("duration")


def alertmanager_alerts(alertmanager_url: str) -> pd.DataFrame:
    """Alertmanager's active alerts (``GET /api/v2/alerts``): alertname, feature (empty for
    alerts without one), state, receivers, fingerprint, starts_at; sorted."""
    import httpx

    answer = httpx.get(f"{alertmanager_url.rstrip('/')}/api/v2/alerts", timeout=10).json()
    rows = [
        {
            "alertname": a["labels"].get("alertname"),
            "feature": a["labels"].get("feature", ""),
            "state": (a.get("status") or {}).get("state"),
            "receivers": ", ".join(sorted(r["name"] for r in a.get("receivers", []))),
            "fingerprint": a.get("fingerprint"),
            "starts_at": a.get("startsAt"),
        }
        for a in answer
    ]
    columns = ["alertname", "feature", "state", "receivers", "fingerprint", "starts_at"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["alertname", "feature"], ignore_index=True)


# ----------------------------------------------------------------------------- the replay


def moments_table(loop: DriftLoop) -> pd.DataFrame:
    """Each of :data:`STEPS`: wall-clock seconds since the drift started, and simulated
    minutes (wall-clock x speed), what production would take with the real-time
    configuration, the retraining's own duration aside."""
    rows = []
    for step, text in STEPS.items():
        wall = loop.moments[step]
        simulated = None if wall is None else round(wall * loop.speed / 60, 1)
        rows.append({"step": text, "wall clock (s)": wall, "simulated (min)": simulated})
    return pd.DataFrame(rows).set_index("step")


def merge_summaries(summaries: list[SimulationSummary]) -> SimulationSummary | None:
    """Several passes of a replay as one summary: counts added up, the last pass's last
    month and stop flag (None for no pass)."""
    if not summaries:
        return None
    first, last = summaries[0], summaries[-1]
    out = SimulationSummary(first.scenario, first.speed, first.rate, list(first.months))
    for s in summaries:
        for name in ("requests_sent", "predictions_ok", "bad_requests_sent", "feedback_sent"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        for name in ("statuses", "failures", "feedback_outcomes", "served_versions"):
            setattr(out, name, dict(Counter(getattr(out, name)) + Counter(getattr(s, name))))
        out.wall_s, out.simulated_s = out.wall_s + s.wall_s, out.simulated_s + s.simulated_s
    out.last_month_sent, out.stopped = last.last_month_sent, last.stopped
    return out


# ----------------------------------------------------------------------------- live accuracy


def rolling_live_mape(labelled: pd.DataFrame, window_s: float) -> pd.Series:
    """The live MAPE (%) as a rolling window over the prediction log: for each labelled
    prediction, in the order its actual price arrived, the mean absolute percentage error of
    the predictions whose price arrived in the ``window_s`` seconds up to and including it.
    Indexed by the arrival time (UTC). This is what the recording rule
    ``hdb:live_mape:ratio_rate15m`` computes from the APE histogram, window for window."""
    frame = labelled.sort_values("received_at", kind="stable")
    index = pd.to_datetime(frame["received_at"].to_numpy(), unit="s", utc=True)
    ape = pd.Series(frame["ape"].to_numpy(dtype="float64") * 100, index=index)
    return ape.rolling(pd.Timedelta(seconds=window_s)).mean().rename("live MAPE %")


def mape_by_version(labelled: pd.DataFrame, prometheus_url: str | None = None) -> pd.DataFrame:
    """Each model version's feedback count and MAPE (%) since the service started, from the
    prediction log and (given ``prometheus_url``) from the APE histogram's ``_count`` and
    ``_sum`` at Prometheus' latest scrape, side by side."""
    groups = labelled.groupby("model_version")["ape"]
    out = pd.DataFrame({"feedback (log)": groups.size(), "MAPE % (log)": groups.mean() * 100})
    out.index = out.index.astype(str)
    if prometheus_url is not None:
        metric = "hdb_prediction_absolute_percentage_error"
        count = promql.query(prometheus_url, f"sum by (model_version) ({metric}_count)")
        total = promql.query(prometheus_url, f"sum by (model_version) ({metric}_sum)")
        count = count.set_index("model_version")["value"] if len(count) else pd.Series()
        total = total.set_index("model_version")["value"] if len(total) else pd.Series()
        out["feedback (Prometheus)"] = count.reindex(out.index)
        out["MAPE % (Prometheus)"] = (total / count * 100).reindex(out.index)
    out.index.name = "model version"
    return out


# ----------------------------------------------------------------------------- figures


def _markers(ax: Any, loop: DriftLoop, steps: Iterable[str]) -> None:
    for step, style in zip(steps, (":", "--", "-."), strict=False):
        when = loop.unix(step)
        if when is not None:
            ax.axvline(
                pd.Timestamp(when, unit="s", tz="UTC"),
                color=_GREY,
                linestyle=style,
                linewidth=1,
                label=STEPS[step],
            )


def timeline_figure(loop: DriftLoop, labelled: pd.DataFrame, note: str | None = None) -> Figure:
    """The loop in two panels over the same time axis: the largest drift PSI among the
    alerted features and the PSI of the predictions (from Prometheus, with the alert's
    threshold), then the live MAPE from the recording rule next to the same rolling window
    computed from the prediction log; the steps of the loop as vertical lines."""
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter

    info = loop.info
    start, end = info.started_at, time.time()
    step = max(1.0, round((end - start) / 300, 1))
    excluded = "|".join(NOT_ALERTED)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained")
    lines = {
        f'max(hdb:drift_psi:max{{feature!~"{excluded}"}})': (
            "the largest PSI of the alerted features",
            _BLUE,
        ),
        'hdb:drift_psi:max{feature="prediction"}': ("the PSI of the predicted prices", _ORANGE),
    }
    for expr, (label, colour) in lines.items():
        frame = promql.query_range(info.prometheus_url, expr, start, end, step)
        top.plot(frame["time"], frame["value"], color=colour, label=label)
    top.axhline(DRIFT_THRESHOLD, color=_GREY, linewidth=1)
    top.text(
        pd.Timestamp(start, unit="s", tz="UTC"),
        DRIFT_THRESHOLD,
        " alert threshold",
        va="bottom",
        fontsize=7,
        color=_GREY,
    )
    top.set(ylabel="PSI", title="Drift against the training profile")
    _markers(top, loop, ("first_alert", "serving"))
    top.legend(fontsize=7, loc="upper right")
    overall = 'hdb:live_mape:ratio_rate15m{model_version="all"}'
    rule = promql.query_range(info.prometheus_url, overall, start, end, step)
    bottom.plot(
        rule["time"],
        rule["value"] * 100,
        color=_BLUE,
        linewidth=2,
        label="recording rule (Prometheus)",
    )
    window_s = 15 * 60 / loop.speed
    logged = rolling_live_mape(labelled, window_s)
    bottom.plot(
        logged.index,
        logged.to_numpy(),
        color=_ORANGE,
        linewidth=1,
        label="the same window, from the prediction log",
    )
    bottom.set(ylabel="MAPE (%)", title=f"Live MAPE over 15 simulated minutes ({window_s:g} s)")
    bottom.set_ylim(bottom=0)
    _markers(bottom, loop, ("first_alert", "serving"))
    bottom.legend(fontsize=7, loc="upper right")
    bottom.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    bottom.set_xlabel("wall-clock time (UTC)")
    if note:
        fig.supxlabel(note, fontsize=8, color=_GREY, x=0.01, ha="left")
    return fig
