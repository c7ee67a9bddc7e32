"""CKV_HDB_2: an S3 bucket policy denies every request made without TLS."""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from hdb_check_common import (
    as_list,
    condition_value,
    covers_all_s3_actions,
    is_everyone,
    statements,
)


def _covers_objects_and_bucket(resource: Any) -> bool:
    """Whether the statement's resources name the objects (``.../*``) and the bucket itself."""
    texts = [str(r) for r in as_list(resource)]
    objects = [t for t in texts if t.rstrip("'\"}]) ").endswith("/*")]
    return bool(objects) and len(objects) < len(texts)


def is_tls_deny(statement: dict[str, Any]) -> bool:
    """Deny, everyone, every S3 action, bucket and objects, when aws:SecureTransport is false."""
    secure = condition_value(
        statement.get("Condition"), ("Bool", "BoolIfExists"), "aws:SecureTransport"
    )
    return (
        statement.get("Effect") == "Deny"
        and is_everyone(statement.get("Principal"))
        and covers_all_s3_actions(statement.get("Action"))
        and _covers_objects_and_bucket(statement.get("Resource"))
        and str(secure).lower() == "false"
    )


class S3BucketPolicyTlsOnly(BaseResourceCheck):
    """The policy has an unconditional statement denying requests that do not use TLS."""

    def __init__(self) -> None:
        super().__init__(
            name="Ensure the S3 bucket policy denies requests without TLS (aws:SecureTransport)",
            id="CKV_HDB_2",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["AWS::S3::BucketPolicy"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Pass when a TLS deny is present and not behind an ``Fn::If``."""
        document = (conf.get("Properties") or {}).get("PolicyDocument")
        for statement, conditional in statements(document):
            if not conditional and is_tls_deny(statement):
                return CheckResult.PASSED
        return CheckResult.FAILED


check = S3BucketPolicyTlsOnly()
