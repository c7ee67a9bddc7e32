"""The project's own checkov checks (loaded with ``--external-checks-dir infra/checks``).

checkov has no CloudFormation check for these (DESIGN.md §6): SSE-KMS with a customer-managed
key (CKV_HDB_1), a bucket policy that denies requests without TLS (CKV_HDB_2), a bucket policy
that denies requests from outside the VPC endpoint, when the template enables it (CKV_HDB_3),
and every bucket having a policy at all (CKV2_HDB_1, a graph check in YAML).
"""
