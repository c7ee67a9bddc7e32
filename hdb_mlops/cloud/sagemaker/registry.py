"""The SageMaker Model Registry: a model package group, its versions, and their approval.

The build pipeline registers every model that passes CheckMape as a new version of the
group with status ``PendingManualApproval``; a person (or the CI's manual gate) approves or
rejects it; deployment takes an approved version. Each version carries the sha256 of its
``model.tar.gz`` in its customer metadata (``sha256``), the identity the promotion between
environments uses (:mod:`hdb_mlops.cloud.promote`).

All calls go through a :class:`~hdb_mlops.cloud.backends.CloudContext`: a moto server in
tests and offline runs, an AWS account with ``--backend aws``; the ``local`` backend has no
registry and refuses, naming the backends that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hdb_mlops.cloud.backends import CloudContext

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)
#: The customer metadata key holding the artifact's sha256.
DIGEST_KEY = "sha256"


class RegistryError(LookupError):
    """A model package group or version that is not there."""


@dataclass(frozen=True)
class ModelPackage:
    """One version of a model package group."""

    arn: str
    group: str
    version: int | None
    status: str
    model_data_url: str | None = None
    image: str | None = None
    digest: str | None = None
    metadata: dict[str, str] | None = None
    description: str | None = None
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dict(self.__dict__)


def _package(described: dict[str, Any]) -> ModelPackage:
    containers = described.get("InferenceSpecification", {}).get("Containers") or [{}]
    metadata = described.get("CustomerMetadataProperties") or {}
    created = described.get("CreationTime")
    return ModelPackage(
        arn=described["ModelPackageArn"],
        group=described.get("ModelPackageGroupName", ""),
        version=described.get("ModelPackageVersion"),
        status=described.get("ModelApprovalStatus", ""),
        model_data_url=containers[0].get("ModelDataUrl"),
        image=containers[0].get("Image"),
        digest=metadata.get(DIGEST_KEY),
        metadata=dict(metadata),
        description=described.get("ModelPackageDescription"),
        created=created.isoformat() if hasattr(created, "isoformat") else created,
    )


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_group(ctx: CloudContext, group: str, description: str = "") -> str:
    """The ARN of the model package group ``group``, created when it does not exist."""
    client = ctx.client("sagemaker")
    try:
        return str(
            client.describe_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"]
        )
    except Exception as exc:
        if _error_code(exc) not in ("ValidationException", "ResourceNotFound"):
            raise
    created = client.create_model_package_group(
        ModelPackageGroupName=group,
        ModelPackageGroupDescription=description or "HDB resale price models (hdb-mlops)",
    )
    return str(created["ModelPackageGroupArn"])


def register_model(
    ctx: CloudContext,
    group: str,
    *,
    model_data_url: str,
    image_uri: str,
    digest: str,
    metrics_uri: str | None = None,
    metrics: dict[str, float] | None = None,
    status: str = PENDING,
    description: str = "HDB resale price model (hdb-mlops build pipeline)",
    instance_type: str = "ml.m5.large",
) -> ModelPackage:
    """Register a new version of ``group`` (created if needed) for the model archive at
    ``model_data_url``, as the pipeline's Register step does; return it."""
    if status not in STATUSES:
        raise ValueError(f"unknown approval status {status!r}: use one of {', '.join(STATUSES)}")
    ensure_group(ctx, group)
    metadata = {DIGEST_KEY: digest}
    for name, value in (metrics or {}).items():
        metadata[name] = f"{value:.6g}"
    request: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description,
        "InferenceSpecification": {
            "Containers": [{"Image": image_uri, "ModelDataUrl": model_data_url}],
            "SupportedContentTypes": ["application/json", "text/csv"],
            "SupportedResponseMIMETypes": ["application/json", "text/csv"],
            "SupportedRealtimeInferenceInstanceTypes": [instance_type],
            "SupportedTransformInstanceTypes": [instance_type],
        },
        "ModelApprovalStatus": status,
        "CustomerMetadataProperties": metadata,
    }
    if metrics_uri:
        request["ModelMetrics"] = {
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}
            }
        }
    arn = ctx.client("sagemaker").create_model_package(**request)["ModelPackageArn"]
    return describe(ctx, arn)


def describe(ctx: CloudContext, arn: str) -> ModelPackage:
    """One version by ARN."""
    client = ctx.client("sagemaker")
    try:
        return _package(client.describe_model_package(ModelPackageName=arn))
    except Exception as exc:
        if _error_code(exc) in ("ValidationException", "ResourceNotFound"):
            raise RegistryError(f"no model package {arn}") from exc
        raise


def list_packages(ctx: CloudContext, group: str, status: str | None = None) -> list[ModelPackage]:
    """The versions of ``group`` (optionally with approval ``status``), oldest first."""
    client = ctx.client("sagemaker")
    request: dict[str, Any] = {"ModelPackageGroupName": group, "ModelPackageType": "Versioned"}
    if status:
        request["ModelApprovalStatus"] = status
    arns: list[str] = []
    while True:
        page = client.list_model_packages(**request)
        arns += [item["ModelPackageArn"] for item in page.get("ModelPackageSummaryList", [])]
        if not page.get("NextToken"):
            break
        request["NextToken"] = page["NextToken"]
    packages = [describe(ctx, arn) for arn in arns]
    return sorted(packages, key=lambda p: p.version or 0)


def resolve(ctx: CloudContext, group: str, ref: str | int = "latest") -> ModelPackage:
    """A version by number, ARN, ``sha256:<digest>`` (the newest with that artifact),
    ``latest`` (the newest) or ``pending`` (the newest awaiting approval)."""
    text = str(ref)
    if text.startswith("arn:"):
        return describe(ctx, text)
    packages = list_packages(ctx, group)
    if text.startswith("sha256:"):
        packages = [p for p in packages if p.digest == text[len("sha256:") :].lower()]
    elif text == "pending":
        packages = [p for p in packages if p.status == PENDING]
    elif text != "latest":
        if not text.isdigit():
            raise ValueError(
                f"{text!r} is not a version number, an ARN, sha256:<digest>, latest or pending"
            )
        packages = [p for p in packages if p.version == int(text)]
    if not packages:
        raise RegistryError(f"model package group {group!r} has no version {text}")
    return packages[-1]


def set_status(
    ctx: CloudContext, package: ModelPackage, status: str, note: str = ""
) -> ModelPackage:
    """Approve or reject a version (``status`` Approved or Rejected); return it updated."""
    if status not in (APPROVED, REJECTED):
        raise ValueError(f"a version is approved or rejected, not set to {status!r}")
    request: dict[str, Any] = {"ModelPackageArn": package.arn, "ModelApprovalStatus": status}
    if package.metadata:  # sent again: moto would otherwise drop it (AWS keeps it anyway)
        request["CustomerMetadataProperties"] = package.metadata
    if note:
        request["ApprovalDescription"] = note
    ctx.client("sagemaker").update_model_package(**request)
    return describe(ctx, package.arn)


def approve(
    ctx: CloudContext, group: str, ref: str | int = "pending", note: str = ""
) -> ModelPackage:
    """Approve the version ``ref`` of ``group`` (default: the newest pending one)."""
    return set_status(ctx, resolve(ctx, group, ref), APPROVED, note)


def reject(
    ctx: CloudContext, group: str, ref: str | int = "pending", note: str = ""
) -> ModelPackage:
    """Reject the version ``ref`` of ``group`` (default: the newest pending one)."""
    return set_status(ctx, resolve(ctx, group, ref), REJECTED, note)
