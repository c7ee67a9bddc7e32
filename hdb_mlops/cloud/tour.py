"""Chapter 4's tour of the Stage 2 template: the tables its notebook shows.

- :func:`render` writes CloudFormation's intrinsic functions in their short YAML form;
  :func:`resource_types_table`, :func:`excerpt` (the properties behind each control area,
  from the parsed ``infra/stage2.yaml``), :func:`statements_table` and :func:`tag_coverage`
  show the template as data, not as pasted text.
- :func:`broken_excerpt` is a small template with three mistakes, and :func:`checkov_run`
  runs checkov once (the offline command of :mod:`hdb_mlops.cloud.lint`, with the project's
  own checks) on several templates, keeping every check's result per template.
- :func:`gaps_table` lists what moto's CloudFormation lacks (:data:`fallback.MOTO_GAPS`).

The account side (audit tables, what a policy allows) is in :mod:`hdb_mlops.cloud.tour_account`.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.cloud import fallback, lint

# ----------------------------------------------------------------------------- the template


def render(value: Any) -> str:
    """A template value as text, intrinsic functions in their short YAML form (``!Ref X``)."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return f"!Ref {arg}"
        if key == "Fn::GetAtt":
            return f"!GetAtt {'.'.join(arg) if isinstance(arg, list) else arg}"
        if key == "Fn::Sub" and isinstance(arg, str):
            return f"!Sub {arg}"
        if key == "Fn::If":
            return f"!If [{arg[0]}, {render(arg[1])}, {render(arg[2])}]"
        if key.startswith("Fn::"):
            return f"!{key[4:]} {render(arg)}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resource_types_table(template: Mapping[str, Any], expected: Iterable[str] = ()) -> pd.DataFrame:
    """How many resources of each type the template declares, with their logical ids;
    ``expected`` types it lacks are listed with 0 (e.g. ``AWS::EC2::InternetGateway``)."""
    by_type: dict[str, list[str]] = {t: [] for t in expected}
    for logical, resource in template["Resources"].items():
        by_type.setdefault(resource["Type"], []).append(logical)
    frame = pd.DataFrame(
        [(t, len(ids), ", ".join(ids) or "-") for t, ids in sorted(by_type.items())],
        columns=["type", "count", "resources"],
    )
    return frame.set_index("type")


#: The properties behind each control area: (logical id, dotted path; a number is a list index).
AREAS: dict[str, tuple[tuple[str, str], ...]] = {
    "encryption": (
        ("DataKey", "EnableKeyRotation"),
        ("DataKey", "KeyPolicy.Statement.0.Principal.AWS"),
        ("DataBucket", "BucketEncryption.ServerSideEncryptionConfiguration.0"),
        ("ArtifactBucket", "BucketEncryption.ServerSideEncryptionConfiguration.0"),
        ("AccessLogBucket", "BucketEncryption.ServerSideEncryptionConfiguration.0"),
        ("DataBucket", "VersioningConfiguration.Status"),
        ("DataBucket", "PublicAccessBlockConfiguration"),
        ("DataBucket", "LoggingConfiguration.DestinationBucketName"),
    ),
    "network": (
        ("Vpc", "CidrBlock"),
        ("PrivateSubnetA", "MapPublicIpOnLaunch"),
        ("PrivateSubnetB", "MapPublicIpOnLaunch"),
        ("S3GatewayEndpoint", "VpcEndpointType"),
        ("S3GatewayEndpoint", "RouteTableIds"),
        ("SageMakerApiEndpoint", "ServiceName"),
        ("SageMakerRuntimeEndpoint", "ServiceName"),
        ("StsEndpoint", "ServiceName"),
        ("LogsEndpoint", "ServiceName"),
        ("LogsEndpoint", "PrivateDnsEnabled"),
        ("EndpointSecurityGroup", "SecurityGroupIngress.0.CidrIp"),
        ("VpcFlowLog", "LogDestination"),
    ),
    "environments": (
        ("DataBucket", "BucketName"),
        ("SageMakerExecutionRole", "RoleName"),
        ("DataKeyAlias", "AliasName"),
        ("Vpc", "Tags.2"),
    ),
}


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def excerpt(template: Mapping[str, Any], area: str) -> pd.DataFrame:
    """The template's properties behind one of :data:`AREAS`, one row per property."""
    resources = template["Resources"]
    rows = [
        (
            resources[logical]["Type"],
            logical,
            re.sub(r"\.(\d+)", r"[\1]", path),
            render(_at(resources[logical]["Properties"], path)),
        )
        for logical, path in AREAS[area]
    ]
    frame = pd.DataFrame(rows, columns=["type", "resource", "property", "value"])
    return frame.set_index(["type", "resource"])


