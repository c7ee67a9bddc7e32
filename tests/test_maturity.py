"""hdb-mlops: scan-ignore (answers and statements written out as test data)

The maturity framework (chapter 7) and the questionnaire: the ten categories as the playbook
names them, the scoring rules by hand, the template a user fills in, every error in a bad
answers file at once, the radar chart and the ``hdb-mlops assess`` verbs."""

from __future__ import annotations

import json

import pytest
import yaml

from hdb_mlops import cli
from hdb_mlops.course import maturity, questionnaire
from hdb_mlops.course.maturity import LEVELS, Category, Evidence, Step

PLAYBOOK_CATEGORIES = [
    "Environment & CI/CD Setup",
    "Networking & Security",
    "Data Storage",
    "Data Pipeline",
    "Orchestration & ML Pipeline Deployment",
    "Data Testing & Unit Testing",
    "Model Monitoring & System Observability",
    "ML/Infra Optimization",
    "Feedback Loop & Model Re-Training",
    "Experimentation & Model Evaluation",
]


@pytest.fixture(scope="module")
def framework() -> maturity.Framework:
    return maturity.load_framework()


def filled(framework: maturity.Framework, answer: str = "yes") -> dict:
    """The template, parsed, with every question answered ``answer``."""
    data = yaml.safe_load(questionnaire.template_text(framework))
    for category in data["categories"].values():
        for qid in category["answers"]:
            category["answers"][qid] = answer
    return data


# ----------------------------------------------------------------------------- framework


def test_the_ten_categories_are_the_playbooks_in_its_order(framework):
    assert [c.name for c in framework.categories] == PLAYBOOK_CATEGORIES
    for category in framework.categories:
        for level in LEVELS:
            assert category.at(level), f"{category.id} has no {level} evidence"
        assert category.playbook in ("described", "partly described", "silent")
        assert category.playbook_note, f"{category.id} does not say what the playbook says"
    # the two categories the playbook describes say so; the others say it is silent
    playbook = {c.id: c.playbook for c in framework.categories}
    assert playbook.pop("env_cicd") == "described"
    assert playbook.pop("security") == "partly described"
    assert set(playbook.values()) == {"silent"}


def test_every_statement_has_a_question_and_a_roadmap_step_that_closes_it(framework):
    questions = questionnaire.load_questions()
    assert set(questions) == set(framework.evidence)
    below = {"basic": "none", "intermediate": "basic", "advanced": "intermediate"}
    for category in framework.categories:
        for evidence in category.evidence:
            steps = category.roadmap[below[evidence.level]]
            assert any(evidence.id in step.closes for step in steps), evidence.id
            assert questions[evidence.id]["ask"].endswith("?")


def test_a_malformed_roadmap_step_is_refused_with_its_category(tmp_path):
    text = maturity.FRAMEWORK_FILE.read_text()
    # an unquoted comma inside a flow mapping splits the step: the loader must notice
    broken = text.replace('"Fix the seeds of the split and the model"', "Fix the seeds, twice")
    path = tmp_path / "maturity.yaml"
    path.write_text(broken)
    with pytest.raises(ValueError, match="roadmap step of experimentation is malformed"):
        maturity.load_framework(path)


# ----------------------------------------------------------------------------- scoring


def _category() -> Category:
    evidence = (
        Evidence("c.b1", "c", "basic", "b1"),
        Evidence("c.b2", "c", "basic", "b2"),
        Evidence("c.i1", "c", "intermediate", "i1", weight=2.0),
        Evidence("c.a1", "c", "advanced", "a1"),
    )
    roadmap = {
        "none": (Step("do b1", closes=("c.b1",)), Step("do b2", closes=("c.b2",))),
        "basic": (Step("do i1", closes=("c.i1",)),),
        "intermediate": (Step("do a1", closes=("c.a1",)),),
        "advanced": (Step("keep going"),),
    }
    return Category("c", "C", "silent", "", evidence, roadmap)


def test_level_is_the_highest_with_all_statements_met_at_and_below():
    c = _category()
    assert maturity.level_reached(c, {"c.b1": 1, "c.b2": 1, "c.i1": 0.5, "c.a1": 1}) == "basic"
    # intermediate and advanced met do not count while Basic is not
    assert maturity.level_reached(c, {"c.b1": 1, "c.b2": 0, "c.i1": 1, "c.a1": 1}) is None
    assert maturity.level_reached(c, {"c.b1": 1, "c.b2": None, "c.i1": 1}) is None
    assert maturity.level_reached(c, dict.fromkeys(["c.b1", "c.b2", "c.i1", "c.a1"], 1)) == (
        "advanced"
    )


def test_score_is_the_weighted_share_of_credit_undecided_counting_zero():
    c = _category()
    credits = {"c.b1": 1, "c.b2": 0.5, "c.i1": 1, "c.a1": None}
    # weights 1 + 1 + 2 + 1 = 5; credit 1 + 0.5 + 2 + 0 = 3.5
    assert maturity.category_score(c, credits) == pytest.approx(70.0)


def test_next_steps_close_what_the_next_level_misses():
    c = _category()
    result = maturity.assess_category(c, {"c.b1": 1, "c.b2": 1, "c.i1": 0, "c.a1": 1})
    assert result.level == "basic"
    assert [e.id for e in result.missing] == ["c.i1"]
    assert [s.step for s in result.steps] == ["do i1"]
    below = maturity.assess_category(c, {"c.b1": 0, "c.b2": 1, "c.i1": 1, "c.a1": 1})
    assert below.level_name == "below Basic"
    assert [s.step for s in below.steps] == ["do b1"]
    top = maturity.assess_category(c, dict.fromkeys(["c.b1", "c.b2", "c.i1", "c.a1"], 1))
    assert top.missing == [] and [s.step for s in top.steps] == ["keep going"]


