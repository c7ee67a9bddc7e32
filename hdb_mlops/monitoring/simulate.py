"""The traffic simulator of chapter 6: replays sales against the running service in time
order, the way buyers and valuers would use it, and later reports each sale's actual price.

For each transaction (oldest month first, shuffled within a month) it sends ``POST
/predict`` with the flat's record and keeps the ``prediction_id``; ``feedback_delay_s``
(simulated) seconds later it sends the actual price, ``POST /feedback``. ``rate`` is the
number of prediction requests per wall-clock second; ``speed`` N compresses every simulated
wait N times (the feedback delay, the outage), as the monitoring stack's ``speed`` does for
Prometheus' and Alertmanager's durations: simulated time = wall-clock time x speed.

Scenarios (:data:`SCENARIOS`), each facing the champion :func:`prepare_scenario` trains for
it (XGBoost on the sample's 2017-01..2020-09, scored on 2020-10..2020-12):

* ``normal``: sales drawn from the champion's own training period, 2017-01..2020-09, in
  random order: the population the model learned, so nothing should fire (the control
  case). Why not in time order: the month is one of the model's features, and live months
  always lie after the training months; replayed in time order, any month range gives the
  month feature a large PSI against the training profile. That drift is real but expected:
  the chapter discusses it, and the ``drift`` scenario shows what it leads to;
* ``drift``: the sales of 2025, in time order, five years after the training data. Resale
  prices rose by about half since 2020 and the model, which cannot extrapolate in time,
  prices them as in 2020: the drift alerts (the month and the predicted prices leave the
  training profile) and the live-MAPE alert fire, and the retraining loop should replace
  the champion;
* ``outage``: ``normal`` traffic with an outage in it: from ``outage_after_s`` for
  ``outage_s`` simulated seconds (default: after 1 minute, for 3) every request is a bad
  one (invalid records: the service's 422 answers, ``hdb_rejected_requests_total``), and
  ``on_outage(True)`` / ``on_outage(False)`` are called at its start and end so that the
  caller can stop the API meanwhile (``HdbApiDown`` fires after a minute of failed
  scrapes). A request that finds the API down counts as ``failures["connection"]``.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops import config

log = logging.getLogger(__name__)

DEFAULT_RATE = 20.0
DEFAULT_FEEDBACK_DELAY_S = 60.0
#: XGBoost parameters of a scenario's champion: small, trained in seconds.
CHAMPION_PARAMS = {"n_estimators": 150, "max_depth": 6, "learning_rate": 0.2}
#: Feedback answers other than 202, by status.
FEEDBACK_STATUS = {409: "duplicate", 404: "unknown", 400: "invalid", 422: "invalid"}


@dataclass(frozen=True)
class Scenario:
    """A traffic scenario: the months replayed and the champion that faces them."""

    name: str
    months: tuple[str, str]
    description: str
    #: In time order (oldest month first), or shuffled across the months.
    in_time_order: bool = True
    champion_months: tuple[str, str] = ("2017-01", "2020-12")
    champion_cutoff: str = "2020-09"
    outage: bool = False


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario(
        "normal", ("2017-01", "2020-09"), "the champion's training period, in random order",
        in_time_order=False,
    ),
    "drift": Scenario("drift", ("2025-01", "2025-12"), "2025 sales, a 2017-2020 champion"),
    "outage": Scenario(
        "outage", ("2017-01", "2020-09"), "normal traffic, then bad requests / the API down",
        in_time_order=False, outage=True,
    ),
}  # fmt: skip


def get_scenario(name: str) -> Scenario:
    """A scenario by name (ValueError naming the known ones otherwise)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}: use one of {', '.join(SCENARIOS)}") from None


def _transactions(data: pd.DataFrame | str | Path, data_dir: Path | str | None) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    from hdb_mlops.data.storage import prepare

    return prepare(data, data_dir).transactions()  # default: config.data_dir()


