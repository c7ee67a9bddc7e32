"""Model bundles, MLflow tracking and the registry's promotion gate, on a temporary sqlite
store: nothing here is mocked except a deliberately broken model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.config import GATE_LATENCY_BUDGET_MS
from hdb_mlops.data import storage
from hdb_mlops.model.bundle import (
    IntegrityError,
    load_bundle,
    residual_quantiles,
    save_bundle,
    sha256_file,
)
from hdb_mlops.model.evaluate import Evaluation, holdout
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.model.models import PriceModel, make_model
from hdb_mlops.model.profile import bin_shares, reference_profile

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CUTOFF = "2024-12"  # train up to here, validate on 2025-01 .. 2025-09
GIT = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}
FAST_XGB = {
    "n_estimators": 50,
    "max_depth": 4,
    "learning_rate": 0.2,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A few thousand training rows, the validation months and a later gate window."""
    prepared = storage.prepare("sample", tmp_path_factory.mktemp("data"))
    tx = prepared.transactions()
    months = tx["month"]
    train = tx[months <= pd.Period(CUTOFF, freq="M")].sample(4000, random_state=1)
    valid = tx[(months > pd.Period(CUTOFF, freq="M")) & (months <= pd.Period("2025-09", freq="M"))]
    window = tx[months >= pd.Period("2025-10", freq="M")]
    fit_data = pd.concat([train, valid]).sort_values("month", kind="stable")
    return {"fit": fit_data, "window": window, "data_hash": prepared.data_hash}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One temporary MLflow sqlite store (and artifact root, and model cache) per module:
    creating the schema takes seconds, so tests share it and use distinct model names."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("HDB_MLOPS_MODEL_CACHE", str(root / "cache"))
        yield root


def train(factory, data: dict, out_dir: Path) -> tuple[PriceModel, Evaluation, Path]:
    """Holdout-evaluate a model, then save it as a bundle."""
    fitted: list[PriceModel] = []

    def make() -> PriceModel:
        fitted.append(factory())
        return fitted[-1]

    evaluation = holdout(data["fit"], make, cutoff=CUTOFF)
    model = fitted[-1]
    if isinstance(model, BrokenModel):
        model.broken = True  # evaluated fine, broken from here on (a bad build)
    preds = evaluation.predictions
    train_rows = data["fit"][data["fit"]["month"] <= pd.Period(CUTOFF, freq="M")]
    bundle_dir = save_bundle(
        model,
        out_dir,
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile=reference_profile(model.features(train_rows), model.predict(train_rows)),
        data_hash=data["data_hash"],
        git=GIT,
        extra={"cutoff": CUTOFF},
    )
    return model, evaluation, bundle_dir


def train_log_register(factory, data: dict, tmp_path: Path, label: str, name: str) -> int:
    from hdb_mlops.model import registry, tracking

    model, evaluation, bundle_dir = train(factory, data, tmp_path / label)
    run_id = tracking.log_training(model, evaluation, bundle_dir, experiment=f"exp-{name}")
    return registry.register(run_id, name=name)


@dataclass
class BrokenModel(PriceModel):
    """Test double: once ``broken``, every 7th prediction is NaN or negative."""

    mode: str = "nan"
    broken: bool = False
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name = "broken"

    def fit(self, transactions: pd.DataFrame) -> BrokenModel:
        self.level_ = float(transactions["resale_price"].median())
        return self

    def predict(self, transactions: pd.DataFrame) -> np.ndarray:
        pred = np.full(len(transactions), self.level_)
        if self.broken:
            pred[::7] = np.nan if self.mode == "nan" else -1.0
        return pred


# ------------------------------------------------------------------------- profile, bundle


