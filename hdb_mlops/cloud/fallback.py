"""What moto's CloudFormation cannot do with ``infra/stage2.yaml``, and doing it with boto3.

moto records rather than simulates (DESIGN.md §6), and its CloudFormation implements only a
part of each resource type. Measured with moto 5.2.5 on this template:

========================================  ===================================================
Template part                             What moto's CloudFormation does with it
========================================  ===================================================
``AWS::S3::BucketPolicy``                 not implemented: skipped with a warning
``AWS::IAM::OIDCProvider``                not implemented: skipped with a warning
``AWS::S3::Bucket`` properties            only BucketName, BucketEncryption (without
                                          BucketKeyEnabled) and Tags are applied;
                                          VersioningConfiguration,
                                          PublicAccessBlockConfiguration,
                                          LoggingConfiguration, OwnershipControls and
                                          LifecycleConfiguration are ignored
``AWS::KMS::Key`` Tags                    passed to KMS in CloudFormation's Key/Value form,
                                          which KMS's tagger reads as TagKey/TagValue:
                                          HTTP 500
``AWS::KMS::Key`` KeyPolicy               stored as an object; DescribeKey then fails
                                          (HTTP 500) parsing it as JSON text
``Fn::GetAZs`` of ``Ref AWS::Region``     the Ref is not resolved: an invalid zone
``AWS::IAM::Role`` ManagedPolicyArns      ignored: the policy is not attached
``AWS::IAM::Role`` Policies               stored as Python repr text, not JSON: IAM's
                                          GetRolePolicy then returns an unreadable document
``AWS::EC2::SecurityGroup`` egress rules  ignored: the default allow-all egress stays
``AWS::EC2::VPC`` DNS attributes          EnableDnsSupport / EnableDnsHostnames ignored
Stack deletion                            VPC endpoints, flow logs, route tables and managed
                                          policies are left behind; the VPC deletion then
                                          fails (DependencyViolation)
========================================  ===================================================

So on the moto backend :func:`moto_template` sends an adapted copy of the template (the
resources and properties above taken out, the key policy as JSON text, the zones filled in),
and :func:`apply` then creates the missing parts with boto3, from the same template, the same
parameters and the stack's own physical ids, so that the account ends up with the same
controls as a real deployment (:mod:`hdb_mlops.cloud.teardown` removes, on deletion, what
moto's stack deletion leaves). On the aws backend none of this runs: CloudFormation does it
all. tests/test_infra_moto.py checks both halves: without :func:`apply` the audit fails
exactly on these controls; with it, every control passes.

Two more moto behaviours shaped the template rather than the fallback: its S3 crashes
(HTTP 500) turning on access logging when the target bucket's policy has a statement whose
Principal is the string ``"*"`` (so the template writes ``{"AWS": "*"}``, which IAM treats
the same), and it applies a bucket policy's Deny statements to object reads, writes and
deletes without reading their conditions. Since moto is served over plain HTTP, the TLS-only
deny then refuses every object request, which is what S3 would do over HTTP too: lift the
policy to put objects in a moto-deployed bucket (tests/test_infra_moto.py does).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hdb_mlops.cloud.template import Resolver, resources_of_type

if TYPE_CHECKING:
    from hdb_mlops.cloud.backends import CloudContext


@dataclass(frozen=True)
class Gap:
    """One part of the template moto's CloudFormation does not apply."""

    resource_type: str
    part: str
    effect: str


