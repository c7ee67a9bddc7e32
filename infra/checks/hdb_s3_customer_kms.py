"""CKV_HDB_1: S3 default encryption is SSE-KMS with a customer-managed key."""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult
from hdb_check_common import as_list, clean

KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")


def _is_aws_managed(key_id: Any) -> bool:
    """Whether ``key_id`` names the AWS-managed S3 key (``alias/aws/s3`` or its ARN)."""
    return isinstance(key_id, str) and "alias/aws/" in key_id


class S3CustomerManagedKmsKey(BaseResourceCheck):
    """Every default-encryption rule is SSE-KMS and names a key that is not AWS-managed
    (a ``Ref``/``GetAtt`` of a key in the template, or a key ARN)."""

    def __init__(self) -> None:
        super().__init__(
            name="Ensure S3 bucket default encryption is SSE-KMS with a customer-managed key",
            id="CKV_HDB_1",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["AWS::S3::Bucket"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Fail when encryption is absent, SSE-S3, or SSE-KMS without a customer key."""
        properties = clean(conf.get("Properties") or {})
        encryption = properties.get("BucketEncryption") or {}
        rules = as_list(encryption.get("ServerSideEncryptionConfiguration"))
        if not rules:
            return CheckResult.FAILED
        for rule in rules:
            default = (rule or {}).get("ServerSideEncryptionByDefault") or {}
            if default.get("SSEAlgorithm") not in KMS_ALGORITHMS:
                return CheckResult.FAILED
            key_id = default.get("KMSMasterKeyID")
            if not key_id or _is_aws_managed(key_id):
                return CheckResult.FAILED
        return CheckResult.PASSED


check = S3CustomerManagedKmsKey()