def test_reference_profile_is_small_and_consistent(data):
    model = make_model("median_ppsm").fit(data["fit"])
    features = model.features(data["fit"])
    profile = reference_profile(features, model.predict(data["fit"]))
    text = json.dumps(profile, allow_nan=False)
    assert len(text) < 50_000
    area = profile["numeric"]["floor_area_sqm"]
    assert area["count"] == len(features) and area["missing_share"] == 0
    assert len(area["bins"]["edges"]) == 11 and sum(area["bins"]["shares"]) == pytest.approx(1)
    assert np.allclose(
        bin_shares(features["floor_area_sqm"], area["bins"]["edges"]),
        area["bins"]["shares"],
        atol=1e-6,
    )
    assert sum(profile["categorical"]["town"]["shares"].values()) == pytest.approx(1)
    assert profile["prediction"]["count"] == len(features)


def test_bundle_round_trip_and_interval(data, tmp_path):
    model, _, bundle_dir = train(lambda: make_model("linear"), data, tmp_path / "b")
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "feature_spec.json", "metadata.json", "model.joblib", "reference_profile.json",
    ]  # fmt: skip
    bundle = load_bundle(bundle_dir)
    window = data["window"]
    assert np.array_equal(bundle.predict(window), model.predict(window))
    meta = bundle.metadata
    assert meta["model_name"] == "linear" and meta["data_hash"] == data["data_hash"]
    assert set(meta["files"]) == {"model.joblib", "feature_spec.json", "reference_profile.json"}
    assert meta["files"]["model.joblib"] == sha256_file(bundle_dir / "model.joblib")
    assert bundle.sha256 == sha256_file(bundle_dir / "metadata.json")
    assert bundle.spec == model.spec and meta["git"] == GIT
    interval = bundle.predict_with_interval(window, level=0.9)
    assert list(interval.columns) == ["prediction", "lower", "upper"]
    assert (interval["lower"] < interval["prediction"]).all()
    assert (interval["prediction"] < interval["upper"]).all()
    covered = window["resale_price"].between(interval["lower"], interval["upper"]).mean()
    assert 0.6 < covered <= 1.0
    with pytest.raises(ValueError, match="levels"):
        bundle.predict_with_interval(window, level=0.33)


def test_tampering_is_detected_before_unpickling(data, tmp_path):
    _, _, bundle_dir = train(lambda: make_model("median_ppsm"), data, tmp_path / "b")
    load_bundle(bundle_dir)  # intact

    model_file = bundle_dir / "model.joblib"
    original = model_file.read_bytes()
    model_file.write_bytes(original + b"\0")
    with pytest.raises(IntegrityError, match=r"model\.joblib") as err:
        load_bundle(bundle_dir)
    assert err.value.file == "model.joblib" and err.value.expected != err.value.actual
    assert err.value.expected in str(err.value) and err.value.actual in str(err.value)
    model_file.write_bytes(original)

    meta_file = bundle_dir / "metadata.json"
    meta_text = meta_file.read_text()
    meta = json.loads(meta_text)
    meta["metrics"]["mape"] = 0.01  # a better score than it earned
    meta_file.write_text(json.dumps(meta, indent=2))
    with pytest.raises(IntegrityError, match=r"metadata\.json"):
        load_bundle(bundle_dir)
    meta_file.write_text(meta_text)
    with pytest.raises(IntegrityError, match="not the expected bundle"):
        load_bundle(bundle_dir, expected_sha256="0" * 64)

    (bundle_dir / "reference_profile.json").unlink()
    with pytest.raises(IntegrityError, match=r"reference_profile\.json is missing"):
        load_bundle(bundle_dir)


