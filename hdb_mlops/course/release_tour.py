"""Chapters 5C and 5F in the notebooks: one build of the SageMaker pipeline, its registration
and approval, and the promotion of its artifact, shown by role.

A build here is what the pipeline does, split the way the backends allow:

- :func:`start_on_backend`: the control-plane calls (upload the raw input, ``upsert``,
  ``start``). On moto they are recorded and nothing runs; on aws the jobs run in the account;
- :func:`run_scripts`: the pipeline's own entry scripts, run here by the local runner under
  SageMaker's ``/opt/ml`` contract (:mod:`hdb_mlops.cloud.sagemaker.local`);
- :func:`register_run`: the Register step's work: the artifact and its evaluation uploaded
  where the jobs would write them, a new model package version, PendingManualApproval
  (after an execution on aws: the pipeline's own registration, once it has finished);
- :func:`build`: the last two together (5F's build job).

The tables name things by their role ("this build's artifact", "the run folder"), never by
an ARN, a port, a time or a temporary path: those change from run to run, the roles do not.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.course import tables

#: The parameters an aws run needs from the learner's account.
AWS_NEEDS = ("role_arn", "image_uri", "bucket")


def settings_for(
    backend: str,
    *,
    n_estimators: int,
    mape_threshold: float,
    role_arn: str | None = None,
    image_uri: str | None = None,
    bucket: str | None = None,
    region: str | None = None,
) -> Any:
    """The pipeline settings of a notebook run: the quick profile's XGBoost with
    ``n_estimators`` trees and the CheckMape ``mape_threshold``; ``role_arn``, ``image_uri``
    and ``bucket`` are the account's (required for aws, placeholders otherwise)."""
    from hdb_mlops.cloud.sagemaker.definition import DEFAULT_HYPERPARAMETERS, PipelineSettings

    given = {"role_arn": role_arn, "image_uri": image_uri, "bucket": bucket}
    missing = [name for name in AWS_NEEDS if backend == "aws" and not given[name]]
    if missing:
        raise ValueError(f"backend 'aws' needs your account's {', '.join(missing)}")
    extra: dict[str, Any] = {k: v for k, v in given.items() if v}
    if region:
        extra["region"] = region
    return PipelineSettings(
        hyperparameters={**DEFAULT_HYPERPARAMETERS, "n_estimators": int(n_estimators)},
        mape_threshold=float(mape_threshold),
        **extra,
    ).resolved()


