"""Chapter 6A's tour of the monitored service: the helpers its notebook calls.

The notebook starts the monitored service (:mod:`hdb_mlops.monitoring.service`) and a local
Prometheus (:mod:`hdb_mlops.monitoring.stack`), sends traffic it counts itself, and reads
the metrics back three ways: the service's own ``/metrics`` text, PromQL against the live
Prometheus, and promtool's unit tests on series written by hand. Everything it prints must
be the same on every run and machine, so these helpers return what the notebook controls
(counts, names, types, labels) and leave timings to plots.

Where Prometheus is not installed, :func:`start_stack` says how to install it and returns
None; the notebook then skips its live cells. The rule tables and promtool checks
(:mod:`~hdb_mlops.monitoring.tour_rules`) and the drift of request bodies
(:mod:`~hdb_mlops.monitoring.tour_drift`) live in modules of their own and are re-exported
here, so that the notebook has one module to call.
"""

from __future__ import annotations

import atexit
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.monitoring import checks, promql
from hdb_mlops.monitoring.stack import Stack, StackInfo, free_port
from hdb_mlops.monitoring.stack_config import scale_expr
from hdb_mlops.monitoring.tour_drift import PSI_BANDS, psi_band, psi_figure, request_drift
from hdb_mlops.monitoring.tour_rules import alert_rules, promql_check, recording_rules, rule_tests

__all__ = [
    "PSI_BANDS",
    "SKIPPED",
    "Traffic",
    "alert_rules",
    "answering",
    "checks",
    "exposition_excerpt",
    "family_counts",
    "fresh_workdir",
    "gauge_values",
    "metric_families",
    "promql_check",
    "psi_band",
    "psi_figure",
    "query_table",
    "recording_rules",
    "request_drift",
    "rule_tests",
    "start_stack",
    "wait_for_counts",
]

#: What a live cell prints where Prometheus is not installed.
SKIPPED = f"skipped: no Prometheus on this machine (install it with `{checks.INSTALL_HINT}`)"
#: Suffixes the Prometheus text format adds to a family's name for its samples.
_SAMPLE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


# ----------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """A client of the service that counts what it sends: ``records`` are request bodies for
    ``POST /predict``, sent in order; after every ``bad_every``-th one a bad request follows
    (the kinds of ``bad`` in turn: answered 422); every ``batch_every``-th one is also sent
    in a batch of ``batch_size`` rows to ``/predict/batch``. ``counts`` has a key
    ``(endpoint, status)`` per answer; ``priced`` the prediction id of each single-row
    answer, with the matching entry of ``prices`` (the actual price) when given; ``rows``
    every row the service priced, in the order it priced them (what its drift window
    holds). With ``prices`` and ``feedback_every``, the actual prices of the rows priced so
    far go to ``POST /feedback`` in a batch after every ``feedback_every``-th record (and
    the rest with :meth:`send_feedback`); ``feedback`` counts their outcomes."""

    url: str
    records: Sequence[Mapping[str, Any]]
    prices: Sequence[float] | None = None
    bad: Sequence[Mapping[str, Any]] = ()
    bad_every: int = 0
    batch_every: int = 0
    batch_size: int = 5
    feedback_every: int = 0
    counts: Counter = field(default_factory=Counter)
    feedback: Counter = field(default_factory=Counter)
    priced: list[tuple[str, float | None]] = field(default_factory=list)
    rows: list[Mapping[str, Any]] = field(default_factory=list)
    _fed: int = field(default=0, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    def run(self, per_second: float | None = None) -> Counter:
        """Send every record now (at most ``per_second`` rows a second when given); returns
        :attr:`counts`."""
        import requests

        gap = 1.0 / per_second if per_second else 0.0
        with requests.Session() as session:
            for i, record in enumerate(self.records):
                started = time.monotonic()
                answer = self._post(session, "/predict", record)
                if answer.status_code == 200:
                    price = self.prices[i] if self.prices is not None else None
                    self.priced.append((answer.json()["prediction_id"], price))
                    self.rows.append(record)
                if self.bad and self.bad_every and (i + 1) % self.bad_every == 0:
                    kind = self.bad[(i // self.bad_every) % len(self.bad)]
                    self._post(session, "/predict", kind)
                if self.batch_every and (i + 1) % self.batch_every == 0:
                    rows = [
                        self.records[(i + k) % len(self.records)] for k in range(self.batch_size)
                    ]
                    if self._post(session, "/predict/batch", {"records": rows}).ok:
                        self.rows.extend(rows)
                if self.feedback_every and (i + 1) % self.feedback_every == 0:
                    self._feedback(session)
                if gap:
                    time.sleep(max(0.0, gap - (time.monotonic() - started)))
        return self.counts

    def _post(self, session: Any, path: str, body: Any) -> Any:
        answer = session.post(f"{self.url}{path}", json=body, timeout=30)
        self.counts[(path, str(answer.status_code))] += 1
        return answer

    def start(self, per_second: float | None = None) -> Traffic:
        """:meth:`run` in a background thread (see :meth:`join`)."""

        def target() -> None:
            try:
                self.run(per_second)
            except BaseException as exc:  # re-raised by join()
                self._error = exc

        self._thread = threading.Thread(target=target, name="tour-traffic", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 300.0) -> Counter:
        """Wait for :meth:`start`'s thread; returns :attr:`counts` (re-raises its error)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the traffic did not finish within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self.counts

    def send_feedback(self) -> dict[str, int]:
        """Send the actual prices not sent yet in one ``POST /feedback`` batch (as the sales'
        real prices come back some time later); returns :attr:`feedback`, the count of each
        outcome so far."""
        import requests

        with requests.Session() as session:
            self._feedback(session)
        return dict(sorted(self.feedback.items()))

    def _feedback(self, session: Any) -> None:
        todo = [(p, a) for p, a in self.priced[self._fed :] if a is not None]
        self._fed = len(self.priced)
        if not todo:
            return
        items = [{"prediction_id": p, "actual_price": float(a)} for p, a in todo]
        answer = self._post(session, "/feedback", {"feedback": items})
        answer.raise_for_status()
        self.feedback.update(answer.json()["outcomes"])

    def table(self) -> pd.DataFrame:
        """:attr:`counts` as a table: endpoint, status, requests (sorted)."""
        rows = [{"endpoint": e, "status": s, "requests": n} for (e, s), n in self.counts.items()]
        frame = pd.DataFrame(rows, columns=["endpoint", "status", "requests"])
        return frame.sort_values(["endpoint", "status"], ignore_index=True)


