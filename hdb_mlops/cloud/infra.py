"""Deploying and destroying the Stage 2 stack (``infra/stage2.yaml``) on moto or AWS.

:func:`deploy` creates (or updates) the CloudFormation stack ``PREFIX-stage2``. On the moto
backend it sends moto an adapted template and then applies, with boto3, the parts moto's
CloudFormation leaves out (:mod:`hdb_mlops.cloud.fallback` lists them), so that
:func:`hdb_mlops.cloud.audit.audit` sees the same controls as on AWS. :func:`destroy` removes
the stack and what it retains (the buckets, emptied first) and what the fallback made; it can
be run again safely.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdb_mlops.cloud import fallback, teardown
from hdb_mlops.cloud.template import (
    TEMPLATE,
    Resolver,
    load_template,
    parameter_values,
    pseudo_parameters,
    resources_of_type,
)

if TYPE_CHECKING:
    from hdb_mlops.cloud.backends import CloudContext

#: The stack name is the prefix and this suffix.
STACK_SUFFIX = "stage2"
#: The capability the template needs (it names its IAM roles and policy).
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
_POLL_SECONDS = {"moto": 0.2, "aws": 10.0}
_TIMEOUT_SECONDS = 45 * 60


def stack_name(prefix: str) -> str:
    """The name of the Stage 2 stack of ``prefix``."""
    return f"{prefix}-{STACK_SUFFIX}"


@dataclass
class DeployResult:
    """What :func:`deploy` did."""

    backend: str
    stack_name: str
    status: str
    outputs: dict[str, str]
    parameters: dict[str, str]
    fallback: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class DestroyResult:
    """What :func:`destroy` removed (empty when there was nothing to remove)."""

    backend: str
    stack_name: str
    removed: list[str]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe_stack(cf: Any, name: str) -> dict[str, Any] | None:
    """The stack ``name``, or None when there is none (or only a deleted one)."""
    from botocore.exceptions import ClientError

    try:
        stacks = cf.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if _client_error_code(exc) == "ValidationError":
            return None
        raise
    live = [s for s in stacks if s["StackStatus"] != "DELETE_COMPLETE"]
    return live[0] if live else None


def _wait(ctx: CloudContext, cf: Any, name: str) -> str:
    """Wait until the stack's status stops ending in ``_IN_PROGRESS``; its final status."""
    started = time.monotonic()
    while True:
        stack = _describe_stack(cf, name)
        if stack is None:
            return "DELETE_COMPLETE"
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() - started > _TIMEOUT_SECONDS:
            raise RuntimeError(f"stack {name} still {status} after {_TIMEOUT_SECONDS // 60} min")
        time.sleep(_POLL_SECONDS.get(ctx.backend, 10.0))


def _failure_reasons(cf: Any, name: str) -> str:
    """The failed resources' reasons from the stack's events, on one line."""
    try:
        events = cf.describe_stack_events(StackName=name)["StackEvents"]
    except Exception:
        return ""
    reasons = [
        f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if e.get("ResourceStatus", "").endswith("_FAILED")
    ]
    return "; ".join(reasons[:5])


def _account(ctx: CloudContext) -> str:
    return str(ctx.client("sts").get_caller_identity()["Account"])


def _zones(ctx: CloudContext) -> list[str]:
    zones = ctx.client("ec2").describe_availability_zones()["AvailabilityZones"]
    return sorted(z["ZoneName"] for z in zones if z.get("State", "available") == "available")


def _physical_ids(cf: Any, name: str) -> dict[str, str]:
    """Logical id -> physical id of the stack's resources (moto lists the resources it
    skipped without ids: they are left out)."""
    resources = cf.describe_stack_resources(StackName=name)["StackResources"]
    return {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in resources
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
    }


