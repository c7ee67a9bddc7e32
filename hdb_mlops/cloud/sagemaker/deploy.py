"""Serving a trained artifact with the SageMaker SDK's ModelBuilder.

- :func:`in_process_endpoint` (here, offline): ``ModelBuilder(mode=Mode.IN_PROCESS)`` with an
  InferenceSpec over the package's model bundle and an explicit ``model_path`` (the unpacked
  ``model.tar.gz``). The SDK serves it with its own FastAPI app in this process, on
  127.0.0.1:9007 (a port the SDK fixes: a busy port is reported before anything starts).
  ``build()`` still resolves the session's default bucket on S3, so the local backend runs
  it against a moto server of its own; no call leaves the machine.
- :func:`sagemaker_endpoint` (``--backend aws``): ``ModelBuilder`` in SAGEMAKER_ENDPOINT mode
  on the project's image (``serve`` runs the package's service, with ``/ping`` and
  ``/invocations``); the endpoint, its config and its model are deleted on exit unless
  ``cleanup=False``.

The request format of both is SageMaker's ``{"instances": [row, ...]}``, each row with the
official column names (as the published files write them); the answer is
``{"predictions": [price, ...]}``.
"""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.cloud.backends import CloudContext, open_backend
from hdb_mlops.cloud.sagemaker.sdk import OFFLINE_ACCOUNT

#: The port of the SDK's in-process server (sagemaker.serve's InProcessServer fixes it).
IN_PROCESS_PORT = 9007


def official_records(transactions: pd.DataFrame) -> list[dict[str, str]]:
    """Rows as the published files write them (strings; the remaining lease as
    "61 years 04 months"), without the price: the instances of an inference request."""
    out = []
    for row in transactions.itertuples():
        months = int(row.remaining_lease_months)
        out.append(
            {
                "month": str(row.month),
                "town": row.town,
                "flat_type": row.flat_type,
                "block": str(row.block),
                "street_name": str(row.street_name),
                "storey_range": row.storey_range,
                "floor_area_sqm": repr(float(row.floor_area_sqm)),
                "flat_model": row.flat_model,
                "lease_commence_date": str(int(row.lease_commence_date)),
                "remaining_lease": f"{months // 12} years {months % 12:02d} months",
            }
        )
    return out


def predict_instances(bundle: Any, payload: Any) -> dict[str, list[float]]:
    """The answer to an inference request for a loaded bundle (see the module docstring)."""
    from hdb_mlops.model.features import transactions_from_records

    rows = payload.get("instances") if isinstance(payload, dict) else payload
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise ValueError('expected {"instances": [row, ...]} with at least one row')
    rows = [{**row, "resale_price": ""} for row in rows]
    return {"predictions": [float(p) for p in bundle.predict(transactions_from_records(rows))]}


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


@dataclass
class LocalEndpoint:
    """An in-process endpoint: ``invoke`` sends a request through the SDK's server."""

    name: str
    model_path: Path
    endpoint: Any

    def invoke(self, instances: list[dict[str, Any]]) -> list[float]:
        """Predictions for ``instances`` (official-format rows)."""
        import json

        answer = self.endpoint.invoke(
            body={"instances": instances}, content_type="application/json"
        )
        body = answer.body if hasattr(answer, "body") else answer
        if isinstance(body, bytes | str):
            body = json.loads(body)
        return [float(p) for p in body["predictions"]]


def sdk_session(ctx: CloudContext, bucket: str) -> Any:
    """A SageMaker SDK ``Session`` on the backend's boto session and clients."""
    from sagemaker.core.helper.session_helper import Session

    return Session(
        boto_session=ctx.session(),
        sagemaker_client=ctx.client("sagemaker"),
        sagemaker_runtime_client=ctx.client("sagemaker-runtime"),
        default_bucket=bucket,
    )


def _inference_spec(model_path: Path) -> Any:
    """An InferenceSpec that loads the bundle at ``model_path`` (verified) and answers with
    :func:`predict_instances`. Made here: the SDK may only be imported in its environment."""
    from sagemaker.serve.spec.inference_spec import InferenceSpec

    class BundleSpec(InferenceSpec):  # type: ignore[misc]
        """The package's model bundle behind the SDK's inference interface."""

        def load(self, model_dir: str | None = None) -> Any:
            from hdb_mlops.model.bundle import load_bundle

            return load_bundle(model_dir or model_path)

        def invoke(self, input_object: Any, model: Any) -> dict[str, list[float]]:
            return predict_instances(model, input_object)

    return BundleSpec()