def start_on_backend(
    ctx: Any, settings: Any, *, source: str | Path, rows: int | None, seed: int, folder: Path | str
) -> dict[str, Any]:
    """Upload the raw input to the pipeline's ``InputDataUri``, upsert the pipeline and start
    an execution with this run's parameters; return the backend's answer."""
    from hdb_mlops.cloud.sagemaker.execution import (
        execution_parameters,
        upload_input,
        upsert_and_start,
    )
    from hdb_mlops.course.sagemaker_tour import root_logging_kept

    input_uri = upload_input(ctx, settings, source)
    parameters = execution_parameters(
        input_uri, mape_threshold=settings.mape_threshold, rows=rows, seed=seed
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    with root_logging_kept():
        return upsert_and_start(ctx, settings, parameters, folder=folder)


def stored_pipeline(ctx: Any, settings: Any, offline: dict[str, Any]) -> dict[str, Any]:
    """What the backend holds for the pipeline, next to the offline definition."""
    client = ctx.client("sagemaker")
    stored = json.loads(client.describe_pipeline(PipelineName=settings.name)["PipelineDefinition"])
    executions = client.list_pipeline_executions(PipelineName=settings.name)
    return {
        "pipeline": settings.name,
        "stored steps": ", ".join(s["Name"] for s in stored["Steps"]),
        "same definition as built offline": stored == offline,
        "executions": len(executions["PipelineExecutionSummaries"]),
    }


def run_scripts(
    settings: Any, *, source: str | Path, rows: int, seed: int, run_dir: Path | str
) -> Any:
    """The local runner on ``source`` (``rows`` seeded rows) with the settings'
    hyperparameters and threshold, in a fresh ``run_dir``; the :class:`LocalRun`."""
    from hdb_mlops.cloud.sagemaker.local import run_local

    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_local(
        source,
        run_dir=run_dir,
        hyperparameters=settings.hyperparameters,
        rows=rows,
        seed=seed,
        mape_threshold=settings.mape_threshold,
    )


def wait_for_execution(
    ctx: Any, execution_arn: str, timeout: float = 3600, poll: float = 30
) -> str:
    """Poll a pipeline execution until it ends; its final status (aws: the jobs run)."""
    client = ctx.client("sagemaker")
    deadline = time.monotonic() + timeout
    while True:
        described = client.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        status = str(described["PipelineExecutionStatus"])
        if status not in ("Executing", "Stopping") or time.monotonic() > deadline:
            return status
        time.sleep(poll)


def register_run(ctx: Any, settings: Any, run: Any, started: dict[str, Any] | None = None) -> Any:
    """The Register step for ``run``: None when CheckMape failed (the FailStep registers
    nothing). On aws with an execution ``started``, the pipeline registers the model itself:
    the newest pending version once that execution has ended. Otherwise (moto; or aws for a
    model built here) the archive and evaluation.json are uploaded under the execution's
    prefix and a new version is registered with the archive's sha256 in its metadata,
    PendingManualApproval."""
    from hdb_mlops.cloud.sagemaker import registry
    from hdb_mlops.cloud.sagemaker.execution import register_run, upload_outputs

    if run.status != "Succeeded":
        return None
    group = settings.model_package_group
    if ctx.backend == "aws" and started:
        wait_for_execution(ctx, started["execution_arn"])
        return registry.resolve(ctx, group, "pending")
    execution = (started or {}).get("execution_id", "local")
    model_uri, evaluation_uri = upload_outputs(ctx, settings, run, execution)
    return register_run(ctx, settings, run, model_uri, evaluation_uri)


@dataclass
class Build:
    """One build: the local run and the model package it registered (None: none)."""

    run: Any
    package: Any = None

    @property
    def digest(self) -> str:
        """The sha256 of the build's model.tar.gz."""
        return str(self.run.digest)

    @property
    def archive(self) -> Path:
        """The build's model.tar.gz."""
        return Path(self.run.model_archive)


def build(
    ctx: Any, settings: Any, *, source: str | Path, rows: int, seed: int, run_dir: Path | str
) -> Build:
    """5F's build job: the entry scripts here, then (moto, aws) the registration."""
    run = run_scripts(settings, source=source, rows=rows, seed=seed, run_dir=run_dir)
    package = None if ctx.backend == "local" else register_run(ctx, settings, run)
    return Build(run, package)


def approve_build(ctx: Any, settings: Any, digest: str, note: str) -> pd.DataFrame:
    """The CI's manual approval: approve the version of the model package group that carries
    ``digest``; the group's versions afterwards (the local backend has no registry: a one-row
    table says so)."""
    from hdb_mlops.cloud.sagemaker import registry

    if ctx.backend == "local":
        return pd.DataFrame(
            {"status": ["no registry on the local backend: approve_dev is the CI's manual job"]},
            index=pd.Index(["-"], name="version"),
        )
    group = settings.model_package_group
    registry.approve(ctx, group, f"sha256:{digest}", note=note)
    return registry_table(registry.list_packages(ctx, group), digest)


# ----------------------------------------------------------------------------- views


def run_steps_table(run: Any) -> pd.DataFrame:
    """The steps of a local run: status and outcome (no times: they vary)."""
    rows = []
    for step in run.steps:
        if step["name"] == "CheckMape":
            verdict = "register" if step["outcome"] else "fail"
            outcome = f"MAPE {step['mape']:.2f}% vs threshold {step['threshold']:g}%: {verdict}"
        elif step["name"] == "Register":
            outcome = "condition true: the Register step runs (on the backend, below)"
        else:
            outcome = step.get("failure", "")
        rows.append({"step": step["name"], "status": step["status"], "outcome": outcome})
    return pd.DataFrame(rows).set_index("step")


def job_folders_table(run: Any) -> pd.DataFrame:
    """Each folder of each job's ``/opt/ml`` that holds files: where the container sees it,
    where it is in the run folder, and its files."""
    rows = []
    jobs = Path(run.run_dir) / "jobs"
    for job in ("prepare", "train", "evaluate"):
        root = jobs / job / "opt" / "ml"
        folders = sorted({p.parent for p in root.rglob("*") if p.is_file()})
        for folder in folders:
            rows.append(
                {
                    "job": job,
                    "in the container": "/opt/ml/" + folder.relative_to(root).as_posix(),
                    "in the run folder": folder.relative_to(run.run_dir).as_posix(),
                    "files": ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file())),
                }
            )
    return pd.DataFrame(rows).set_index("job")