def _attribute_reader(
    ctx: CloudContext, template: Mapping[str, Any], physical: Mapping[str, str], partition: str
) -> Any:
    """``attribute(logical, name)`` for ``Fn::GetAtt`` of the attributes the template uses."""

    known: dict[tuple[str, str], Any] = {}

    def attribute(logical: str, name: str) -> Any:
        if (logical, name) not in known:
            known[(logical, name)] = look_up(logical, name)
        return known[(logical, name)]

    def look_up(logical: str, name: str) -> Any:
        resource_type = template["Resources"][logical]["Type"]
        physical_id = physical[logical]
        if name == "Arn" and resource_type == "AWS::S3::Bucket":
            return f"arn:{partition}:s3:::{physical_id}"
        if name == "Arn" and resource_type == "AWS::KMS::Key":
            return ctx.client("kms").describe_key(KeyId=physical_id)["KeyMetadata"]["Arn"]
        if name == "Arn" and resource_type == "AWS::IAM::Role":
            return ctx.client("iam").get_role(RoleName=physical_id)["Role"]["Arn"]
        raise KeyError(f"cannot resolve Fn::GetAtt {logical}.{name} ({resource_type})")

    return attribute


def deploy(
    ctx: CloudContext,
    template: Path | str = TEMPLATE,
    prefix: str | None = None,
    params: Mapping[str, str] | None = None,
    *,
    apply_fallback: bool = True,
) -> DeployResult:
    """Create or update the stack ``PREFIX-stage2`` from ``template`` and wait for it.

    ``params`` are template parameters (``Prefix`` is ``prefix``, else the context's).
    On moto, ``apply_fallback=False`` leaves out what moto's CloudFormation cannot do (the
    tests use it to show what the fallback adds). Raises ``RuntimeError`` when the stack
    fails, with the failed resources' reasons.
    """
    started = time.monotonic()
    prefix = prefix or ctx.prefix
    name = stack_name(prefix)
    parsed = load_template(template)
    values = parameter_values(parsed, {**(params or {}), "Prefix": prefix})
    cf = ctx.client("cloudformation")
    pseudo = pseudo_parameters(_account(ctx), ctx.region, name)
    zones = _zones(ctx) if ctx.backend == "moto" else []
    if ctx.backend == "moto":
        resolver = Resolver(parsed, values, pseudo, zones=zones)
        body = json.dumps(fallback.moto_template(parsed, resolver))
    else:
        body = Path(template).read_text(encoding="utf-8")
    request = {
        "StackName": name,
        "TemplateBody": body,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
        "Capabilities": CAPABILITIES,
        "Tags": [{"Key": "Project", "Value": "hdb-mlops"}, {"Key": "Prefix", "Value": prefix}],
    }
    existing = _describe_stack(cf, name)
    if existing is None:
        cf.create_stack(**request)
    elif existing["StackStatus"] in ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"):
        raise RuntimeError(
            f"stack {name} is {existing['StackStatus']}: run `hdb-mlops infra destroy` first"
        )
    else:
        _update(cf, request)
    status = _wait(ctx, cf, name)
    if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise RuntimeError(f"stack {name} ended {status}: {_failure_reasons(cf, name)}")
    applied: list[str] = []
    if ctx.backend == "moto" and apply_fallback:
        physical = _physical_ids(cf, name)
        resolver = Resolver(
            parsed,
            values,
            pseudo,
            physical=physical,
            attribute=_attribute_reader(ctx, parsed, physical, pseudo["AWS::Partition"]),
            zones=zones,
        )
        applied = fallback.apply(ctx, parsed, resolver)
    stack = _describe_stack(cf, name) or {}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return DeployResult(
        ctx.backend, name, status, outputs, values, applied, time.monotonic() - started
    )


def _update(cf: Any, request: dict[str, Any]) -> None:
    """Update the stack; "No updates are to be performed" is not an error."""
    from botocore.exceptions import ClientError

    try:
        cf.update_stack(**request)
    except ClientError as exc:
        if "No updates are to be performed" not in str(exc):
            raise


# ----------------------------------------------------------------------------- destroy


