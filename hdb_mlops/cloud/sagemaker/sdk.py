"""The SageMaker Python SDK 3.x, set up so that it makes no call nobody asked for.

Left to itself the SDK, as soon as one of its decorated methods runs, resolves a session
(STS for the account), and sends a telemetry event to an AWS URL from a background thread;
it looks up IAM roles given by name, and importing ``sagemaker.serve`` or
``sagemaker.mlops`` without a region raises ``NoRegionError``. :func:`sdk_environment` is the
cure, as a context manager:

- ``AWS_DEFAULT_REGION`` is set (the import problem);
- a config YAML with ``SageMaker.PythonSDK.Modules.TelemetryOptOut: true`` is written into a
  run folder and pointed to by ``SAGEMAKER_USER_CONFIG_OVERRIDE`` (and
  ``SAGEMAKER_CORE_USER_CONFIG_OVERRIDE``, which sagemaker-core reads);
- ``SAGEMAKER_VALIDATE_ROLE=false``: role ARNs are taken as given.

The SDK is imported inside the functions of this subpackage only, always within this
environment: ``import hdb_mlops`` never imports it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hdb_mlops.cloud.backends import DEFAULT_REGION, MOTO_CREDENTIALS

#: The SDK config file written by :func:`write_sdk_config`.
CONFIG_FILE = "sagemaker-config.yaml"
#: Its content: telemetry off (the only default this project sets through it).
TELEMETRY_OPT_OUT_YAML = """\
# Written by hdb_mlops.cloud.sagemaker.sdk: the SageMaker SDK sends no telemetry.
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""
#: The environment variables that point the SDK at the config file.
CONFIG_ENV_VARS = ("SAGEMAKER_USER_CONFIG_OVERRIDE", "SAGEMAKER_CORE_USER_CONFIG_OVERRIDE")
#: The account id of an offline definition's placeholder ARNs (AWS's documentation account).
OFFLINE_ACCOUNT = "123456789012"


def write_sdk_config(folder: Path | str) -> Path:
    """Write the telemetry opt-out config into ``folder``; return its path."""
    path = Path(folder) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TELEMETRY_OPT_OUT_YAML)
    return path


def environment_for(
    config_path: Path | str, region: str = DEFAULT_REGION, *, offline: bool = True
) -> dict[str, str]:
    """The environment variables of a safe SDK run (also for child processes).

    ``offline`` (the local and moto backends) adds dummy credentials and
    ``AWS_EC2_METADATA_DISABLED``: importing ``sagemaker.serve`` creates boto3 clients at
    class definition (``sagemaker.ai_registry.air_hub``), and without credentials in the
    environment botocore would probe the instance metadata address for some.
    """
    env = {name: str(config_path) for name in CONFIG_ENV_VARS}
    env.update({"AWS_DEFAULT_REGION": region, "SAGEMAKER_VALIDATE_ROLE": "false"})
    if offline:
        env.update({key.upper(): value for key, value in MOTO_CREDENTIALS.items()})
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@contextmanager
def sdk_environment(
    region: str = DEFAULT_REGION,
    folder: Path | str | None = None,
    *,
    offline: bool = True,
    quiet: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Path]:
    """Set the environment of :func:`environment_for` for the ``with`` block (the previous
    values come back afterwards); yield the config file's path.

    ``folder`` holds the config file (a run folder); by default a temporary folder that is
    removed at the end. ``offline=False`` (the aws backend) keeps the user's credentials.
    ``extra_env`` adds variables (a backend's: :meth:`CloudContext.environment` points every
    client the SDK makes on its own at the moto server). ``quiet`` keeps the SDK's INFO and
    WARNING chatter (which config file it read, which request fields a pipeline definition
    leaves out) and its PipelineSession warning away.
    """
    own = folder is None
    where = Path(tempfile.mkdtemp(prefix="hdb-mlops-sagemaker-")) if own else Path(folder)
    config_path = write_sdk_config(where)
    wanted = {**environment_for(config_path, region, offline=offline), **(extra_env or {})}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    restore = _validate_each_config_once()
    levels = quiet_sdk_loggers() if quiet else {}
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield config_path
    finally:
        restore()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if own:
            shutil.rmtree(where, ignore_errors=True)


def quiet_sdk_loggers(level: int = logging.ERROR) -> dict[str, int]:
    """Raise the SDK's loggers (``sagemaker`` and every ``sagemaker.*`` one that exists) to
    ``level``; return their previous levels. Call again after importing more of the SDK."""
    names = ["sagemaker"] + [
        name for name in list(logging.root.manager.loggerDict) if name.startswith("sagemaker.")
    ]
    previous = {}
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < level:
            previous[name] = logger.level
            logger.setLevel(level)
    return previous


#: The modules that hold a reference to sagemaker-core's config check.
_CONFIG_CHECKS = (
    "sagemaker.core.config",
    "sagemaker.core.config.config",
    "sagemaker.core.helper.session_helper",
    "sagemaker.core.local.local_session",
)


def _validate_each_config_once() -> Callable[[], None]:
    """Make the SDK validate each distinct config once, not at every config look-up.

    sagemaker-core re-validates the whole config against its JSON schema (checking the
    schema itself too) every time it loads a config or reads a value from one: some 50
    times, about a second each on a busy 2-core machine, for one pipeline definition. The
    check is a pure function of the config, so a config that passed once passes again (one
    that fails raises as before). Returns the function that puts the SDK's checks back.
    """
    import importlib

    from sagemaker.core.config.config import validate_sagemaker_config as check
    from sagemaker.core.config.config_manager import SageMakerConfig

    passed: set[str] = set()

    def validate_once(sagemaker_config: dict | None = None) -> None:
        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in passed:
            check(sagemaker_config)
            passed.add(key)

    saved: list[tuple[Any, str, Any]] = [
        (
            SageMakerConfig,
            "validate_sagemaker_config",
            SageMakerConfig.__dict__["validate_sagemaker_config"],
        )
    ]
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_once)  # type: ignore[method-assign]
    for name in _CONFIG_CHECKS:
        module = importlib.import_module(name)
        saved.append((module, "validate_sagemaker_config", module.validate_sagemaker_config))
        module.validate_sagemaker_config = validate_once

    def restore() -> None:
        for owner, attribute, value in saved:
            setattr(owner, attribute, value)

    return restore


def offline_boto_session(region: str = DEFAULT_REGION) -> Any:
    """A boto3 session with dummy credentials, for building a definition: the SDK needs a
    session object, never a call through it (a call would fail: there is no account)."""
    import boto3

    return boto3.Session(region_name=region, **MOTO_CREDENTIALS)


def pipeline_session(boto_session: Any, bucket: str, sagemaker_client: Any = None) -> Any:
    """A ``PipelineSession`` on ``boto_session`` whose default bucket is ``bucket`` (given,
    so that the SDK never derives one from the account id). Call inside
    :func:`sdk_environment`."""
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    return PipelineSession(
        boto_session=boto_session, sagemaker_client=sagemaker_client, default_bucket=bucket
    )


def telemetry_opted_out(session: Any) -> bool:
    """Whether the SDK reads telemetry as opted out for ``session`` (what its telemetry
    decorator checks before it sends anything)."""
    from sagemaker.core.common_utils import resolve_value_from_config
    from sagemaker.core.config.config_schema import TELEMETRY_OPT_OUT_PATH

    return bool(
        resolve_value_from_config(
            direct_input=None,
            config_path=TELEMETRY_OPT_OUT_PATH,
            default_value=False,
            sagemaker_session=session,
        )
    )
