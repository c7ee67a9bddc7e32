"""The Stage 2 controls the live audit checks, and its findings.

Each control has an id, a title, the fix, and the level of the playbook's chapter 7
"Networking & Security" category it evidences. The playbook describes Level 1 (Basic) as
broad IAM permissions, public access and encryption at rest only, and Level 2
(Intermediate) as least-privilege IAM; the rest of the category could not be read, so the
Level 3 (Advanced) reading and the placing of each control are this course's own:

- **Basic**: what a Level 1 set-up already has, or needs before anything else: data that
  can be recovered (versioning).
- **Intermediate**: the step out of Level 1: no public access, least-privilege IAM (no
  ``*`` on ``*``), encryption under a key the agency controls (SSE-KMS with a
  customer-managed, rotated key, a key policy without wildcard principals) and in transit
  (a TLS-only bucket policy), no security group open to the internet.
- **Advanced**: the network itself is private and every access leaves a trace: no internet
  gateway, S3 through a gateway endpoint, SageMaker, STS and CloudWatch Logs through
  interface endpoints, server access logs on every data bucket.

:func:`evidenced_level` gives the highest level all of whose controls (and those below) pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

#: The levels of chapter 7's Networking & Security category, lowest first.
LEVELS = ("Basic", "Intermediate", "Advanced")


@dataclass(frozen=True)
class Control:
    """One control of the audit."""

    id: str
    title: str
    level: str
    rationale: str
    fix: str


_CONTROLS = (
    Control(
        "S2-S3-01",
        "S3 default encryption is SSE-KMS with a customer-managed key",
        "Intermediate",
        "encryption under a key the agency owns, rotates, audits and can revoke, not only "
        "S3's own keys (Level 1 is 'encryption at rest only')",
        "put-bucket-encryption with SSEAlgorithm aws:kms and KMSMasterKeyID the stack's key "
        "(the access-log bucket: AES256, the only default encryption log delivery supports)",
    ),
    Control(
        "S2-S3-02",
        "S3 bucket key is enabled for SSE-KMS",
        "Intermediate",
        "keeps the customer key usable at scale: far fewer KMS calls, no throttling",
        "put-bucket-encryption with BucketKeyEnabled true",
    ),
    Control(
        "S2-S3-03",
        "S3 versioning is enabled",
        "Basic",
        "data and models can be recovered after an overwrite or a deletion",
        "put-bucket-versioning Status=Enabled",
    ),
    Control(
        "S2-S3-04",
        "S3 public access block: all four settings on",
        "Intermediate",
        "Level 1 allows public access; blocking it at the bucket is the first step out",
        "put-public-access-block with BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy "
        "and RestrictPublicBuckets all true",
    ),
    Control(
        "S2-S3-05",
        "S3 bucket policy grants nothing to everyone",
        "Intermediate",
        "no statement allows Principal * without a condition that restricts who",
        "remove the Allow statements with Principal * (or add aws:SourceArn / "
        "aws:SourceAccount / aws:sourceVpce conditions)",
    ),
    Control(
        "S2-S3-06",
        "S3 bucket policy denies requests without TLS",
        "Intermediate",
        "encryption in transit enforced by the bucket, not left to each client",
        "add a Deny of s3:* for Principal * on the bucket and bucket/* when "
        "aws:SecureTransport is false",
    ),
    Control(
        "S2-S3-07",
        "S3 server access logging is on",
        "Advanced",
        "every request to the data leaves a record in the access-log bucket",
        "put-bucket-logging with TargetBucket the stack's access-log bucket",
    ),
    Control(
        "S2-KMS-01",
        "KMS key rotation is enabled",
        "Intermediate",
        "the customer key's material is rotated every year",
        "enable-key-rotation",
    ),
    Control(
        "S2-KMS-02",
        "KMS key policy names no wildcard principal",
        "Intermediate",
        "only the account (through IAM) may use or administer the key",
        "put-key-policy without Principal * statements",
    ),
    Control(
        "S2-IAM-01",
        "IAM roles have no policy allowing * on *",
        "Intermediate",
        "least privilege (the playbook's Level 2): each role may do only its job",
        "replace the statement by the actions and resources the role needs",
    ),
    Control(
        "S2-VPC-01",
        "The VPC has no internet gateway and no route to the internet",
        "Advanced",
        "training and inference run in private subnets that cannot reach the internet",
        "detach and delete the internet gateway; remove 0.0.0.0/0 routes",
    ),
    Control(
        "S2-VPC-02",
        "S3 is reached through a gateway endpoint",
        "Advanced",
        "S3 traffic stays on the AWS network and can be tied to the endpoint "
        "(aws:sourceVpce in the bucket policies)",
        "create the com.amazonaws.REGION.s3 gateway endpoint on the private route table",
    ),
    Control(
        "S2-VPC-03",
        "SageMaker, STS and CloudWatch Logs are reached through interface endpoints",
        "Advanced",
        "the jobs and the endpoint call the AWS APIs without an internet path",
        "create the interface endpoint (private DNS on) in both private subnets",
    ),
    Control(
        "S2-VPC-04",
        "No security group allows ingress from 0.0.0.0/0 or ::/0",
        "Intermediate",
        "nothing in the VPC is open to the whole internet",
        "revoke the rule; allow HTTPS from the VPC's CIDR only",
    ),
)
#: The controls by id.
CONTROLS = {control.id: control for control in _CONTROLS}


@dataclass(frozen=True)
class Finding:
    """The result of one control on one resource."""

    control: str
    title: str
    resource: str
    status: str
    finding: str
    fix: str
    level: str

    @property
    def passed(self) -> bool:
        """Whether the control passed on this resource."""
        return self.status == "pass"

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return asdict(self)


def finding(control_id: str, resource: str, ok: bool, detail: str) -> Finding:
    """A :class:`Finding` of control ``control_id`` (its title, fix and level filled in)."""
    control = CONTROLS[control_id]
    return Finding(
        control=control.id,
        title=control.title,
        resource=resource,
        status="pass" if ok else "fail",
        finding=detail,
        fix="" if ok else control.fix,
        level=control.level,
    )


def failed(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that failed."""
    return [f for f in findings if not f.passed]


def evidenced_level(findings: Iterable[Finding]) -> str:
    """The highest level whose controls, and those of the levels below, all pass
    (``"none"`` when a Basic control fails)."""
    failing = {f.level for f in failed(findings)}
    reached = "none"
    for level in LEVELS:
        if level in failing:
            break
        reached = level
    return reached
