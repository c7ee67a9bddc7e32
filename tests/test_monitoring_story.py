"""Chapter 6B's notebook helpers (hdb_mlops.monitoring.story and story_views), without the
loop itself: hand-made alerts against a real receiver, the durations table on a rendered
configuration, the live MAPE from a prediction log, the merged replay summary.

The whole loop runs in tests/test_drift_loop.py and, step by step, in the chapter's notebook
(nbval).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.monitoring import story, story_views
from hdb_mlops.monitoring.audit import AuditLog, alert_key
from hdb_mlops.monitoring.retrain import RetrainSettings
from hdb_mlops.monitoring.retrainer import Retrainer
from hdb_mlops.monitoring.simulate import SimulationSummary
from hdb_mlops.monitoring.stack import StackInfo
from hdb_mlops.monitoring.stack_config import render_local
from hdb_mlops.monitoring.webhook import AlertPayload, create_receiver_app
from hdb_mlops.serving.server import serve_in_thread

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def test_a_hand_made_payload_is_what_the_receiver_accepts():
    payload = story_views.alert_payload("HdbFeatureDrift", labels={"category": "model"})
    parsed = AlertPayload.model_validate(payload)
    assert parsed.alerts[0].labels == {"alertname": "HdbFeatureDrift", "category": "model"}
    assert parsed.status == "firing" and parsed.alerts[0].status == "firing"
    again = story_views.alert_payload("HdbFeatureDrift", labels={"category": "model"})
    assert again["alerts"][0]["fingerprint"] == payload["alerts"][0]["fingerprint"]  # labels
    other = story_views.alert_payload("HdbFeatureDrift", labels={"category": "service"})
    assert other["alerts"][0]["fingerprint"] != payload["alerts"][0]["fingerprint"]


def test_scrub_times_hides_every_time_stamp():
    text = "the last retraining started 2026-12-01T11:38:44.845+00:00, next after 2026-12-01T12:38:44+00:00"
    assert story_views.scrub_times(text) == "the last retraining started <time>, next after <time>"
    assert story_views.scrub_times("no time 2025-01") == "no time 2025-01"
    assert story_views.scrub_times(None) is None


def test_guard_rail_cases_meet_every_guard_rail(tmp_path):
    """A receiver whose audit log already holds a retraining: the same firing is a
    duplicate, a new one meets the cool-down, a service alert and a resolved one are
    ignored; nothing retrains."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    fired = story_views.alert_payload(
        "HdbFeatureDrift", labels={"category": "model", "feature": "flat_age_months"}
    )["alerts"][0]
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    audit.append(
        {
            "decision": "retrain",
            "outcome": "promoted",
            "alerts": [{**fired, "alertname": "HdbFeatureDrift"}],
            "run": {"started_at": now, "finished_at": now, "seconds": 1.0},
        }
    )
    settings = RetrainSettings(work_dir=str(tmp_path / "retraining"))
    retrainer = Retrainer(settings, audit_log=audit.path, cooldown_s=3600)
    with serve_in_thread(create_receiver_app(retrainer)) as url:
        table = story_views.guard_rail_cases(url, fired)
    assert list(table["decision"]) == [
        "skipped_duplicate",
        "skipped_cooldown",
        "ignored",
        "ignored",
    ]
    assert set(table["HTTP status"]) == {200}
    assert "<time>" in table["reason"].iloc[1] and "20" not in table["reason"].iloc[1]
    assert not retrainer.busy and alert_key(fired) in audit.retrained_keys()
    decisions = [r["decision"] for r in audit.records()]
    assert decisions == ["retrain", "skipped_duplicate", "skipped_cooldown", "ignored", "ignored"]


