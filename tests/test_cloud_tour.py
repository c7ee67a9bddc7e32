"""Chapter 4's helpers: the sourcing rule, the template tables, one checkov run on two
templates, stable names for generated ids, the audit tables and the IAM rule."""

from __future__ import annotations

import json

import pytest

from hdb_mlops.cloud import tour, tour_account
from hdb_mlops.cloud.controls import CONTROLS, finding
from hdb_mlops.cloud.fallback import MOTO_GAPS
from hdb_mlops.cloud.template import load_template
from hdb_mlops.course import sourcing


@pytest.fixture(scope="module")
def template():
    return load_template()


# ----------------------------------------------------------------------------- sourcing


@pytest.mark.parametrize(
    ("builds", "runs", "experiments", "expected"),
    [
        (True, True, True, "in-house"),
        (True, True, False, "in-house"),
        (False, False, False, "vendor-managed"),
        (False, True, False, "vendor-managed"),
        (True, False, True, "hybrid"),
        (True, False, False, "hybrid"),
        (False, False, True, "hybrid"),
    ],
)
def test_the_sourcing_rule(builds, runs, experiments, expected):
    option, reason = sourcing.sourcing(
        builds_models=builds, runs_platform=runs, needs_experimentation=experiments
    )
    assert option == expected and len(reason.split()) >= 5
    assert option in sourcing.sourcing_table().index


def test_the_before_you_begin_tables():
    assert list(sourcing.sourcing_table().index) == ["vendor-managed", "in-house", "hybrid"]
    assert list(sourcing.hosting_table().columns) == ["points to cloud", "points to on-premise"]
    assert sourcing.readiness_table()["kind"].isin(["people", "process", "technology"]).all()


# ----------------------------------------------------------------------------- the template


def test_render_writes_the_short_forms():
    assert tour.render({"Ref": "Vpc"}) == "!Ref Vpc"
    assert tour.render({"Fn::GetAtt": ["DataKey", "Arn"]}) == "!GetAtt DataKey.Arn"
    assert tour.render({"Fn::Sub": "${Prefix}-data"}) == "!Sub ${Prefix}-data"
    assert tour.render({"Fn::If": ["C", "a", {"Ref": "AWS::NoValue"}]}) == (
        "!If [C, a, !Ref AWS::NoValue]"
    )
    assert tour.render({"Fn::Select": [0, {"Fn::GetAZs": ""}]}) == "!Select [0, !GetAZs ]"
    assert tour.render({"A": True, "B": [1, "x"]}) == "{A: true, B: [1, x]}"


def test_resource_types_counts_and_lists_absent_types(template):
    table = tour.resource_types_table(template, expected=["AWS::EC2::InternetGateway"])
    assert table.loc["AWS::EC2::InternetGateway"].tolist() == [0, "-"]
    assert table.loc["AWS::S3::Bucket", "count"] == 3
    assert table["count"].sum() == len(template["Resources"])


def test_excerpts_come_from_the_template(template):
    for area, selections in tour.AREAS.items():
        assert len(tour.excerpt(template, area)) == len(selections)
    encryption = tour.excerpt(template, "encryption").reset_index()
    rotation = encryption[encryption["property"] == "EnableKeyRotation"]
    assert rotation["value"].tolist() == ["true"]
    data = encryption[(encryption["resource"] == "DataBucket")]
    assert "KMSMasterKeyID: !GetAtt DataKey.Arn" in data["value"].iloc[0]
    network = tour.excerpt(template, "network").reset_index()
    assert "SecurityGroupIngress[0].CidrIp" in network["property"].tolist()


def test_statements_table_shows_conditional_statements(template):
    document = template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]
    table = tour.statements_table(document)
    assert table.loc["DenyOutsideVpcEndpoint", "only if"] == "RestrictToVpce"
    assert table.loc["DenyInsecureTransport", "condition"] == "{Bool: {aws:SecureTransport: false}}"
    policy = template["Resources"]["SageMakerExecutionPolicy"]["Properties"]["PolicyDocument"]
    assert "only if" not in tour.statements_table(policy).columns


def test_every_taggable_resource_carries_the_environment_tag(template):
    coverage = tour.tag_coverage(template)
    for tag in ("Name", "Project", "Environment", "Owner", "ManagedBy"):
        assert coverage.loc[tag, "resources with it"] == coverage.loc[tag, "resources with tags"]


