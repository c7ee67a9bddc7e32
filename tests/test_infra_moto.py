"""The Stage 2 stack on a real moto server: deploy, audit, destroy.

A clean deploy passes every control; each misconfiguration seeded with boto3 afterwards
makes the audit fail on exactly that control; destroy leaves nothing. moto records rather
than simulates, so this checks what the account holds (the audit's subject), not whether
AWS would enforce it.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")

from hdb_mlops.cli import main
from hdb_mlops.cloud.audit import audit
from hdb_mlops.cloud.backends import moto_server, open_backend
from hdb_mlops.cloud.controls import CONTROLS, evidenced_level, failed
from hdb_mlops.cloud.infra import deploy, destroy

# moto's CloudFormation warns about each resource type it skips (the fallback applies them)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:moto")

REGION = "ap-southeast-1"
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def moto_url():
    """A moto server on 127.0.0.1 (an ephemeral port) for this module."""
    with moto_server(fresh=True) as url:
        yield url


@pytest.fixture(scope="module")
def ctx(moto_url):
    with open_backend("moto", endpoint_url=moto_url, region=REGION) as context:
        yield context


@pytest.fixture(scope="module")
def clean(ctx):
    """A clean deployment (prefix clean-hdb) shared by the read-only tests."""
    return deploy(ctx, prefix="clean-hdb")


def _run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


def test_a_clean_deploy_passes_every_control(ctx, clean):
    assert clean.status == "CREATE_COMPLETE"
    assert clean.outputs["DataBucketName"] == f"clean-hdb-data-{ACCOUNT}-{REGION}"
    findings = audit(ctx, "clean-hdb")
    assert failed(findings) == []
    assert {f.control for f in findings} == set(CONTROLS)
    # 3 buckets (the log bucket: no bucket key, not logged), 1 key, 2 roles, the VPC with
    # 4 interface endpoints and 2 security groups (the endpoints' and the VPC's default)
    assert len(findings) == 7 + 7 + 5 + 2 + 2 + 1 + 1 + 4 + 2
    assert evidenced_level(findings) == "Advanced"


def test_the_fallback_is_what_makes_moto_hold_the_controls(ctx):
    """Without the boto3 fallback, the audit fails exactly where moto's CloudFormation
    falls short (hdb_mlops.cloud.fallback.MOTO_GAPS)."""
    deploy(ctx, prefix="gaps-hdb", apply_fallback=False)

    def short(resource: str) -> str:  # a bucket by its role (data, artifacts, logs)
        if resource.endswith(f"-{ACCOUNT}-{REGION}"):
            return resource.removeprefix("gaps-hdb-").split("-")[0]
        return resource

    failing = {(f.control, short(f.resource)) for f in failed(audit(ctx, "gaps-hdb"))}
    assert failing == {
        # versioning, public access block, TLS-only policy: on all three buckets
        *{
            (c, b)
            for c in ("S2-S3-03", "S2-S3-04", "S2-S3-06")
            for b in ("data", "artifacts", "logs")
        },
        # bucket key and access logging: on the two data buckets
        *{(c, b) for c in ("S2-S3-02", "S2-S3-07") for b in ("data", "artifacts")},
        # the deploy role's inline policy is stored as Python repr text: unreadable
        ("S2-IAM-01", "gaps-hdb-cicd-deploy"),
    }
    destroy(ctx, "gaps-hdb")


def test_the_cli_audit_exits_0_on_a_clean_deploy(moto_url, clean):
    status, out = _run_cli(
        ["infra", "audit", "--backend", "moto", "--endpoint-url", moto_url, "--prefix", "clean-hdb"]
    )
    assert status == 0
    assert "31 checks: 31 pass, 0 fail" in out
    assert "level evidenced: Advanced" in out and "FAIL" not in out


def test_the_cli_audit_json(moto_url, clean):
    status, out = _run_cli(
        [
            "infra",
            "audit",
            "--backend",
            "moto",
            "--endpoint-url",
            moto_url,
            "--prefix",
            "clean-hdb",
            "--json",
        ]
    )
    report = json.loads(out)
    assert status == 0 and report["failed"] == 0 and report["passed"] == 31
    assert {"control", "title", "resource", "status", "finding", "fix", "level"} <= set(
        report["findings"][0]
    )


def test_the_cli_deploy_audit_destroy_cycle(ctx, moto_url):
    """deploy -> break -> audit exits 1 naming the control -> destroy leaves nothing ->
    destroy again removes nothing."""
    base = ["--backend", "moto", "--endpoint-url", moto_url, "--prefix", "cycle-hdb"]
    status, out = _run_cli(["infra", "deploy", *base, "--param", "Environment=uat", "--json"])
    deployed = json.loads(out)
    assert status == 0 and deployed["parameters"]["Environment"] == "uat"
    assert any("PutBucketPolicy" in line for line in deployed["fallback"])

    ctx.client("s3").put_bucket_versioning(
        Bucket=deployed["outputs"]["DataBucketName"],
        VersioningConfiguration={"Status": "Suspended"},
    )
    status, out = _run_cli(["infra", "audit", *base])
    assert status == 1
    assert f"FAIL   S2-S3-03   Basic        {deployed['outputs']['DataBucketName']}" in out
    assert "fix S2-S3-03" in out and "level evidenced: none" in out

    status, out = _run_cli(["infra", "destroy", *base, "--json"])
    assert status == 0 and "stack cycle-hdb-stage2" in json.loads(out)["removed"]
    assert _leftovers(ctx, "cycle-hdb") == {}
    status, out = _run_cli(["infra", "destroy", *base, "--json"])
    assert status == 0 and json.loads(out)["removed"] == []


def test_deploy_refuses_a_parameter_outside_the_template(moto_url, capsys):
    status = main(
        [
            "infra",
            "deploy",
            "--backend",
            "moto",
            "--endpoint-url",
            moto_url,
            "--prefix",
            "param-hdb",
            "--param",
            "Environment=qa",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err == "error: template parameter Environment='qa': choose one of dev, uat, prod\n"


def test_the_cli_wants_an_endpoint_for_moto(capsys):
    assert main(["infra", "audit", "--backend", "moto"]) == 2
    assert "--backend moto needs --endpoint-url" in capsys.readouterr().err


def test_auditing_a_prefix_with_nothing_deployed_is_an_error(moto_url, capsys):
    status = main(
        ["infra", "audit", "--backend", "moto", "--endpoint-url", moto_url, "--prefix", "none-hdb"]
    )
    assert status == 2
    assert "nothing with the prefix 'none-hdb'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- destroy


def _leftovers(ctx, prefix: str) -> dict[str, list[str]]:
    """Whatever the account still holds of ``prefix`` (keys pending deletion excepted)."""
    s3, iam, ec2, kms, cf = (ctx.client(n) for n in ("s3", "iam", "ec2", "kms", "cloudformation"))
    found = {
        "buckets": [
            b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-")
        ],
        "roles": [
            r["RoleName"]
            for r in iam.list_roles()["Roles"]
            if r["RoleName"].startswith(f"{prefix}-")
        ],
        "policies": [
            p["PolicyName"]
            for p in iam.list_policies(Scope="Local")["Policies"]
            if p["PolicyName"].startswith(f"{prefix}-")
        ],
        "vpcs": [
            v["VpcId"]
            for v in ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [f"{prefix}-vpc"]}])[
                "Vpcs"
            ]
        ],
        "aliases": [
            a["AliasName"]
            for a in kms.list_aliases()["Aliases"]
            if a["AliasName"].startswith(f"alias/{prefix}-")
        ],
        "stacks": [
            s["StackName"]
            for s in cf.list_stacks()["StackSummaries"]
            if s["StackName"] == f"{prefix}-stage2" and s["StackStatus"] != "DELETE_COMPLETE"
        ],
    }
    live_keys = []
    for key in kms.list_keys()["Keys"]:
        metadata = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        tags = kms.list_resource_tags(KeyId=key["KeyId"]).get("Tags", [])
        ours = {"TagKey": "Name", "TagValue": f"{prefix}-data-key"} in tags
        if ours and metadata["KeyState"] != "PendingDeletion":
            live_keys.append(key["KeyId"])
    found["keys"] = live_keys
    return {kind: names for kind, names in found.items() if names}


def test_destroy_leaves_nothing_and_can_run_again(ctx):
    result = deploy(ctx, prefix="gone-hdb")
    s3 = ctx.client("s3")
    for bucket in (result.outputs["DataBucketName"], result.outputs["ArtifactBucketName"]):
        # moto is served over plain HTTP, so the TLS-only policy refuses object writes (its
        # S3 applies the deny without reading the condition): lift it for the writes
        policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
        s3.delete_bucket_policy(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="raw/a.csv", Body=b"month,town\n")
        s3.put_object(Bucket=bucket, Key="raw/a.csv", Body=b"month,town\n2024-01,BISHAN\n")
        s3.delete_object(Bucket=bucket, Key="raw/a.csv")  # a delete marker on top
        s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    assert set(_leftovers(ctx, "gone-hdb")) == {
        "buckets",
        "roles",
        "policies",
        "vpcs",
        "aliases",
        "stacks",
        "keys",
    }
    removed = destroy(ctx, "gone-hdb").removed
    assert "stack gone-hdb-stage2" in removed
    assert _leftovers(ctx, "gone-hdb") == {}
    vpc_id = result.outputs["VpcId"]
    assert (
        ctx.client("ec2").describe_vpc_endpoints(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "vpc-endpoint-state", "Values": ["available"]},
            ]
        )["VpcEndpoints"]
        == []
    )
    assert destroy(ctx, "gone-hdb").removed == []


# ----------------------------------------------------------------------------- misconfigurations


def _data_bucket(out):
    return out["DataBucketName"]


def _public_policy(ctx, out):
    # On AWS the public access block refuses this put; moto stores it. The audit reads the
    # policy either way (a policy from before the block, or after someone lifted it).
    s3 = ctx.client("s3")
    bucket = _data_bucket(out)
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    policy["Statement"].append(
        {
            "Sid": "Public",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/*",
        }
    )
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return "S2-S3-05", bucket


def _public_access_block_off(ctx, out):
    ctx.client("s3").delete_public_access_block(Bucket=_data_bucket(out))
    return "S2-S3-04", _data_bucket(out)


def _no_default_encryption(ctx, out):
    ctx.client("s3").delete_bucket_encryption(Bucket=_data_bucket(out))
    return "S2-S3-01", _data_bucket(out)


def _sse_s3_instead_of_kms(ctx, out):
    ctx.client("s3").put_bucket_encryption(
        Bucket=_data_bucket(out),
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    return "S2-S3-01", _data_bucket(out)


def _aws_managed_key(ctx, out):
    ctx.client("s3").put_bucket_encryption(
        Bucket=out["ArtifactBucketName"],
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    return "S2-S3-01", out["ArtifactBucketName"]


def _bucket_key_off(ctx, out):
    ctx.client("s3").put_bucket_encryption(
        Bucket=_data_bucket(out),
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": out["DataKeyArn"],
                    },
                    "BucketKeyEnabled": False,
                }
            ]
        },
    )
    return "S2-S3-02", _data_bucket(out)


def _no_tls_only_policy(ctx, out):
    ctx.client("s3").delete_bucket_policy(Bucket=_data_bucket(out))
    return "S2-S3-06", _data_bucket(out)


def _versioning_off(ctx, out):
    ctx.client("s3").put_bucket_versioning(
        Bucket=_data_bucket(out), VersioningConfiguration={"Status": "Suspended"}
    )
    return "S2-S3-03", _data_bucket(out)


def _access_logging_off(ctx, out):
    ctx.client("s3").put_bucket_logging(Bucket=out["ArtifactBucketName"], BucketLoggingStatus={})
    return "S2-S3-07", out["ArtifactBucketName"]


def _key_rotation_off(ctx, out):
    ctx.client("kms").disable_key_rotation(KeyId=out["DataKeyArn"])
    return "S2-KMS-01", out["DataKeyArn"]


def _wildcard_key_policy(ctx, out):
    kms = ctx.client("kms")
    policy = json.loads(kms.get_key_policy(KeyId=out["DataKeyArn"], PolicyName="default")["Policy"])
    policy["Statement"].append(
        {
            "Sid": "Anyone",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    kms.put_key_policy(KeyId=out["DataKeyArn"], PolicyName="default", Policy=json.dumps(policy))
    return "S2-KMS-02", out["DataKeyArn"]


def _wildcard_inline_policy(ctx, out):
    role = out["SageMakerExecutionRoleArn"].rsplit("/", 1)[1]
    ctx.client("iam").put_role_policy(
        RoleName=role,
        PolicyName="debugging",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    return "S2-IAM-01", role


def _wildcard_managed_policy(ctx, out):
    iam = ctx.client("iam")
    role = out["DeployRoleArn"].rsplit("/", 1)[1]
    arn = iam.create_policy(
        PolicyName=f"{role}-admin",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*:*", "Resource": ["*"]}],
            }
        ),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    return "S2-IAM-01", role


def _endpoint(ctx, out, service):
    ec2 = ctx.client("ec2")
    endpoints = ec2.describe_vpc_endpoints(
        Filters=[
            {"Name": "vpc-id", "Values": [out["VpcId"]]},
            {"Name": "service-name", "Values": [f"com.amazonaws.{REGION}.{service}"]},
        ]
    )["VpcEndpoints"]
    ec2.delete_vpc_endpoints(VpcEndpointIds=[e["VpcEndpointId"] for e in endpoints])


def _missing_sts_endpoint(ctx, out):
    _endpoint(ctx, out, "sts")
    return "S2-VPC-03", f"com.amazonaws.{REGION}.sts"


def _missing_s3_gateway_endpoint(ctx, out):
    _endpoint(ctx, out, "s3")
    return "S2-VPC-02", out["VpcId"]


def _internet_gateway(ctx, out):
    ec2 = ctx.client("ec2")
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=out["VpcId"])
    return "S2-VPC-01", out["VpcId"]


def _open_security_group(ctx, out):
    ctx.client("ec2").authorize_security_group_ingress(
        GroupId=out["SecurityGroupId"], IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    return "S2-VPC-04", out["SecurityGroupId"]


MISCONFIGURATIONS = {
    "public-bucket-policy": _public_policy,
    "public-access-block-off": _public_access_block_off,
    "no-default-encryption": _no_default_encryption,
    "sse-s3-instead-of-kms": _sse_s3_instead_of_kms,
    "aws-managed-kms-key": _aws_managed_key,
    "bucket-key-off": _bucket_key_off,
    "no-tls-only-policy": _no_tls_only_policy,
    "versioning-off": _versioning_off,
    "access-logging-off": _access_logging_off,
    "key-rotation-off": _key_rotation_off,
    "wildcard-key-policy": _wildcard_key_policy,
    "wildcard-inline-policy": _wildcard_inline_policy,
    "wildcard-managed-policy": _wildcard_managed_policy,
    "missing-sts-endpoint": _missing_sts_endpoint,
    "missing-s3-gateway-endpoint": _missing_s3_gateway_endpoint,
    "internet-gateway": _internet_gateway,
    "security-group-open-to-the-internet": _open_security_group,
}


@pytest.mark.parametrize("case", list(MISCONFIGURATIONS))
def test_each_misconfiguration_fails_exactly_its_control(ctx, case):
    prefix = f"m{list(MISCONFIGURATIONS).index(case):02d}-hdb"
    outputs = deploy(ctx, prefix=prefix).outputs  # as clean as clean-hdb's (the first test)
    control, resource = MISCONFIGURATIONS[case](ctx, outputs)
    failing = failed(audit(ctx, prefix))
    assert [(f.control, f.resource) for f in failing] == [(control, resource)]
    assert failing[0].fix == CONTROLS[control].fix
