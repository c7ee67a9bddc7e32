"""The SageMaker 3.x pipeline definition, built offline: zero network calls, telemetry off,
and the JSON says what the pipeline does (steps, dependencies, parameters, the condition,
the registration)."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

pytest.importorskip(
    "sagemaker.mlops", reason="the aws extra is not installed: pip install -e '.[aws]'"
)

from netguard import NetworkGuard

from hdb_mlops.cloud.sagemaker import sdk
from hdb_mlops.cloud.sagemaker.definition import PipelineSettings, definition_json
from hdb_mlops.cloud.sagemaker.entrypoints.train import METRIC_DEFINITIONS

THRESHOLD = 7.5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both definitions (training, tuning), the CLI's file and the telemetry flag, all made
    under the network guard."""
    from hdb_mlops.cli import main

    guard = NetworkGuard()
    out = tmp_path_factory.mktemp("definition") / "pipeline.json"
    before = {name: os.environ.get(name) for name in sdk.CONFIG_ENV_VARS}
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        training = json.loads(definition_json(PipelineSettings(mape_threshold=THRESHOLD)))
        tuning = json.loads(definition_json(PipelineSettings(tuning_jobs=4)))
        status = main(["sagemaker", "definition", "--out", str(out), "--threshold", "9"])
        with sdk.sdk_environment():
            session = sdk.pipeline_session(sdk.offline_boto_session(), "hdb-mlops-dev-artifacts")
            opted_out = sdk.telemetry_opted_out(session)
    after = {name: os.environ.get(name) for name in sdk.CONFIG_ENV_VARS}
    return {
        "guard": guard,
        "training": training,
        "tuning": tuning,
        "cli_status": status,
        "cli_file": json.loads(out.read_text()),
        "opted_out": opted_out,
        "env": (before, after),
    }


def _step(definition: dict, name: str) -> dict:
    steps = {s["Name"]: s for s in definition["Steps"]}
    for step in definition["Steps"]:
        for branch in ("IfSteps", "ElseSteps"):
            steps.update({s["Name"]: s for s in step.get("Arguments", {}).get(branch, [])})
    return steps[name]


def test_the_definition_is_built_without_any_network_call_and_telemetry_is_off(built):
    built["guard"].assert_offline(loopback_too=True)
    assert built["opted_out"] is True
    # the environment the SDK needed is taken back afterwards
    before, after = built["env"]
    assert before == after


def test_the_telemetry_opt_out_file_is_the_one_the_sdk_reads(tmp_path):
    path = sdk.write_sdk_config(tmp_path)
    assert "TelemetryOptOut: true" in path.read_text()
    with sdk.sdk_environment(folder=tmp_path) as config_path:
        assert os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] == str(config_path)
        assert os.environ["SAGEMAKER_VALIDATE_ROLE"] == "false"
        assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"


def test_steps_and_their_order(built):
    d = built["training"]
    assert [s["Name"] for s in d["Steps"]] == ["Prepare", "Train", "Evaluate", "CheckMape"]
    assert [s["Type"] for s in d["Steps"]] == ["Processing", "Training", "Processing", "Condition"]
    check = _step(d, "CheckMape")["Arguments"]
    assert [(s["Name"], s["Type"]) for s in check["IfSteps"]] == [("Register", "RegisterModel")]
    assert [(s["Name"], s["Type"]) for s in check["ElseSteps"]] == [("MapeTooHigh", "Fail")]


