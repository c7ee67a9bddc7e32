"""The local runner runs the pipeline's own entry scripts under SageMaker's contract, and
the model it trains is the local training path's: same trees, same metrics."""

from __future__ import annotations

import json
import tarfile

import pandas as pd
import pytest

from hdb_mlops.cloud.sagemaker.entrypoints import contract
from hdb_mlops.cloud.sagemaker.local import StepError, run_local
from hdb_mlops.data.ingest import sha256_file

ROWS = 4000
SEED = 42
PARAMS = {"n_estimators": 120, "max_depth": 6}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The local path's training and the local runner's, on the same data and parameters."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model.bundle import read_metadata
    from hdb_mlops.model.train import train

    work = tmp_path_factory.mktemp("sagemaker-local")
    transactions = prepare("sample", work / "data", rows=ROWS, seed=SEED).transactions()
    local = train(
        transactions, work / "bundles", params=PARAMS, seed=SEED, track=False, register=False
    )
    run = run_local(
        "sample",
        run_dir=work / "run",
        hyperparameters={"model": "xgboost", **PARAMS},
        rows=ROWS,
        seed=SEED,
    )
    return {
        "transactions": transactions,
        "local": local,
        "local_metadata": read_metadata(local.bundle_dir),
        "run": run,
    }


def test_the_runner_reproduces_the_local_paths_metrics_exactly(both):
    local, run = both["local"], both["run"]
    assert run.status == "Succeeded"
    expected = {k: v for k, v in local.evaluation.overall.items() if k != "n"}
    assert run.metrics == expected  # exact: the same model on the same rows
    assert run.evaluation["n"] == local.evaluation.overall["n"]
    assert run.evaluation["split"]["cutoff"] == local.cutoff


def test_the_runner_trains_the_same_trees(both):
    run_model = both["run"].evaluation["model"]
    assert run_model["booster_sha256"] == both["local_metadata"]["booster_sha256"]
    assert run_model["booster_sha256"] is not None


def test_the_split_is_the_local_paths_split(both):
    transactions, run = both["transactions"], both["run"]
    split = run.evaluation["split"]
    cut = pd.Period(split["cutoff"], freq="M")
    assert split["counts"]["train"] + split["counts"]["validation"] == int(
        (transactions["month"] <= cut).sum()
    )
    assert split["counts"]["test"] == int((transactions["month"] > cut).sum())
    # validation: the last months of the training period (the model's early-stopping window)
    assert split["months"]["validation"][1] == split["cutoff"]
    assert split["months"]["train"][1] < split["months"]["validation"][0]


def test_the_jobs_ran_under_sagemakers_directory_contract(both):
    run = both["run"]
    root = run.run_dir / "jobs"
    hps = json.loads((root / "train/opt/ml/input/config/hyperparameters.json").read_text())
    assert (
        hps["n_estimators"] == "120" and hps["model"] == "xgboost"
    )  # strings, as SageMaker writes
    for channel in ("train", "validation"):
        assert (root / "train/opt/ml/input/data" / channel / contract.TABLE_FILE).is_file()
    model_dir = root / "train/opt/ml/model"
    assert {p.name for p in model_dir.iterdir()} >= {"model.joblib", "metadata.json"}
    assert (root / "evaluate/opt/ml/processing/output/evaluation/evaluation.json").is_file()
    assert [s["name"] for s in run.steps] == [
        "prepare",
        "train",
        "evaluate",
        "CheckMape",
        "Register",
    ]


def test_the_model_archive_is_what_sagemaker_would_tar_and_its_digest_is_recorded(both):
    run = both["run"]
    assert run.model_archive.name == "model.tar.gz"
    assert sha256_file(run.model_archive) == run.digest
    with tarfile.open(run.model_archive) as tar:
        names = set(tar.getnames())
    model_dir = run.run_dir / "jobs/train/opt/ml/model"
    assert names == {p.name for p in model_dir.iterdir()}
    summary = json.loads((run.run_dir / "run.json").read_text())
    assert summary["digest"] == run.digest and summary["status"] == "Succeeded"


def test_the_training_job_reports_validation_metrics_from_unseen_months(both):
    log = (both["run"].run_dir / "logs" / "train.log").read_text()
    assert "validation:mape=" in log
    metadata = json.loads(
        (both["run"].run_dir / "jobs/train/opt/ml/model/metadata.json").read_text()
    )
    assert metadata["extra"]["residuals_on"].startswith("validation months")
    assert metadata["metrics"]["validation_mape"] > 0


def test_a_mape_above_the_threshold_fails_the_pipeline(tmp_path):
    run = run_local(
        "sample",
        run_dir=tmp_path / "run",
        hyperparameters={"model": "xgboost", "n_estimators": 20},
        rows=2000,
        mape_threshold=1.0,
    )
    assert run.status == "Failed"
    assert run.steps[-1]["name"] == "MapeTooHigh"
    assert "above the threshold 1%" in run.steps[-1]["failure"]


def test_a_failing_job_reports_its_failure_file(tmp_path):
    with pytest.raises(StepError, match=r"step train failed.*unknown model 'nonsense'"):
        run_local(
            "sample", run_dir=tmp_path / "run", hyperparameters={"model": "nonsense"}, rows=1500
        )
    failure = tmp_path / "run/jobs/train/opt/ml/output/failure"
    assert "unknown model" in failure.read_text()
    assert json.loads((tmp_path / "run/run.json").read_text())["status"] == "Failed"


def test_hyperparameters_arrive_as_strings_and_are_decoded(tmp_path, monkeypatch):
    (tmp_path / "hyperparameters.json").write_text(
        json.dumps(
            {
                "n_estimators": "600",
                "learning_rate": "0.1",
                "validation_report": "false",
                "model": "xgboost",
            }
        )
    )
    monkeypatch.delenv("SM_HPS", raising=False)
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path))
    hps = contract.hyperparameters(contract.training_paths())
    assert hps == {
        "n_estimators": 600,
        "learning_rate": 0.1,
        "validation_report": False,
        "model": "xgboost",
    }
    monkeypatch.setenv("SM_HPS", json.dumps({"max_depth": "4"}))
    assert contract.hyperparameters(contract.training_paths()) == {"max_depth": 4}


def test_channels_default_to_opt_ml_and_follow_sm_channel_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("SM_CHANNEL_TRAIN", raising=False)
    monkeypatch.delenv("SM_MODEL_DIR", raising=False)
    paths = contract.training_paths()
    assert str(paths.channel("train")) == "/opt/ml/input/data/train"
    assert str(paths.model_dir) == "/opt/ml/model"
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path))
    assert paths.channel("train") == tmp_path


def test_the_image_entry_point_names_its_commands():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cloud.sagemaker.entrypoints", "nonsense"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: expected one of train, serve, prepare, evaluate"