def test_same_data_params_and_seed_reproduce_metrics_and_model_hash(data, tmp_path):
    def xgb() -> PriceModel:
        return make_model("xgboost", params_=dict(FAST_XGB), seed=7, n_jobs=1)

    _, eval_a, dir_a = train(xgb, data, tmp_path / "a")
    _, eval_b, dir_b = train(xgb, data, tmp_path / "b")
    assert eval_a.overall == eval_b.overall
    meta_a, meta_b = load_bundle(dir_a).metadata, load_bundle(dir_b).metadata
    assert sha256_file(dir_a / "model.joblib") == sha256_file(dir_b / "model.joblib")
    assert meta_a["model_sha256"] == meta_b["model_sha256"]
    assert meta_a["booster_sha256"] == meta_b["booster_sha256"] is not None
    _, _, dir_c = train(
        lambda: make_model("xgboost", params_=dict(FAST_XGB), seed=8, n_jobs=1),
        data,
        tmp_path / "c",
    )
    assert load_bundle(dir_c).metadata["booster_sha256"] != meta_a["booster_sha256"]


# ------------------------------------------------------------------------- tracking


def test_log_training_records_run(store, data, tmp_path):
    from matplotlib.figure import Figure

    from hdb_mlops.model import tracking

    model, evaluation, bundle_dir = train(lambda: make_model("median_ppsm"), data, tmp_path / "b")
    fig = Figure()
    fig.add_subplot().plot([1, 2, 3])
    run_id = tracking.log_training(
        model, evaluation, bundle_dir, experiment="exp-log", params={"train_rows": 4000},
        figures={"residuals": fig}, tags={"owner": "tests"},
    )  # fmt: skip
    assert tracking.tracking_uri() == f"sqlite:///{store}/mlflow.db"
    client = tracking.get_client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())
    assert run.data.metrics["mape"] == pytest.approx(evaluation.overall["mape"])
    town_mape = evaluation.by("town")["mape"]
    assert run.data.metrics["mape_town_KALLANG_WHAMPOA"] == pytest.approx(
        town_mape["KALLANG/WHAMPOA"]
    )
    assert sum(k.startswith("mape_town_") for k in run.data.metrics) == len(town_mape)
    assert run.data.params["window_months"] == "12" and run.data.params["train_rows"] == "4000"
    assert run.data.params["model"] == "median_ppsm"
    tags = run.data.tags
    assert tags["data_hash"] == data["data_hash"] and tags["git_commit"] == GIT["commit"]
    assert tags["protocol"] == "holdout" and tags["owner"] == "tests"
    assert tags["bundle_sha256"] == sha256_file(bundle_dir / "metadata.json")
    root = {f.path for f in client.list_artifacts(run_id)}
    assert {"feature_spec.json", "reference_profile.json", "figures", "evaluation"} <= root
    assert "bundle" not in root  # the bundle is inside the run's MLflow model
    assert [f.path for f in client.list_artifacts(run_id, "figures")] == ["figures/residuals.png"]

    model_id = tags["model_id"]
    assert tags["model_uri"] == f"models:/{model_id}"
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    logged_model = client.get_logged_model(model_id)
    assert logged_model.source_run_id == run_id and logged_model.status == "READY"
    assert logged_model.tags["bundle_sha256"] == tags["bundle_sha256"]
    assert logged_model.params["model"] == "median_ppsm"
    assert {m.key for m in logged_model.metrics} >= {"mape", "mape_town_KALLANG_WHAMPOA"}
    top = {f.path for f in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "python_model.pkl", "input_example.json", "requirements.txt"} <= top
    logged = {
        Path(f.path).name for f in client.list_logged_model_artifacts(model_id, "artifacts/bundle")
    }
    assert logged == {
        "model.joblib",
        "metadata.json",
        "feature_spec.json",
        "reference_profile.json",
    }


# ------------------------------------------------------------------------- registry


