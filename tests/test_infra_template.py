"""infra/stage2.yaml: cfn-lint and checkov (offline, from its own tool environment, made on
first use) are clean, every checkov skip has a reason, and the project's own checks
(infra/checks/) fail the templates that lack what they check."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("cfnlint", reason="cfn-lint is not installed: pip install -e '.[aws]'")

from hdb_mlops.cloud import lint
from hdb_mlops.cloud.backends import PREFIX_PATTERN
from hdb_mlops.cloud.template import load_template

OWN_CHECKS = ("CKV_HDB_1", "CKV_HDB_2", "CKV_HDB_3", "CKV2_HDB_1")
UNTAGGABLE = {
    "AWS::KMS::Alias",
    "AWS::S3::BucketPolicy",
    "AWS::EC2::SubnetRouteTableAssociation",
    "AWS::EC2::VPCEndpoint",
    "AWS::IAM::ManagedPolicy",
}


@pytest.fixture(scope="module")
def template():
    return load_template()


def _network_isolation() -> list[str]:
    """``unshare -rn`` (a user namespace without network) where it works, else nothing."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


@pytest.fixture(scope="module")
def lint_report():
    """`hdb-mlops infra lint --json` on the committed template, in a namespace without
    network where the machine allows it (the tool environment .venv-checkov is made first
    if it is absent: a minute or two, once, from PyPI): exit status, report, isolated."""
    lint.ensure_checkov()
    isolation = _network_isolation()
    command = [*isolation, sys.executable, "-m", "hdb_mlops.cli", "infra", "lint", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.stdout.strip(), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout), bool(isolation), result.stderr


def test_the_lint_command_reports_both_linters_clean(lint_report):
    status, report, _, stderr = lint_report
    assert status == 0, (report, stderr[-2000:])
    assert report["ok"] is True
    assert report["cfn_lint"] == {**report["cfn_lint"], "version": "1.58.0", "matches": []}
    checkov = report["checkov"]
    assert checkov["version"] == "3.3.30"
    assert checkov["failed"] == [] and checkov["parsing_errors"] == 0
    assert checkov["passed"] >= 50, "checkov's own CloudFormation checks did not run"


def test_every_checkov_skip_is_written_in_the_template_with_a_reason(lint_report):
    skipped = lint_report[1]["checkov"]["skipped"]
    assert lint_report[1]["checkov"]["unjustified_skips"] == []
    assert {(s["id"], s["resource"]) for s in skipped} == {
        ("CKV_AWS_18", "AWS::S3::Bucket.AccessLogBucket"),
        ("CKV_HDB_1", "AWS::S3::Bucket.AccessLogBucket"),
        ("CKV_HDB_3", "AWS::S3::BucketPolicy.AccessLogBucketPolicy"),
    }
    for skip in skipped:
        assert len(skip["reason"]) > 40, skip


def test_the_lint_runs_offline(lint_report):
    """The offline settings hold: with no network at all, checkov and cfn-lint complete."""
    _, report, isolated, stderr = lint_report
    if not isolated:
        pytest.skip("unshare -rn (a user namespace without network) is not available here")
    assert report["ok"] is True
    assert "prismacloud" not in stderr and "MaxRetryError" not in stderr


def test_the_offline_settings_are_passed_to_checkov():
    command, env = lint.checkov_command(checkov="checkov")
    assert "--skip-download" in command
    assert command[command.index("--framework") + 1] == "cloudformation"
    assert env["BC_SKIP_MAPPING"] == "TRUE" and env["CKV_SKIP_PACKAGE_UPDATE_CHECK"] == "true"
    assert "BC_API_KEY" not in env


# ----------------------------------------------------------------------------- own checks


def _bucket(template, *, encryption):
    bucket = copy.deepcopy(template["Resources"]["DataBucket"])
    bucket["Properties"].pop("BucketName")
    if encryption is None:
        bucket["Properties"].pop("BucketEncryption")
    else:
        bucket["Properties"]["BucketEncryption"] = {
            "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": encryption}]
        }
    return bucket


def _policy(bucket, statements):
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": bucket},
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
        },
    }


