"""The pipeline on a backend: upsert, start, and what its steps leave behind.

On ``aws`` an execution runs the jobs. moto records instead of simulating: ``upsert`` stores
the definition, ``start`` gives an execution that "succeeds" without running a step. So
:func:`run_on_backend` does on moto what the steps would do, with the real code:

1. the raw input is uploaded to the ``InputDataUri`` the definition names;
2. the pipeline is upserted and an execution started (the control-plane calls, as on AWS);
3. the entry scripts run locally (:func:`hdb_mlops.cloud.sagemaker.local.run_local`);
4. their outputs go where the jobs would write them: ``model.tar.gz`` under the training
   output path, ``evaluation.json`` under the execution's evaluate prefix;
5. when CheckMape passes, the model is registered in the model package group with status
   ``PendingManualApproval`` and the archive's sha256, as the Register step does.

Approval is then a separate act (:mod:`hdb_mlops.cloud.sagemaker.registry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hdb_mlops.cloud.backends import CloudContext
from hdb_mlops.cloud.sagemaker.definition import PipelineSettings


def ensure_bucket(ctx: CloudContext, bucket: str) -> None:
    """Create ``bucket`` unless it exists (in the context's region)."""
    s3 = ctx.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if ctx.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    s3.create_bucket(**kwargs)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://bucket/key`` URI."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def upload(ctx: CloudContext, path: Path | str, uri: str) -> str:
    """Upload a file to ``uri``; return the URI."""
    bucket, key = split_s3_uri(uri)
    ctx.client("s3").upload_file(str(path), bucket, key)
    return uri


def upload_input(ctx: CloudContext, settings: PipelineSettings, source: str | Path) -> str:
    """Upload the raw resale files of ``source`` under the pipeline's input prefix (the bucket
    made first if absent); return that prefix, ``s3://bucket/prefix/input/raw/``."""
    from hdb_mlops.data.storage import resolve_source

    ensure_bucket(ctx, settings.bucket)
    prefix = f"s3://{settings.bucket}/{settings.prefix}/input/raw"
    for path in resolve_source(source):
        upload(ctx, path, f"{prefix}/{path.name}")
    return f"{prefix}/"


def execution_parameters(
    input_uri: str,
    *,
    mape_threshold: float,
    rows: int | None = None,
    seed: int = 42,
    cutoff: str | None = None,
) -> dict[str, Any]:
    """The pipeline parameters of one execution (``rows`` None or 0: every row; ``cutoff``
    None: ``auto``, the definition's default)."""
    return {
        "InputDataUri": input_uri,
        "MapeThreshold": float(mape_threshold),
        "Rows": int(rows or 0),
        "Seed": int(seed),
        "Cutoff": cutoff or "auto",
    }


def upsert_and_start(
    ctx: CloudContext,
    settings: PipelineSettings,
    parameters: dict[str, Any] | None = None,
    folder: Path | str | None = None,
) -> dict[str, Any]:
    """Upsert the pipeline on the backend and start an execution; return the pipeline ARN,
    the execution ARN and id, and the execution's status as the backend reports it."""
    from hdb_mlops.cloud.sagemaker.definition import build_pipeline
    from hdb_mlops.cloud.sagemaker.sdk import pipeline_session, sdk_environment

    offline = ctx.backend != "aws"
    with sdk_environment(ctx.region, folder, offline=offline, extra_env=ctx.environment()):
        session = pipeline_session(
            ctx.session(), settings.bucket, sagemaker_client=ctx.client("sagemaker")
        )
        pipeline = build_pipeline(settings, session)
        resolved = settings.resolved()
        created = pipeline.upsert(role_arn=resolved.role_arn)
        execution = pipeline.start(parameters=parameters or {})
        described = execution.describe()
    arn = execution.arn
    return {
        "pipeline_arn": created["PipelineArn"],
        "execution_arn": arn,
        "execution_id": arn.rsplit("/", 1)[-1],
        "status": described.get("PipelineExecutionStatus"),
    }


def run_on_backend(
    ctx: CloudContext,
    settings: PipelineSettings,
    *,
    source: str | Path = "sample",
    run_dir: Path | str | None = None,
    local_options: dict[str, Any] | None = None,
    approve: bool = False,
) -> dict[str, Any]:
    """Steps 1-5 of the module docstring (``approve``: then approve the registered model);
    return a summary (execution, metrics, digest, the model package or the failure)."""
    from hdb_mlops.cloud.sagemaker import registry
    from hdb_mlops.cloud.sagemaker.local import run_local

    settings = settings.resolved()
    options = dict(local_options or {})
    options.setdefault("mape_threshold", settings.mape_threshold)
    parameters = execution_parameters(
        upload_input(ctx, settings, source),
        mape_threshold=options["mape_threshold"],
        rows=options.get("rows"),
        seed=options.get("seed", 42),
        cutoff=options.get("cutoff"),
    )
    started = upsert_and_start(ctx, settings, parameters, folder=run_dir)
    run = run_local(source, run_dir=run_dir, hyperparameters=settings.hyperparameters, **options)
    model_uri, evaluation_uri = upload_outputs(ctx, settings, run, started["execution_id"])
    summary: dict[str, Any] = {
        **started,
        "execution_status": started["status"],  # moto: "Succeeded" at once, nothing ran
        "status": run.status,
        "run_dir": str(run.run_dir),
        "metrics": run.metrics,
        "threshold": run.threshold,
        "digest": run.digest,
        "model_data_url": model_uri,
        "evaluation_uri": evaluation_uri,
        "model_package": None,
    }
    if run.status == "Succeeded":
        package = register_run(ctx, settings, run, model_uri, evaluation_uri)
        if approve:
            package = registry.set_status(ctx, package, registry.APPROVED, "hdb-mlops run")
        summary["model_package"] = package.to_dict()
    return summary


def upload_outputs(
    ctx: CloudContext, settings: PipelineSettings, run: Any, execution: str
) -> tuple[str, str]:
    """Upload a local run's ``model.tar.gz`` and ``evaluation.json`` where the jobs of
    ``execution`` write them; return their URIs (model, evaluation)."""
    base = f"s3://{settings.bucket}/{settings.prefix}"
    model_uri = f"{base}/training/{execution}/output/model.tar.gz"
    evaluation_uri = f"{base}/{execution}/evaluate/evaluation/evaluation.json"
    assert run.model_archive is not None and run.digest is not None
    ensure_bucket(ctx, settings.bucket)
    upload(ctx, run.model_archive, model_uri)
    evaluation = run.run_dir / "s3" / "evaluate" / "output" / "evaluation" / "evaluation.json"
    upload(ctx, evaluation, evaluation_uri)
    return model_uri, evaluation_uri


def register_run(
    ctx: CloudContext, settings: PipelineSettings, run: Any, model_uri: str, evaluation_uri: str
) -> Any:
    """Register a local run's model in the pipeline's package group, PendingManualApproval,
    with its sha256 and metrics (what the pipeline's Register step records)."""
    from hdb_mlops.cloud.sagemaker import registry

    return registry.register_model(
        ctx,
        settings.model_package_group,
        model_data_url=model_uri,
        image_uri=settings.image_uri,
        digest=run.digest,
        metrics_uri=evaluation_uri,
        metrics={"mape": run.metrics["mape"], "within_10": run.metrics["within_10"]},
        instance_type=settings.inference_instance_type,
    )