def train_local_path(
    settings: Any, *, source: str | Path, rows: int, seed: int, work: Path | str
) -> Any:
    """The local training path (:func:`hdb_mlops.model.train.train`, no tracking, no
    registry) on the same rows, with the same parameters and seed as the pipeline."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model.train import train

    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    transactions = prepare(source, work / "data", rows=rows, seed=seed).transactions()
    params = {k: v for k, v in settings.hyperparameters.items() if k != "model"}
    model = str(settings.hyperparameters.get("model", "xgboost"))
    return train(transactions, work / "bundles", model=model, params=params, seed=seed,
                 track=False, register=False)  # fmt: skip


def comparison(run: Any, local: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two paths' test metrics side by side, and what makes them the same model."""
    from hdb_mlops.model.bundle import read_metadata

    overall = {k: v for k, v in local.evaluation.overall.items() if k != "n"}
    both = {
        "pipeline entry scripts (local runner)": {**run.metrics, "n": run.evaluation["n"]},
        "local training path (model.train)": dict(local.evaluation.overall),
    }
    same = {
        "cut-off": (run.evaluation["split"]["cutoff"], local.cutoff),
        "test sales": (run.evaluation["n"], local.evaluation.overall["n"]),
        "trees (booster sha256)": (
            run.evaluation["model"]["booster_sha256"],
            read_metadata(local.bundle_dir)["booster_sha256"],
        ),
        "every metric, to the last digit": (run.metrics, overall),
    }
    checks = pd.DataFrame({"identical": {name: bool(a == b) for name, (a, b) in same.items()}})
    checks.index.name = "what"
    return tables.metrics_table(both), checks


def registry_table(packages: list[Any], digest: str | None = None) -> pd.DataFrame:
    """Versions of a model package group: status, which artifact, the metrics it carries."""
    rows = []
    for p in packages:
        meta = p.metadata or {}
        rows.append(
            {
                "version": p.version,
                "status": p.status,
                "artifact": "this build's" if digest and p.digest == digest else "another",
                "MAPE %": tables.rounded(float(meta["mape"]), "percent")
                if "mape" in meta
                else None,
                "within ±10% (%)": tables.rounded(float(meta["within_10"]), "percent")
                if "within_10" in meta
                else None,
            }
        )
    return pd.DataFrame(rows).set_index("version")


def by_role(text: str, roles: dict[str, str]) -> str:
    """``text`` with each key of ``roles`` (a digest, a path; also a digest's 12-character
    prefix) replaced by its role."""
    for value, role in sorted(roles.items(), key=lambda item: -len(item[0])):
        text = text.replace(value, role)
        if len(value) == 64:
            text = text.replace(value[:12], role)
    return text


def environments_table(store: Any, digest: str) -> pd.DataFrame:
    """What dev, uat and prod run: this build's artifact or not, where it came from, what it
    replaced."""
    from hdb_mlops.cloud import promote

    rows = []
    for env, found in promote.status(store).items():
        if not found:
            rows.append({"environment": env, "runs": "nothing yet", "came from": "",
                         "replaced": ""})  # fmt: skip
            continue
        source = found["source"]
        previous = found.get("previous_digest")
        rows.append(
            {
                "environment": env,
                "runs": "this build's artifact" if found["digest"] == digest else "another",
                "came from": f"env {source['environment']}" if "environment" in source
                else "the build job",
                "replaced": "nothing" if not previous
                else ("the same artifact" if previous == found["digest"] else "another"),
            }
        )  # fmt: skip
    return pd.DataFrame(rows).set_index("environment")


def checks_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Release check results (:mod:`hdb_mlops.cloud.sagemaker.checks`) in words: no
    latencies or hashes, only what passed and on what."""
    rows = []
    for r in results:
        if r["check"] == "validation":
            what = (f"MAPE {r['mape']:.2f}% (threshold {r['threshold']:g}%) on "
                    f"{r['rows']} sales after {r['cutoff']}")  # fmt: skip
        elif r["check"] == "ab":
            what = r.get("reason") or (
                f"candidate {r['candidate_mape']:.2f}% vs incumbent {r['incumbent_mape']:.2f}% "
                f"(margin {r['margin']:.0%}), {r['rows']} sales"
            )
        else:
            within = r["p99_ms"] <= r["p99_budget_ms"]
            what = (f"/ping {r['ping']}; /invocations equal to the bundle's predictions: "
                    f"{r['predictions_agree']} ({r['rows']} rows); p99 within "
                    f"{r['p99_budget_ms']:g} ms: {within}")  # fmt: skip
        rows.append({"check": r["check"], "passed": bool(r["passed"]), "on what": what})
    return pd.DataFrame(rows).set_index("check")
