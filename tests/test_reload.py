"""``POST /admin/reload``: serving a new model without a restart. The token guard, a bundle
directory swapped in place, a failed load that keeps the old model serving, a model with
other request fields refused, and a registry champion changing from v1 to v2 under
concurrent traffic with zero failed requests. Real uvicorn servers on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter

import httpx
import pandas as pd
import pytest
from helpers import made_up_locations, request_rows
from test_serve_monitoring import (  # noqa: F401 - fixtures
    CUTOFF,
    bundle,
    metric_value,
    profiled_bundle,
    tx,
    xgboost_model,
)

from hdb_mlops.model import train
from hdb_mlops.model.bundle import residual_quantiles, save_bundle
from hdb_mlops.model.profile import reference_profile
from hdb_mlops.monitoring.service import create_monitored_app
from hdb_mlops.serving.app import create_app
from hdb_mlops.serving.server import serve_in_thread

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def other_bundle(tx, tmp_path_factory):  # noqa: F811
    """Another XGBoost model with the same feature spec (different rows and depth)."""
    model = train.build_model("xgboost", params={"n_estimators": 30, "max_depth": 3})
    model.n_jobs = 1
    return profiled_bundle(model, tx, tmp_path_factory.mktemp("other") / "bundle", seed=2)


def info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("hdb_model_info{")]


def test_reload_needs_the_token(bundle, monkeypatch):  # noqa: F811
    monkeypatch.delenv("HDB_MLOPS_RELOAD_TOKEN", raising=False)
    app = create_app(bundle)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        disabled = client.post("/admin/reload", headers=AUTH)
        assert disabled.status_code == 403
        assert disabled.json()["detail"][0]["reason"] == (
            "reload is disabled: set HDB_MLOPS_RELOAD_TOKEN"
        )
        monkeypatch.setenv("HDB_MLOPS_RELOAD_TOKEN", TOKEN)
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = client.post("/admin/reload", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
        ok = client.post("/admin/reload", headers=AUTH)
        assert ok.status_code == 200 and ok.json()["reloaded"] is False
        text = client.get("/metrics").text
    assert metric_value(text, "hdb_model_reloads_total", outcome="unauthorized") == 4
    assert metric_value(text, "hdb_model_reloads_total", outcome="ok") == 1
    assert metric_value(text, "hdb_model_reloads_total", outcome="failed") == 0


def test_reload_serves_a_bundle_swapped_in_place(bundle, other_bundle, tx, tmp_path):  # noqa: F811
    served_dir = tmp_path / "served"
    shutil.copytree(bundle, served_dir)
    app = create_monitored_app(served_dir, prediction_log=False, reload_token=TOKEN)
    row = request_rows(tx, 1, seed=3)[0]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        old = client.post("/predict", json=row).json()
        client.post("/predict/batch", json={"records": request_rows(tx, 20, seed=4)})
        assert metric_value(client.get("/metrics").text, "hdb_drift_window_rows") == 21
        shutil.rmtree(served_dir)
        shutil.copytree(other_bundle, served_dir)
        answer = client.post("/admin/reload", headers=AUTH)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["reloaded"] is True
        assert body["previous"]["sha256"] == old["model"]["sha256"]
        new_sha = body["model"]["sha256"]
        assert new_sha != old["model"]["sha256"] and body["model"]["loaded_at"]
        new = client.post("/predict", json=row).json()
        assert new["model"]["sha256"] == new_sha and new["price"] != old["price"]
        assert client.get("/model").json()["sha256"] == new_sha
        app.state.drift.max_age_s = 0
        text = client.get("/metrics").text
        (info,) = info_lines(text)
        assert f'sha256="{new_sha}"' in info and info.endswith(" 1.0")
        assert metric_value(text, "hdb_drift_window_rows") == 1  # the window restarted
        again = client.post("/admin/reload", headers=AUTH).json()
        assert again["reloaded"] is False and again["model"]["sha256"] == new_sha


def test_a_failed_reload_keeps_the_old_model_serving(bundle, other_bundle, tx, tmp_path):  # noqa: F811
    served_dir = tmp_path / "served"
    shutil.copytree(bundle, served_dir)
    app = create_app(served_dir, reload_token=TOKEN)
    row = request_rows(tx, 1, seed=5)[0]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        old = client.post("/predict", json=row).json()
        shutil.rmtree(served_dir)
        shutil.copytree(other_bundle, served_dir)
        (served_dir / "model.joblib").write_bytes(b"half a copy")  # a broken upload
        failed = client.post("/admin/reload", headers=AUTH)
        assert failed.status_code == 409 and failed.json()["error"] == "reload_failed"
        reason = failed.json()["detail"][0]["reason"]
        assert "model.joblib" in reason and "the previous model is still serving" in reason
        still = client.post("/predict", json=row)
        assert still.status_code == 200 and still.json()["model"] == old["model"]
        text = client.get("/metrics").text
        assert f'sha256="{old["model"]["sha256"]}"' in info_lines(text)[0]
        assert metric_value(text, "hdb_model_reloads_total", outcome="failed") == 1


def test_reload_refuses_a_model_with_other_request_fields(bundle, tx, tmp_path):  # noqa: F811
    served_dir = tmp_path / "served"
    shutil.copytree(bundle, served_dir)
    app = create_app(served_dir, reload_token=TOKEN)
    geocodes, stations = made_up_locations(tx)
    located = profiled_bundle(
        xgboost_model(location=True, locations=(geocodes, stations)), tx, tmp_path / "located"
    )
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        shutil.rmtree(served_dir)
        shutil.copytree(located, served_dir)
        refused = client.post("/admin/reload", headers=AUTH)
        assert refused.status_code == 409
        assert "restart the service" in refused.json()["detail"][0]["reason"]
        assert client.get("/ready").json()["ready"] is True


def _register(tx, tmp_path, name: str, kind: str, experiment: str) -> int:  # noqa: F811
    from hdb_mlops.model import registry, tracking
    from hdb_mlops.model.evaluate import holdout

    data = tx[tx["month"] <= CUTOFF + 3].sample(3000, random_state=2).sort_values("month")
    evaluation = holdout(data, lambda: train.build_model(kind), cutoff=str(CUTOFF))
    model = train.build_model(kind).fit(data)
    preds = evaluation.predictions
    bundle_dir = save_bundle(
        model,
        tmp_path / f"bundle-{kind}",
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile=reference_profile(model.features(data), model.predict(data)),
        data_hash=None,
        git=None,
    )
    run_id = tracking.log_training(model, evaluation, bundle_dir, experiment=experiment)
    return registry.register(run_id, name=name)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_zero_failed_requests_while_the_champion_changes(tx, tmp_path, monkeypatch):  # noqa: F811
    from hdb_mlops.model import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("HDB_MLOPS_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HDB_MLOPS_RELOAD_TOKEN", TOKEN)
    monkeypatch.delenv("HDB_MLOPS_MODEL", raising=False)
    name = "reload-test"
    v1 = _register(tx, tmp_path, name, "median_ppsm", "reload-test")
    v2 = _register(tx, tmp_path, name, "linear", "reload-test")
    client = tracking.get_client()
    client.set_registered_model_alias(name, "champion", str(v1))
    app = create_monitored_app(
        "champion", registry_name=name, prediction_log=tmp_path / "log.sqlite"
    )
    rows = request_rows(tx[tx["month"] > CUTOFF], 200, seed=7)
    statuses: Counter[int] = Counter()
    versions: list[tuple[float, str]] = []
    stop = threading.Event()

    def traffic(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            i = k
            while not stop.is_set():
                response = c.post("/predict", json=rows[i % len(rows)])
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions.append((time.monotonic(), response.json()["model"]["version"]))
                i += 4

    with serve_in_thread(app) as url:
        threads = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        client.set_registered_model_alias(name, "champion", str(v2))
        with httpx.Client(base_url=url, timeout=120) as admin:
            reload_started = time.monotonic()
            answer = admin.post("/admin/reload", headers=AUTH)
            reloaded_at = time.monotonic()
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(60)
            text = admin.get("/metrics").text
            ready = admin.get("/ready").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["reloaded"] is True
    assert body["previous"]["version"] == str(v1) and body["model"]["version"] == str(v2)
    assert set(statuses) == {200}, statuses  # not one failed request
    assert sum(statuses.values()) > 20
    seen = [v for _, v in versions]
    assert seen[0] == str(v1) and str(v2) in seen
    assert all(v == str(v2) for t, v in versions if t > reloaded_at + 0.05)
    # the new model loaded off the event loop: the old one kept answering meanwhile
    assert any(reload_started < t < reloaded_at and v == str(v1) for t, v in versions)
    (info,) = info_lines(text)
    assert f'version="{v2}"' in info and 'name="linear"' in info
    assert ready["model"]["version"] == str(v2)
    served = pd.Series([v for _, v in versions]).value_counts()
    for version, n in served.items():
        logged = metric_value(
            text, "hdb_predictions_total", endpoint="/predict", model_version=version
        )
        assert logged == n, version
    assert metric_value(text, "hdb_model_reloads_total", outcome="ok") == 1
