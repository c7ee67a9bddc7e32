"""Removing what moto's CloudFormation leaves behind when the Stage 2 stack is deleted.

Measured with moto 5.2.5 (see :data:`hdb_mlops.cloud.fallback.MOTO_GAPS`): its stack
deletion does not delete VPC endpoints, flow logs, route tables or managed policies, so the
VPC deletion fails with DependencyViolation (and the stack is gone all the same); and the
resources :func:`hdb_mlops.cloud.fallback.apply` created (the OIDC provider, the policy
attachments) are not the stack's. :func:`before_delete` removes what blocks the VPC
deletion, :func:`after_delete` sweeps what is left, by physical id where the stack was still
there and by the names the template gives otherwise, so a second run finds nothing.
Real CloudFormation needs none of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hdb_mlops.cloud.template import Resolver, resources_of_type

if TYPE_CHECKING:
    from hdb_mlops.cloud.backends import CloudContext


def _ids(template: Mapping[str, Any], physical: Mapping[str, str], kind: str) -> list[str]:
    return [physical[k] for k in resources_of_type(template, kind) if k in physical]


def before_delete(
    ctx: CloudContext, template: Mapping[str, Any], physical: Mapping[str, str]
) -> list[str]:
    """Delete the stack's VPC endpoints and flow logs (moto's deletion skips them and then
    cannot delete the VPC) and detach the policies the fallback attached to its roles (moto
    cannot delete a role with attachments); what was removed."""
    ec2, iam = ctx.client("ec2"), ctx.client("iam")
    removed = []
    for role in _ids(template, physical, "AWS::IAM::Role"):
        for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=policy["PolicyArn"])
            removed.append(f"attachment {policy['PolicyName']} -> {role}")
    endpoints = _ids(template, physical, "AWS::EC2::VPCEndpoint")
    if endpoints:
        ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
        removed.append(f"{len(endpoints)} VPC endpoints")
    flow_logs = _ids(template, physical, "AWS::EC2::FlowLog")
    if flow_logs:
        ec2.delete_flow_logs(FlowLogIds=flow_logs)
        removed.append(f"{len(flow_logs)} flow log(s)")
    return removed


def _stack_vpcs(ec2: Any, stack_name: str, physical_ids: list[str]) -> list[str]:
    """The stack's VPCs still there: by physical id, else by CloudFormation's stack tag."""
    found = {
        v["VpcId"]
        for v in ec2.describe_vpcs(
            Filters=[{"Name": "tag:aws:cloudformation:stack-name", "Values": [stack_name]}]
        )["Vpcs"]
    }
    if physical_ids:
        existing = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
        found |= set(physical_ids) & existing
    return sorted(found)


def _delete_vpc(ec2: Any, vpc_id: str) -> None:
    """Delete a VPC and what moto left in it (endpoints, flow logs, route tables, subnets,
    security groups)."""
    where = [{"Name": "vpc-id", "Values": [vpc_id]}]
    endpoints = [
        e["VpcEndpointId"]
        for e in ec2.describe_vpc_endpoints(Filters=where)["VpcEndpoints"]
        if e.get("State", "").lower() not in ("deleted", "deleting")
    ]
    if endpoints:
        ec2.delete_vpc_endpoints(VpcEndpointIds=endpoints)
    flow_logs = [
        f["FlowLogId"]
        for f in ec2.describe_flow_logs()["FlowLogs"]
        if f.get("ResourceId") == vpc_id
    ]
    if flow_logs:
        ec2.delete_flow_logs(FlowLogIds=flow_logs)
    for table in ec2.describe_route_tables(Filters=where)["RouteTables"]:
        if any(a.get("Main") for a in table.get("Associations", [])):
            continue
        for association in table.get("Associations", []):
            ec2.disassociate_route_table(AssociationId=association["RouteTableAssociationId"])
        ec2.delete_route_table(RouteTableId=table["RouteTableId"])
    for subnet in ec2.describe_subnets(Filters=where)["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for group in ec2.describe_security_groups(Filters=where)["SecurityGroups"]:
        if group["GroupName"] != "default":
            ec2.delete_security_group(GroupId=group["GroupId"])
    ec2.delete_vpc(VpcId=vpc_id)


def _delete_managed_policy(iam: Any, arn: str) -> bool:
    """Detach the policy from every role, user and group, delete its old versions and it."""
    from botocore.exceptions import ClientError

    try:
        iam.get_policy(PolicyArn=arn)
    except ClientError:
        return False
    entities = iam.list_entities_for_policy(PolicyArn=arn)
    for role in entities.get("PolicyRoles", []):
        iam.detach_role_policy(RoleName=role["RoleName"], PolicyArn=arn)
    for user in entities.get("PolicyUsers", []):
        iam.detach_user_policy(UserName=user["UserName"], PolicyArn=arn)
    for group in entities.get("PolicyGroups", []):
        iam.detach_group_policy(GroupName=group["GroupName"], PolicyArn=arn)
    for version in iam.list_policy_versions(PolicyArn=arn)["Versions"]:
        if not version["IsDefaultVersion"]:
            iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
    iam.delete_policy(PolicyArn=arn)
    return True


def _delete_role(iam: Any, name: str) -> bool:
    """Delete a role with its inline policies and attachments; False when there is none."""
    from botocore.exceptions import ClientError

    try:
        iam.get_role(RoleName=name)
    except ClientError:
        return False
    for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
    iam.delete_role(RoleName=name)
    return True


def _delete_oidc_provider(iam: Any, url: str, prefix: str) -> bool:
    """Delete the OIDC provider for ``url`` if this prefix's fallback made it (its tag)."""
    host = url.removeprefix("https://")
    for provider in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
        arn = provider["Arn"]
        if not arn.endswith(f":oidc-provider/{host}"):
            continue
        tags = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn).get("Tags", [])
        if {"Key": "Name", "Value": f"{prefix}-gitlab-oidc"} in tags:
            iam.delete_open_id_connect_provider(OpenIDConnectProviderArn=arn)
            return True
    return False