def test_register_and_promotion_gate(store, data, tmp_path):
    from hdb_mlops.model import registry

    name = "gate-story"
    window = data["window"]
    first = train_log_register(lambda: make_model("median_ppsm"), data, tmp_path, "first", name)
    d1 = registry.promote(first, window, name=name)
    assert (
        d1.promoted and d1.champion_mape is None and d1.checks["finite"] and d1.checks["positive"]
    )
    assert 0 < d1.checks["latency_ms"] <= d1.checks["latency_budget_ms"] == GATE_LATENCY_BUDGET_MS
    assert registry.load("champion", name=name).metadata["model_name"] == "median_ppsm"

    stale = train_log_register(
        lambda: make_model("median_ppsm", window_months=120), data, tmp_path, "stale", name
    )
    d2 = registry.promote(stale, window, name=name)
    assert not d2.promoted
    assert d2.candidate_mape > d2.champion_mape and d2.champion_version == first
    assert any("MAPE" in r for r in d2.reasons)
    assert (
        registry.load("champion", name=name).metadata["model_sha256"]
        == registry.load(first, name=name).metadata["model_sha256"]
    )
    assert registry.show("challenger", name=name)["version"] == stale

    better = train_log_register(lambda: make_model("linear"), data, tmp_path, "better", name)
    d3 = registry.promote(better, window, name=name)
    assert d3.promoted and d3.candidate_mape <= d3.champion_mape - 0.1
    champion = registry.load("champion", name=name)
    info = registry.show("champion", name=name)
    assert info["version"] == better and info["aliases"] == ["champion"]
    assert (
        champion.metadata["model_name"] == "linear"
        and champion.sha256 == info["tags"]["bundle_sha256"]
    )
    assert info["tags"]["gate.outcome"] == "promoted" and "PROMOTED" in info["description"]
    assert np.array_equal(
        champion.predict(window), registry.load(better, name=name).predict(window)
    )

    versions = registry.list_versions(name).set_index("version")
    assert list(versions.index) == [better, stale, first]
    assert versions.loc[better, "aliases"] == "champion"
    assert versions.loc[stale, "aliases"] == "challenger"
    assert versions.loc[first, "aliases"] == ""
    assert list(versions["model"]) == ["linear", "median_ppsm", "median_ppsm"]
    assert list(versions["gate"]) == ["promoted", "refused", "promoted"]
    assert (versions["data_hash"] == data["data_hash"]).all()
    assert versions["mape"].notna().all()


def test_gate_refuses_broken_models(store, data, tmp_path):
    from hdb_mlops.model import registry

    name = "gate-sanity"
    window = data["window"]
    nan_v = train_log_register(lambda: BrokenModel("nan"), data, tmp_path, "nan", name)
    d = registry.promote(nan_v, window, name=name)  # no champion yet, still refused
    assert not d.promoted and not d.checks["finite"] and d.candidate_mape is None
    assert any("NaN" in r for r in d.reasons)
    assert registry.list_versions(name)["aliases"].tolist() == [""]

    good = train_log_register(lambda: make_model("median_ppsm"), data, tmp_path, "good", name)
    slow = registry.promote(good, window, name=name, latency_budget_ms=0.0)
    assert not slow.promoted and not slow.checks["latency_ok"]
    assert any("latency" in r for r in slow.reasons)
    assert registry.promote(good, window, name=name).promoted

    neg_v = train_log_register(lambda: BrokenModel("negative"), data, tmp_path, "neg", name)
    d = registry.promote(neg_v, window, name=name)
    assert not d.promoted and not d.checks["positive"] and d.checks["n_nonpositive"] > 0
    assert any("negative" in r for r in d.reasons)
    assert registry.show("champion", name=name)["version"] == good
    assert registry.show(neg_v, name=name)["tags"]["gate.outcome"] == "failed"
    with pytest.raises(registry.RegistryError) as err:
        registry.load("challenger", name=name)
    assert str(err.value) == (
        f"registered model {name!r} has no version with alias 'challenger': "
        "run `hdb-mlops train` to train and register one"
    )
    with pytest.raises(registry.RegistryError, match="no registered model 'nothing-here' yet"):
        registry.show("champion", name="nothing-here")

    from hdb_mlops.serving.loading import ModelLoadError, resolve_model_ref

    with pytest.raises(ModelLoadError) as err:  # what `hdb-mlops serve` says
        resolve_model_ref("challenger", registry_name=name)
    assert str(err.value) == (
        f"cannot resolve model 'challenger': registered model {name!r} has no version with "
        "alias 'challenger'; run `hdb-mlops train` to train and register one, or serve a "
        "bundle directory with --model PATH (or $HDB_MLOPS_MODEL)"
    )