def _schema_builder(bundle_dir: Path, sample: list[dict[str, str]] | None) -> Any:
    from sagemaker.serve.builder.schema_builder import SchemaBuilder

    from hdb_mlops.model.bundle import load_bundle

    if not sample:
        raise ValueError("the in-process endpoint needs a sample row (SchemaBuilder's example)")
    example = {"instances": sample[:1]}
    return SchemaBuilder(example, predict_instances(load_bundle(bundle_dir), example))


@contextmanager
def in_process_endpoint(
    model: Path | str,
    sample: list[dict[str, str]],
    *,
    ctx: CloudContext | None = None,
    folder: Path | str | None = None,
    name: str = "hdb-mlops-local",
    bucket: str = "hdb-mlops-dev-artifacts",
) -> Iterator[LocalEndpoint]:
    """Serve ``model`` (a bundle folder or a ``model.tar.gz``) with ModelBuilder's IN_PROCESS
    mode for the ``with`` block; the server is stopped at the end. ``sample``: example rows
    (the SchemaBuilder's). ``ctx``: a moto backend for the S3 check (default: one started
    here)."""
    from hdb_mlops.cloud.sagemaker.entrypoints.evaluate import unpack_model
    from hdb_mlops.cloud.sagemaker.sdk import quiet_sdk_loggers, sdk_environment

    if not _port_is_free(IN_PROCESS_PORT):
        raise RuntimeError(
            f"127.0.0.1:{IN_PROCESS_PORT} is in use: the SDK's in-process server needs that port "
            "(it cannot be changed); stop what listens there"
        )
    with ExitStack() as stack:
        if ctx is None or ctx.backend == "local":
            ctx = stack.enter_context(open_backend("moto"))
        work = Path(folder) if folder else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        source = Path(model)
        model_path = unpack_model(source.parent if source.is_file() else source, work / "model")
        stack.enter_context(
            sdk_environment(
                ctx.region, work, offline=ctx.backend != "aws", extra_env=ctx.environment()
            )
        )
        from hdb_mlops.cloud.sagemaker.execution import ensure_bucket

        ensure_bucket(ctx, bucket)
        from sagemaker.serve.mode.function_pointers import Mode
        from sagemaker.serve.model_builder import ModelBuilder

        quiet_sdk_loggers()
        builder = ModelBuilder(
            inference_spec=_inference_spec(model_path),
            schema_builder=_schema_builder(model_path, sample),
            mode=Mode.IN_PROCESS,
            model_path=str(model_path),
            dependencies={"auto": False},  # the bundle needs nothing the process lacks
            sagemaker_session=sdk_session(ctx, bucket),
            role_arn=f"arn:aws:iam::{OFFLINE_ACCOUNT}:role/hdb-mlops-sagemaker-execution",
            log_level=logging.ERROR,
        )
        # the SDK configures uvicorn (INFO, access log on stdout) when it starts the server:
        # keep stdout for the caller's output (a --json answer), the server's lines on stderr
        with redirect_stdout(sys.stderr):
            builder.build(model_name=name)
            endpoint = builder.deploy_local(endpoint_name=name)
        for logger in ("uvicorn.access", "uvicorn.error"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        try:
            yield LocalEndpoint(name, model_path, endpoint)
        finally:
            server = getattr(endpoint, "in_process_mode_obj", None)
            if server is not None:
                server.destroy_server()


def check_in_process(
    archive: Path | str,
    transactions: pd.DataFrame,
    *,
    ctx: CloudContext | None = None,
    name: str = "hdb-mlops-local",
) -> dict[str, Any]:
    """Serve ``archive`` with :func:`in_process_endpoint`, send ``transactions`` (official
    rows), compare the answers with the bundle's own predictions, take the endpoint down."""
    import numpy as np

    from hdb_mlops.cloud.sagemaker.entrypoints.evaluate import unpack_model
    from hdb_mlops.model.bundle import load_bundle

    source = Path(archive)
    with tempfile.TemporaryDirectory(prefix="hdb-deploy-") as work:
        bundle = load_bundle(unpack_model(source.parent if source.is_file() else source, work))
        instances = official_records(transactions)
        with in_process_endpoint(source, instances, ctx=ctx, name=name) as endpoint:
            got = np.array(endpoint.invoke(instances))
        agree = bool(np.allclose(got, bundle.predict(transactions), rtol=1e-9))
    return {
        "endpoint": name,
        "mode": "in-process (ModelBuilder Mode.IN_PROCESS)",
        "bundle_sha256": bundle.sha256,
        "rows": len(transactions),
        "predictions_agree": agree,
        "cleaned_up": True,
    }


@dataclass
class RemoteEndpoint:
    """A SageMaker endpoint: ``invoke`` calls InvokeEndpoint."""

    name: str
    ctx: CloudContext

    def invoke(self, instances: list[dict[str, Any]]) -> list[float]:
        """Predictions for ``instances`` (official-format rows)."""
        import json

        answer = self.ctx.client("sagemaker-runtime").invoke_endpoint(
            EndpointName=self.name,
            ContentType="application/json",
            Accept="application/json",
            Body=json.dumps({"instances": instances}),
        )
        return [float(p) for p in json.loads(answer["Body"].read())["predictions"]]


def delete_endpoint(ctx: CloudContext, name: str) -> list[str]:
    """Delete the endpoint ``name``, its endpoint config and its model(s); return what was
    deleted (missing pieces are skipped)."""
    client = ctx.client("sagemaker")
    deleted = []
    try:
        described = client.describe_endpoint(EndpointName=name)
        config_name = described["EndpointConfigName"]
        config = client.describe_endpoint_config(EndpointConfigName=config_name)
    except Exception:
        return deleted
    client.delete_endpoint(EndpointName=name)
    deleted.append(f"endpoint {name}")
    client.delete_endpoint_config(EndpointConfigName=config_name)
    deleted.append(f"endpoint config {config_name}")
    for variant in config.get("ProductionVariants", []):
        if variant.get("ModelName"):
            client.delete_model(ModelName=variant["ModelName"])
            deleted.append(f"model {variant['ModelName']}")
    return deleted


@contextmanager
def sagemaker_endpoint(
    ctx: CloudContext,
    *,
    model_data_url: str,
    image_uri: str,
    role_arn: str,
    bucket: str,
    name: str = "hdb-mlops",
    instance_type: str = "ml.m5.large",
    cleanup: bool = True,
) -> Iterator[RemoteEndpoint]:
    """Deploy ``model_data_url`` (a model.tar.gz on S3) on the project's image as the
    endpoint ``name`` with ModelBuilder (SAGEMAKER_ENDPOINT mode); delete it on exit unless
    ``cleanup=False``. Meant for ``--backend aws``: it costs money while it runs.

    Not exercised by the tests: on moto, ``build()`` fails reading the model back, because
    moto's DescribeModel answers ``VpcConfig: {}``, which sagemaker-core's Model shape refuses
    (it requires ``security_group_ids`` and ``subnets``)."""
    from hdb_mlops.cloud.sagemaker.sdk import quiet_sdk_loggers, sdk_environment

    with sdk_environment(ctx.region, offline=ctx.backend != "aws", extra_env=ctx.environment()):
        from sagemaker.serve.mode.function_pointers import Mode
        from sagemaker.serve.model_builder import ModelBuilder

        quiet_sdk_loggers()
        builder = ModelBuilder(
            s3_model_data_url=model_data_url,
            image_uri=image_uri,
            role_arn=role_arn,
            sagemaker_session=sdk_session(ctx, bucket),
            mode=Mode.SAGEMAKER_ENDPOINT,
            instance_type=instance_type,
            dependencies=None,
            log_level=logging.ERROR,
        )
        builder.build(model_name=f"{name}-model")
        try:
            builder.deploy(
                endpoint_name=name, initial_instance_count=1, instance_type=instance_type
            )
            yield RemoteEndpoint(name, ctx)
        finally:
            if cleanup:
                delete_endpoint(ctx, name)