# ----------------------------------------------------------------------------- /metrics


def metric_families(text: str, prefix: str = "") -> pd.DataFrame:
    """The metric families of a Prometheus text exposition (whose names start with
    ``prefix``): name (as exposed: counters with ``_total``), type, labels (their names, ``le``
    left out), series (label sets) and help, one row a family. The ``*_created`` gauges
    prometheus_client adds next to counters and histograms (when each series started) are
    left out."""
    from prometheus_client.parser import text_string_to_metric_families

    rows = []
    for family in text_string_to_metric_families(text):
        exposed = family.name + ("_total" if family.type == "counter" else "")
        if not exposed.startswith(prefix) or exposed.endswith("_created"):
            continue
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        labels = sorted({k for s in samples for k in s.labels if k != "le"})
        series = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in samples}
        rows.append(
            {
                "name": exposed,
                "type": family.type,
                "labels": ", ".join(labels),
                "series": len(series) if samples else 0,
                "help": family.documentation,
            }
        )
    return pd.DataFrame(rows, columns=["name", "type", "labels", "series", "help"])


def family_counts(text: str) -> pd.Series:
    """How many metric families of each origin a scrape holds: ``hdb_*`` (the service's),
    ``process_*`` and ``python_*`` (prometheus_client's collectors)."""
    families = metric_families(text)
    origin = families["name"].str.split("_").str[0]
    return origin.value_counts().sort_index().rename("families")


def exposition_excerpt(text: str, names: Iterable[str], hide: Iterable[str] = ("sha256",)) -> str:
    """The lines of a Prometheus text exposition for the families ``names`` (as exposed:
    ``hdb_http_requests_total``), with their ``# HELP`` and ``# TYPE`` lines, without the
    ``_created`` samples, and the values of the labels in ``hide`` replaced by ``...`` (a
    hash that differs from run to run)."""
    import re

    wanted = set(names)
    hidden = [re.compile(rf'\b{re.escape(label)}="[^"]*"') for label in hide]
    base = {n.removesuffix("_total") for n in wanted}
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            keep = len(parts) > 2 and parts[2] in wanted | base
        else:
            sample = line.split("{", 1)[0].split(" ", 1)[0]
            keep = sample in wanted or any(
                sample == b + suffix for b in base for suffix in _SAMPLE_SUFFIXES
            )
        if keep:
            for pattern, label in zip(hidden, hide, strict=True):
                line = pattern.sub(f'{label}="..."', line)
            out.append(line)
    return "\n".join(out)