def statements_table(document: Mapping[str, Any]) -> pd.DataFrame:
    """A policy document's statements: Sid, effect, actions, resources and conditions (a
    statement behind ``!If`` shows the template condition it depends on)."""
    rows = []
    for statement in document.get("Statement", []):
        only_if = ""
        if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
            only_if, statement = statement["Fn::If"][0], statement["Fn::If"][1]

        def joined(key: str, item: Mapping[str, Any] = statement) -> str:
            value = item.get(key, "")
            return ", ".join(render(v) for v in (value if isinstance(value, list) else [value]))

        rows.append(
            {
                "Sid": statement.get("Sid", ""),
                "effect": statement.get("Effect", ""),
                "actions": joined("Action"),
                "resources": joined("Resource"),
                "condition": render(statement["Condition"]) if "Condition" in statement else "",
                "only if": only_if,
            }
        )
    frame = pd.DataFrame(rows)
    if not frame["only if"].any():
        frame = frame.drop(columns="only if")
    return frame.set_index("Sid")


def tag_coverage(template: Mapping[str, Any]) -> pd.DataFrame:
    """For each tag key, how many of the resources that carry tags carry it."""
    tagged = [r for r in template["Resources"].values() if "Tags" in r.get("Properties", {})]
    counts: dict[str, int] = {}
    for resource in tagged:
        for tag in resource["Properties"]["Tags"]:
            counts[tag["Key"]] = counts.get(tag["Key"], 0) + 1
    frame = pd.DataFrame(
        [(k, n, len(tagged)) for k, n in counts.items()],
        columns=["tag", "resources with it", "resources with tags"],
    )
    return frame.set_index("tag")


def broken_excerpt(template: Mapping[str, Any]) -> dict[str, Any]:
    """Three resources of ``template`` with one mistake each: key rotation off, the data
    bucket on SSE-S3 instead of the customer key, and a bucket policy without its denies."""
    resources = template["Resources"]
    key = json.loads(json.dumps(resources["DataKey"]))
    key["Properties"]["EnableKeyRotation"] = False
    bucket = json.loads(json.dumps(resources["DataBucket"]))
    sse_s3 = {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    bucket["Properties"]["BucketEncryption"] = {"ServerSideEncryptionConfiguration": [sse_s3]}
    bucket["Properties"]["LoggingConfiguration"]["DestinationBucketName"] = "a-log-bucket"
    statement = {
        "Sid": "AccountReads",
        "Effect": "Allow",
        "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}},
        "Action": "s3:GetObject",
        "Resource": {"Fn::Sub": "${DataBucket.Arn}/*"},
    }
    policy = {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": "DataBucket"},
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [statement]},
        },
    }
    parameters = {k: template["Parameters"][k] for k in ("Prefix", "Environment", "Owner")}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": parameters,
        "Resources": {"DataKey": key, "DataBucket": bucket, "DataBucketPolicy": policy},
    }


# ----------------------------------------------------------------------------- policy as code