def _delete_keys(kms: Any, aliases: set[str], key_ids: list[str]) -> list[str]:
    """Delete the aliases and schedule the keys' deletion (7 days, as CloudFormation does)."""
    from botocore.exceptions import ClientError

    removed = []
    targets = set(key_ids)
    for alias in kms.list_aliases()["Aliases"]:
        if alias["AliasName"] in aliases:
            if alias.get("TargetKeyId"):
                targets.add(alias["TargetKeyId"])
            kms.delete_alias(AliasName=alias["AliasName"])
            removed.append(f"KMS alias {alias['AliasName']}")
    for key_id in sorted(targets):
        try:
            state = kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]
        except ClientError:
            continue
        if state != "PendingDeletion":
            kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
            removed.append(f"KMS key {key_id} (deletion in 7 days)")
    return removed


def after_delete(
    ctx: CloudContext,
    template: Mapping[str, Any],
    resolver: Resolver,
    physical: Mapping[str, str],
    prefix: str,
) -> list[str]:
    """Sweep what moto left of the stack (``physical``: its ids before the deletion, empty
    when there was no stack; ``resolver``: parameters and pseudo parameters only)."""
    ec2, iam, kms = ctx.client("ec2"), ctx.client("iam"), ctx.client("kms")
    resources = template["Resources"]
    removed = []
    stack_name = resolver.pseudo["AWS::StackName"]
    for vpc_id in _stack_vpcs(ec2, stack_name, _ids(template, physical, "AWS::EC2::VPC")):
        _delete_vpc(ec2, vpc_id)
        removed.append(f"VPC {vpc_id}")

    def names(kind: str, key: str) -> list[str]:
        found = [
            resolver.resolve(resources[k]["Properties"][key])
            for k in resources_of_type(template, kind)
            if key in resources[k].get("Properties", {})
        ]
        return found + _ids(template, physical, kind)

    for role in sorted(set(names("AWS::IAM::Role", "RoleName"))):
        if _delete_role(iam, role):
            removed.append(f"IAM role {role}")
    account, partition = resolver.pseudo["AWS::AccountId"], resolver.pseudo["AWS::Partition"]
    policies = {
        f"arn:{partition}:iam::{account}:policy/{n}"
        for n in names("AWS::IAM::ManagedPolicy", "ManagedPolicyName")
        if not n.startswith("arn:")
    }
    policies |= set(_ids(template, physical, "AWS::IAM::ManagedPolicy"))
    for arn in sorted(policies):
        if _delete_managed_policy(iam, arn):
            removed.append(f"IAM policy {arn.rsplit('/', 1)[-1]}")
    for url in names("AWS::IAM::OIDCProvider", "Url"):
        if not url.startswith("arn:") and _delete_oidc_provider(iam, url, prefix):
            removed.append(f"OIDC provider {url}")
    aliases = {a for a in names("AWS::KMS::Alias", "AliasName") if a.startswith("alias/")}
    removed += _delete_keys(kms, aliases, _ids(template, physical, "AWS::KMS::Key"))
    return removed
