"""Registered versions are MLflow models: MLflow's own client loads them by alias and by
version number and predicts the prices ``registry.load`` does, on a temporary sqlite store.
Loading through MLflow keeps the bundle's hash check."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.data.examples import EXAMPLE_REQUEST, request_records
from hdb_mlops.model.bundle import IntegrityError, residual_quantiles, save_bundle
from hdb_mlops.model.evaluate import holdout
from hdb_mlops.model.models import PriceModel, make_model
from hdb_mlops.model.profile import reference_profile

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

CUTOFF = "2024-12"
FAST_XGB = {"n_estimators": 50, "max_depth": 4, "learning_rate": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Training rows up to 2025-09 and the later months as rows to price."""
    prepared = storage.prepare("sample", tmp_path_factory.mktemp("data"))
    tx = prepared.transactions()
    months = tx["month"]
    fit = tx[months <= pd.Period("2025-09", freq="M")].sample(4000, random_state=3)
    rows = tx[months >= pd.Period("2025-10", freq="M")].sample(300, random_state=4)
    return {"fit": fit.sort_values("month", kind="stable"), "rows": rows}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary MLflow store made with tracking.use_store; the environment comes back."""
    from hdb_mlops.model import tracking

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", "sqlite:///placeholder.db")  # restored afterwards
        mp.delenv(tracking.ARTIFACTS_ENV, raising=False)
        mp.delenv(tracking.CACHE_ENV, raising=False)
        tracking.use_store(root)
        yield root


def register(factory, data: dict, out_dir: Path, name: str, alias: str | None = None) -> int:
    """Holdout-evaluate, bundle, log and register a model; returns its version."""
    from hdb_mlops.model import registry, tracking

    fitted: list[PriceModel] = []

    def make() -> PriceModel:
        fitted.append(factory())
        return fitted[-1]

    evaluation = holdout(data["fit"], make, cutoff=CUTOFF)
    model, preds = fitted[-1], evaluation.predictions
    bundle_dir = save_bundle(
        model,
        out_dir,
        metrics=evaluation.overall,
        residual_quantiles=residual_quantiles(preds["resale_price"], preds["prediction"]),
        profile=reference_profile(model.features(data["fit"]), model.predict(data["fit"])),
        data_hash=None,
        git=None,
    )
    run_id = tracking.log_training(model, evaluation, bundle_dir, experiment=f"exp-{name}")
    version = registry.register(run_id, name=name)
    if alias:
        tracking.get_client().set_registered_model_alias(name, alias, str(version))
    return version


def requests_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Request rows (official columns, remaining lease in months) for transactions."""
    return pd.DataFrame(request_records(rows))


def test_mlflow_loads_by_alias_and_version_and_predicts_like_registry_load(store, data, tmp_path):
    import mlflow

    from hdb_mlops.model import registry
    from hdb_mlops.serving.request_schema import REQUEST_COLUMNS

    name = "pyfunc-xgb"

    def xgb() -> PriceModel:
        return make_model("xgboost", params_=dict(FAST_XGB), seed=7, n_jobs=1)

    version = register(xgb, data, tmp_path / "xgb", name)
    # the gate still works on MLflow models (latency is not what is tested here)
    decision = registry.promote(version, data["rows"], name=name, latency_budget_ms=1e9)
    assert decision.promoted and registry.show("champion", name=name)["version"] == version

    rows = data["rows"]
    expected = registry.load("champion", name=name).model.predict(rows)
    requests = requests_frame(rows)
    by_alias = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    by_number = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    for loaded in (by_alias, by_number):
        prices = loaded.predict(requests)
        assert isinstance(prices, np.ndarray) and prices.dtype == np.float64
        np.testing.assert_allclose(prices, expected, rtol=1e-12, atol=0)
    # remaining_lease as the files write it, or left out (derived from the lease start)
    as_text = requests.assign(
        remaining_lease=[f"{m // 12} years {m % 12:02d} months" for m in requests.remaining_lease]
    )
    np.testing.assert_allclose(by_alias.predict(as_text), expected, rtol=1e-12, atol=0)
    assert np.isfinite(by_alias.predict(requests.drop(columns=["remaining_lease"]))).all()

    signature = by_alias.metadata.signature
    assert signature.inputs.input_names() == list(REQUEST_COLUMNS)
    columns = signature.inputs.to_dict()
    types = {c["name"]: c["type"] for c in columns}
    assert types["floor_area_sqm"] == "double" and types["lease_commence_date"] == "long"
    assert types["town"] == types["month"] == types["storey_range"] == "string"
    assert types["remaining_lease"] == "any"  # "61 years 04 months" or months
    optional = {c["name"] for c in columns if not c["required"]}
    assert optional == {"block", "street_name", "remaining_lease"}
    assert (
        by_alias.metadata.metadata["bundle_sha256"]
        == registry.show(version, name=name)["tags"]["bundle_sha256"]
    )

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert isinstance(example, pd.DataFrame) and list(example.columns) == list(REQUEST_COLUMNS)
    assert len(example) >= 1 and (by_alias.predict(example) > 0).all()
    assert (local / "artifacts" / "bundle" / "model.joblib").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("hdb-mlops==") for r in requirements)