@dataclass
class CheckovRun:
    """One checkov run on several templates: every check's result, per template."""

    version: str
    checks: pd.DataFrame  # template, check, name, resource, status, reason

    def summary(self) -> pd.DataFrame:
        """Checks passed, failed and skipped per template."""
        counts = self.checks.groupby(["template", "status"]).size().unstack(fill_value=0)
        return counts.reindex(columns=["passed", "failed", "skipped"], fill_value=0)

    def outcomes(self, contains: str = "") -> pd.DataFrame:
        """Per check (whose id contains ``contains``) and template: how many resources
        passed, failed or were skipped (``"2 passed, 1 failed"``; ``-`` where none)."""
        rows = self.checks[self.checks["check"].str.contains(contains, regex=False)]
        counts = rows.groupby(["check", "name", "template", "status"]).size()
        text = (
            counts.reset_index(name="n")
            .assign(text=lambda f: f["n"].astype(str) + " " + f["status"])
            .groupby(["check", "name", "template"])["text"]
            .agg(", ".join)
            .unstack(fill_value="-")
        )
        text.columns.name = None
        return text

    def where(self, status: str) -> pd.DataFrame:
        """The checks with ``status``, sorted."""
        rows = self.checks[self.checks["status"] == status]
        return rows.drop(columns="status").set_index(["template", "check"]).sort_index()


def checkov_run(templates: Mapping[str, Path | Mapping[str, Any]]) -> CheckovRun:
    """Run checkov (offline, with the project's checks) once on ``templates``: name -> a
    template file, or a parsed template (written to a temporary file of that name)."""
    with tempfile.TemporaryDirectory(prefix="hdb-mlops-checkov-") as tmp:
        files = {}
        for name, template in templates.items():
            if isinstance(template, Mapping):
                path = Path(tmp) / name
                path.write_text(json.dumps(template), encoding="utf-8")
                files[name] = path
            else:
                files[name] = Path(template)
        command, env = lint.checkov_command(next(iter(files.values())))
        at = command.index("--file") + 2
        for path in list(files.values())[1:]:
            command[at:at] = ["--file", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"checkov failed (exit {result.returncode}): {tail}")
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    by_file = {path.name: name for name, path in files.items()}
    rows = []
    for status in ("passed", "failed", "skipped"):
        for check in report.get("results", {}).get(f"{status}_checks", []):
            rows.append(
                {
                    "template": by_file.get(Path(check["file_path"]).name, check["file_path"]),
                    "check": check["check_id"],
                    "name": check.get("check_name", ""),
                    "resource": check.get("resource", ""),
                    "status": status,
                    "reason": (check.get("check_result") or {}).get("suppress_comment") or "",
                }
            )
    checks = pd.DataFrame(rows).sort_values(["template", "check", "resource"], ignore_index=True)
    return CheckovRun(str(report.get("summary", {}).get("checkov_version", "")), checks)


def gaps_table() -> pd.DataFrame:
    """What moto's CloudFormation does not do with the template, per resource type and part,
    and what the package does instead: rewrites that part of the template it sends moto
    (:func:`hdb_mlops.cloud.fallback.moto_template`), applies it with boto3 after the stack
    (:func:`hdb_mlops.cloud.fallback.apply`), or removes it at destroy time
    (:mod:`hdb_mlops.cloud.teardown`)."""
    rewritten = {
        ("AWS::KMS::Key", "KeyPolicy"),
        ("AWS::EC2::Subnet", "Fn::GetAZs of Ref AWS::Region"),
    }
    rows = []
    for gap in fallback.MOTO_GAPS:
        if gap.part == "(deletion)":
            done = "removes it on destroy"
        elif (gap.resource_type, gap.part) in rewritten:
            done = "rewrites it in the template sent to moto"
        else:
            done = "applies it with boto3 after the stack"
        rows.append((gap.resource_type, gap.part, gap.effect, done))
    frame = pd.DataFrame(rows, columns=["type", "part", "moto's CloudFormation", "the package"])
    return frame.set_index(["type", "part"])
