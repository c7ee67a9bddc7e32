"""The local runner: the pipeline's own entry scripts, run here as subprocesses.

Each step runs the script its SageMaker job would run, as a separate Python process, with
``/opt/ml`` mapped into the run folder and SageMaker's data movement done by plain copies:

    <run>/s3/...                    what S3 would hold: the raw input, each step's outputs,
                                    the training job's model.tar.gz
    <run>/jobs/<step>/opt/ml/...    each job's container folders (inputs copied in before the
                                    job, outputs copied out after it, as SageMaker does)
    <run>/logs/<step>.log           each job's output
    <run>/run.json                  the steps, their status and time, the condition's outcome

The training job gets its hyperparameters as ``hyperparameters.json`` (string values, as
SageMaker writes them) and the ``SM_*`` variables of the framework containers; the
processing jobs get ``--base-dir``. The CheckMape condition is evaluated on the same
``evaluation.json`` field the pipeline's PropertyFile reads. With the same data, cut-off,
parameters and seed the model is the local path's (:func:`hdb_mlops.model.train.train`):
same trees, same metrics (tests/test_sagemaker_local.py).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cloud.sagemaker.entrypoints.contract import CHANNELS, EVALUATION_FILE

ENTRYPOINTS = "hdb_mlops.cloud.sagemaker.entrypoints"
#: The default MAPE threshold (%) of the CheckMape condition.
DEFAULT_MAPE_THRESHOLD = 10.0
#: The name of a training job's model archive.
MODEL_ARCHIVE = "model.tar.gz"


class StepError(RuntimeError):
    """A step's job failed; the message has its failure reason and its log's tail."""


@dataclass
class LocalRun:
    """What one local run produced."""

    run_dir: Path
    status: str = "Executing"
    steps: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    model_archive: Path | None = None
    digest: str | None = None
    threshold: float = DEFAULT_MAPE_THRESHOLD

    @property
    def metrics(self) -> dict[str, float]:
        """The test metrics of evaluation.json (``mape``, ``mae``, ...)."""
        found = self.evaluation.get("regression_metrics", {})
        return {name: value["value"] for name, value in found.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what run.json holds)."""
        return {
            "run_dir": str(self.run_dir),
            "status": self.status,
            "threshold": self.threshold,
            "model_archive": str(self.model_archive) if self.model_archive else None,
            "digest": self.digest,
            "metrics": self.metrics,
            "cutoff": self.evaluation.get("split", {}).get("cutoff"),
            "steps": self.steps,
        }


def default_run_dir() -> Path:
    """A new folder under ``runs/`` for a run started now."""
    return config.RUNS_DIR / f"sagemaker-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}"


def _copy_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, dirs_exist_ok=True)


def deterministic_tar(folder: Path | str, archive: Path | str) -> Path:
    """Tar and gzip the files of ``folder`` (sorted, with no times, owners or modes that
    vary) into ``archive``: equal folders give equal bytes, so an equal sha256."""
    folder, archive = Path(folder), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())
    return archive


def _hyperparameter_strings(hps: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker writes them: every value a string (JSON for non-strings)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()}