#: The gaps of moto 5.2.5's CloudFormation for this template (see the module docstring).
MOTO_GAPS = (
    Gap("AWS::S3::BucketPolicy", "(resource)", "not implemented"),
    Gap("AWS::IAM::OIDCProvider", "(resource)", "not implemented"),
    Gap("AWS::S3::Bucket", "VersioningConfiguration", "ignored"),
    Gap("AWS::S3::Bucket", "PublicAccessBlockConfiguration", "ignored"),
    Gap("AWS::S3::Bucket", "LoggingConfiguration", "ignored"),
    Gap("AWS::S3::Bucket", "OwnershipControls", "ignored"),
    Gap("AWS::S3::Bucket", "LifecycleConfiguration", "ignored"),
    Gap("AWS::S3::Bucket", "BucketEncryption.BucketKeyEnabled", "ignored"),
    Gap("AWS::KMS::Key", "Tags", "HTTP 500 (Key/Value read as TagKey/TagValue)"),
    Gap("AWS::KMS::Key", "KeyPolicy", "HTTP 500 on DescribeKey unless given as JSON text"),
    Gap("AWS::EC2::Subnet", "Fn::GetAZs of Ref AWS::Region", "the Ref is not resolved"),
    Gap("AWS::IAM::Role", "ManagedPolicyArns", "ignored"),
    Gap("AWS::IAM::Role", "Policies", "stored as Python repr text, not JSON"),
    Gap("AWS::EC2::SecurityGroup", "SecurityGroupEgress", "ignored (allow-all egress stays)"),
    Gap("AWS::EC2::VPC", "EnableDnsSupport, EnableDnsHostnames", "ignored"),
    Gap("AWS::EC2::VPCEndpoint", "(deletion)", "left behind by the stack deletion"),
    Gap("AWS::EC2::FlowLog", "(deletion)", "left behind by the stack deletion"),
    Gap("AWS::EC2::RouteTable", "(deletion)", "left behind: the VPC deletion then fails"),
    Gap("AWS::IAM::ManagedPolicy", "(deletion)", "left behind by the stack deletion"),
)
_MISSING_TYPES = {g.resource_type for g in MOTO_GAPS if g.part == "(resource)"}


def _fill_zones(value: Any, zones: list[str]) -> Any:
    """``value`` with every ``Fn::GetAZs`` replaced by ``zones``."""
    if isinstance(value, dict):
        if set(value) == {"Fn::GetAZs"}:
            return list(zones)
        return {k: _fill_zones(v, zones) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_zones(v, zones) for v in value]
    return value


def moto_template(template: dict[str, Any], resolver: Resolver) -> dict[str, Any]:
    """A copy of ``template`` that moto's CloudFormation can create (see :data:`MOTO_GAPS`).

    ``resolver`` needs the parameters, pseudo parameters and zones only.
    """
    adapted = copy.deepcopy(template)
    resources = adapted["Resources"]
    for logical in [k for k, r in resources.items() if r.get("Type") in _MISSING_TYPES]:
        del resources[logical]
    for logical in resources_of_type(adapted, "AWS::KMS::Key"):
        properties = resources[logical]["Properties"]
        properties.pop("Tags", None)
        properties["KeyPolicy"] = json.dumps(resolver.resolve(properties["KeyPolicy"]))
    adapted["Resources"] = _fill_zones(resources, resolver.zones)
    outputs = adapted.get("Outputs") or {}
    for name in [n for n, o in outputs.items() if _mentions(o, _missing(template))]:
        del outputs[name]
    return adapted


def _missing(template: dict[str, Any]) -> set[str]:
    return {k for k, r in template["Resources"].items() if r.get("Type") in _MISSING_TYPES}


def _mentions(value: Any, logical_ids: set[str]) -> bool:
    """Whether ``value`` refers to any of ``logical_ids``."""
    text = json.dumps(value)
    return any(f'"{name}"' in text or "${" + name in text for name in logical_ids)


# ----------------------------------------------------------------------------- applying


