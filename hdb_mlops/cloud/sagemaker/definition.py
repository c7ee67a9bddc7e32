"""The build pipeline of chapter 5C as a SageMaker 3.x pipeline definition.

::

    Prepare (processing) -> Train (training; or Tune: a tuning job) -> Evaluate (processing,
    writes evaluation.json) -> CheckMape (MAPE <= MapeThreshold)
        -> yes: Register (a model package, PendingManualApproval, in ModelPackageGroupName)
        -> no:  MapeTooHigh (FailStep)

Every job runs the project's image (parameter ``ImageUri``: the repository's Dockerfile, whose
entry point is ``python -m hdb_mlops.cloud.sagemaker.entrypoints``); the processing jobs
name their module as ContainerEntrypoint, the training job gets ``train`` from SageMaker.
No code is uploaded at definition time: the code is in the image.

:func:`definition_json` builds the definition with ZERO AWS calls (role ARNs, no role
validation, a PipelineSession with a given bucket on an offline boto session, an explicit
OutputDataConfig, telemetry off; see :mod:`hdb_mlops.cloud.sagemaker.sdk`). The same
:func:`build_pipeline` with a real session (moto, aws) is what ``upsert`` sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from hdb_mlops import config
from hdb_mlops.cloud.backends import DEFAULT_REGION
from hdb_mlops.cloud.sagemaker.sdk import OFFLINE_ACCOUNT, quiet_sdk_loggers

ENTRYPOINTS = "hdb_mlops.cloud.sagemaker.entrypoints"
PROCESSING = "/opt/ml/processing"
#: The status every model the pipeline registers starts with: a person approves it.
PENDING = "PendingManualApproval"
#: The quick profile's XGBoost parameters (hdb_mlops.config), the training job's default.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "model": "xgboost",
    **config.PROFILE_SETTINGS["quick"]["xgb_params"],
}
#: Ranges searched by the optional tuning job (the model's most sensitive parameters).
TUNING_RANGES: dict[str, tuple[str, float, float]] = {
    "max_depth": ("integer", 4, 10),
    "learning_rate": ("continuous", 0.03, 0.3),
    "min_child_weight": ("integer", 1, 10),
}


@dataclass(frozen=True)
class PipelineSettings:
    """Everything the definition depends on that is not a pipeline parameter."""

    name: str = "hdb-mlops-build"
    region: str = DEFAULT_REGION
    account: str = OFFLINE_ACCOUNT
    bucket: str = "hdb-mlops-dev-artifacts"
    prefix: str = "hdb-mlops/build"
    role_arn: str = ""
    image_uri: str = ""
    model_package_group: str = "hdb-resale-price"
    mape_threshold: float = 10.0
    processing_instance_type: str = "ml.m5.large"
    training_instance_type: str = "ml.m5.xlarge"
    inference_instance_type: str = "ml.m5.large"
    hyperparameters: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_HYPERPARAMETERS))
    tuning_jobs: int = 0  # 0: a TrainingStep; N > 0: a TuningStep of N training jobs

    def resolved(self) -> PipelineSettings:
        """These settings with the account's default role and image filled in."""
        return replace(
            self,
            role_arn=self.role_arn
            or f"arn:aws:iam::{self.account}:role/hdb-mlops-sagemaker-execution",
            image_uri=self.image_uri
            or f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/hdb-mlops:latest",
        )


def _parameters(s: PipelineSettings) -> dict[str, Any]:
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )

    return {
        "image": ParameterString("ImageUri", default_value=s.image_uri),
        "input": ParameterString(
            "InputDataUri", default_value=f"s3://{s.bucket}/{s.prefix}/input/raw/"
        ),
        "processing_type": ParameterString(
            "ProcessingInstanceType", default_value=s.processing_instance_type
        ),
        "training_type": ParameterString(
            "TrainingInstanceType", default_value=s.training_instance_type
        ),
        "cutoff": ParameterString("Cutoff", default_value="auto"),
        "rows": ParameterInteger("Rows", default_value=0),
        "seed": ParameterInteger("Seed", default_value=config.DEFAULT_SEED),
        "threshold": ParameterFloat("MapeThreshold", default_value=s.mape_threshold),
        "group": ParameterString("ModelPackageGroupName", default_value=s.model_package_group),
        "approval": ParameterString("ModelApprovalStatus", default_value=PENDING),
    }


