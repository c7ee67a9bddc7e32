"""Chapter 5C in the notebook: the playbook's build pipeline, and the SageMaker SDK 3.x set up
so that it makes no call nobody asked for.

- :func:`playbook_table`: the playbook's stages and where our pipeline does each;
- :func:`sdk_moves_table`: what moved from SDK v2 to 3.x, checked by importing here;
- :func:`sdk_environment_table`: the environment that keeps the SDK offline, and why;
- :func:`offline_definition`: the definition built with the network watched
  (:func:`watched_network`), and :func:`root_logging_kept`, which undoes the logging set-up the
  SDK does at import.

The definition's views are in :mod:`hdb_mlops.course.definition_views`.
"""

from __future__ import annotations

import importlib
import json
import logging
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

#: The playbook's build pipeline (chapter 5), stage by stage: where our pipeline does it, and
#: the SageMaker step type. The mapping is ours: the playbook names the stages, not the steps.
PLAYBOOK_STAGES = (
    ("ingest resale transactions", "Prepare: reads the raw files at InputDataUri and checks "
     "them with the data chapter's rules", "Processing"),
    ("time-aware split", "Prepare: train, validation and test by month, never at random",
     "Processing"),
    ("pre-processing", "inside the model: its feature function is fitted in Train and shipped "
     "in the bundle, so serving uses the same one", "(in Training)"),
    ("XGBoost hyper-parameter optimisation", "Train, or Tune (a tuning job) with "
     "tuning_jobs > 0", "Training / Tuning"),
    ("evaluation", "Evaluate writes evaluation.json; CheckMape compares its MAPE with the "
     "threshold", "Processing, Condition"),
    ("tracking in MLflow", "not a step: the local path tracks in MLflow (chapter 5B); here the "
     "job's metric definitions and the registered metrics are the record", "-"),
    ("the approved model pushed to the Model Registry", "Register: a new version, "
     "PendingManualApproval; a person approves it", "RegisterModel"),
    ("endpoint per environment", "not in the build: the deploy jobs of chapter 5F promote the "
     "approved artifact to dev, uat and prod", "-"),
)  # fmt: skip
#: SDK v2 names and where SDK 3.x put them: (job, v2 "module:name", 3.x "module:name").
SDK_MOVES = (
    ("training job", "sagemaker.estimator:Estimator", "sagemaker.train:ModelTrainer"),
    ("processing job", "sagemaker.processing:Processor", "sagemaker.core.processing:Processor"),
    ("tuning job", "sagemaker.tuner:HyperparameterTuner",
     "sagemaker.train.tuner:HyperparameterTuner"),
    ("model, deploy, register", "sagemaker.model:Model",
     "sagemaker.serve.model_builder:ModelBuilder"),
    ("pipeline", "sagemaker.workflow.pipeline:Pipeline", "sagemaker.mlops.workflow:Pipeline"),
    ("pipeline steps", "sagemaker.workflow.steps:TrainingStep",
     "sagemaker.mlops.workflow:TrainingStep"),
    ("parameters", "sagemaker.workflow.parameters:ParameterFloat",
     "sagemaker.core.workflow.parameters:ParameterFloat"),
    ("conditions", "sagemaker.workflow.conditions:ConditionLessThanOrEqualTo",
     "sagemaker.core.workflow.conditions:ConditionLessThanOrEqualTo"),
    ("pipeline session", "sagemaker.workflow.pipeline_context:PipelineSession",
     "sagemaker.core.workflow.pipeline_context:PipelineSession"),
)  # fmt: skip
#: The migration guide's paths that do not exist in 3.x (DESIGN.md section 6).
GUIDE_PATHS = ("sagemaker.mlops.pipeline:Pipeline", "sagemaker.mlops.steps:TrainingStep")
#: Why :func:`hdb_mlops.cloud.sagemaker.sdk.environment_for` sets each variable.
WHY = {
    "SAGEMAKER_USER_CONFIG_OVERRIDE": "the SDK's config file: TelemetryOptOut: true",
    "SAGEMAKER_CORE_USER_CONFIG_OVERRIDE": "the same file, for sagemaker-core",
    "AWS_DEFAULT_REGION": "importing sagemaker.serve or sagemaker.mlops needs a region",
    "SAGEMAKER_VALIDATE_ROLE": "take role ARNs as given: no IAM look-up",
    "AWS_ACCESS_KEY_ID": "dummy credentials (offline backends only)",
    "AWS_SECRET_ACCESS_KEY": "dummy credentials (offline backends only)",
    "AWS_SESSION_TOKEN": "dummy credentials (offline backends only)",
    "AWS_EC2_METADATA_DISABLED": "botocore never probes the instance metadata address",
}


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Put the root logger back as it was after the block: importing the SDK calls
    ``logging.basicConfig(level=INFO)`` (``sagemaker.core.experiments._metrics``), which would
    print every INFO line of botocore on a notebook's stderr from then on."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextmanager
def watched_network() -> Iterator[list[tuple[str, str]]]:
    """Record every name look-up and connection made in the block, from any thread, as
    ``(kind, host)`` pairs (nothing is refused: the list is the evidence)."""
    seen: list[tuple[str, str]] = []
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def watched_connect(sock: socket.socket, address: Any) -> Any:
        seen.append(("connect", str(address[0] if isinstance(address, tuple) else address)))
        return connect(sock, address)

    def watched_connect_ex(sock: socket.socket, address: Any) -> Any:
        seen.append(("connect", str(address[0] if isinstance(address, tuple) else address)))
        return connect_ex(sock, address)

    def watched_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(("dns", str(host)))
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = watched_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = watched_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = watched_getaddrinfo
    try:
        yield seen
    finally:
        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = getaddrinfo


def offline_definition(settings: Any = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The pipeline definition (:func:`~hdb_mlops.cloud.sagemaker.definition.definition_json`,
    parsed) and the network activity seen while it was built (empty: none)."""
    from hdb_mlops.cloud.sagemaker.definition import definition_json

    with root_logging_kept(), watched_network() as seen:
        text = definition_json(settings)
    return json.loads(text), list(seen)


# ----------------------------------------------------------------------------- the SDK


def playbook_table() -> pd.DataFrame:
    """:data:`PLAYBOOK_STAGES` as a table."""
    frame = pd.DataFrame(
        PLAYBOOK_STAGES, columns=["playbook stage", "in our pipeline", "step type"]
    )
    return frame.set_index("playbook stage")


def _importable(path: str) -> bool:
    """Whether ``module:name`` imports (3.x answers a v2 module with a warning and an
    ImportError naming its replacement; the warning is not shown)."""
    module, _, name = path.partition(":")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def sdk_moves_table() -> pd.DataFrame:
    """:data:`SDK_MOVES` with whether each name imports here (inside the safe environment),
    and the migration guide's paths that do not exist."""
    from hdb_mlops.cloud.sagemaker.sdk import sdk_environment

    rows = []
    with root_logging_kept(), sdk_environment():
        for job, old, new in SDK_MOVES:
            rows.append({"job": job, "SDK v2": old, "v2 imports": _importable(old),
                         "SDK 3.x": new, "3.x imports": _importable(new)})  # fmt: skip
        for path in GUIDE_PATHS:
            rows.append({"job": "(migration guide)", "SDK v2": "", "v2 imports": None,
                         "SDK 3.x": path, "3.x imports": _importable(path)})  # fmt: skip
    return pd.DataFrame(rows).set_index("job")


def sdk_environment_table(region: str | None = None, *, offline: bool = True) -> pd.DataFrame:
    """The variables :func:`~hdb_mlops.cloud.sagemaker.sdk.sdk_environment` sets, with the
    config file named by its role, and why each one is there."""
    from hdb_mlops.cloud.backends import DEFAULT_REGION
    from hdb_mlops.cloud.sagemaker.sdk import CONFIG_FILE, environment_for

    env = environment_for(Path("<run folder>") / CONFIG_FILE, region or DEFAULT_REGION,
                          offline=offline)  # fmt: skip
    rows = [{"variable": k, "value": v, "why": WHY.get(k, "")} for k, v in env.items()]
    return pd.DataFrame(rows).set_index("variable")