def _in_months(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    months = frame["month"]
    keep = (months >= pd.Period(first, freq="M")) & (months <= pd.Period(last, freq="M"))
    return frame[keep]


def prepare_scenario(
    name: str,
    *,
    data: pd.DataFrame | str | Path = "sample",
    data_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    params: dict[str, Any] | None = None,
    seed: int = config.DEFAULT_SEED,
) -> dict[str, Any]:
    """Train, register and make champion the scenario's model (on the current MLflow store:
    point it at a sandbox first, e.g. ``tracking.use_store(folder, fresh=True)``). The gate
    decides as always; if an existing champion wins, the scenario's model is made champion
    anyway, since the scenario needs it, and ``forced`` says so. Returns version, cut-off,
    months, rows and MAPE."""
    from hdb_mlops.model import registry, tracking
    from hdb_mlops.model.train import train

    sc = get_scenario(name)
    frame = _in_months(_transactions(data, data_dir), *sc.champion_months)
    result = train(
        frame,
        Path(out_dir) if out_dir else config.RUNS_DIR / "monitor" / "models",
        params={**CHAMPION_PARAMS, **(params or {})},
        cutoff=sc.champion_cutoff,
        seed=seed,
    )
    forced = not getattr(result.decision, "promoted", False)
    if forced:
        client = tracking.get_client()
        client.set_registered_model_alias(registry.DEFAULT_NAME, registry.CHAMPION, result.version)
        log.warning("scenario %s: version %s made champion by hand", name, result.version)
    return {
        "scenario": name,
        "version": result.version,
        "cutoff": result.cutoff,
        "train_months": [sc.champion_months[0], sc.champion_cutoff],
        "train_rows": len(result.evaluation.train),
        "holdout_mape": round(result.evaluation.overall["mape"], 3),
        "forced": forced,
    }


# ------------------------------------------------------------------------- the replay


@dataclass
class SimulationSummary:
    """What a simulation sent and what came back."""

    scenario: str
    speed: float
    rate: float
    months: list[str]
    #: Prediction requests sent, bad ones included: the sum of ``statuses`` and ``failures``.
    requests_sent: int = 0
    predictions_ok: int = 0
    bad_requests_sent: int = 0
    #: Answers to the prediction requests by HTTP status ("200", "422", ...).
    statuses: dict[str, int] = field(default_factory=dict)
    #: Prediction requests that got no answer (``connection``: the API is down).
    failures: dict[str, int] = field(default_factory=dict)
    feedback_sent: int = 0
    #: The service's outcome per feedback sent (accepted, pending, late, duplicate,
    #: unknown, invalid; ``connection`` when it got no answer): they sum to feedback_sent.
    feedback_outcomes: dict[str, int] = field(default_factory=dict)
    served_versions: dict[str, int] = field(default_factory=dict)
    last_month_sent: str | None = None
    outage_wall_s: list[float] | None = None
    stopped: bool = False
    wall_s: float = 0.0
    simulated_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def replay_rows(
    frame: pd.DataFrame, first: str, last: str, seed: int, *, in_time_order: bool = True
) -> pd.DataFrame:
    """The sales of months ``first..last`` in replay order: by month, shuffled (seeded)
    within each month; or all shuffled when not ``in_time_order``."""
    rows = _in_months(frame, first, last)
    if rows.empty:
        raise ValueError(f"the data has no sales in {first}..{last}: choose other months")
    shuffle = np.random.default_rng(seed).permutation(len(rows))
    keys = ["month", "_order"] if in_time_order else ["_order"]
    rows = rows.assign(_order=shuffle).sort_values(keys, kind="stable")
    return rows.drop(columns="_order").reset_index(drop=True)


def _bad_request(i: int) -> dict[str, Any]:
    from hdb_mlops.data.examples import BAD_REQUESTS

    bad = list(BAD_REQUESTS.values())
    return bad[i % len(bad)]


def simulate(
    api_url: str,
    *,
    scenario: str = "normal",
    speed: float = 1.0,
    data: pd.DataFrame | str | Path = "sample",
    data_dir: Path | str | None = None,
    rate: float = DEFAULT_RATE,
    feedback_delay_s: float = DEFAULT_FEEDBACK_DELAY_S,
    feedback_share: float = 1.0,
    months: tuple[str, str] | None = None,
    limit: int | None = None,
    duration_s: float | None = None,
    outage_after_s: float = 60.0,
    outage_s: float = 180.0,
    on_outage: Callable[[bool], None] | None = None,
    stop: threading.Event | None = None,
    seed: int = config.DEFAULT_SEED,
    timeout: float = 10.0,
) -> SimulationSummary:
    """Replay a scenario against the service at ``api_url`` (see the module docstring) and
    return what happened. Runs until the scenario's sales (at most ``limit``) are sent and
    their feedback delivered, ``duration_s`` simulated seconds have passed or ``stop`` is
    set. ``feedback_share`` of the priced sales get feedback (seeded)."""
    import httpx

    from hdb_mlops.data.examples import request_records

    sc = get_scenario(scenario)
    if not (speed > 0 and rate > 0):
        raise ValueError("speed and rate must be positive numbers")
    if not 0 <= feedback_share <= 1:
        raise ValueError(f"feedback_share must be between 0 and 1, not {feedback_share}")
    first, last = months or sc.months
    rows = replay_rows(
        _transactions(data, data_dir), first, last, seed, in_time_order=sc.in_time_order
    )
    if limit is not None:
        rows = rows.iloc[:limit]
    replay = _Replay(
        request_records(rows),
        rows["resale_price"].to_numpy(dtype="float64"),
        rows["month"].astype("str").to_numpy(),
        np.random.default_rng(seed + 1).random(len(rows)) < feedback_share,
        SimulationSummary(sc.name, float(speed), float(rate), [first, last]),
    )
    delay = feedback_delay_s / speed
    outage = (outage_after_s / speed, (outage_after_s + outage_s) / speed) if sc.outage else None
    in_outage = False
    start = time.monotonic()
    with httpx.Client(base_url=api_url.rstrip("/"), timeout=timeout) as client:
        replay.client = client
        while True:
            now = time.monotonic() - start
            if stop is not None and stop.is_set():
                replay.summary.stopped = True
                break
            if duration_s is not None and now * speed >= duration_s:
                break
            if outage is not None and (outage[0] <= now < outage[1]) != in_outage:
                in_outage = not in_outage
                replay.summary.outage_wall_s = [round(x, 3) for x in outage]
                if on_outage is not None:
                    on_outage(in_outage)
            replay.feedback_due(now)
            due = replay.sent / rate
            if replay.next < len(replay.records) and due <= now:
                replay.predict(now + delay, bad=in_outage)
                continue
            if replay.next >= len(replay.records) and not replay.pending:
                break
            wake = [p[0] for p in replay.pending[:1]]
            if replay.next < len(replay.records):
                wake.append(due)
            time.sleep(min(max(min(wake) - (time.monotonic() - start), 0.0), 0.05))
    return replay.finish(time.monotonic() - start)


class _Replay:
    """The state of one replay: what is sent, what is pending, what came back."""

    def __init__(self, records, prices, months, gets_feedback, summary: SimulationSummary):
        self.records, self.prices, self.months = records, prices, months
        self.gets_feedback = gets_feedback
        self.summary = summary
        self.client: Any = None
        self.next = 0  # the next record to send
        self.bad = 0
        self.pending: list[tuple[float, int, str]] = []  # (due, row, prediction_id)
        self.failures: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()

    @property
    def sent(self) -> int:
        """Prediction requests sent so far, bad ones included."""
        return self.next + self.bad

    def post(self, path: str, body: dict[str, Any], failures: Counter[str]) -> Any:
        """POST; a request that gets no answer counts in ``failures`` (``connection``: the
        API is down or refused it, ``http``: any other transport error)."""
        import httpx

        try:
            return self.client.post(path, json=body)
        except httpx.TransportError:
            failures["connection"] += 1
        except httpx.HTTPError:
            failures["http"] += 1
        return None

    def predict(self, feedback_at: float, *, bad: bool) -> None:
        """Send the next record (or, in an outage, a bad request)."""
        if bad:
            answer = self.post("/predict", _bad_request(self.bad), self.failures)
            self.bad += 1
            if answer is not None:
                self.statuses[str(answer.status_code)] += 1
            return
        i = self.next
        self.next += 1
        answer = self.post("/predict", self.records[i], self.failures)
        self.summary.last_month_sent = str(self.months[i])
        if answer is None:
            return
        self.statuses[str(answer.status_code)] += 1
        if answer.status_code != 200:
            return
        body = answer.json()
        self.summary.predictions_ok += 1
        self.versions[str((body.get("model") or {}).get("version"))] += 1
        if self.gets_feedback[i] and body.get("prediction_id"):
            heapq.heappush(self.pending, (feedback_at, i, str(body["prediction_id"])))

    def feedback_due(self, now: float) -> None:
        """Send the actual price of every sale whose feedback is due."""
        while self.pending and self.pending[0][0] <= now:
            _, i, prediction_id = heapq.heappop(self.pending)
            body = {"prediction_id": prediction_id, "actual_price": float(self.prices[i])}
            self.summary.feedback_sent += 1
            answer = self.post("/feedback", body, self.outcomes)
            if answer is None:
                continue
            if answer.status_code == 202:
                self.outcomes[str(answer.json().get("outcome", "accepted"))] += 1
            else:
                self.outcomes[FEEDBACK_STATUS.get(answer.status_code, str(answer.status_code))] += 1

    def finish(self, wall_s: float) -> SimulationSummary:
        """The summary, totals filled in."""
        s = self.summary
        s.requests_sent, s.bad_requests_sent = self.sent, self.bad
        s.statuses, s.failures = dict(self.statuses), dict(self.failures)
        s.feedback_outcomes = dict(self.outcomes)
        s.served_versions = dict(self.versions)
        s.wall_s = round(wall_s, 3)
        s.simulated_s = round(wall_s * s.speed, 1)
        return s
