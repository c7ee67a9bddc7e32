"""The helpers of the chapter 5C and 5F notebooks: the definition read as data and drawn, the
SDK tables, the CI file's jobs by branch, one small build registered and promoted on moto, and
the tables that show all of it by role."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import matplotlib
import pytest

matplotlib.use("Agg")

from hdb_mlops.course import ci_tour, definition_views, release_tour, sagemaker_tour

pytest.importorskip(
    "sagemaker.mlops", reason="the aws extra is not installed: pip install -e '.[aws]'"
)
pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")

from netguard import NetworkGuard

SETTINGS = release_tour.settings_for("moto", n_estimators=30, mape_threshold=12.5)


@pytest.fixture(scope="module")
def definitions() -> dict:
    """The training and the tuning definition, built under the network guard."""
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        training, seen = sagemaker_tour.offline_definition(SETTINGS)
        tuning, _ = sagemaker_tour.offline_definition(replace(SETTINGS, tuning_jobs=3))
    guard.assert_offline(loopback_too=True)
    return {"training": training, "tuning": tuning, "seen": seen}


def test_the_definition_is_built_offline_and_the_watch_saw_nothing(definitions):
    assert definitions["seen"] == []


def test_the_watch_records_lookups_and_connections_and_puts_socket_back():
    import socket

    before = socket.socket.connect, socket.getaddrinfo
    with sagemaker_tour.watched_network() as seen:
        socket.getaddrinfo("127.0.0.1", 9)
        with socket.socket() as sock:
            sock.connect_ex(("127.0.0.1", 9))
    assert ("dns", "127.0.0.1") in seen and ("connect", "127.0.0.1") in seen
    assert (socket.socket.connect, socket.getaddrinfo) == before


def test_dependencies_edges_and_branches(definitions):
    d = definitions["training"]
    assert definition_views.dependencies(d) == {
        "Prepare": [],
        "Train": ["Prepare"],
        "Evaluate": ["Prepare", "Train"],
        "CheckMape": ["Evaluate"],
        "Register": ["Train", "CheckMape"],
        "MapeTooHigh": ["CheckMape"],
    }
    labels = {(e.source, e.target): (e.kind, e.label) for e in definition_views.edges(d)}
    assert labels[("Prepare", "Train")] == ("data", "train, validation")
    assert labels[("Evaluate", "CheckMape")] == ("data", "evaluation.json")
    assert labels[("CheckMape", "Register")] == ("if", "")
    assert labels[("CheckMape", "MapeTooHigh")] == ("else", "")
    tuning = definition_views.dependencies(definitions["tuning"])
    assert tuning["Tune"] == ["Prepare"] and tuning["Evaluate"] == ["Prepare", "Tune"]
    tune_edge = {
        (e.source, e.target): e.label for e in definition_views.edges(definitions["tuning"])
    }
    assert tune_edge[("Tune", "Evaluate")] == "best model.tar.gz"


def test_the_tables_say_what_the_json_says(definitions):
    d = definitions["training"]
    steps = definition_views.steps_table(d)
    assert list(steps.index) == ["Prepare", "Train", "Evaluate", "CheckMape", "Register",
                                 "MapeTooHigh"]  # fmt: skip
    assert steps.loc["Register", "runs"] == "CheckMape true"
    assert steps.loc["MapeTooHigh", "runs"] == "CheckMape false"
    assert steps.loc["Prepare", "reads"] == "InputDataUri"
    assert steps.loc["Evaluate", "reads"] == "model.tar.gz (Train); test (Prepare)"
    params = definition_views.parameters_table(d)
    assert params.loc["MapeThreshold", "default"] == 12.5
    assert params.loc["MapeThreshold", "read by"] == "CheckMape, MapeTooHigh"
    assert params.loc["ModelApprovalStatus", "default"] == "PendingManualApproval"
    condition = definition_views.condition(d)
    assert condition["threshold"] == 12.5 and condition["comparison"] == "LessThanOrEqualTo"
    assert condition["left"].startswith("regression_metrics.mape.value of Evaluate")
    assert (condition["if true"], condition["if false"]) == ("Register", "MapeTooHigh")


def test_a_literal_threshold_and_a_missing_condition():
    d = {"Parameters": [], "Steps": [{"Name": "C", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "GreaterThan", "LeftValue": 1, "RightValue": 3}],
        "IfSteps": [], "ElseSteps": []}}]}  # fmt: skip
    assert definition_views.condition(d)["threshold"] == 3
    with pytest.raises(ValueError, match="no condition step"):
        definition_views.condition({"Parameters": [], "Steps": []})


def test_the_step_graph_draws_every_step_of_both_definitions(definitions):
    import matplotlib.pyplot as plt

    for name in ("training", "tuning"):
        fig = definition_views.draw_step_graph(definitions[name])
        texts = {t.get_text() for t in fig.axes[0].texts}
        steps = {s["Name"] for s, _, _ in definition_views.all_steps(definitions[name])}
        assert steps <= texts and "MAPE ≤ threshold" in texts
        plt.close(fig)


def test_the_sdk_tables_are_checked_by_importing():
    moves = sagemaker_tour.sdk_moves_table()
    v2 = moves[moves["v2 imports"].notna()]
    assert not v2["v2 imports"].astype(bool).any() and v2["3.x imports"].all()
    guide = moves.loc["(migration guide)", "3.x imports"]
    assert not guide.astype(bool).any()
    env = sagemaker_tour.sdk_environment_table("ap-southeast-1")
    assert env.loc["SAGEMAKER_VALIDATE_ROLE", "value"] == "false"
    assert env.loc["SAGEMAKER_USER_CONFIG_OVERRIDE", "value"].startswith("<run folder>")
    assert all(env["why"])
    assert "AWS_ACCESS_KEY_ID" not in sagemaker_tour.sdk_environment_table(offline=False).index
    assert len(sagemaker_tour.playbook_table()) == 8


def test_root_logging_is_put_back():
    root = logging.getLogger()
    before = list(root.handlers), root.level
    with sagemaker_tour.root_logging_kept():
        logging.basicConfig(level=logging.INFO)
    assert (list(root.handlers), root.level) == before


def test_aws_needs_the_accounts_resources():
    with pytest.raises(ValueError, match="role_arn, image_uri, bucket"):
        release_tour.settings_for("aws", n_estimators=10, mape_threshold=10)
    assert SETTINGS.hyperparameters["n_estimators"] == 30
    assert SETTINGS.role_arn.startswith("arn:aws:iam::")


# ----------------------------------------------------------------------------- the CI file


def test_the_ci_jobs_by_branch_are_the_ones_gitlab_ci_local_lists():
    from test_gitlab_ci import DEV_JOBS, MAIN_JOBS, UAT_JOBS

    jobs = ci_tour.ci_jobs()
    assert set(ci_tour.jobs_on(jobs, "dev")) == DEV_JOBS
    assert set(ci_tour.jobs_on(jobs, "uat")) == UAT_JOBS
    assert set(ci_tour.jobs_on(jobs, "main")) == MAIN_JOBS
    assert ci_tour.jobs_on(jobs, "feature/x") == ["pipeline_definition"]
    assert ci_tour.when_on(jobs["approve_dev"], "dev") == "manual"
    summary = ci_tour.branch_summary(jobs)
    assert summary["jobs that build"].to_dict() == {
        "feature/x": "none", "dev": "build", "uat": "none", "main": "none"}  # fmt: skip
    assert summary.loc["main", "promotes to"] == "prod"
    table = ci_tour.jobs_table(jobs)
    assert table.loc["approve_dev", "dev"] == "manual" and table.loc["build", "builds"]
    assert table.loc["uat_ab_test", "checks"] == "ab"


def test_the_rule_reader():
    assert ci_tour.rule_applies('$CI_PIPELINE_SOURCE == "merge_request_event"', "x",
                                "merge_request_event")  # fmt: skip
    feature = "$CI_COMMIT_BRANCH && $CI_COMMIT_BRANCH !~ /^(dev|uat|main)$/"
    assert ci_tour.rule_applies(feature, "feature/x")
    assert not ci_tour.rule_applies(feature, "dev")
    assert ci_tour.rule_applies('$CI_COMMIT_BRANCH != "dev" || $CI_COMMIT_BRANCH =~ /^d/', "dev")
    assert ci_tour.when_on({"rules": [{"if": '$CI_COMMIT_BRANCH == "dev"', "when": "never"}]},
                           "dev") is None  # fmt: skip
    assert ci_tour.when_on({"script": ["x"]}, "any") == "on_success"
    with pytest.raises(ValueError, match="does not understand"):
        ci_tour.rule_applies("$A > 3", "dev")


def test_extends_are_merged_and_hidden_templates_dropped():
    parsed = {
        "stages": ["a"],
        ".base": {"script": ["one"], "stage": "a"},
        ".more": {"extends": ".base", "variables": {"X": "1"}},
        "job": {"extends": [".more"], "script": ["two"]},
    }
    assert ci_tour.ci_jobs(parsed) == {"job": {"script": ["two"], "stage": "a",
                                               "variables": {"X": "1"}}}  # fmt: skip


def test_the_promotion_figure():
    import matplotlib.pyplot as plt

    config = ci_tour.ci_config()
    fig = ci_tour.draw_promotion(ci_tour.ci_jobs(config), config["stages"])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"build", "deploy_prod", "same sha256", "uat"} <= texts
    plt.close(fig)


# ----------------------------------------------------------------------------- a build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small build on a moto server: registered, approved, promoted dev -> uat -> prod."""
    from hdb_mlops.cloud import promote
    from hdb_mlops.cloud.backends import moto_server, open_backend
    from hdb_mlops.cloud.sagemaker import registry

    work = tmp_path_factory.mktemp("release-tour")
    # an empty account: moto keeps one per process, and other modules register in this group
    with (
        moto_server(fresh=True) as url,
        open_backend("moto", endpoint_url=url, prefix="tour") as ctx,
    ):
        b = release_tour.build(ctx, SETTINGS, source="sample", rows=1500, seed=7,
                               run_dir=work / "run")  # fmt: skip
        packages = registry.list_packages(ctx, SETTINGS.model_package_group)
        pending = release_tour.registry_table(packages, b.digest)
        approved = release_tour.approve_build(ctx, SETTINGS, b.digest, note="test")
        store = promote.store_for(ctx)
        promote.promote_in(store, "dev", artifact=b.archive)
        before_uat = release_tour.environments_table(store, b.digest)
        try:
            promote.promote_in(store, "prod", digest=b.digest)
        except promote.PromotionError as exc:
            refused = release_tour.by_role(str(exc), {b.digest: "<build>"})
        promote.promote_in(store, "uat")
        promote.promote_in(store, "prod", digest=b.digest)
        after = release_tour.environments_table(store, b.digest)
    with open_backend("local") as local:
        nothing = release_tour.approve_build(local, SETTINGS, b.digest, note="test")
    return {"build": b, "pending": pending, "approved": approved, "before_uat": before_uat,
            "refused": refused, "after": after, "local": nothing, "work": work}  # fmt: skip