def test_the_broken_excerpt_has_its_three_mistakes(template):
    broken = tour.broken_excerpt(template)
    resources = broken["Resources"]
    assert set(resources) == {"DataKey", "DataBucket", "DataBucketPolicy"}
    assert resources["DataKey"]["Properties"]["EnableKeyRotation"] is False
    rule = resources["DataBucket"]["Properties"]["BucketEncryption"]
    assert rule["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    statements = resources["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    assert template["Resources"]["DataKey"]["Properties"]["EnableKeyRotation"] is True  # a copy


def test_gaps_table_lists_every_gap():
    table = tour.gaps_table()
    assert len(table) == len(MOTO_GAPS)
    assert table.loc[("AWS::S3::BucketPolicy", "(resource)"), "the package"] == (
        "applies it with boto3 after the stack"
    )
    assert table.loc[("AWS::EC2::VPCEndpoint", "(deletion)"), "the package"] == (
        "removes it on destroy"
    )


@pytest.mark.slow
def test_one_checkov_run_keeps_each_templates_results(template):
    pytest.importorskip("cfnlint")
    run = tour.checkov_run(
        {"stage2.yaml": tour.lint.TEMPLATE, "broken.json": tour.broken_excerpt(template)}
    )
    summary = run.summary()
    assert summary.loc["stage2.yaml", "failed"] == 0 and summary.loc["stage2.yaml", "skipped"] == 3
    failed = set(run.where("failed").index)
    assert failed == {
        ("broken.json", "CKV_AWS_7"),
        ("broken.json", "CKV_HDB_1"),
        ("broken.json", "CKV_HDB_2"),
        ("broken.json", "CKV_HDB_3"),
    }
    own = run.outcomes("HDB")
    assert own.loc[("CKV_HDB_2", slice(None)), "stage2.yaml"].tolist() == ["3 passed"]
    assert own.loc[("CKV_HDB_1", slice(None)), "stage2.yaml"].tolist() == ["2 passed, 1 skipped"]


# ----------------------------------------------------------------------------- the account

NAMES = {
    "vpc-0123456789abcdef0": "Vpc",
    "arn:aws:kms:ap-southeast-1:123456789012:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b": "DataKey",
    "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b": "DataKey",
    "hdb-ch04-data-123456789012-ap-southeast-1": "DataBucket",
}


def test_readable_replaces_generated_ids():
    text = "SSE-KMS with key 0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b in vpc-0123456789abcdef0"
    assert tour_account.readable(text, NAMES) == "SSE-KMS with key DataKey in Vpc"
    arn = "arn:aws:kms:ap-southeast-1:123456789012:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    assert tour_account.readable(arn, NAMES) == "DataKey"
    assert tour_account.readable("igw-0a1b2c3d4e5f60718 and rtb-12345678", {}) == (
        "<igw id> and <rtb id>"
    )
    assert tour_account.readable("bucket hdb-ch04-data-123456789012-ap-southeast-1", NAMES) == (
        "bucket DataBucket"
    )
    kept = tour_account.readable(
        "bucket hdb-ch04-data-123456789012-ap-southeast-1 in vpc-0123456789abcdef0",
        NAMES,
        generated_only=True,
    )
    assert kept == "bucket hdb-ch04-data-123456789012-ap-southeast-1 in <Vpc id>"


def test_outputs_table_keeps_stable_names():
    outputs = {
        "VpcId": "vpc-0123456789abcdef0",
        "DataBucketName": "hdb-ch04-data-123456789012-ap-southeast-1",
    }
    table = tour_account.outputs_table(outputs, NAMES)
    assert table["value"].tolist() == ["<Vpc id>", "hdb-ch04-data-123456789012-ap-southeast-1"]


def test_audit_and_controls_tables():
    findings = [
        finding(
            "S2-S3-03", "hdb-ch04-data-123456789012-ap-southeast-1", True, "versioning Enabled"
        ),
        finding("S2-KMS-01", NAMES["0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"], False, "rotation off"),
        finding("S2-VPC-01", "vpc-0123456789abcdef0", True, "no internet gateway or route"),
    ]
    table = tour_account.audit_table(findings, NAMES, fix=True)
    assert list(table.index) == [
        ("S2-KMS-01", "DataKey"),
        ("S2-S3-03", "DataBucket"),
        ("S2-VPC-01", "Vpc"),
    ]
    assert table.loc[("S2-KMS-01", "DataKey"), "status"] == "FAIL"
    assert table.loc[("S2-KMS-01", "DataKey"), "fix"] == CONTROLS["S2-KMS-01"].fix
    assert table.loc[("S2-S3-03", "DataBucket"), "fix"] == ""
    controls = tour_account.controls_table(findings)
    assert controls.index[0] == "S2-S3-03"  # Basic first
    assert len(controls) == len(CONTROLS)
    assert controls.loc["S2-KMS-01", "status"] == "FAIL"
    assert controls.loc["S2-S3-01", "status"] == "not checked"
    assert controls.loc["S2-VPC-01", ["checked", "failed", "status"]].tolist() == [1, 0, "pass"]


READ = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:List*"], "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/secret/*"},
        {
            "Effect": "Deny",
            "Action": "s3:*",
            "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
    ],
}


def test_is_allowed_follows_allows_wildcards_and_denies():
    assert tour_account.is_allowed(READ, "s3:GetObject", "arn:aws:s3:::b/raw/x.csv")
    assert tour_account.is_allowed(
        READ, "S3:getobject", "arn:aws:s3:::b/raw/x.csv"
    )  # actions: any case
    assert tour_account.is_allowed(READ, "s3:ListBucket", "arn:aws:s3:::b")
    assert not tour_account.is_allowed(READ, "s3:PutObject", "arn:aws:s3:::b/raw/x.csv")
    assert not tour_account.is_allowed(READ, "s3:GetObject", "arn:aws:s3:::other/x.csv")
    assert not tour_account.is_allowed(READ, "s3:GetObject", "arn:aws:s3:::b/secret/key")
    single = {"Statement": {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}}
    assert tour_account.is_allowed(single, "s3:DeleteBucket", "arn:aws:s3:::b")
    assert not tour_account.is_allowed(single, "iam:CreateUser", "arn:aws:iam::1:user/x")
    everything = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    assert tour_account.is_allowed([READ, everything], "iam:CreateUser", "arn:aws:iam::1:user/x")
    table = tour_account.access_table([READ], {"read": ("s3:GetObject", "arn:aws:s3:::b/x")})
    assert table.loc["read"].tolist() == ["s3:GetObject", True]


def test_physical_names_and_role_policies_on_moto():
    pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")
    from hdb_mlops.cloud.backends import open_backend

    body = {
        "Resources": {
            "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.9.0.0/16"}},
            "Key": {
                "Type": "AWS::KMS::Key",
                "Properties": {"KeyPolicy": json.dumps({"Statement": []})},
            },
        }
    }
    with open_backend("moto", prefix="tour-hdb") as ctx:
        ctx.client("cloudformation").create_stack(
            StackName="tour-hdb-stage2", TemplateBody=json.dumps(body)
        )
        names = tour_account.physical_names(ctx, "tour-hdb-stage2")
        assert sorted(set(names.values())) == ["Key", "Vpc", "Vpc default security group"]
        key_arns = [p for p, n in names.items() if n == "Key" and p.startswith("arn:")]
        assert len(key_arns) == 1
        assert tour_account.physical_names(ctx, "no-such-stack") == {}

        iam = ctx.client("iam")
        trust = {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sagemaker.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ]
        }
        iam.create_role(RoleName="tour-hdb-role", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName="tour-hdb-role", PolicyName="read", PolicyDocument=json.dumps(READ)
        )
        arn = iam.create_policy(
            PolicyName="tour-hdb-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )["Policy"]["Arn"]
        iam.attach_role_policy(RoleName="tour-hdb-role", PolicyArn=arn)
        policies = tour_account.role_policies(ctx, "tour-hdb-role")
        assert list(policies) == ["inline read", "managed tour-hdb-all"]
        assert policies["inline read"]["Statement"][0]["Action"] == ["s3:GetObject", "s3:List*"]
        assert tour_account.is_allowed(policies.values(), "iam:CreateUser", "arn:aws:iam::1:user/x")
