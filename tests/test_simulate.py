"""The traffic simulator against the real monitored service (uvicorn on 127.0.0.1, a real
MLflow registry and prediction log): every request and every price it sends is accounted
for, on the simulator's side and in the service's log."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.monitoring.simulate import (
    SCENARIOS,
    get_scenario,
    prepare_scenario,
    replay_rows,
    simulate,
)
from hdb_mlops.serving.process import free_port
from hdb_mlops.serving.server import serve_in_thread

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

FAST_XGB = {"n_estimators": 60, "max_depth": 6, "learning_rate": 0.3}
SPEED = 60.0


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pd.DataFrame:
    return storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()


@pytest.fixture(scope="module")
def champion(sample, tmp_path_factory):
    """The scenarios' champion (2017-01..2020-09) in a store of this module's own."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("HDB_MLOPS_MODEL_CACHE", str(root / "cache"))
        yield prepare_scenario("normal", data=sample, out_dir=root / "models", params=FAST_XGB)


def monitored(plog_path, port: int = 0):
    from hdb_mlops.monitoring.service import create_monitored_app

    app = create_monitored_app("champion", prediction_log=plog_path, feedback_grace_s=5)
    return app, serve_in_thread(app, port=port)


def test_the_scenarios_replay_what_they_say(sample):
    drift = replay_rows(sample, *SCENARIOS["drift"].months, seed=1)
    assert drift["month"].is_monotonic_increasing  # in time order
    assert str(drift["month"].min()) == "2025-01" and str(drift["month"].max()) == "2025-12"
    normal = replay_rows(sample, *SCENARIOS["normal"].months, seed=1, in_time_order=False)
    first_200 = normal["month"].iloc[:200]
    assert first_200.nunique() > 30  # drawn from the whole training period, not one month
    assert str(normal["month"].max()) == SCENARIOS["normal"].champion_cutoff
    with pytest.raises(ValueError, match="use one of normal, drift, outage"):
        get_scenario("storm")
    with pytest.raises(ValueError, match=r"no sales in 2030-01\.\.2030-02"):
        replay_rows(sample, "2030-01", "2030-02", seed=1)


@pytest.mark.parametrize("name", ["normal", "drift"])
def test_every_request_and_price_is_accounted_for(champion, sample, tmp_path, name):
    app, server = monitored(tmp_path / "predictions.sqlite")
    with server as url:
        summary = simulate(
            url,
            scenario=name,
            speed=SPEED,
            data=sample,
            rate=80,
            feedback_delay_s=30,  # half a second of wall-clock time
            limit=240,
        )
        plog = app.state.prediction_log
        assert plog.flush()
        counts = plog.counts()
        labelled = plog.labelled()
    assert summary.requests_sent == summary.predictions_ok == 240
    assert summary.statuses == {"200": 240} and summary.failures == {}
    assert counts["predictions"] == 240  # every prediction the simulator got is logged
    assert summary.feedback_sent == 240 == sum(summary.feedback_outcomes.values())
    assert summary.feedback_outcomes == {"accepted": 240} and counts["labelled"] == 240
    assert summary.served_versions == {str(champion["version"]): 240}
    assert summary.simulated_s == pytest.approx(summary.wall_s * SPEED, abs=0.1)
    assert summary.wall_s >= 240 / 80  # paced at the rate

    first, last = SCENARIOS[name].months
    months = pd.PeriodIndex(labelled["month"], freq="M")
    assert months.min() >= pd.Period(first, "M") and months.max() <= pd.Period(last, "M")
    # the actual prices that came back are the replayed sales' own
    sent = replay_rows(sample, first, last, seed=42, in_time_order=SCENARIOS[name].in_time_order)
    expected = np.sort(sent["resale_price"].to_numpy()[:240])
    assert np.array_equal(np.sort(labelled["resale_price"].to_numpy()), expected)
    mape = float(labelled["ape"].mean() * 100)
    if name == "drift":  # a 2020 model pricing 2025 sales
        assert mape > 20, mape
        ordered = months[np.argsort(labelled["logged_at"].to_numpy(), kind="stable")]
        assert ordered.is_monotonic_increasing
    else:
        assert mape < 12, mape