def test_durations_table_shows_the_committed_and_the_scaled_durations(tmp_path):
    rendered = render_local(
        tmp_path,
        api_url="http://127.0.0.1:18080",
        retrainer_url="http://127.0.0.1:19095",
        prometheus_port=19090,
        alertmanager_port=19093,
        speed=60,
    )
    info = StackInfo(
        workdir=tmp_path,
        prometheus_url="http://127.0.0.1:19090",
        alertmanager_url="http://127.0.0.1:19093",
        api_url="http://127.0.0.1:18080",
        retrainer_url="http://127.0.0.1:19095",
        speed=60,
        scrape_seconds=rendered.scrape_seconds,
    )
    table = story_views.durations_table(info, cooldown_s=3600)
    assert tuple(table.loc["scrape interval"]) == ("15s", "1s")
    assert tuple(table.loc["HdbFeatureDrift: for"]) == ("5m", "5s")
    assert tuple(table.loc["HdbLiveMapeHigh: for"]) == ("10m", "10s")
    assert tuple(table.loc["live MAPE window"]) == ("15m", "15s")
    assert tuple(table.loc["Alertmanager repeat_interval"]) == ("1h", "1m")
    assert tuple(table.loc["receiver cool-down"]) == ("60m", "60m")  # wall-clock: not scaled


def test_rolling_live_mape_is_a_time_window_up_to_each_arrival():
    labelled = pd.DataFrame({"received_at": [30.0, 0.0, 10.0, 20.0], "ape": [0.4, 0.1, 0.2, 0.3]})
    live = story_views.rolling_live_mape(labelled, 15)
    assert np.allclose(live.to_numpy(), [10.0, 15.0, 25.0, 35.0])
    assert isinstance(live.index, pd.DatetimeIndex) and str(live.index.tz) == "UTC"
    edge = story_views.rolling_live_mape(
        pd.DataFrame({"received_at": [0.0, 15.0], "ape": [0.1, 0.3]}), 15
    )
    assert np.allclose(edge.to_numpy(), [10.0, 30.0])  # exactly window_s earlier: out


def test_mape_by_version_from_the_log():
    labelled = pd.DataFrame({"model_version": ["1", "1", "2"], "ape": [0.3, 0.1, 0.05]})
    table = story_views.mape_by_version(labelled)
    assert list(table.index) == ["1", "2"]
    assert list(table["feedback (log)"]) == [2, 1]
    assert np.allclose(table["MAPE % (log)"], [20.0, 5.0])


def test_merge_summaries_adds_the_passes_up():
    first = SimulationSummary("drift", 60.0, 40.0, ["2025-01", "2026-07"], requests_sent=3,
                              predictions_ok=3, statuses={"200": 3}, served_versions={"1": 3})  # fmt: skip
    second = SimulationSummary("drift", 60.0, 40.0, ["2025-01", "2026-07"], requests_sent=2,
                               predictions_ok=2, statuses={"200": 2}, served_versions={"2": 2},
                               last_month_sent="2025-01", stopped=True)  # fmt: skip
    merged = story_views.merge_summaries([first, second])
    assert merged.requests_sent == 5 and merged.statuses == {"200": 5}
    assert merged.served_versions == {"1": 3, "2": 2}
    assert merged.stopped and merged.last_month_sent == "2025-01"
    assert story_views.merge_summaries([]) is None


def test_moments_table_in_wall_clock_and_simulated_time():
    moments = dict.fromkeys(story_views.STEPS)
    moments.update(first_alert=12.0, webhook=13.5)
    table = story_views.moments_table(SimpleNamespace(moments=moments, speed=60.0))
    assert list(table.index) == list(story_views.STEPS.values())
    assert table["simulated (min)"].iloc[0] == 12.0 and table["simulated (min)"].iloc[1] == 13.5
    assert table["wall clock (s)"].isna().sum() == 3


def test_fresh_workdir_closes_a_loop_left_running_there(tmp_path):
    folder = (tmp_path / "loop").resolve()
    (folder / "monitor").mkdir(parents=True)
    (folder / "old.txt").write_text("from an earlier run")
    closed = []
    story._LIVE[folder] = SimpleNamespace(close=lambda: closed.append(True))
    assert story.fresh_workdir(folder) == folder
    assert closed == [True] and list(folder.iterdir()) == []
    assert folder not in story._LIVE