def _bucket_names(
    ctx: CloudContext, parsed: dict[str, Any], prefix: str, physical: Mapping[str, str]
) -> list[str]:
    """The stack's buckets: its physical ids, else the names the template gives them."""
    values = parameter_values(parsed, {"Prefix": prefix})
    pseudo = pseudo_parameters(_account(ctx), ctx.region, stack_name(prefix))
    resolver = Resolver(parsed, values, pseudo)
    names = []
    for logical in resources_of_type(parsed, "AWS::S3::Bucket"):
        if logical in physical:
            names.append(physical[logical])
        else:
            names.append(resolver.resolve(parsed["Resources"][logical]["Properties"]["BucketName"]))
    return names


def _empty(s3: Any, bucket: str) -> None:
    """Delete every object version and delete marker of ``bucket``."""
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        keys = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})


def _delete_buckets(s3: Any, buckets: list[str]) -> list[str]:
    """Empty and delete the buckets that exist: their policies and access logging off
    first, the log buckets last (deleting a logged bucket writes log records into its
    target), and a log bucket emptied again if a late delivery lands in it. The buckets
    deleted. (CloudFormation deletes the bucket policies with the stack; on moto they are
    the fallback's, and moto's S3 applies a policy's denies to DeleteObjects without
    reading their conditions.)"""
    from botocore.exceptions import ClientError

    existing = []
    for bucket in buckets:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError:
            continue
        existing.append(bucket)
    targets = set()
    for bucket in existing:
        s3.delete_bucket_policy(Bucket=bucket)
        enabled = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled")
        if enabled:
            targets.add(enabled["TargetBucket"])
            s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})
    ordered = [b for b in existing if b not in targets] + [b for b in existing if b in targets]
    for bucket in ordered:
        for attempt in range(3):
            _empty(s3, bucket)
            try:
                s3.delete_bucket(Bucket=bucket)
                break
            except ClientError as exc:
                if _client_error_code(exc) != "BucketNotEmpty" or attempt == 2:
                    raise
    return ordered


def _delete_stack(ctx: CloudContext, cf: Any, name: str) -> None:
    """Delete the stack and wait. On moto a DependencyViolation (its deletion leaves the VPC's
    route table, then cannot delete the VPC) is left to :mod:`~hdb_mlops.cloud.teardown`."""
    from botocore.exceptions import ClientError

    try:
        cf.delete_stack(StackName=name)
    except ClientError as exc:
        if not (ctx.backend == "moto" and _client_error_code(exc) == "DependencyViolation"):
            raise
    status = _wait(ctx, cf, name)
    if status != "DELETE_COMPLETE":
        raise RuntimeError(f"stack {name} ended {status}: {_failure_reasons(cf, name)}")


def destroy(
    ctx: CloudContext, prefix: str | None = None, template: Path | str = TEMPLATE
) -> DestroyResult:
    """Remove the stack ``PREFIX-stage2``, its retained buckets (emptied first) and, on
    moto, what the fallback created and moto's deletion leaves. Running it again finds
    nothing and removes nothing."""
    started = time.monotonic()
    prefix = prefix or ctx.prefix
    name = stack_name(prefix)
    parsed = load_template(template)
    cf, s3 = ctx.client("cloudformation"), ctx.client("s3")
    stack = _describe_stack(cf, name)
    physical = _physical_ids(cf, name) if stack else {}
    removed: list[str] = []
    if stack is not None:
        if ctx.backend == "moto":
            removed += teardown.before_delete(ctx, parsed, physical)
        _delete_stack(ctx, cf, name)
        removed.append(f"stack {name}")
    if ctx.backend == "moto":
        values = parameter_values(parsed, {"Prefix": prefix})
        pseudo = pseudo_parameters(_account(ctx), ctx.region, name)
        resolver = Resolver(parsed, values, pseudo)
        removed += teardown.after_delete(ctx, parsed, resolver, physical, prefix)
    buckets = _delete_buckets(s3, _bucket_names(ctx, parsed, prefix, physical))
    removed += [f"bucket {bucket}" for bucket in buckets]
    return DestroyResult(ctx.backend, name, removed, time.monotonic() - started)