def test_an_outage_sends_bad_requests_and_the_api_goes_down(champion, sample, tmp_path):
    """From 1 s to 2.5 s (60 s to 150 s simulated) every request is a bad one and the API
    is stopped; the simulator keeps going and the service picks up after it."""
    port = free_port()
    path = tmp_path / "predictions.sqlite"
    state: dict = {}
    events: list[tuple[float, bool]] = []

    def start() -> None:
        state["app"], state["server"] = monitored(path, port)
        state["server"].__enter__()

    def on_outage(down: bool) -> None:
        events.append((time.monotonic(), down))
        if down:
            state["server"].__exit__(None, None, None)
        else:
            start()

    start()
    try:
        summary = simulate(
            f"http://127.0.0.1:{port}",
            scenario="outage",
            speed=SPEED,
            data=sample,
            rate=40,
            feedback_delay_s=15,
            limit=120,
            outage_after_s=60,
            outage_s=90,
            on_outage=on_outage,
        )
        plog, desk = state["app"].state.prediction_log, state["app"].state.feedback
        assert plog.flush()
        deadline = time.monotonic() + 10
        while desk.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        counts = plog.counts()
    finally:
        state["server"].__exit__(None, None, None)
    assert [down for _, down in events] == [True, False]
    assert summary.outage_wall_s == [1.0, 2.5]
    assert summary.bad_requests_sent > 0 and summary.failures.get("connection", 0) > 0
    # the API was down for the outage: the bad requests found nobody to answer them
    assert summary.requests_sent == sum(summary.statuses.values()) + sum(summary.failures.values())
    assert summary.predictions_ok == summary.statuses.get("200", 0) == 120
    assert counts["predictions"] == 120  # the log survived the restart
    assert summary.feedback_sent == sum(summary.feedback_outcomes.values()) == 120
    # feedback due while the API was down got no answer; the rest was accepted
    assert set(summary.feedback_outcomes) <= {"accepted", "connection", "pending"}
    answered = summary.feedback_outcomes.get("accepted", 0) + summary.feedback_outcomes.get(
        "pending", 0
    )
    assert counts["labelled"] == answered > 0


def test_a_stopped_simulation_says_so(champion, sample, tmp_path):
    app, server = monitored(tmp_path / "predictions.sqlite")
    stop = threading.Event()
    with server as url:
        timer = threading.Timer(1.0, stop.set)
        timer.start()
        summary = simulate(url, scenario="drift", speed=SPEED, data=sample, rate=50, stop=stop)
        timer.join()
    assert summary.stopped and 0 < summary.requests_sent < 200
    assert app.state.prediction_log.flush()
    assert app.state.prediction_log.counts()["predictions"] == summary.predictions_ok


# ------------------------------------------------------------------------- the command line


def cli(*args: str, env: dict | None = None, timeout: float = 120):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_hdb_mlops_simulate_prints_the_summary_as_json(champion, tmp_path):
    import json

    app, server = monitored(tmp_path / "predictions.sqlite")
    with server as url:
        out = cli(
            "simulate", "--scenario", "normal", "--api-url", url, "--limit", "30",
            "--rate", "60", "--speed", "60", "--feedback-delay", "30", "--json",
            env={"HDB_MLOPS_DATA_DIR": str(tmp_path / "data")},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert app.state.prediction_log.flush()
        logged = app.state.prediction_log.counts()["predictions"]
    assert summary["requests_sent"] == summary["predictions_ok"] == logged == 30
    assert summary["feedback_outcomes"] == {"accepted": 30}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scenario", "storm"], "argument --scenario: invalid choice: 'storm'"),
        (["--scenario", "drift", "--speed", "0"], "argument --speed: '0' is not a positive"),
        (["--scenario", "drift", "--first-month", "2025-01"], "give both or neither"),
        (["--scenario", "drift", "--api-url", "ftp://x"], "argument --api-url: 'ftp://x'"),
        (["--scenario", "drift", "--api-url", "URL"], "argument --api-url: no service answers"),
    ],
)
def test_hdb_mlops_simulate_refuses_bad_arguments_in_one_line(args, message):
    if "URL" in args:
        args = [a if a != "URL" else f"http://127.0.0.1:{free_port()}" for a in args]
    out = cli("simulate", *args)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
