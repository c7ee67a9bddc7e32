"""Chapter 4's view of the account: audit findings that read the same on every run, and a
small rule for what an IAM policy lets a role do.

moto (and AWS) give resources generated ids (``vpc-0a1b...``, key ids), different on each
deployment. :func:`physical_names` maps them to the template's logical ids, so that
:func:`audit_table` and :func:`readable` print stable text that also points back at the
template; :func:`controls_table` sums the findings per control with the chapter 7 level each
evidences. :func:`is_allowed` answers "may this policy do that?" for identity policies, and
:func:`access_table` asks it for a list of requests.
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from hdb_mlops.cloud.controls import CONTROLS, LEVELS, Finding

if TYPE_CHECKING:
    from hdb_mlops.cloud.backends import CloudContext

#: Ids AWS and moto generate that no map names: replaced by their kind (``<igw id>``).
_GENERATED_ID = re.compile(r"\b(vpc|vpce|sg|rtb|subnet|igw|nat|eni|acl|fl|pl)-[0-9a-f]{8,17}\b")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _generated(text: str) -> bool:
    """Whether ``text`` holds an id the backend generated (a resource id or a key id)."""
    return bool(_GENERATED_ID.search(text) or _UUID.search(text))


def physical_names(ctx: CloudContext, stack: str) -> dict[str, str]:
    """Physical id (and ARN) -> logical id for the resources of CloudFormation stack ``stack``,
    plus its VPC's default security group; empty when there is no such stack."""
    from botocore.exceptions import ClientError

    try:
        resources = ctx.client("cloudformation").describe_stack_resources(StackName=stack)
    except ClientError:
        return {}
    names: dict[str, str] = {}
    for resource in resources["StackResources"]:
        physical, logical = resource.get("PhysicalResourceId"), resource["LogicalResourceId"]
        if not physical:
            continue
        names[physical] = logical
        if resource["ResourceType"] == "AWS::KMS::Key":
            arn = ctx.client("kms").describe_key(KeyId=physical)["KeyMetadata"]["Arn"]
            names[arn] = logical
        if resource["ResourceType"] == "AWS::EC2::VPC":
            groups = ctx.client("ec2").describe_security_groups(
                Filters=[
                    {"Name": "vpc-id", "Values": [physical]},
                    {"Name": "group-name", "Values": ["default"]},
                ]
            )["SecurityGroups"]
            for group in groups:
                names[group["GroupId"]] = f"{logical} default security group"
    return names


def readable(text: str, names: Mapping[str, str], *, generated_only: bool = False) -> str:
    """``text`` with the physical ids of ``names`` replaced by their logical ids (longest
    first, so that an ARN goes before the id inside it) and any other generated id by its
    kind (``<igw id>``). ``generated_only`` keeps the names that read the same on every run
    (buckets, roles) and writes ``<Vpc id>`` for the generated ones."""
    for physical in sorted(names, key=len, reverse=True):
        if generated_only and not _generated(physical):
            continue
        logical = names[physical]
        text = text.replace(physical, f"<{logical} id>" if generated_only else logical)
    text = _UUID.sub("<key id>", text)
    return _GENERATED_ID.sub(lambda m: f"<{m.group(1)} id>", text)


def outputs_table(outputs: Mapping[str, str], names: Mapping[str, str]) -> pd.DataFrame:
    """A stack's outputs, generated ids written as ``<LogicalId id>`` (:func:`readable`)."""
    rows = [(k, readable(v, names, generated_only=True)) for k, v in outputs.items()]
    return pd.DataFrame(rows, columns=["output", "value"]).set_index("output")