# ----------------------------------------------------------------------------- the stack


def fresh_workdir(path: Path | str) -> Path:
    """An empty folder for the chapter's files: a stack left running there (a notebook run
    that did not finish) is stopped first."""
    path = Path(path).expanduser().resolve()
    if path.exists():
        Stack(path).stop()
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def start_stack(
    stack: Stack, api_url: str, *, speed: float, retrainer_url: str | None = None
) -> StackInfo | None:
    """Start Prometheus and Alertmanager for ``api_url`` at ``speed`` and wait for the first
    scrape of every target; None (with the install command printed) where the binaries are
    missing. ``retrainer_url`` defaults to a free port where nothing listens: chapter 6A runs
    no retrainer, so its target is down. The stack is also stopped when the Python process
    exits, should the notebook never reach its clean-up cell."""
    try:
        checks.require_binaries()
    except checks.MissingBinaryError as exc:
        print(f"{exc}\nThe live Prometheus cells below are skipped.")
        return None
    retrainer_url = retrainer_url or f"http://127.0.0.1:{free_port()}"
    info = stack.start(api_url, retrainer_url, speed=speed, replace=True)
    atexit.register(stack.stop)
    promql.wait_for(info.prometheus_url, "count(up) >= 3", timeout=60, interval=0.2)
    return info


def wait_for_counts(
    info: StackInfo, sent: Mapping[tuple[str, str], int], timeout: float = 60.0
) -> pd.DataFrame:
    """Wait until Prometheus' latest scrape of ``hdb_http_requests_total`` shows the count
    the client ``sent`` of every ``(endpoint, status)`` (a :attr:`Traffic.counts`); returns
    endpoint, status, client and prometheus (the counts side by side). TimeoutError when
    they do not agree within ``timeout`` seconds."""
    expr = "sum by (endpoint, status) (hdb_http_requests_total)"

    def seen(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
        return {(r.endpoint, r.status): r.value for r in frame.itertuples()} if len(frame) else {}

    def arrived(frame: pd.DataFrame) -> bool:
        counts = seen(frame)
        return all(counts.get(key) == n for key, n in sent.items())

    frame = promql.wait_for(
        info.prometheus_url, expr, timeout=timeout, interval=0.2, predicate=arrived
    )
    counts = seen(frame)
    rows = [
        {"endpoint": e, "status": s, "client": n, "prometheus": int(counts[(e, s)])}
        for (e, s), n in sorted(sent.items())
    ]
    return pd.DataFrame(rows, columns=["endpoint", "status", "client", "prometheus"])


def query_table(
    info: StackInfo,
    queries: Mapping[str, str],
    value_format: str = "{:g}",
    hide: Sequence[str] = ("instance",),
) -> pd.DataFrame:
    """Run each PromQL query (``{what it asks: expression}``) against the stack's Prometheus
    at this instant: one row a series, with the query, the series (``name{...}`` as
    Prometheus prints it, without the labels in ``hide``: the ``instance`` holds a port that
    changes from run to run) and its value in ``value_format``. Expressions are written in
    real time; their windows are divided by the stack's speed as its rules are
    (:func:`~hdb_mlops.monitoring.stack_config.scale_expr`)."""
    rows = []
    for what, expr in queries.items():
        scaled = scale_expr(expr, info.speed, min_range=4 * info.scrape_seconds)
        frame = promql.query(info.prometheus_url, scaled)
        labels = [c for c in frame.columns if c not in ("series", "time", "value", *hide)]
        found = [
            {
                "query": what,
                "series": promql.series_name({k: v for k, v in r.items() if isinstance(v, str)}),
                "value": value_format.format(r["value"]),
            }
            for r in frame[[*labels, "value"]].to_dict("records")
        ]
        rows += sorted(found, key=lambda r: r["series"]) or [
            {"query": what, "series": "(no data)", "value": ""}
        ]
    return pd.DataFrame(rows, columns=["query", "series", "value"]).set_index(["query", "series"])


def gauge_values(text: str, name: str, label: str = "feature") -> pd.Series:
    """The samples of a gauge in a Prometheus text exposition, by the value of ``label``
    (e.g. the service's ``hdb_drift_psi`` by feature)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        s.labels[label]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and label in s.labels
    }
    return pd.Series(values, name=name, dtype="float64")


def answering(url: str) -> bool:
    """Whether a server answers ``url/health`` right now."""
    import requests

    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False