def test_scoring_server_answers_a_request_body(store, data, tmp_path):
    """What ``mlflow models serve`` runs for POST /invocations, without a server."""
    import mlflow
    from mlflow.pyfunc.scoring_server import invocations

    from hdb_mlops.model import registry
    from hdb_mlops.model.features import transactions_from_records

    name = "pyfunc-serve"
    register(lambda: make_model("linear"), data, tmp_path / "linear", name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    body = {"dataframe_records": [EXAMPLE_REQUEST, {**EXAMPLE_REQUEST, "remaining_lease": 800}]}
    answer = invocations(
        json.dumps(body), "application/json", model, model.metadata.get_input_schema()
    )
    assert answer.status == 200, answer.response
    prices = json.loads(answer.response)["predictions"]
    as_in_the_files = [  # 800 months, as the published files write it
        {**EXAMPLE_REQUEST, "resale_price": ""},
        {**EXAMPLE_REQUEST, "remaining_lease": "66 years 08 months", "resale_price": ""},
    ]
    expected = registry.load("champion", name=name).model.predict(
        transactions_from_records(as_in_the_files)
    )
    np.testing.assert_allclose(prices, expected, rtol=1e-12, atol=0)
    assert prices[0] != prices[1]


def test_bad_request_rows_are_refused(store, data, tmp_path):
    import mlflow

    from hdb_mlops.model.pyfunc import request_transactions

    name = "pyfunc-refuse"
    register(lambda: make_model("median_ppsm"), data, tmp_path / "m", name, alias="champion")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    requests = requests_frame(data["rows"].head(3))
    bad = requests.copy()
    bad.loc[1, "month"] = "2025-13"
    with pytest.raises(ValueError, match=r"invalid month in rows \[1\]"):
        model.predict(bad)
    with pytest.raises(Exception, match="town"):  # MLflow's schema check
        model.predict(requests.drop(columns=["town"]))
    with pytest.raises(ValueError, match="unexpected columns"):
        request_transactions(requests.assign(resale_price=1.0))


def test_tampered_bundle_inside_the_model_fails_mlflow_loading(store, data, tmp_path):
    import mlflow

    from hdb_mlops.model import registry

    name = "pyfunc-tamper"
    version = register(lambda: make_model("median_ppsm"), data, tmp_path / "m", name, "champion")
    mlflow.pyfunc.load_model(f"models:/{name}@champion")  # intact
    stored = Path(unquote(urlparse(registry.show(version, name=name)["bundle_uri"]).path))
    model_file = stored / "model.joblib"
    original = model_file.read_bytes()
    model_file.write_bytes(original + b"\0")
    for uri in (f"models:/{name}@champion", f"models:/{name}/{version}"):
        with pytest.raises(IntegrityError, match=r"model\.joblib has sha256"):
            mlflow.pyfunc.load_model(uri)
    model_file.write_bytes(original)

    spec_file = stored / "feature_spec.json"
    spec = json.loads(spec_file.read_text())
    spec["categorical"]["town"].append("ATLANTIS")
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(IntegrityError, match=r"feature_spec\.json"):
        mlflow.pyfunc.load_model(f"models:/{name}@champion")