def test_each_step_reads_the_outputs_of_the_one_before(built):
    d = built["training"]
    train = _step(d, "Train")["Arguments"]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["InputDataConfig"]
    }
    assert channels == {
        name: {"Get": f"Steps.Prepare.ProcessingOutputConfig.Outputs['{name}'].S3Output.S3Uri"}
        for name in ("train", "validation")
    }
    evaluate = _step(d, "Evaluate")["Arguments"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]}
    assert inputs["model"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["test"] == {
        "Get": "Steps.Prepare.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"
    }
    register = _step(d, "Register")["Arguments"]
    container = register["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    # the registered statistics are the evaluation.json Evaluate writes
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]["Std:Join"]
    (output,) = evaluate["ProcessingOutputConfig"]["Outputs"]
    assert statistics["Values"] == [output["S3Output"]["S3Uri"], "evaluation.json"]
    assert {"Get": "Execution.PipelineExecutionId"} in output["S3Output"]["S3Uri"]["Std:Join"][
        "Values"
    ]


def test_parameters_and_their_defaults(built):
    params = {p["Name"]: p for p in built["training"]["Parameters"]}
    assert set(params) == {
        "ImageUri", "InputDataUri", "ProcessingInstanceType", "TrainingInstanceType", "Cutoff",
        "Rows", "Seed", "MapeThreshold", "ModelPackageGroupName", "ModelApprovalStatus",
    }  # fmt: skip
    assert params["MapeThreshold"] == {
        "Name": "MapeThreshold",
        "Type": "Float",
        "DefaultValue": THRESHOLD,
    }
    assert params["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    assert params["ModelPackageGroupName"]["DefaultValue"] == "hdb-resale-price"
    assert params["TrainingInstanceType"]["DefaultValue"].startswith("ml.")
    train = _step(built["training"], "Train")["Arguments"]
    assert train["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert train["AlgorithmSpecification"]["TrainingImage"] == {"Get": "Parameters.ImageUri"}
    assert train["HyperParameters"]["seed"] == {"Get": "Parameters.Seed"}
    prepare = _step(built["training"], "Prepare")["Arguments"]
    assert prepare["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {"Get": "Parameters.InputDataUri"}


def test_the_condition_compares_the_evaluated_mape_with_the_threshold(built):
    (condition,) = _step(built["training"], "CheckMape")["Arguments"]["Conditions"]
    assert condition["Type"] == "LessThanOrEqualTo"
    assert condition["RightValue"] == {"Get": "Parameters.MapeThreshold"}
    left = condition["LeftValue"]["Std:JsonGet"]
    assert left["Path"] == "regression_metrics.mape.value"
    assert left["PropertyFile"] == {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}
    evaluate = _step(built["training"], "Evaluate")
    assert evaluate["PropertyFiles"] == [
        {
            "PropertyFileName": "EvaluationReport",
            "OutputName": "evaluation",
            "FilePath": "evaluation.json",
        }
    ]


def test_the_model_is_registered_pending_manual_approval(built):
    register = _step(built["training"], "Register")["Arguments"]
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    spec = register["InferenceSpecification"]
    assert spec["Containers"][0]["Image"] == {"Get": "Parameters.ImageUri"}
    assert set(spec["SupportedContentTypes"]) == {"application/json", "text/csv"}


def test_no_aws_call_is_needed_because_everything_is_explicit(built):
    d = built["training"]
    for step in ("Prepare", "Train", "Evaluate"):
        assert re.fullmatch(
            r"arn:aws:iam::\d{12}:role/[\w-]+", _step(d, step)["Arguments"]["RoleArn"]
        )
    train = _step(d, "Train")["Arguments"]
    assert train["OutputDataConfig"]["S3OutputPath"].startswith("s3://hdb-mlops-dev-artifacts/")
    # no code upload: the image holds the code, no sm_drivers or code channel
    assert {c["ChannelName"] for c in train["InputDataConfig"]} == {"train", "validation"}
    assert "ContainerEntrypoint" not in train["AlgorithmSpecification"]


def test_every_entry_point_the_definition_names_exists_in_the_package(built):
    for step in ("Prepare", "Evaluate"):
        entry = _step(built["training"], step)["Arguments"]["AppSpecification"][
            "ContainerEntrypoint"
        ]
        assert entry[:2] == ["python", "-m"]
        assert importlib.util.find_spec(entry[2]) is not None, entry[2]
    assert importlib.util.find_spec("hdb_mlops.cloud.sagemaker.entrypoints.__main__") is not None


def test_the_metric_definitions_match_what_the_training_script_prints(built):
    train = _step(built["training"], "Train")["Arguments"]
    assert train["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    line = "validation:mape=7.501262;"
    (mape,) = [m for m in METRIC_DEFINITIONS if m["Name"] == "validation:mape"]
    assert float(re.search(mape["Regex"], line).group(1)) == pytest.approx(7.501262)


def test_the_tuning_option_replaces_the_training_step(built):
    d = built["tuning"]
    assert [s["Name"] for s in d["Steps"]] == ["Prepare", "Tune", "Evaluate", "CheckMape"]
    config = _step(d, "Tune")["Arguments"]["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Minimize",
        "MetricName": "validation:mape",
    }
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 4
    evaluate = _step(d, "Evaluate")["Arguments"]
    model = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]}["model"]
    assert "Steps.Tune.TrainingJobSummaries[0].TrainingJobName" in json.dumps(model)


def test_the_cli_writes_the_same_definition(built):
    assert built["cli_status"] == 0
    cli = built["cli_file"]
    assert [s["Name"] for s in cli["Steps"]] == [s["Name"] for s in built["training"]["Steps"]]
    threshold = {p["Name"]: p for p in cli["Parameters"]}["MapeThreshold"]
    assert threshold["DefaultValue"] == 9.0