# ----------------------------------------------------------------------------- questionnaire


def test_the_template_parses_and_lists_every_question_unanswered(framework):
    data = yaml.safe_load(questionnaire.template_text(framework))
    assert list(data["categories"]) == [c.id for c in framework.categories]
    for category in framework.categories:
        entry = data["categories"][category.id]
        assert entry["level"] is None
        assert list(entry["answers"]) == [e.id for e in category.evidence]
        assert set(entry["answers"].values()) == {None}
    errors = questionnaire.validate(data, framework)
    assert len(errors) == len(framework.evidence)  # every question, not just the first


def test_answers_score_by_hand(framework):
    data = filled(framework, "yes")
    env = data["categories"]["env_cicd"]["answers"]
    env["env_cicd.b2"] = "partial"  # Basic not reached, score 9.5 / 10
    data["categories"]["security"] = {"level": "intermediate", "answers": None}
    data["categories"]["storage"] = {"level": "none", "answers": None}
    result = {c.id: c for c in questionnaire.assess_answers(data, framework).categories}
    assert result["env_cicd"].level is None
    assert result["env_cicd"].score == pytest.approx(95.0)
    assert result["env_cicd"].missing[0].id == "env_cicd.b2"
    security = framework.category("security")
    expected = (
        100
        * (len(security.at("basic")) + len(security.at("intermediate")))
        / len(security.evidence)
    )
    assert result["security"].level == "intermediate"
    assert result["security"].score == pytest.approx(expected)
    assert result["storage"].level is None and result["storage"].score == 0
    assert result["testing"].level == "advanced" and result["testing"].score == 100


def test_unquoted_yes_and_no_work_although_yaml_reads_them_as_booleans(framework):
    text = questionnaire.template_text(framework)
    lines = [
        line + (" yes" if ".b" in line else " no") if line.strip().endswith(":") and "." in line
        else line
        for line in text.splitlines()
    ]  # fmt: skip
    data = yaml.safe_load("\n".join(lines))
    assert data["categories"]["env_cicd"]["answers"]["env_cicd.b1"] is True  # YAML 1.1
    result = questionnaire.assess_answers(data, framework)
    assert {c.level for c in result.categories} == {"basic"}


def test_every_error_names_the_question_and_the_allowed_answers(framework):
    data = filled(framework)
    data["categories"]["env_cicd"]["answers"]["env_cicd.b1"] = "maybe"
    data["categories"]["env_cicd"]["answers"]["env_cicd.b2"] = None
    data["categories"]["security"]["level"] = "expert"
    data["categories"]["storage"]["level"] = "basic"  # and answers: both given
    data["categories"]["testing"]["answers"]["testing.z9"] = "yes"
    data["categories"]["bogus"] = {}
    del data["categories"]["feedback"]
    with pytest.raises(questionnaire.QuestionnaireError) as caught:
        questionnaire.assess_answers(data, framework)
    errors = caught.value.errors
    text = "\n".join(errors)
    assert "question env_cicd.b1: 'maybe' is not allowed (use one of: yes, partial, no)" in text
    assert "question env_cicd.b2 has no answer (use yes, partial or no" in text
    assert "category security: level: 'expert' is not allowed" in text
    assert "none, basic, intermediate, advanced" in text
    assert "category storage: give either its level or its answers, not both" in text
    assert "unknown question(s) testing.z9" in text and "testing.b1" in text
    assert "unknown category bogus" in text and "env_cicd" in text
    assert "category feedback (Feedback Loop & Model Re-Training) is missing" in text
    # security has answers too, so its level (even a wrong one) conflicts with them
    assert "category security: give either its level or its answers" in text
    assert len(errors) == 8


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "answers.yaml"
    path.write_text("categories:\n  env_cicd:\n    answers: [yes\n")
    with pytest.raises(questionnaire.QuestionnaireError, match="not valid YAML at line"):
        questionnaire.load_answers(path)


def test_radar_chart_draws_the_ten_scores(framework):
    import matplotlib

    matplotlib.use("Agg")
    results = questionnaire.assess_answers(filled(framework, "partial"), framework).categories
    fig = questionnaire.radar_chart(results, compare=results, labels=("self", "scan"))
    ax = fig.axes[0]
    assert ax.name == "polar"
    assert len(ax.get_xticks()) == 10
    line = ax.get_lines()[0]
    assert list(line.get_ydata())[:10] == [r.score for r in results] == [50.0] * 10
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["self", "scan"]


# ----------------------------------------------------------------------------- CLI


def test_cli_template_answers_json_and_chart(tmp_path, capsys, framework):
    template = tmp_path / "answers.yaml"
    assert cli.main(["assess", "template", "--out", str(template)]) == 0
    data = yaml.safe_load(template.read_text())
    for category in data["categories"].values():
        category["answers"] = dict.fromkeys(category["answers"], "yes")
    data["categories"]["monitoring"] = {"level": "basic", "answers": None}
    template.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    chart = tmp_path / "radar.png"
    assert cli.main(["assess", "--answers", str(template), "--json", "--chart", str(chart)]) == 0
    out = json.loads(capsys.readouterr().out)
    levels = {c["id"]: c["level"] for c in out["categories"]}
    assert levels["monitoring"] == "basic" and levels["env_cicd"] == "advanced"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_answers_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "answers.yaml"
    path.write_text("categories:\n  env_cicd:\n    level: expert\n")
    assert cli.main(["assess", "--answers", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "category env_cicd: level: 'expert' is not allowed" in err
    assert cli.main(["assess"]) == 2
    assert "give --scan PATH or --answers FILE" in capsys.readouterr().err