def _encryption(config: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's ``BucketEncryption`` as the S3 API's encryption configuration."""
    rules = []
    for rule in config.get("ServerSideEncryptionConfiguration", []):
        api_rule: dict[str, Any] = {
            "ApplyServerSideEncryptionByDefault": dict(rule["ServerSideEncryptionByDefault"]),
        }
        if "BucketKeyEnabled" in rule:
            api_rule["BucketKeyEnabled"] = bool(rule["BucketKeyEnabled"])
        rules.append(api_rule)
    return {"Rules": rules}


def _lifecycle(config: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's ``LifecycleConfiguration`` (the parts the template uses) for the API."""
    rules = []
    for rule in config.get("Rules", []):
        api_rule: dict[str, Any] = {
            "ID": rule.get("Id", "rule"),
            "Status": rule["Status"],
            "Filter": {"Prefix": rule.get("Prefix", "")},
        }
        if "ExpirationInDays" in rule:
            api_rule["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
        noncurrent = rule.get("NoncurrentVersionExpiration")
        if noncurrent:
            api_rule["NoncurrentVersionExpiration"] = {
                "NoncurrentDays": int(noncurrent["NoncurrentDays"])
            }
        rules.append(api_rule)
    return {"Rules": rules}


def _apply_bucket(s3: Any, name: str, properties: dict[str, Any]) -> list[str]:
    """Apply the bucket properties moto ignores, but logging; the API calls made."""
    done = []
    if "BucketEncryption" in properties:
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration=_encryption(properties["BucketEncryption"]),
        )
        done.append("PutBucketEncryption")
    if "VersioningConfiguration" in properties:
        status = properties["VersioningConfiguration"]["Status"]
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
        done.append("PutBucketVersioning")
    if "PublicAccessBlockConfiguration" in properties:
        flags = {k: bool(v) for k, v in properties["PublicAccessBlockConfiguration"].items()}
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=flags)
        done.append("PutPublicAccessBlock")
    if "OwnershipControls" in properties:
        s3.put_bucket_ownership_controls(
            Bucket=name, OwnershipControls={"Rules": properties["OwnershipControls"]["Rules"]}
        )
        done.append("PutBucketOwnershipControls")
    if "LifecycleConfiguration" in properties:
        s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration=_lifecycle(properties["LifecycleConfiguration"])
        )
        done.append("PutBucketLifecycleConfiguration")
    return done


def _apply_logging(s3: Any, name: str, properties: dict[str, Any]) -> list[str]:
    """Turn on access logging (after the bucket policies: S3 checks that the target
    bucket's policy lets the logging service write)."""
    if "LoggingConfiguration" not in properties:
        return []
    logging = properties["LoggingConfiguration"]
    enabled: dict[str, Any] = {
        "TargetBucket": logging["DestinationBucketName"],
        "TargetPrefix": logging.get("LogFilePrefix", ""),
    }
    if "TargetObjectKeyFormat" in logging:
        enabled["TargetObjectKeyFormat"] = logging["TargetObjectKeyFormat"]
    s3.put_bucket_logging(Bucket=name, BucketLoggingStatus={"LoggingEnabled": enabled})
    return ["PutBucketLogging"]


def _apply_network(ec2: Any, kind: str, physical_id: str, properties: dict[str, Any]) -> list[str]:
    """The VPC's DNS attributes, or the security group's egress rules (the default
    allow-all rule replaced by the template's)."""
    done = []
    if kind == "AWS::EC2::VPC":
        for name in ("EnableDnsSupport", "EnableDnsHostnames"):
            if name in properties:
                value = {"Value": bool(properties[name])}
                ec2.modify_vpc_attribute(VpcId=physical_id, **{name: value})
                done.append(f"ModifyVpcAttribute({name})")
    elif kind == "AWS::EC2::SecurityGroup" and "SecurityGroupEgress" in properties:
        group = ec2.describe_security_groups(GroupIds=[physical_id])["SecurityGroups"][0]
        if group["IpPermissionsEgress"]:
            ec2.revoke_security_group_egress(
                GroupId=physical_id, IpPermissions=group["IpPermissionsEgress"]
            )
            done.append("RevokeSecurityGroupEgress")
        permissions = []
        for rule in properties["SecurityGroupEgress"]:
            permission: dict[str, Any] = {
                "IpProtocol": str(rule["IpProtocol"]),
                "FromPort": int(rule["FromPort"]),
                "ToPort": int(rule["ToPort"]),
            }
            described = {"Description": rule["Description"]} if "Description" in rule else {}
            if "CidrIp" in rule:
                permission["IpRanges"] = [{"CidrIp": rule["CidrIp"], **described}]
            if "DestinationPrefixListId" in rule:
                prefix_list = {"PrefixListId": rule["DestinationPrefixListId"], **described}
                permission["PrefixListIds"] = [prefix_list]
            permissions.append(permission)
        ec2.authorize_security_group_egress(GroupId=physical_id, IpPermissions=permissions)
        done.append("AuthorizeSecurityGroupEgress")
    return done


