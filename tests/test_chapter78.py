"""hdb-mlops: scan-ignore (tables about the scan, written out as test data)

The display helpers of chapters 7 and 8 (``hdb_mlops.course.chapter78``): the framework's
tables, the fictional team's answers, two scans side by side, the masking of a model card and
the fairness summary, each checked against the modules it arranges."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from hdb_mlops.course import chapter78, fairness, maturity
from hdb_mlops.course.scan import scan

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def framework() -> maturity.Framework:
    return maturity.load_framework()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    """The bare fixture, and a copy of it with a README, a test and CI that runs it."""
    root = tmp_path_factory.mktemp("repo")
    for path in chapter78.BARE_REPOSITORY.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    (root / "README.md").write_text("Set up: pip install -r requirements.txt\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_train.py").write_text("def test_one():\n    assert True\n")
    (root / ".gitlab-ci.yml").write_text("test:\n  script:\n    - pytest\n")
    return {"bare": scan(chapter78.BARE_REPOSITORY), "better": scan(root)}


def test_framework_tables(framework):
    levels = chapter78.levels_table()
    assert levels.index.tolist() == ["Basic", "Intermediate", "Advanced"]
    assert levels["playbook"].tolist() == ["L1", "L2", "L3"]
    categories = chapter78.categories_table(framework)
    assert categories.index.tolist() == [c.name for c in framework.categories]
    assert categories[["Basic", "Intermediate", "Advanced"]].to_numpy().sum() == len(
        framework.evidence
    )
    assert categories.loc["Environment & CI/CD Setup", "playbook"] == "described"
    env = chapter78.statements_table("env_cicd", framework)
    assert env.index.tolist() == [e.id for e in framework.category("env_cicd").evidence]
    assert env.loc["env_cicd.b1", "level"] == "Basic"


def test_the_fictional_team_scores_as_its_answers_say(framework):
    team = chapter78.example_assessment()
    unchecked = chapter78.example_assessment(validate=False)
    assert [c.to_dict() for c in unchecked.categories] == [c.to_dict() for c in team.categories]
    assert (unchecked.team, unchecked.date) == (team.team, team.date)
    levels = {c.id: c.level for c in team.categories}
    assert levels["security"] is None  # one partial answer at Basic: security.b3
    assert levels["optimization"] == "basic" and levels["experimentation"] == "intermediate"
    assert team.team.endswith("a shared data engineer")
    roadmap = chapter78.roadmap_table(team.categories, steps=2)
    security = roadmap.loc["Networking & Security"]
    assert security["missing"].tolist() == ["b3"] and security["aims for"].tolist() == ["Basic"]
    by_id = {c.id: c for c in team.categories}
    first = roadmap.xs(1, level="#")
    for result in team.categories:
        assert first.loc[result.name, "step"] == result.steps[0].step
    owners = chapter78.owners_table(team.categories)
    assert set(owners["leads"]) <= {"tech lead", "data scientist", "ML engineer", "data engineer"}
    assert owners.loc[by_id["storage"].name, "leads"] == "data engineer"


def test_every_statement_a_scan_can_leave_undecided_says_where_else_to_look(framework, reports):
    assert set(chapter78.ELSEWHERE) <= set(framework.evidence)
    bare_undecided = {r.id for r in reports["bare"].undecided}
    assert bare_undecided and bare_undecided <= set(chapter78.ELSEWHERE)
    table = chapter78.undecided_side_by_side(reports)
    assert set(table.index) == bare_undecided | {r.id for r in reports["better"].undecided}
    assert (table["where else the evidence may be"] != chapter78.ELSEWHERE_DEFAULT).all()


def test_two_scans_side_by_side(reports):
    summary = chapter78.scan_summary(reports)
    for label, report in reports.items():
        assert summary.loc[label, "met"] == len(report.by_verdict("met"))
        assert summary.loc[label, ["met", "not_met", "undecided"]].sum() == len(report.rules)
    differences = chapter78.verdicts_side_by_side(reports)
    assert differences.loc["env_cicd.b2"].tolist() == ["basic", "not_met", "met"]
    assert differences.loc["testing.b1", "better"] == "met"
    assert "env_cicd.b1" not in differences.index  # met in both
    testing = chapter78.verdicts_side_by_side(reports, differences_only=False, category="testing")
    assert testing.index.str.startswith("testing.").all() and len(testing) == 9
    side = chapter78.categories_side_by_side(reports)
    env = side.loc["Environment & CI/CD Setup"]
    assert env[("bare", "level")] == "below Basic" and env[("better", "level")] == "Basic"
    assert env[("bare", "met/not/undecided")] == "1/7/2"


def test_ml_test_score_tables(reports):
    sections = chapter78.ml_test_sections(reports)
    assert sections.loc["final (lowest)", "bare"] == 0.0
    assert (
        sections["bare"].drop("final (lowest)").to_dict() == reports["bare"].ml_test_score.sections
    )
    tests = chapter78.ml_tests_side_by_side(reports)
    assert len(tests) == 28 and set(tests["bare"]) <= {"automated", "manual", "none", "unknown"}
    beside = chapter78.ml_test_beside_categories(reports)
    assert beside.loc[("data", "Data Pipeline"), ("bare", "section points")] == 0.0
    assert beside.loc[("data", "Data Pipeline"), ("bare", "level")] == "below Basic"


def test_the_evidence_table_lists_locations(reports):
    table = chapter78.evidence_table(reports["better"], verdict="met")
    assert (table["verdict"] == "met").all()
    assert table.loc["env_cicd.b1", "evidence"] == "requirements.txt:1"


def test_stable_card_masks_what_changes_on_every_run():
    data_hash = "ab" * 32
    text = (
        "created 2026-12-01T11:53:53.484000+00:00; run `0e994e3ccc724ed3b1d477305c329197`\n"
        f"Data hash `{data_hash}`; bundle `{'cd' * 32}`; commit `{'e' * 40}` (uncommitted changes)\n"
        "Created 2026-12-01T11:53:23+00:00. Cite as v1 (2026-12-01). MAPE 7.03%."
    )
    masked = chapter78.stable_card(text, keep=(data_hash,))
    assert masked == (
        "created <timestamp>; run `<run id>`\n"
        f"Data hash `{data_hash}`; bundle `<sha256>`; commit `<git commit>`\n"
        "Created <timestamp>. Cite as v1 (<date>). MAPE 7.03%."
    )


# errors (%): A +10, -10, 0, +4 | B -20, -5, -2, -1 | C +50 (one sale: too small to rank)
FRAME = pd.DataFrame(
    {
        "resale_price": [100.0, 200.0, 300.0, 500.0, 100.0, 400.0, 500.0, 1000.0, 200.0],
        "prediction": [110.0, 180.0, 300.0, 520.0, 80.0, 380.0, 490.0, 990.0, 300.0],
        "town": ["A", "A", "A", "A", "B", "B", "B", "B", "C"],
    }
)


def test_fairness_summary_and_figure_by_hand():
    result = fairness.group_fairness(FRAME, "town", min_n=3, n_boot=100, seed=1)
    summary = chapter78.fairness_summary({"town": result})
    mape, bias = summary.loc[("town", "mape")], summary.loc[("town", "mean_pct_error")]
    assert (mape["lowest"], mape["highest"], mape["difference"]) == ("A", "B", 1.0)  # 6 % vs 7 %
    assert mape["ratio"] == f"{6 / 7:.2f}" and mape["groups ranked"] == 2 and mape["too small"] == 1
    # bias: B is under-valued (-7 %), A over-valued (+1 %); C's +50 % is not ranked
    assert (bias["lowest"], bias["highest"], bias["difference"]) == ("B", "A", 8.0)
    assert bias["ratio"] == ""
    low, high = (float(x) for x in mape["95% interval"].split(" to "))
    assert low <= 1.0 <= high  # the gap of the two towns, re-measured in each draw
    no_boot = fairness.group_fairness(FRAME, "town", min_n=3, n_boot=0)
    assert chapter78.fairness_summary({"town": no_boot}).loc[("town", "mape"), "95% interval"] == ""
    fig = chapter78.fairness_figure(result, overall_mape=7.0, source="sample")
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks["A"] > ticks["B"] > ticks["C *"]  # best at the top, the small group last
    assert len(fig.axes) == 2