def test_a_build_registers_pending_and_the_approval_finds_it_by_digest(built):
    b = built["build"]
    assert b.run.status == "Succeeded" and b.package.status == "PendingManualApproval"
    assert b.package.digest == b.digest
    assert built["pending"].to_dict("records") == [{
        "status": "PendingManualApproval", "artifact": "this build's",
        "MAPE %": round(b.run.metrics["mape"], 2),
        "within ±10% (%)": round(b.run.metrics["within_10"], 2)}]  # fmt: skip
    assert list(built["approved"]["status"]) == ["Approved"]
    assert "no registry" in built["local"]["status"].iloc[0]


def test_the_run_tables_show_roles_not_paths_or_times(built):
    run = built["build"].run
    steps = release_tour.run_steps_table(run)
    assert list(steps.index) == ["prepare", "train", "evaluate", "CheckMape", "Register"]
    assert steps.loc["CheckMape", "outcome"].endswith("threshold 12.5%: register")
    folders = release_tour.job_folders_table(run)
    assert "/opt/ml/model" in set(folders["in the container"])
    assert not any(str(built["work"]) in text for text in folders.to_numpy().ravel())
    assert (
        "model.joblib" in folders[folders["in the container"] == "/opt/ml/model"]["files"].iloc[0]
    )