def _s3(s: PipelineSettings, *parts: Any) -> Any:
    """``s3://bucket/prefix/<execution id>/parts...`` (one folder per execution)."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join

    values = ["s3:/", s.bucket, s.prefix, ExecutionVariables.PIPELINE_EXECUTION_ID, *parts]
    return Join(on="/", values=values)


def _processor(s: PipelineSettings, p: dict[str, Any], session: Any, script: str) -> Any:
    from sagemaker.core.processing import Processor

    return Processor(
        role=s.role_arn,
        image_uri=p["image"],
        instance_count=1,
        instance_type=p["processing_type"],
        entrypoint=["python", "-m", f"{ENTRYPOINTS}.{script}"],
        base_job_name=f"hdb-mlops-{script}",
        sagemaker_session=session,
    )


def _input(name: str, uri: Any, local: str) -> Any:
    from sagemaker.core.shapes import ProcessingInput, ProcessingS3Input

    return ProcessingInput(
        input_name=name,
        s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=local, s3_data_type="S3Prefix", s3_input_mode="File"
        ),
    )


def _output(name: str, uri: Any, local: str) -> Any:
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(s3_uri=uri, local_path=local, s3_upload_mode="EndOfJob"),
    )


def _prepare_step(s: PipelineSettings, p: dict[str, Any], session: Any) -> Any:
    from sagemaker.mlops.workflow import ProcessingStep

    outputs = [
        _output(name, _s3(s, "prepare", name), f"{PROCESSING}/output/{name}")
        for name in ("train", "validation", "test")
    ]
    args = _processor(s, p, session, "prepare").run(
        inputs=[_input("raw", p["input"], f"{PROCESSING}/input/raw")],
        outputs=outputs,
        arguments=["--cutoff", p["cutoff"], "--rows", p["rows"], "--seed", p["seed"]],
    )
    return ProcessingStep(name="Prepare", step_args=args)


def _channels(prepare: Any) -> dict[str, Any]:
    """The training job's channels: Prepare's train and validation outputs."""
    outputs = prepare.properties.ProcessingOutputConfig.Outputs
    return {name: outputs[name].S3Output.S3Uri for name in ("train", "validation")}


def _trainer(s: PipelineSettings, p: dict[str, Any], session: Any, channels: Any) -> Any:
    """The ModelTrainer of the training job (``channels``: its InputData, or None when a
    tuner passes them itself)."""
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import Compute, InputData, OutputDataConfig

    from hdb_mlops.cloud.sagemaker.entrypoints.train import METRIC_DEFINITIONS

    trainer = ModelTrainer(
        training_image=p["image"],
        compute=Compute(instance_type=p["training_type"], instance_count=1),
        role=s.role_arn,
        sagemaker_session=session,
        base_job_name="hdb-mlops-train",
        hyperparameters={**s.hyperparameters, "seed": p["seed"]},
        output_data_config=OutputDataConfig(s3_output_path=f"s3://{s.bucket}/{s.prefix}/training"),
        input_data_config=[
            InputData(channel_name=name, data_source=uri) for name, uri in channels.items()
        ]
        if channels
        else None,
    )
    from sagemaker.core.shapes import MetricDefinition

    return trainer.with_metric_definitions(
        [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRIC_DEFINITIONS]
    )


def _train_step(s: PipelineSettings, p: dict[str, Any], session: Any, prepare: Any) -> Any:
    """The Train (or Tune) step and the S3 URI of the model it produces."""
    from sagemaker.mlops.workflow import TrainingStep, TuningStep

    if not s.tuning_jobs:
        trainer = _trainer(s, p, session, _channels(prepare))
        step = TrainingStep(name="Train", step_args=trainer.train())
        return step, step.properties.ModelArtifacts.S3ModelArtifacts
    from sagemaker.core.parameter import ContinuousParameter, IntegerParameter
    from sagemaker.train.tuner import HyperparameterTuner

    from hdb_mlops.cloud.sagemaker.entrypoints.train import METRIC_DEFINITIONS

    kinds = {"integer": IntegerParameter, "continuous": ContinuousParameter}
    tuner = HyperparameterTuner(
        model_trainer=_trainer(s, p, session, None),
        objective_metric_name="validation:mape",
        objective_type="Minimize",
        hyperparameter_ranges={
            name: kinds[kind](low, high) for name, (kind, low, high) in TUNING_RANGES.items()
        },
        metric_definitions=METRIC_DEFINITIONS,
        max_jobs=s.tuning_jobs,
        max_parallel_jobs=min(s.tuning_jobs, 2),
        random_seed=config.DEFAULT_SEED,
    )
    step = TuningStep(name="Tune", step_args=tuner.tune(inputs=_channels(prepare)))
    return step, step.get_top_model_s3_uri(0, s.bucket, f"{s.prefix}/training")


def build_pipeline(settings: PipelineSettings, session: Any) -> Any:
    """The pipeline of the module docstring on ``session`` (a PipelineSession). Call inside
    :func:`hdb_mlops.cloud.sagemaker.sdk.sdk_environment`."""
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.workflow.conditions import ConditionLessThanOrEqualTo
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import (
        ConditionStep,
        FailStep,
        ModelStep,
        Pipeline,
        ProcessingStep,
    )
    from sagemaker.serve.model_builder import ModelBuilder

    if logging.getLogger("sagemaker").level >= logging.ERROR:  # quiet: the new loggers too
        quiet_sdk_loggers()
    s = settings.resolved()
    p = _parameters(s)
    prepare = _prepare_step(s, p, session)
    train, model_uri = _train_step(s, p, session, prepare)
    report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluation_uri = _s3(s, "evaluate", "evaluation")
    test_uri = prepare.properties.ProcessingOutputConfig.Outputs["test"].S3Output.S3Uri
    evaluate = ProcessingStep(
        name="Evaluate",
        step_args=_processor(s, p, session, "evaluate").run(
            inputs=[
                _input("model", model_uri, f"{PROCESSING}/model"),
                _input("test", test_uri, f"{PROCESSING}/input/test"),
            ],
            outputs=[_output("evaluation", evaluation_uri, f"{PROCESSING}/output/evaluation")],
        ),
        property_files=[report],
    )
    statistics = MetricsSource(
        s3_uri=Join(on="/", values=[evaluation_uri, "evaluation.json"]),
        content_type="application/json",
    )
    # dependencies=None: no inference code to upload (the image serves the bundle), so the
    # builder makes no S3 call while the definition is built
    builder = ModelBuilder(
        s3_model_data_url=model_uri,
        image_uri=p["image"],
        sagemaker_session=session,
        role_arn=s.role_arn,
        dependencies=None,
        log_level=logging.getLogger("sagemaker").getEffectiveLevel(),  # its default: DEBUG
    )
    register = ModelStep(
        name="Register",
        step_args=builder.register(
            model_package_group_name=p["group"],
            content_types=["application/json", "text/csv"],
            response_types=["application/json", "text/csv"],
            inference_instances=[s.inference_instance_type],
            transform_instances=[s.inference_instance_type],
            approval_status=p["approval"],
            model_metrics=ModelMetrics(model_statistics=statistics),
            description="HDB resale price model (hdb-mlops build pipeline)",
        ),
    )
    fail = FailStep(
        name="MapeTooHigh",
        error_message=Join(on=" ", values=["MAPE is above the threshold of", p["threshold"]]),
    )
    mape = JsonGet(
        step_name=evaluate.name, property_file=report, json_path="regression_metrics.mape.value"
    )
    check = ConditionStep(
        name="CheckMape",
        conditions=[ConditionLessThanOrEqualTo(left=mape, right=p["threshold"])],
        if_steps=[register],
        else_steps=[fail],
    )
    return Pipeline(
        name=s.name,
        parameters=list(p.values()),
        steps=[prepare, train, evaluate, check],
        sagemaker_session=session,
    )


def definition_json(settings: PipelineSettings | None = None) -> str:
    """The pipeline definition as JSON, built offline with zero AWS calls."""
    from hdb_mlops.cloud.sagemaker.sdk import (
        offline_boto_session,
        pipeline_session,
        sdk_environment,
    )

    settings = settings or PipelineSettings()
    with sdk_environment(settings.region):
        session = pipeline_session(offline_boto_session(settings.region), settings.bucket)
        return build_pipeline(settings, session).definition()
