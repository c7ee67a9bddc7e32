"""The live audit: what the ACCOUNT holds for a prefix, checked against the Stage 2 controls.

Unlike ``hdb-mlops infra lint`` (the template), this reads the deployed resources with
boto3, so a change made after the deployment (a console click, a script) shows up. What it
inspects for ``PREFIX``:

- every bucket named ``PREFIX-...``: default encryption, bucket key, versioning, public
  access block, bucket policy (nothing public, a TLS-only deny), access logging. The
  access-log bucket (a logging target of the others, or ``PREFIX-logs-...``) is held to
  SSE-S3, the only default encryption log delivery supports, and is not itself logged;
- the KMS keys those buckets use and those behind ``alias/PREFIX-...``: rotation, key policy;
- every IAM role named ``PREFIX-...``: its inline and attached managed policies;
- the VPC tagged ``Name=PREFIX-vpc``: internet gateway and routes, the S3 gateway endpoint,
  the interface endpoints, its security groups' ingress.

The controls and their chapter 7 levels are in :mod:`hdb_mlops.cloud.controls`.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from hdb_mlops.cloud.controls import Finding, finding

if TYPE_CHECKING:
    from hdb_mlops.cloud.backends import CloudContext

#: The interface endpoints the private subnets need (service name suffixes).
INTERFACE_SERVICES = ("sagemaker.api", "sagemaker.runtime", "sts", "logs")
#: Condition keys that make a Principal * statement not public.
_RESTRICTING_KEYS = {
    "aws:sourcearn",
    "aws:sourceaccount",
    "aws:sourceowner",
    "aws:sourcevpce",
    "aws:sourcevpc",
    "aws:principalorgid",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:userid",
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class UnreadablePolicy(ValueError):
    """A policy document that is not JSON."""


def _document(value: Any) -> dict[str, Any]:
    """A policy document from boto3 (a dict, JSON text, or URL-encoded JSON text)."""
    if isinstance(value, dict):
        return value
    text = str(value)
    if text.lstrip()[:3].upper() == "%7B":
        text = urllib.parse.unquote(text)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadablePolicy(f"not JSON: {text[:40]}...") from exc
    if not isinstance(document, dict):
        raise UnreadablePolicy(f"not a JSON object: {text[:40]}")
    return document


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, dict)]


def _is_everyone(principal: Any) -> bool:
    if principal == "*":
        return True
    return isinstance(principal, dict) and "*" in _as_list(principal.get("AWS"))


def _condition_keys(statement: dict[str, Any]) -> set[str]:
    keys = set()
    for block in (statement.get("Condition") or {}).values():
        if isinstance(block, dict):
            keys |= {str(k).lower() for k in block}
    return keys


def is_public_statement(statement: dict[str, Any]) -> bool:
    """An Allow for everyone without a condition that restricts who."""
    return (
        statement.get("Effect") == "Allow"
        and _is_everyone(statement.get("Principal"))
        and not (_condition_keys(statement) & _RESTRICTING_KEYS)
    )


def is_tls_deny(statement: dict[str, Any], bucket_arn: str) -> bool:
    """A Deny of every S3 action for everyone on the bucket and its objects without TLS."""
    condition = statement.get("Condition") or {}
    secure = None
    for operator in ("Bool", "BoolIfExists"):
        for key, value in (condition.get(operator) or {}).items():
            if key.lower() == "aws:securetransport":
                secure = value
    actions = {str(a).lower() for a in _as_list(statement.get("Action"))}
    resources = set(_as_list(statement.get("Resource")))
    return (
        statement.get("Effect") == "Deny"
        and _is_everyone(statement.get("Principal"))
        and bool(actions & {"s3:*", "*"})
        and str(_as_list(secure)[0] if secure is not None else "").lower() == "false"
        and (bucket_arn in resources or "*" in resources)
        and (f"{bucket_arn}/*" in resources or "*" in resources)
    )


def _error_code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _call(method: Any, missing: tuple[str, ...], **kwargs: Any) -> dict[str, Any] | None:
    """``method(**kwargs)``, or None when it fails with one of the ``missing`` error codes."""
    from botocore.exceptions import ClientError

    try:
        return method(**kwargs)
    except ClientError as exc:
        if _error_code(exc) in missing:
            return None
        raise


# ----------------------------------------------------------------------------- S3


def _prefixed_buckets(s3: Any, prefix: str) -> list[str]:
    return sorted(
        b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-")
    )


def _encryption_findings(
    kms: Any, bucket: str, is_log_bucket: bool, rules: list[dict[str, Any]], keys: set[str]
) -> list[Finding]:
    """S2-S3-01 and, for SSE-KMS, S2-S3-02."""
    if not rules:
        return [finding("S2-S3-01", bucket, False, "no default encryption")]
    rule = rules[0]
    default = rule.get("ApplyServerSideEncryptionByDefault", {})
    algorithm = default.get("SSEAlgorithm", "")
    if is_log_bucket:
        ok = algorithm == "AES256"
        detail = (
            "SSE-S3 (AES256): what S3 server access log delivery requires of its target"
            if ok
            else f"{algorithm}: S3 server access log delivery needs SSE-S3 (AES256) here"
        )
        return [finding("S2-S3-01", bucket, ok, detail)]
    if not algorithm.startswith("aws:kms"):
        return [finding("S2-S3-01", bucket, False, f"{algorithm or 'no'} encryption, not SSE-KMS")]
    key_id = default.get("KMSMasterKeyID")
    if not key_id:
        found = finding("S2-S3-01", bucket, False, "SSE-KMS with the AWS-managed aws/s3 key")
    else:
        metadata = kms.describe_key(KeyId=key_id)["KeyMetadata"]
        ok = metadata.get("KeyManager") == "CUSTOMER"
        keys.add(metadata["Arn"])
        detail = (
            f"SSE-KMS with {'customer-managed' if ok else 'AWS-managed'} key {metadata['KeyId']}"
        )
        found = finding("S2-S3-01", bucket, ok, detail)
    key_on = bool(rule.get("BucketKeyEnabled"))
    return [
        found,
        finding("S2-S3-02", bucket, key_on, "bucket key on" if key_on else "bucket key off"),
    ]


def _policy_findings(s3: Any, bucket: str, partition: str) -> list[Finding]:
    """S2-S3-05 and S2-S3-06."""
    response = _call(s3.get_bucket_policy, ("NoSuchBucketPolicy",), Bucket=bucket)
    if response is None:
        return [
            finding("S2-S3-05", bucket, True, "no bucket policy: nothing granted to everyone"),
            finding("S2-S3-06", bucket, False, "no bucket policy, so no TLS-only deny"),
        ]
    statements = _statements(_document(response["Policy"]))
    public = [s.get("Sid", "(no Sid)") for s in statements if is_public_statement(s)]
    arn = f"arn:{partition}:s3:::{bucket}"
    tls = [s.get("Sid", "(no Sid)") for s in statements if is_tls_deny(s, arn)]
    return [
        finding(
            "S2-S3-05",
            bucket,
            not public,
            f"public statement(s): {', '.join(public)}" if public else "nothing public",
        ),
        finding(
            "S2-S3-06",
            bucket,
            bool(tls),
            f"TLS-only deny: {', '.join(tls)}" if tls else "no deny on aws:SecureTransport false",
        ),
    ]


def _bucket_findings(
    s3: Any, kms: Any, bucket: str, is_log_bucket: bool, partition: str, keys: set[str]
) -> list[Finding]:
    """Every S3 control on one bucket."""
    encryption = _call(
        s3.get_bucket_encryption, ("ServerSideEncryptionConfigurationNotFoundError",), Bucket=bucket
    )
    rules = (encryption or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    found = _encryption_findings(kms, bucket, is_log_bucket, rules, keys)
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status", "never enabled")
    found.append(finding("S2-S3-03", bucket, status == "Enabled", f"versioning {status}"))
    block = _call(
        s3.get_public_access_block, ("NoSuchPublicAccessBlockConfiguration",), Bucket=bucket
    )
    flags = (block or {}).get("PublicAccessBlockConfiguration", {})
    names = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    off = [n for n in names if not flags.get(n)]
    found.append(
        finding("S2-S3-04", bucket, not off, f"off: {', '.join(off)}" if off else "all four on")
    )
    found += _policy_findings(s3, bucket, partition)
    if not is_log_bucket:
        target = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled", {}).get("TargetBucket")
        found.append(
            finding(
                "S2-S3-07", bucket, bool(target), f"logs to {target}" if target else "logging off"
            )
        )
    return found


# ----------------------------------------------------------------------------- KMS, IAM


def _key_findings(kms: Any, prefix: str, keys: set[str]) -> list[Finding]:
    """S2-KMS-01 and S2-KMS-02 for the buckets' keys and the prefix's aliased keys."""
    for alias in kms.list_aliases()["Aliases"]:
        if alias["AliasName"].startswith(f"alias/{prefix}-") and alias.get("TargetKeyId"):
            keys.add(kms.describe_key(KeyId=alias["TargetKeyId"])["KeyMetadata"]["Arn"])
    found = []
    for arn in sorted(keys):
        rotation = kms.get_key_rotation_status(KeyId=arn)["KeyRotationEnabled"]
        found.append(finding("S2-KMS-01", arn, rotation, f"rotation {'on' if rotation else 'off'}"))
        policy = _document(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
        public = [s.get("Sid", "(no Sid)") for s in _statements(policy) if is_public_statement(s)]
        detail = (
            f"wildcard principal in: {', '.join(public)}" if public else "no wildcard principal"
        )
        found.append(finding("S2-KMS-02", arn, not public, detail))
    return found


def _allows_star_on_star(document: dict[str, Any]) -> bool:
    for statement in _statements(document):
        actions = {str(a) for a in _as_list(statement.get("Action"))}
        resources = {str(r) for r in _as_list(statement.get("Resource"))}
        if statement.get("Effect") == "Allow" and actions & {"*", "*:*"} and "*" in resources:
            return True
    return False


def _role_findings(iam: Any, prefix: str) -> list[Finding]:
    """S2-IAM-01 for every role named ``PREFIX-...``."""
    found = []
    roles = [
        role["RoleName"]
        for page in iam.get_paginator("list_roles").paginate()
        for role in page["Roles"]
        if role["RoleName"].startswith(f"{prefix}-")
    ]
    for role in sorted(roles):
        offending = []
        documents = {}
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            policy = iam.get_role_policy(RoleName=role, PolicyName=name)
            documents[f"inline {name}"] = policy["PolicyDocument"]
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            arn = attached["PolicyArn"]
            version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
            policy = iam.get_policy_version(PolicyArn=arn, VersionId=version)
            documents[f"managed {attached['PolicyName']}"] = policy["PolicyVersion"]["Document"]
        for label, document in documents.items():
            try:
                if _allows_star_on_star(_document(document)):
                    offending.append(label)
            except UnreadablePolicy as exc:
                offending.append(f"{label} (unreadable, {exc})")
        detail = f"* on * (or unreadable) in: {', '.join(offending)}" if offending else "no * on *"
        found.append(finding("S2-IAM-01", role, not offending, detail))
    return found


# ----------------------------------------------------------------------------- VPC


def _vpc_findings(ec2: Any, prefix: str, region: str) -> list[Finding]:
    """S2-VPC-01 to S2-VPC-04 for the VPC tagged ``Name=PREFIX-vpc``."""
    name = f"{prefix}-vpc"
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [name]}])["Vpcs"]
    if not vpcs:
        missing = f"no VPC tagged Name={name}"
        return [finding(c, name, False, missing) for c in ("S2-VPC-01", "S2-VPC-02", "S2-VPC-03")]
    vpc = vpcs[0]["VpcId"]
    where = [{"Name": "vpc-id", "Values": [vpc]}]
    gateways = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}]
    )["InternetGateways"]
    open_routes = [
        f"{table['RouteTableId']} -> {route.get('GatewayId') or route.get('NatGatewayId') or '?'}"
        for table in ec2.describe_route_tables(Filters=where)["RouteTables"]
        for route in table.get("Routes", [])
        if route.get("DestinationCidrBlock") == "0.0.0.0/0"
        or route.get("DestinationIpv6CidrBlock") == "::/0"
    ]
    problems = [g["InternetGatewayId"] for g in gateways] + open_routes
    found = [
        finding(
            "S2-VPC-01",
            vpc,
            not problems,
            f"internet path: {', '.join(problems)}" if problems else "no internet gateway or route",
        )
    ]
    endpoints = [
        e
        for e in ec2.describe_vpc_endpoints(Filters=where)["VpcEndpoints"]
        if e.get("State", "").lower() == "available"
    ]

    def endpoint(service: str, kind: str) -> dict[str, Any] | None:
        full = f"com.amazonaws.{region}.{service}"
        return next(
            (e for e in endpoints if e["ServiceName"] == full and e["VpcEndpointType"] == kind),
            None,
        )

    s3 = endpoint("s3", "Gateway")
    ok = bool(s3 and s3.get("RouteTableIds"))
    detail = (
        f"{s3['VpcEndpointId']} on {', '.join(s3.get('RouteTableIds') or ['no route table'])}"
        if s3
        else "no S3 gateway endpoint"
    )
    found.append(finding("S2-VPC-02", vpc, ok, detail))
    for service in INTERFACE_SERVICES:
        interface = endpoint(service, "Interface")
        ok = bool(interface and interface.get("PrivateDnsEnabled"))
        if interface:
            detail = f"{interface['VpcEndpointId']}, private DNS {'on' if ok else 'off'}"
        else:
            detail = "no interface endpoint"
        found.append(finding("S2-VPC-03", f"com.amazonaws.{region}.{service}", ok, detail))
    for group in ec2.describe_security_groups(Filters=where)["SecurityGroups"]:
        wide = [
            f"{p.get('IpProtocol')}:{p.get('FromPort', 'all')}"
            for p in group.get("IpPermissions", [])
            if any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges", []))
            or any(r.get("CidrIpv6") == "::/0" for r in p.get("Ipv6Ranges", []))
        ]
        detail = f"open to the internet: {', '.join(wide)}" if wide else "no ingress from anywhere"
        found.append(finding("S2-VPC-04", group["GroupId"], not wide, detail))
    return found


def audit(ctx: CloudContext, prefix: str | None = None) -> list[Finding]:
    """Every control's findings for ``prefix`` (the context's by default), from the account.

    Raises ``LookupError`` when the account has nothing with the prefix (no bucket, role or
    VPC): there is nothing to audit.
    """
    prefix = prefix or ctx.prefix
    s3, kms, iam, ec2 = (ctx.client(name) for name in ("s3", "kms", "iam", "ec2"))
    partition = "aws-cn" if ctx.region.startswith("cn-") else "aws"
    buckets = _prefixed_buckets(s3, prefix)
    targets = set()
    for bucket in buckets:
        target = s3.get_bucket_logging(Bucket=bucket).get("LoggingEnabled", {}).get("TargetBucket")
        if target:
            targets.add(target)
    keys: set[str] = set()
    found: list[Finding] = []
    for bucket in buckets:
        is_log = bucket in targets or bucket.startswith(f"{prefix}-logs-")
        found += _bucket_findings(s3, kms, bucket, is_log, partition, keys)
    found += _key_findings(kms, prefix, keys)
    found += _role_findings(iam, prefix)
    vpc = _vpc_findings(ec2, prefix, ctx.region)
    if not found and all(f.finding.startswith("no VPC") for f in vpc):
        raise LookupError(
            f"nothing with the prefix {prefix!r} in this account: no bucket, role or VPC "
            "(run `hdb-mlops infra deploy` first, or check --prefix)"
        )
    return found + vpc
