"""The SHIP-HATS-style .gitlab-ci.yml: schema-valid; one build, on dev only; uat tests and
main deploys the SAME artifact, by digest; and, with gitlab-ci-local's shell executor
against a moto server, the dev -> uat -> prod promotion really runs.

gitlab-ci-local comes from package.json / package-lock.json (``npm ci``, pinned); its shell
executor needs rsync. The runs happen in a temporary git repository holding a copy of
.gitlab-ci.yml, on the branches dev, uat and main; the jobs call this checkout's
``hdb-mlops``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CI_FILE = ROOT / ".gitlab-ci.yml"
GCL = ROOT / "node_modules" / ".bin" / "gitlab-ci-local"
DEV_JOBS = {"build", "validate", "approve_dev", "deploy_dev", "endpoint_check_dev"}
UAT_JOBS = {"uat_validation", "uat_ab_test", "uat_performance", "deploy_uat", "endpoint_check_uat"}
MAIN_JOBS = {"deploy_prod"}


def _config() -> dict:
    return yaml.safe_load(CI_FILE.read_text())


def _jobs() -> dict[str, dict]:
    """Every job with its ``extends`` merged in (hidden templates are not jobs)."""
    config = _config()

    def resolved(name: str) -> dict:
        body = dict(config[name])
        parents = body.pop("extends", [])
        merged: dict = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged.update(resolved(parent))
        merged.update(body)
        return merged

    keywords = {"stages", "variables", "default", "workflow", "include"}
    return {
        name: resolved(name) for name in config if name not in keywords and not name.startswith(".")
    }


def _script(job: dict) -> str:
    return "\n".join(job.get("before_script", []) + job.get("script", []))


def test_the_file_is_valid_against_gitlabs_schema():
    checker = Path(sys.executable).with_name("check-jsonschema")
    out = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.gitlab-ci", str(CI_FILE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_the_dev_build_trains_and_uat_and_main_have_no_build_job():
    jobs = _jobs()
    training = {name for name, job in jobs.items() if "sagemaker run" in _script(job)}
    assert training == {"build"}
    assert [rule["if"] for rule in jobs["build"]["rules"]] == ['$CI_COMMIT_BRANCH == "dev"']
    for name, job in jobs.items():
        ifs = " ".join(rule.get("if", "") for rule in job.get("rules", []))
        if '"uat"' in ifs or '"main"' in ifs:
            assert job["stage"] != "build" and "build/model.tar.gz" not in _script(job), name


def test_artifacts_move_by_digest():
    jobs = _jobs()
    build = _script(jobs["build"])
    assert "sha256sum build/model.tar.gz" in build
    assert jobs["build"]["artifacts"]["reports"]["dotenv"] == "build/digest.env"
    promotions = [
        line for job in jobs.values() for line in job["script"] if "hdb-mlops promote" in line
    ]
    assert len(promotions) == 3
    for line in promotions:
        assert "$ARTIFACT_DIGEST" in line or "$DIGEST_ARGS" in line, line
    # uat tests the artifact dev runs, never a file of its own
    for name in UAT_JOBS - {"deploy_uat", "endpoint_check_uat"}:
        assert "--env dev" in _script(jobs[name]), name


def test_the_dev_deploy_waits_for_a_manual_approval_in_the_registry():
    jobs = _jobs()
    approve = jobs["approve_dev"]
    assert approve["rules"] == [{"if": '$CI_COMMIT_BRANCH == "dev"', "when": "manual"}]
    assert approve["allow_failure"] is False
    assert "sagemaker approve" in _script(approve) and "sha256:$ARTIFACT_DIGEST" in _script(approve)
    assert "approve_dev" in jobs["deploy_dev"]["needs"]
    assert set(jobs["deploy_uat"]["needs"]) == {"uat_validation", "uat_ab_test", "uat_performance"}


# ----------------------------------------------------------------------------- gitlab-ci-local


@pytest.fixture(scope="module")
def gitlab_ci_local() -> Path:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: gitlab-ci-local needs Node.js")
    assert shutil.which("rsync"), (
        "gitlab-ci-local's shell executor needs rsync: apt-get install rsync"
    )
    if not GCL.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, timeout=600)
    return GCL


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.invalid",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.invalid"}  # fmt: skip
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch repository with this checkout's .gitlab-ci.yml, on branch dev."""
    path = tmp_path_factory.mktemp("ci-repo")
    shutil.copy2(CI_FILE, path / ".gitlab-ci.yml")
    _git(path, "init", "-q", "-b", "dev")
    _git(path, "add", ".gitlab-ci.yml")
    _git(path, "commit", "-q", "-m", "the pipeline")
    return path


def _run(gcl: Path, repo: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(gcl), "--home", str(repo.parent / "gcl-home"), "--no-color", *args]
    return subprocess.run(
        command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )


def _list(gcl: Path, repo: Path) -> dict[str, str]:
    out = _run(gcl, repo, "--list-json", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {job["name"]: job["when"] for job in json.loads(out.stdout)}


def _results(log: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^\s*(PASS|FAIL)\s+(\S+)\s*$", log, re.M)}


def test_gitlab_ci_local_sees_the_right_jobs_on_each_branch(gitlab_ci_local, repo):
    expected = {
        "dev": DEV_JOBS,
        "uat": UAT_JOBS,
        "main": MAIN_JOBS,
        "feature/x": {"pipeline_definition"},
    }
    try:
        for branch, jobs in expected.items():
            _git(repo, "checkout", "-q", "-B", branch)
            listed = _list(gitlab_ci_local, repo)
            assert {name for name, when in listed.items() if when != "never"} == jobs, branch
            if branch == "dev":
                assert listed["approve_dev"] == "manual"
    finally:
        _git(repo, "checkout", "-q", "dev")


@pytest.fixture(scope="module")
def promotion(gitlab_ci_local: Path, repo: Path) -> dict:
    """dev (with the manual approval), then uat, then main, against one moto server."""
    pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")
    from hdb_mlops.cloud.backends import moto_server

    with moto_server(fresh=True) as url:
        common = ["--concurrency", "2", "--variable", f"HDB_ENDPOINT_URL={url}",
                  "--variable", "HDB_ROWS=3000", "--variable", "HDB_PARAMS=--param n_estimators=60"]  # fmt: skip
        _git(repo, "checkout", "-q", "dev")
        dev = _run(gitlab_ci_local, repo, *common, "--manual", "approve_dev")
        digest = (repo / "build" / "DIGEST").read_text().strip() if dev.returncode == 0 else ""
        shutil.rmtree(repo / "build", ignore_errors=True)  # uat and main start from a clean tree
        _git(repo, "checkout", "-q", "-B", "uat")
        uat = _run(gitlab_ci_local, repo, *common, "--variable", f"ARTIFACT_DIGEST={digest}")
        _git(repo, "checkout", "-q", "-B", "main")
        main = _run(gitlab_ci_local, repo, *common, "--variable", f"ARTIFACT_DIGEST={digest}")
        refused = _run(gitlab_ci_local, repo, *common, "--variable", f"ARTIFACT_DIGEST={'1' * 64}")
        yield {
            "url": url,
            "digest": digest,
            "dev": dev,
            "uat": uat,
            "main": main,
            "refused": refused,
        }


def _state(url: str) -> tuple[dict, list]:
    from hdb_mlops.cloud import promote
    from hdb_mlops.cloud.backends import open_backend
    from hdb_mlops.cloud.sagemaker import registry

    with open_backend("moto", endpoint_url=url) as ctx:
        return promote.status(promote.store_for(ctx)), registry.list_packages(
            ctx, "hdb-resale-price"
        )


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dev_builds_once_waits_for_approval_and_deploys_the_digest(promotion):
    dev = promotion["dev"]
    assert dev.returncode == 0, dev.stdout[-4000:] + dev.stderr[-2000:]
    assert _results(dev.stdout) == dict.fromkeys(DEV_JOBS, "PASS")
    assert re.fullmatch(r"[0-9a-f]{64}", promotion["digest"])
    environments, packages = _state(promotion["url"])
    assert environments["dev"]["digest"] == promotion["digest"]
    assert [(p.digest, p.status) for p in packages] == [(promotion["digest"], "Approved")]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_uat_tests_and_takes_the_same_artifact_without_a_build(promotion):
    uat = promotion["uat"]
    assert uat.returncode == 0, uat.stdout[-4000:] + uat.stderr[-2000:]
    assert _results(uat.stdout) == dict.fromkeys(UAT_JOBS, "PASS")
    for check in ("validation  PASS", "ab          PASS", "endpoint    PASS"):
        assert check in uat.stdout
    environments, _ = _state(promotion["url"])
    assert environments["uat"]["digest"] == promotion["digest"]
    assert environments["uat"]["source"] == {"environment": "dev"}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_main_only_deploys_to_prod_and_refuses_a_digest_uat_lacks(promotion):
    main, refused = promotion["main"], promotion["refused"]
    assert main.returncode == 0, main.stdout[-4000:] + main.stderr[-2000:]
    assert _results(main.stdout) == {"deploy_prod": "PASS"}
    assert refused.returncode != 0 and _results(refused.stdout) == {"deploy_prod": "FAIL"}
    assert "is not in uat" in refused.stdout
    environments, _ = _state(promotion["url"])
    assert environments["prod"]["digest"] == promotion["digest"]
    assert environments["prod"]["source"] == {"environment": "uat"}