class _Runner:
    """One run's folders and its step bookkeeping."""

    def __init__(self, run: LocalRun, timeout: float, python: str) -> None:
        self.run = run
        self.timeout = timeout
        self.python = python
        self.s3 = run.run_dir / "s3"
        (run.run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def job_root(self, step: str) -> Path:
        return self.run.run_dir / "jobs" / step / "opt" / "ml"

    def execute(self, step: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``python -m ARGS`` as the job of ``step``; raise StepError when it fails."""
        log_path = self.run.run_dir / "logs" / f"{step}.log"
        command = [self.python, "-m", *args]
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            done = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                timeout=self.timeout,
                check=False,
            )
        seconds = round(time.perf_counter() - started, 2)
        status = "Succeeded" if done.returncode == 0 else "Failed"
        record = {"name": step, "status": status, "seconds": seconds, "command": command[2:]}
        self.run.steps.append(record)
        if done.returncode != 0:
            failure = self.job_root(step) / "output" / "failure"
            reason = failure.read_text().strip() if failure.is_file() else ""
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            record["failure"] = reason or (tail[-1] if tail else "")
            raise StepError(
                f"step {step} failed (exit {done.returncode}): {record['failure']} "
                f"(log: {log_path})"
            )


def _stage_input(runner: _Runner, source: str | Path) -> None:
    from hdb_mlops.data.storage import resolve_source

    raw = runner.s3 / "input" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in resolve_source(source):
        shutil.copy2(path, raw / path.name)


def _prepare(runner: _Runner, options: dict[str, Any]) -> None:
    base = runner.job_root("prepare") / "processing"
    _copy_tree(runner.s3 / "input" / "raw", base / "input" / "raw")
    args = [f"{ENTRYPOINTS}.prepare", "--base-dir", str(base)]
    for key in ("cutoff", "valid_months", "rows", "seed", "since"):
        if options.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(options[key])]
    runner.execute("prepare", args)
    _copy_tree(base / "output", runner.s3 / "prepare" / "output")


def _train(runner: _Runner, hps: dict[str, Any]) -> Path:
    root = runner.job_root("train")
    config_dir = root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(_hyperparameter_strings(hps)))
    data_config = {name: {"TrainingInputMode": "File"} for name in CHANNELS}
    (config_dir / "inputdataconfig.json").write_text(json.dumps(data_config))
    env = {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_INPUT_CONFIG_DIR": str(config_dir),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_CHANNELS": json.dumps(list(CHANNELS)),
        "TRAINING_JOB_NAME": f"local-{runner.run.run_dir.name}",
    }
    for name in CHANNELS:
        channel = root / "input" / "data" / name
        _copy_tree(runner.s3 / "prepare" / "output" / name, channel)
        env[f"SM_CHANNEL_{name.upper()}"] = str(channel)
    (root / "model").mkdir(parents=True, exist_ok=True)
    runner.execute("train", [ENTRYPOINTS, "train"], env)
    return deterministic_tar(root / "model", runner.s3 / "train" / "output" / MODEL_ARCHIVE)


def _evaluate(runner: _Runner, archive: Path) -> dict[str, Any]:
    base = runner.job_root("evaluate") / "processing"
    (base / "model").mkdir(parents=True, exist_ok=True)
    shutil.copy2(archive, base / "model" / MODEL_ARCHIVE)
    _copy_tree(runner.s3 / "prepare" / "output" / "test", base / "input" / "test")
    runner.execute("evaluate", [f"{ENTRYPOINTS}.evaluate", "--base-dir", str(base)])
    _copy_tree(base / "output" / "evaluation", runner.s3 / "evaluate" / "output" / "evaluation")
    report = json.loads((base / "output" / "evaluation" / EVALUATION_FILE).read_text())
    return report


def run_local(
    source: str | Path = "sample",
    *,
    run_dir: Path | str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    cutoff: str | None = None,
    rows: int | None = None,
    seed: int = config.DEFAULT_SEED,
    since: str | None = None,
    valid_months: int | None = None,
    mape_threshold: float = DEFAULT_MAPE_THRESHOLD,
    timeout: float = 1800.0,
    python: str = sys.executable,
) -> LocalRun:
    """Run Prepare -> Train -> Evaluate -> CheckMape locally on ``source`` (``sample``, a
    file or a folder of resale files). ``hyperparameters`` go to the training job (``model``,
    XGBoost parameters); ``seed`` goes to both Prepare (the subset) and Train.

    Returns the run with status ``Succeeded`` (MAPE <= threshold: the model would be
    registered) or ``Failed`` (the pipeline's FailStep); a failed job raises StepError.
    """
    from hdb_mlops.data.ingest import sha256_file

    run = LocalRun(Path(run_dir) if run_dir else default_run_dir(), threshold=mape_threshold)
    runner = _Runner(run, timeout, python)
    hps = {"model": "xgboost", "seed": seed, **(hyperparameters or {})}
    options = {
        "cutoff": cutoff,
        "valid_months": valid_months,
        "rows": rows,
        "seed": seed,
        "since": since,
    }
    try:
        _stage_input(runner, source)
        _prepare(runner, options)
        run.model_archive = _train(runner, hps)
        run.digest = sha256_file(run.model_archive)
        run.evaluation = _evaluate(runner, run.model_archive)
        mape = run.metrics["mape"]
        passed = mape <= mape_threshold
        run.steps.append(
            {
                "name": "CheckMape",
                "status": "Succeeded",
                "outcome": passed,
                "mape": mape,
                "threshold": mape_threshold,
            }
        )
        if passed:
            run.steps.append({"name": "Register", "status": "Succeeded"})
        else:
            failure = f"MAPE {mape:.3f}% is above the threshold {mape_threshold:g}%"
            run.steps.append({"name": "MapeTooHigh", "status": "Failed", "failure": failure})
        run.status = "Succeeded" if passed else "Failed"
    except BaseException:
        run.status = "Failed"
        raise
    finally:
        (run.run_dir / "run.json").write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    return run
