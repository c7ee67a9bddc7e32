"""CKV_HDB_3: an S3 bucket policy can deny requests from outside the VPC endpoint."""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from hdb_check_common import condition_value, covers_all_s3_actions, is_everyone, statements

NOT_EQUALS = ("StringNotEquals", "StringNotEqualsIfExists", "StringNotLike")


def is_source_vpce_deny(statement: dict[str, Any]) -> bool:
    """Deny, everyone, every S3 action, when aws:sourceVpce is not the endpoint."""
    endpoint = condition_value(statement.get("Condition"), NOT_EQUALS, "aws:sourceVpce")
    return (
        statement.get("Effect") == "Deny"
        and is_everyone(statement.get("Principal"))
        and covers_all_s3_actions(statement.get("Action"))
        and bool(endpoint)
    )


class S3BucketPolicySourceVpce(BaseResourceCheck):
    """The policy has a deny on aws:sourceVpce, always or behind a template condition (the
    ``RestrictToVpcEndpoint`` parameter), so that turning the restriction on is a parameter
    change, not a template edit."""

    def __init__(self) -> None:
        super().__init__(
            name="Ensure the S3 bucket policy denies requests from outside the VPC endpoint "
            "(aws:sourceVpce), when enabled",
            id="CKV_HDB_3",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["AWS::S3::BucketPolicy"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Pass when a sourceVpce deny is present (conditional or not)."""
        document = (conf.get("Properties") or {}).get("PolicyDocument")
        if any(is_source_vpce_deny(statement) for statement, _ in statements(document)):
            return CheckResult.PASSED
        return CheckResult.FAILED


check = S3BucketPolicySourceVpce()