def test_promotion_tables_and_the_refused_shortcut(built):
    assert built["refused"] == (
        "artifact <build> is not in uat: promote it there first (prod takes only what uat has)"
    )
    assert built["before_uat"]["runs"].to_dict() == {
        "dev": "this build's artifact", "uat": "nothing yet", "prod": "nothing yet"}  # fmt: skip
    after = built["after"]
    assert set(after["runs"]) == {"this build's artifact"}
    assert after["came from"].to_dict() == {"dev": "the build job", "uat": "env dev",
                                            "prod": "env uat"}  # fmt: skip


def test_the_pipeline_scripts_give_the_local_paths_model(built, tmp_path):
    b = built["build"]
    local = release_tour.train_local_path(SETTINGS, source="sample", rows=1500, seed=7,
                                          work=tmp_path / "local")  # fmt: skip
    metrics, same = release_tour.comparison(b.run, local)
    assert same["identical"].all(), same
    assert metrics.iloc[0].equals(metrics.iloc[1])


def test_checks_are_shown_as_verdicts():
    results = [
        {"check": "validation", "passed": True, "mape": 7.3123, "threshold": 10.0, "rows": 119,
         "cutoff": "2026-04"},
        {"check": "ab", "passed": False, "candidate_mape": 8.0, "incumbent_mape": 7.0,
         "margin": 0.05, "rows": 50},
        {"check": "endpoint", "passed": True, "ping": 200, "predictions_agree": True, "rows": 20,
         "p50_ms": 3.21, "p99_ms": 9.87, "p99_budget_ms": 250.0},
    ]  # fmt: skip
    table = release_tour.checks_table(results)
    assert table["passed"].to_dict() == {"validation": True, "ab": False, "endpoint": True}
    assert (
        table.loc["validation", "on what"]
        == "MAPE 7.31% (threshold 10%) on 119 sales after 2026-04"
    )
    assert "candidate 8.00% vs incumbent 7.00% (margin 5%)" in table.loc["ab", "on what"]
    assert "9.87" not in table.loc["endpoint", "on what"]
    assert "p99 within 250 ms: True" in table.loc["endpoint", "on what"]


def test_by_role_replaces_a_digest_and_its_short_form():
    digest = "ab" * 32
    text = f"{digest} and {digest[:12]} and /tmp/x"
    assert release_tour.by_role(text, {digest: "<d>", "/tmp/x": "<tmp>"}) == "<d> and <d> and <tmp>"
    assert json.dumps(release_tour.by_role("nothing", {digest: "<d>"})) == '"nothing"'
