"""hdb-mlops: scan-ignore (this file writes the patterns the scanner looks for)

The repository scan: what it proves from a deliberately bare repository, from small
repositories written here (CI that runs the tests through make, CI reports, CloudFormation
with and without wildcard grants, a committed key), and from this repository itself, which
other chapters keep changing: the assertions on it are the facts a reader relies on, not a
snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hdb_mlops import cli, config
from hdb_mlops.course import scan_reports
from hdb_mlops.course.scan import scan
from hdb_mlops.course.scan_evidence import RepoIndex, literals

BARE = Path(__file__).parent / "fixtures" / "repos" / "bare"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def verdicts(report) -> dict[str, str]:
    return {r.id: r.verdict for r in report.rules}


def rule(report, rule_id: str):
    return next(r for r in report.rules if r.id == rule_id)


JUNIT_OK = (
    '<testsuites><testsuite name="t" tests="12" failures="0" errors="0" skipped="1"/></testsuites>'
)
JUNIT_FAILED = '<testsuite name="t" tests="5" failures="2" errors="1" skipped="0"></testsuite>'
COBERTURA = '<?xml version="1.0" ?><coverage line-rate="{rate}" lines-valid="200" version="7"/>'


# ----------------------------------------------------------------------------- the bare repo


@pytest.fixture(scope="module")
def bare():
    return scan(BARE)


def test_bare_repository_proves_little(bare):
    levels = {c.id: c.level for c in bare.categories}
    # train.py fits and saves a model; it holds out data, prints a metric and fixes seeds
    assert levels.pop("orchestration") == "basic"
    assert levels.pop("experimentation") == "basic"
    assert set(levels.values()) == {None}  # every other category is below Basic
    v = verdicts(bare)
    assert v["env_cicd.b1"] == "met" and rule(bare, "env_cicd.b1").evidence == [
        "requirements.txt:1"
    ]
    assert v["env_cicd.i1"] == "not_met"  # pandas, scikit-learn ... unpinned
    assert "not pinned" in rule(bare, "env_cicd.i1").details
    for rid in ("env_cicd.i2", "env_cicd.i5", "testing.b1", "testing.i1", "monitoring.i1",
                "monitoring.i3", "feedback.b1", "experimentation.i1", "storage.b1"):  # fmt: skip
        assert v[rid] == "not_met", rid
    assert v["testing.i4"] == "not_met"  # a notebook nothing executes
    # what a repository without infrastructure code cannot show stays undecided
    assert v["security.i1"] == v["security.i3"] == v["security.a1"] == "undecided"
    assert bare.facts["tests"] == {"files": 0, "functions": 0, "by_area": {}}


def test_bare_repository_locates_evidence_in_notebook_cells(bare):
    sliced = rule(bare, "experimentation.a1")
    assert sliced.verdict == "not_met"
    assert sliced.evidence == ["explore.ipynb:cell3:1"]  # the groupby("town") of cell 3


def test_rule_records_follow_mllint(bare):
    record = rule(bare, "env_cicd.b1").to_dict()
    assert set(record) >= {"id", "category", "level", "weight", "evidence", "verdict", "details",
                           "score"}  # fmt: skip
    assert (record["category"], record["level"], record["score"]) == ("env_cicd", "basic", 100)
    assert rule(bare, "env_cicd.i2").score == 0 and rule(bare, "security.i1").score is None
    assert len(bare.rules) == 83 and {r.verdict for r in bare.rules} == {
        "met", "not_met", "undecided"}  # fmt: skip
    json.dumps(bare.to_dict())


# ----------------------------------------------------------------------------- small repos


def test_ci_that_runs_the_tests_through_make_and_a_script(tmp_path):
    repo = write(tmp_path, {
        ".gitlab-ci.yml": "test:\n  script:\n    - ./ci/check.sh\n",
        "ci/check.sh": "#!/bin/sh\n# pytest is mentioned in this comment only\nmake check\n",
        "Makefile": "check: lint\n\tpython -m pytest -q\nlint:\n\truff check .\n",
        "tests/test_x.py": "def test_one():\n    assert True\n",
        "pyproject.toml": "[tool.pytest.ini_options]\naddopts = \"--nbval\"\n",
        "notebooks/a.ipynb": json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                         "nbformat_minor": 5}),
    })  # fmt: skip
    report = scan(repo)
    tests_in_ci = rule(report, "testing.i1")
    assert tests_in_ci.verdict == "met"
    assert "Makefile:2" in tests_in_ci.evidence
    assert report.facts["ci_runs"] == [".gitlab-ci.yml", "Makefile", "ci/check.sh"]
    assert rule(report, "testing.i4").verdict == "met"  # nbval through pytest's addopts


def test_ci_that_only_mentions_pytest_in_a_comment_does_not_run_the_tests(tmp_path):
    repo = write(tmp_path, {
        ".github/workflows/ci.yml": "jobs:\n  build:\n    steps:\n      # TODO: pytest\n"
                                    "      - run: ruff check .\n",
        "tests/test_x.py": "def test_one():\n    assert True\n",
    })  # fmt: skip
    assert rule(scan(repo), "testing.i1").verdict == "not_met"


def test_ci_reports_are_read_instead_of_running_tests(tmp_path):
    repo = write(tmp_path, {
        ".ci/run": "#!/bin/sh\npytest --junitxml=reports/junit.xml\n",
        "tests/test_x.py": "def test_one():\n    assert True\n",
        "reports/junit.xml": JUNIT_OK,
    })  # fmt: skip
    report = scan(repo)
    assert report.facts["junit"][0]["tests"] == 12
    assert rule(report, "testing.i1").verdict == "met"
    assert rule(report, "testing.i3").verdict == "undecided"
    given = tmp_path.parent / f"{tmp_path.name}-reports"  # outside the repository
    given.mkdir()
    failed = given / "failed.xml"
    failed.write_text(JUNIT_FAILED)
    low, high = given / "low.xml", given / "high.xml"
    low.write_text(COBERTURA.format(rate="0.55"))
    high.write_text(COBERTURA.format(rate="0.82"))
    report = scan(repo, junit=[failed], coverage=[low])  # given reports replace found ones
    assert [r["path"] for r in report.facts["junit"]] == [str(failed)]
    assert rule(report, "testing.i1").verdict == "not_met"
    assert "2 failure(s) and 1 error(s) in 5 tests" in rule(report, "testing.i1").details
    assert rule(report, "testing.i3").verdict == "not_met"
    assert rule(report, "testing.i3").details == "line coverage 55% (threshold 70%)"
    assert rule(scan(repo, coverage=high), "testing.i3").verdict == "met"


def test_report_readers_count_and_refuse_other_xml(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0"/>'
                     '<testsuite tests="4" failures="0" errors="1" skipped="2"/></testsuites>')  # fmt: skip
    report = scan_reports.read_junit(junit)
    assert (report.tests, report.failures, report.errors, report.skipped) == (7, 1, 1, 2)
    assert not report.passed
    other = tmp_path / "o.xml"
    other.write_text("<project/>")
    with pytest.raises(ValueError, match="root element is <project>, expected <testsuites>"):
        scan_reports.read_junit(other)
    with pytest.raises(ValueError, match="not a Cobertura coverage report"):
        scan_reports.read_cobertura(other)


TEMPLATE = """AWSTemplateFormatVersion: "2010-09-09"
Resources:
  Key:
    Type: AWS::KMS::Key
    Properties:
      EnableKeyRotation: true
      KeyPolicy:
        Statement:
          - Effect: Allow
            Principal:
              AWS: !Sub "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"
            Action: "kms:*"
            Resource: "*"
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      BucketEncryption:
        ServerSideEncryptionConfiguration:
          - ServerSideEncryptionByDefault: {SSEAlgorithm: "aws:kms", KMSMasterKeyID: !Ref Key}
      PublicAccessBlockConfiguration: {BlockPublicAcls: true}
  BucketPolicy:
    Type: AWS::S3::BucketPolicy
    Properties:
      PolicyDocument:
        Statement:
          - Effect: Deny
            Principal: "*"
            Action: "s3:*"
            Condition: {Bool: {"aws:SecureTransport": "false"}}
  Role:
    Type: AWS::IAM::Role
    Properties:
      Policies:
        - PolicyDocument:
            Statement:
              - Effect: Allow
                Action:
                  - s3:GetObject
                  - ACTION
                Resource: "*"