def audit_table(
    findings: Iterable[Finding], names: Mapping[str, str], *, fix: bool = False
) -> pd.DataFrame:
    """The audit's findings as a table in a stable order (control, then resource), ids
    replaced by the template's logical ids (:func:`readable`); ``fix`` adds the fix."""
    rows = []
    for f in findings:
        row = {
            "control": f.control,
            "level": f.level,
            "resource": readable(f.resource, names),
            "status": "pass" if f.passed else "FAIL",
            "finding": readable(f.finding, names),
        }
        if fix:
            row["fix"] = f.fix
        rows.append(row)
    columns = ["control", "level", "resource", "status", "finding"] + (["fix"] if fix else [])
    frame = pd.DataFrame(rows, columns=columns).sort_values(["control", "resource"])
    return frame.set_index(["control", "resource"])


def controls_table(findings: Iterable[Finding]) -> pd.DataFrame:
    """One row per control: its level and title, how many resources it checked, passed and
    failed; in level order (Basic first), then by id."""
    found = list(findings)
    rows = []
    for control in sorted(CONTROLS.values(), key=lambda c: (LEVELS.index(c.level), c.id)):
        mine = [f for f in found if f.control == control.id]
        failed = sum(not f.passed for f in mine)
        rows.append(
            {
                "control": control.id,
                "level": control.level,
                "title": control.title,
                "checked": len(mine),
                "failed": failed,
                "status": "FAIL" if failed else ("pass" if mine else "not checked"),
            }
        )
    return pd.DataFrame(rows).set_index("control")


def _document(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return json.loads(urllib.parse.unquote(str(value)))


def role_policies(ctx: CloudContext, role: str) -> dict[str, dict[str, Any]]:
    """The policy documents of IAM role ``role`` in the account: ``inline NAME`` and
    ``managed NAME`` -> document."""
    iam = ctx.client("iam")
    documents = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        documents[f"inline {name}"] = _document(document)
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        arn = attached["PolicyArn"]
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
        documents[f"managed {attached['PolicyName']}"] = _document(document["Document"])
    return documents


def _listed(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _matches(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    if "NotAction" in statement:
        action_ok = not any(
            fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(statement["NotAction"])
        )
    else:
        action_ok = any(
            fnmatch.fnmatchcase(action.lower(), a.lower())
            for a in _listed(statement.get("Action", []))
        )
    if "NotResource" in statement:
        resource_ok = not any(
            fnmatch.fnmatchcase(resource, r) for r in _listed(statement["NotResource"])
        )
    else:
        resource_ok = any(
            fnmatch.fnmatchcase(resource, r) for r in _listed(statement.get("Resource", []))
        )
    return action_ok and resource_ok


def is_allowed(
    documents: Mapping[str, Any] | Iterable[Mapping[str, Any]], action: str, resource: str
) -> bool:
    """Whether identity policy ``documents`` (one document or several) allow ``action`` on
    ``resource``: some Allow matches and no Deny without a condition does. Wildcards ``*``
    and ``?`` match as IAM matches them; an Allow with a condition counts as allowed (this
    answers "could the role do it?"). Not a full IAM evaluator: no policy variables,
    permission boundaries, resource policies or SCPs."""
    if isinstance(documents, Mapping):
        documents = [documents]
    statements = [
        s
        for d in documents
        for s in (
            d.get("Statement") if isinstance(d.get("Statement"), list) else [d.get("Statement", {})]
        )
    ]
    allowed = any(s.get("Effect") == "Allow" and _matches(s, action, resource) for s in statements)
    denied = any(
        s.get("Effect") == "Deny" and "Condition" not in s and _matches(s, action, resource)
        for s in statements
    )
    return allowed and not denied


def access_table(
    documents: Iterable[Mapping[str, Any]], requests: Mapping[str, tuple[str, str]]
) -> pd.DataFrame:
    """One row per request (label -> (action, resource)): the action and whether
    ``documents`` allow it."""
    documents = list(documents)
    rows = [
        {"request": label, "action": action, "allowed": is_allowed(documents, action, resource)}
        for label, (action, resource) in requests.items()
    ]
    return pd.DataFrame(rows).set_index("request")