def _apply_oidc_provider(iam: Any, properties: dict[str, Any]) -> list[str]:
    """Create the OIDC provider unless the account has one for that URL already."""
    host = properties["Url"].removeprefix("https://")
    for provider in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
        if provider["Arn"].endswith(f":oidc-provider/{host}"):
            return []
    iam.create_open_id_connect_provider(
        Url=properties["Url"],
        ClientIDList=properties.get("ClientIdList", []),
        ThumbprintList=properties.get("ThumbprintList", []),
        Tags=properties.get("Tags", []),
    )
    return ["CreateOpenIDConnectProvider"]


def apply(ctx: CloudContext, template: dict[str, Any], resolver: Resolver) -> list[str]:
    """Create with boto3 what moto's CloudFormation left out (see :data:`MOTO_GAPS`).

    ``resolver`` must know the stack's physical ids and attributes. Returns one line per
    resource: ``LogicalId: Call, Call``. Safe to run again (every call is a put).
    """
    resources = template["Resources"]
    s3, kms, iam, ec2 = (ctx.client(name) for name in ("s3", "kms", "iam", "ec2"))
    log: list[str] = []

    def note(logical: str, calls: list[str]) -> None:
        if calls:
            log.append(f"{logical}: {', '.join(calls)}")

    for logical in resources_of_type(template, "AWS::KMS::Key"):
        if not resolver.included(logical):
            continue
        tags = resolver.resolve(resources[logical]["Properties"].get("Tags", []))
        if tags:
            kms.tag_resource(
                KeyId=resolver.physical[logical],
                Tags=[{"TagKey": t["Key"], "TagValue": t["Value"]} for t in tags],
            )
            note(logical, ["TagResource"])
    buckets = {
        logical: resolver.resolve(resources[logical]["Properties"])
        for logical in resources_of_type(template, "AWS::S3::Bucket")
        if resolver.included(logical)
    }
    for logical, properties in buckets.items():
        note(logical, _apply_bucket(s3, resolver.physical[logical], properties))
    for logical in resources_of_type(template, "AWS::S3::BucketPolicy"):
        if resolver.included(logical):
            properties = resolver.resolve(resources[logical]["Properties"])
            s3.put_bucket_policy(
                Bucket=properties["Bucket"], Policy=json.dumps(properties["PolicyDocument"])
            )
            note(logical, ["PutBucketPolicy"])
    for logical, properties in buckets.items():
        note(logical, _apply_logging(s3, resolver.physical[logical], properties))
    for logical in resources_of_type(template, "AWS::IAM::Role"):
        if resolver.included(logical):
            properties = resolver.resolve(resources[logical]["Properties"])
            for policy in properties.get("Policies", []):
                iam.put_role_policy(
                    RoleName=resolver.physical[logical],
                    PolicyName=policy["PolicyName"],
                    PolicyDocument=json.dumps(policy["PolicyDocument"]),
                )
                note(logical, [f"PutRolePolicy({policy['PolicyName']})"])
            for arn in properties.get("ManagedPolicyArns", []):
                iam.attach_role_policy(RoleName=resolver.physical[logical], PolicyArn=arn)
                note(logical, [f"AttachRolePolicy({arn.rsplit('/', 1)[-1]})"])
    for kind in ("AWS::EC2::VPC", "AWS::EC2::SecurityGroup"):
        for logical in resources_of_type(template, kind):
            if resolver.included(logical):
                properties = resolver.resolve(resources[logical]["Properties"])
                note(logical, _apply_network(ec2, kind, resolver.physical[logical], properties))
    for logical in resources_of_type(template, "AWS::IAM::OIDCProvider"):
        if resolver.included(logical):
            properties = resolver.resolve(resources[logical]["Properties"])
            note(logical, _apply_oidc_provider(iam, properties))
    return log