"""


def test_iam_wildcards_are_found_only_in_allow_statements(tmp_path):
    strict = scan(write(tmp_path / "strict", {"infra/stack.yaml":
                                              TEMPLATE.replace("ACTION", "s3:PutObject")}))  # fmt: skip
    assert rule(strict, "security.i1").verdict == "met"  # Deny s3:* and the key's root are fine
    for rid in ("security.b2", "security.i2", "security.i3", "env_cicd.i5", "security.b3"):
        assert rule(strict, rid).verdict == "met", rid
    assert rule(strict, "security.a1").verdict == "not_met"  # IaC without VPC endpoints
    loose = scan(
        write(tmp_path / "loose", {"infra/stack.yaml": TEMPLATE.replace("ACTION", "s3:*")})
    )
    wildcard = rule(loose, "security.i1")
    assert wildcard.verdict == "not_met"
    lines = TEMPLATE.splitlines()
    assert wildcard.evidence == [
        f"infra/stack.yaml:{lines.index('                  - ACTION') + 1}"
    ]


def test_a_committed_key_is_found_and_scan_ignore_files_are_skipped(tmp_path):
    key = "AKIA" + "Q" * 16  # built here so that this file holds no key-shaped string
    repo = write(tmp_path, {"settings.py": f"ACCESS = '{key}'\n",
                            "rules.py": "# hdb-mlops: scan-ignore\nimport mlflow\nmlflow.log_metric('x', 1)\n",
                            ".env": "TOKEN=x\n"})  # fmt: skip
    report = scan(repo)
    secrets = rule(report, "security.b1")
    assert secrets.verdict == "not_met"
    assert "settings.py:1" in secrets.evidence and ".env:1" in secrets.evidence
    assert rule(report, "experimentation.i1").verdict == "not_met"  # rules.py is not evidence


def test_ignored_and_virtualenv_folders_are_not_the_project(tmp_path):
    repo = write(tmp_path, {
        ".gitignore": "data/\n*.log\n",
        "data/raw/notes.py": "import mlflow\n",
        "env/pyvenv.cfg": "home = /usr\n",
        "env/lib/site.py": "import mlflow\n",
        "run.log": "mlflow\n",
        "app.py": "print('hi')\n",
        "tests/fixtures/other_repo/train.py": "import mlflow\n",  # the tests' data
    })  # fmt: skip
    index = RepoIndex.build(repo)
    assert [f.path for f in index.files] == [".gitignore", "app.py"]
    assert rule(scan(repo), "storage.b1").verdict == "met"  # data/ is ignored


def test_literal_prefilter_is_a_necessary_condition():
    assert literals(r"\b(deploy\w*|helm (upgrade|install))\b") == ("deploy", "helm ")
    assert literals(r"^\s*schedule:|\bcron\b") == ("schedule:", "cron")
    assert literals(r"[\"']/(health|ping)") is None  # starts with a class: no shortcut
    assert literals(r"a|bc") is None  # a one-letter literal is no filter


# ----------------------------------------------------------------------------- this repository


@pytest.fixture(scope="module")
def this_repo():
    return scan(config.PROJECT_DIR)


def test_this_repository_scan_finds_its_own_evidence(this_repo):
    v = verdicts(this_repo)
    tests = rule(this_repo, "testing.b1")
    assert tests.verdict == "met" and all(e.startswith("tests/") for e in tests.evidence)
    assert this_repo.facts["tests"]["functions"] >= 300
    assert "requirements.lock:1" in rule(this_repo, "env_cicd.i1").evidence
    assert v["testing.i1"] == "met"  # .ci/run -> make test -> pytest
    assert v["testing.i4"] == "met"  # pytest's addopts run nbval on the notebooks
    assert "pyproject.toml:" in " ".join(rule(this_repo, "testing.i4").evidence)
    for rid in ("experimentation.i1", "experimentation.i2", "experimentation.i3",
                "data_pipeline.i1", "data_pipeline.i2", "orchestration.i2", "security.b1"):  # fmt: skip
        assert v[rid] == "met", rid
    assert v["testing.i3"] == "undecided"  # no coverage report given
    assert this_repo.facts["truncated"] is False


def test_this_repository_does_not_count_the_scanners_own_patterns(this_repo):
    skipped = {"hdb_mlops/course/scan_rules.py", "hdb_mlops/course/scan_checks.py",
               "hdb_mlops/course/scan_evidence.py", "hdb_mlops/course/mltestscore.py",
               "tests/test_scan.py", "hdb_mlops/resources/maturity.yaml"}  # fmt: skip
    indexed = {f.path for f in RepoIndex.build(config.PROJECT_DIR).files}
    assert "hdb_mlops/course/scan.py" in indexed and not skipped & indexed
    evidence = {e.split(":")[0] for r in this_repo.rules for e in r.evidence}
    assert not skipped & evidence


# ----------------------------------------------------------------------------- CLI


def test_cli_scan_json_and_text(capsys):
    assert cli.main(["assess", "--scan", str(BARE), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ml_test_score"]["final"] == 0
    assert {c["id"]: c["level"] for c in out["categories"]}["orchestration"] == "basic"
    assert cli.main(["assess", "--scan", str(BARE)]) == 0
    text = capsys.readouterr().out
    assert "ML Test Score (Breck et al. 2017)" in text and "below Basic" in text


def test_cli_scan_refuses_a_report_that_is_not_junit(tmp_path, capsys):
    other = tmp_path / "o.xml"
    other.write_text("<project/>")
    assert cli.main(["assess", "--scan", str(BARE), "--junit", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a JUnit XML report" in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["assess", "--scan", str(tmp_path / "missing")])
    assert exited.value.code == 2