def _tls_deny(bucket):
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": "${" + bucket + ".Arn}/*"}],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _vpce_deny(bucket):
    deny = _tls_deny(bucket)
    deny["Sid"] = "DenyOutsideVpcEndpoint"
    deny["Condition"] = {"StringNotEquals": {"aws:sourceVpce": "vpce-0123456789abcdef0"}}
    return deny


@pytest.fixture(scope="module")
def own_checks_on_broken_templates(template, tmp_path_factory):
    """checkov with the project's checks only, on a template with one bucket or policy per
    way of getting it wrong (and one right); its results by resource and check."""
    resources = {k: v for k, v in template["Resources"].items() if k == "DataKey"}
    cases = {
        "SseS3": {"SSEAlgorithm": "AES256"},
        "KmsAwsManaged": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/aws/s3"},
        "KmsNoKey": {"SSEAlgorithm": "aws:kms"},
        "NoEncryption": None,
        "CustomerKey": {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": {"Fn::GetAtt": ["DataKey", "Arn"]},
        },
    }
    for name, encryption in cases.items():
        resources[f"Bucket{name}"] = _bucket(template, encryption=encryption)
    skipped = resources["BucketSkipWithoutReason"] = _bucket(template, encryption=None)
    skipped["Metadata"] = {"checkov": {"skip": [{"id": "CKV_HDB_1"}]}}
    b = "BucketCustomerKey"
    policies = {
        "PolicyRight": [_tls_deny(b), _vpce_deny(b)],
        "PolicyNoTls": [_vpce_deny(b)],
        "PolicyTlsAllowNotDeny": [{**_tls_deny(b), "Effect": "Allow"}, _vpce_deny(b)],
        "PolicyTlsOnlyObjects": [
            {**_tls_deny(b), "Resource": {"Fn::Sub": "${BucketCustomerKey.Arn}/*"}},
            _vpce_deny(b),
        ],
        "PolicyTlsBehindCondition": [
            {"Fn::If": ["Always", _tls_deny(b), {"Ref": "AWS::NoValue"}]},
            _vpce_deny(b),
        ],
        "PolicyNoVpce": [_tls_deny(b)],
        "PolicyVpceBehindCondition": [
            _tls_deny(b),
            {"Fn::If": ["Always", _vpce_deny(b), {"Ref": "AWS::NoValue"}]},
        ],
    }
    for name, statements in policies.items():
        resources[name] = _policy(b, statements)
    broken = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Conditions": {"Always": {"Fn::Equals": ["a", "a"]}},
        "Resources": resources,
    }
    path = tmp_path_factory.mktemp("broken") / "broken.json"
    path.write_text(json.dumps(broken, indent=1))
    command, env = lint.checkov_command(path)
    command += ["--check", ",".join(OWN_CHECKS)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    outcome = {}
    for kind in ("passed_checks", "failed_checks"):
        for check in report["results"].get(kind, []):
            resource = check["resource"].split(".", 1)[1]
            outcome[(resource, check["check_id"])] = kind.split("_")[0]
    return outcome, lint.parse_report(result.stdout)


@pytest.fixture(scope="module")
def own_checks(own_checks_on_broken_templates):
    return own_checks_on_broken_templates[0]


@pytest.mark.parametrize(
    ("bucket", "verdict"),
    [
        ("BucketCustomerKey", "passed"),
        ("BucketSseS3", "failed"),
        ("BucketKmsAwsManaged", "failed"),
        ("BucketKmsNoKey", "failed"),
        ("BucketNoEncryption", "failed"),
    ],
)
def test_own_check_sse_kms_with_a_customer_key(own_checks, bucket, verdict):
    assert own_checks[(bucket, "CKV_HDB_1")] == verdict


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        ("PolicyRight", "passed"),
        ("PolicyNoVpce", "passed"),
        ("PolicyNoTls", "failed"),
        ("PolicyTlsAllowNotDeny", "failed"),
        ("PolicyTlsOnlyObjects", "failed"),
        ("PolicyTlsBehindCondition", "failed"),
    ],
)
def test_own_check_tls_only_deny(own_checks, policy, verdict):
    assert own_checks[(policy, "CKV_HDB_2")] == verdict


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        ("PolicyRight", "passed"),
        ("PolicyVpceBehindCondition", "passed"),
        ("PolicyNoVpce", "failed"),
    ],
)
def test_own_check_source_vpce_deny(own_checks, policy, verdict):
    assert own_checks[(policy, "CKV_HDB_3")] == verdict


def test_own_check_every_bucket_has_a_policy(own_checks):
    assert own_checks[("BucketCustomerKey", "CKV2_HDB_1")] == "passed"
    for bucket in ("BucketSseS3", "BucketKmsAwsManaged", "BucketKmsNoKey", "BucketNoEncryption"):
        assert own_checks[(bucket, "CKV2_HDB_1")] == "failed"


def test_a_skip_without_a_reason_makes_the_lint_fail(own_checks_on_broken_templates):
    result = own_checks_on_broken_templates[1]
    assert [(s["id"], s["resource"]) for s in result.unjustified_skips] == [
        ("CKV_HDB_1", "AWS::S3::Bucket.BucketSkipWithoutReason")
    ]
    assert not result.ok


# ----------------------------------------------------------------------------- the template


def test_the_cli_prefix_pattern_is_the_templates(template):
    assert template["Parameters"]["Prefix"]["AllowedPattern"] == PREFIX_PATTERN


def test_the_network_has_no_internet_path_and_the_endpoints(template):
    types = [r["Type"] for r in template["Resources"].values()]
    assert "AWS::EC2::InternetGateway" not in types and "AWS::EC2::NatGateway" not in types
    prefix = "com.amazonaws.${AWS::Region}."
    services = sorted(
        r["Properties"]["ServiceName"]["Fn::Sub"].removeprefix(prefix)
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::VPCEndpoint"
    )
    assert services == ["logs", "s3", "sagemaker.api", "sagemaker.runtime", "sts"]
    subnets = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Subnet"]
    assert len(subnets) == 2
    assert all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in subnets)


def test_every_taggable_resource_carries_the_project_tags(template):
    for logical, resource in template["Resources"].items():
        if resource["Type"] in UNTAGGABLE:
            continue
        keys = {t["Key"] for t in resource["Properties"].get("Tags", [])}
        assert {"Name", "Project", "Environment", "Owner", "ManagedBy"} <= keys, logical


def test_no_role_policy_allows_everything_on_everything(template):
    for logical, resource in template["Resources"].items():
        documents = [
            p["PolicyDocument"] for p in resource.get("Properties", {}).get("Policies", [])
        ]
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            documents.append(resource["Properties"]["PolicyDocument"])
        for document in documents:
            for statement in document["Statement"]:
                actions = statement["Action"]
                actions = actions if isinstance(actions, list) else [actions]
                assert "*" not in actions and not any(a.endswith(":*") for a in actions), logical