def test_registry_load_verifies_downloaded_bundle(store, data, tmp_path):
    from hdb_mlops.model import registry, tracking

    name = "gate-integrity"
    version = train_log_register(lambda: make_model("median_ppsm"), data, tmp_path, "m", name)
    bundle = registry.load(version, name=name)
    assert bundle.path.is_relative_to(store / "cache")

    (bundle.path / "model.joblib").write_bytes(b"tampered cache")  # a damaged cache is refetched
    assert registry.load(version, name=name).sha256 == bundle.sha256

    source = tracking.get_client().get_model_version(name, str(version)).source
    model_id = source.removeprefix("models:/")
    stored = next((store / "artifacts").glob(f"*/models/{model_id}/artifacts/artifacts/bundle"))
    assert stored.as_uri() == registry.show(version, name=name)["bundle_uri"]
    stored = stored / "model.joblib"
    stored.write_bytes(stored.read_bytes() + b"\0")  # the artifact store itself is tampered
    for cached in (store / "cache").glob("*/*"):
        (cached / "model.joblib").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"model\.joblib"):
        registry.load(version, name=name)
    with pytest.raises(registry.RegistryError, match="no version 99: `hdb-mlops model list`"):
        registry.load(99, name=name)


def test_runs_and_versions_from_before_the_mlflow_models(store, data, tmp_path):
    """A run that logged its bundle under ``bundle/`` (no MLflow model) is registered as an
    MLflow model; a version whose source is such a bundle folder still shows and loads."""
    from hdb_mlops.model import registry, tracking

    name = "legacy"
    model, _, bundle_dir = train(lambda: make_model("median_ppsm"), data, tmp_path / "b")
    client = tracking.get_client()
    experiment_id = tracking.ensure_experiment("exp-legacy", client)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_artifacts(run_id, str(bundle_dir), tracking.BUNDLE_ARTIFACT_PATH)
    client.set_terminated(run_id)

    version = registry.register(run_id, name=name)
    info = registry.show(version, name=name)
    assert info["source"].startswith("models:/m-")
    assert info["source"] == client.get_run(run_id).data.tags["model_uri"]
    assert info["bundle_uri"].endswith("/artifacts/bundle")
    window = data["window"]
    assert np.array_equal(registry.load(version, name=name).predict(window), model.predict(window))

    source = f"{client.get_run(run_id).info.artifact_uri}/{tracking.BUNDLE_ARTIFACT_PATH}"
    sha = sha256_file(bundle_dir / "metadata.json")
    old = client.create_model_version(name, source, run_id, tags={"bundle_sha256": sha})
    info = registry.show(old.version, name=name)
    assert info["bundle_uri"] == source and info["metadata"]["model_name"] == "median_ppsm"
    assert registry.load(old.version, name=name).sha256 == sha


def test_drift_reference_describes_the_last_twelve_training_months(data, tmp_path):
    """The reference profile is the market the model meets next: its last 12 training months,
    so that features which age with the calendar do not drift on the first day of serving."""
    from hdb_mlops.model.train import REFERENCE_MONTHS, publish, reference_months

    evaluation = holdout(data["fit"], lambda: make_model("median_ppsm"), cutoff=CUTOFF)
    result = publish(evaluation, data["fit"], tmp_path, track=False, register=False)
    profile = load_bundle(result.bundle_dir).profile
    months = evaluation.train["month"]
    recent = months[reference_months(months)]
    assert REFERENCE_MONTHS == 12
    assert str(recent.min()) == "2024-01" and str(recent.max()) == CUTOFF
    assert profile["n_rows"] == len(recent) < len(months)
