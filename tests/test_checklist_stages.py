"""Chapters 1 and 2: the self-check checklist's routing and its errors, and the stages table
(our stages, the capabilities and their commands, the frameworks' levels) holding together."""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

from hdb_mlops import config
from hdb_mlops.course import checklist, stages
from hdb_mlops.course.checklist import ChecklistError
from hdb_mlops.course.stages import StagesError

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = (
    "model_complexity",
    "update_frequency",
    "failure_impact",
    "prediction_volume",
    "maintenance_cost",
    "unused_data",
)
NO_NEED = {
    "model_complexity": "simple",
    "update_frequency": "rarely",
    "failure_impact": "low",
    "prediction_volume": "batch",
    "maintenance_cost": "none",
    "unused_data": "no",
}


# ------------------------------------------------------------------------------ checklist


def test_the_checklist_asks_the_playbooks_six_questions():
    assert tuple(q.id for q in checklist.questions()) == QUESTIONS
    topics = {q.topic for q in checklist.questions()}
    assert topics == {
        "model complexity",
        "update frequency",
        "impact of failure",
        "prediction volume",
        "cost of maintenance",
        "an under-used data lake",
    }
    for question in checklist.questions():
        weights = [a.weight for a in question.answers.values()]
        assert weights[0] == 0 and max(weights) > 0, f"{question.id}: {weights}"
        assert weights == sorted(weights), f"{question.id}: answers go from no need to a strong one"


def test_the_hdb_case_reads_training_data_and_monitoring_first():
    result = checklist.assess(checklist.hdb_case())
    assert result.needs_mlops
    assert result.first == ("5B", "5A", "6")
    assert result.unanswered == ()
    assert result.summary() == "MLOps would pay off here. Read chapters 5B, 5A, 6 first."
    table = result.table()
    assert list(table.index[:3]) == ["5B", "5A", "6"]
    assert table["read first"].tolist()[:4] == ["yes", "yes", "yes", ""]
    assert table["score"].is_monotonic_decreasing
    assert "(update frequency)" in table.loc["6", "why"]


def test_no_need_means_no_reading_list():
    result = checklist.assess(NO_NEED)
    assert not result.needs_mlops
    assert result.chapters == () and result.first == ()
    assert "a notebook may be enough" in result.summary()


def test_ties_are_read_in_course_order_and_chapter_2_comes_with_any_need():
    result = checklist.assess({"update_frequency": "weekly"})
    scores = {r.chapter: r.score for r in result.chapters}
    assert scores == {"5A": 2, "5B": 2, "5C-5F": 2, "6": 2, "2": 1}
    assert result.first == ("5A", "5B", "5C-5F")
    assert [r.chapter for r in result.chapters][-1] == "2"
    assert len(result.unanswered) == 5


@pytest.mark.parametrize("question", QUESTIONS)
def test_each_answer_scores_its_weight_for_each_chapter_it_names(question):
    for answer in checklist.load().question(question).answers.values():
        result = checklist.assess({question: answer.id})
        expected = {chapter: answer.weight for chapter, _ in answer.points_to}
        if answer.weight:
            expected["2"] = expected.get("2", 0) + 1
        assert {r.chapter: r.score for r in result.chapters} == expected, answer.id
        for rec in result.chapters:
            assert rec.title == stages.chapters()[rec.chapter].title
            assert rec.reasons and all(rec.reasons)


def test_answers_are_trimmed_and_lower_cased_and_none_is_unanswered():
    clean = checklist.validate({"update_frequency": " Monthly ", "unused_data": None})
    assert clean == {"update_frequency": "monthly"}
    result = checklist.assess({"update_frequency": " Monthly ", "unused_data": None})
    assert "unused_data" in result.unanswered


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            {"update_freq": "monthly"},
            r"^'update_freq' is not a question of the checklist; the questions are: "
            r"model_complexity, update_frequency, failure_impact, prediction_volume, "
            r"maintenance_cost, unused_data$",
        ),
        (
            {"update_frequency": "often"},
            r"^update_frequency: 'often' is not an answer; choose one of: rarely, yearly, "
            r"monthly, weekly$",
        ),
        ({"unused_data": True}, r"^unused_data: True is not an answer; .*no, yes \(a string"),
        ({"failure_impact": ...}, r"^failure_impact: Ellipsis is not an answer"),
        (["update_frequency"], r"must be a dict of question id -> answer, not list"),
    ],
)
def test_a_bad_answer_sheet_names_the_id_and_the_allowed_values(answers, message):
    with pytest.raises(ChecklistError, match=message):
        checklist.assess(answers)


def test_the_questions_table_lists_the_allowed_answers_and_the_ones_given():
    bare = checklist.questions_table()
    assert list(bare.index) == list(QUESTIONS) and "answer" not in bare.columns
    assert "monthly: every month or quarter" in bare.loc["update_frequency", "allowed answers"]
    given = checklist.questions_table({"failure_impact": "high"})
    assert given.loc["failure_impact", "answer"] == "high"
    assert given.loc["unused_data", "answer"] == "(unanswered)"


def test_chapter_1_parameters_are_the_hdb_case():
    nb = json.loads((config.NOTEBOOKS_DIR / "01_case_for_mlops.ipynb").read_text())
    [cell] = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            values[node.targets[0].id] = node.value.value
    assert {q: values[q] for q in QUESTIONS} == checklist.hdb_case()


def test_a_checklist_file_that_does_not_hold_together_is_refused(tmp_path):
    text = checklist.CHECKLIST_FILE.read_text()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(text.replace('{chapter: "8",', '{chapter: "9",', 1))
    with pytest.raises(ChecklistError, match=r"unknown chapters \['9'\]"):
        checklist.load(unknown)
    comma = tmp_path / "comma.yaml"  # an unquoted comma splits a YAML flow mapping
    comma.write_text(re.sub(r'why: "([^"]*), ([^"]*)"', r"why: \1, \2", text, count=1))
    with pytest.raises(ChecklistError, match="points_to needs chapter and why"):
        checklist.load(comma)
    bad_case = tmp_path / "case.yaml"
    bad_case.write_text(text.replace("update_frequency: monthly", "update_frequency: often"))
    with pytest.raises(ChecklistError, match="update_frequency: 'often'"):
        checklist.load(bad_case)


def test_the_widget_follows_its_drop_downs():
    pytest.importorskip("ipywidgets")
    form = checklist.widget()
    *pickers, out = form.children
    assert [p.value for p in pickers] == [checklist.hdb_case()[q] for q in QUESTIONS]
    pickers[1].value = "weekly"  # the observer re-assesses without an error
    pickers[1].value = None
    assert out is not None


# --------------------------------------------------------------------------------- stages


def test_our_stages_are_0_to_3_with_their_chapters():
    defs = stages.stage_definitions()
    assert [s.stage for s in defs] == [0, 1, 2, 3]
    assert [s.label for s in defs][1] == "Stage 1 · Repeatable"
    assert stages.stages_table().shape[0] == 4
    known = stages.chapters()
    assert all(ch in known for s in defs for ch in s.chapters)
    for s in defs[1:]:
        assert stages.capabilities(s.stage), f"Stage {s.stage} adds no capability"


EXPECTED_LEVELS = {
    "microsoft": [
        ("0", "No MLOps"),
        ("1", "DevOps but no MLOps"),
        ("2", "Automated Training"),
        ("3", "Automated Model Deployment"),
        ("4", "Full MLOps Automated Operations"),
    ],
    "google": [
        ("0", "Manual process"),
        ("1", "ML pipeline automation"),
        ("2", "CI/CD pipeline automation"),
    ],
    "aws": [
        ("Initial", "Initial"),
        ("Repeatable", "Repeatable"),
        ("Reliable", "Reliable"),
        ("Scalable", "Scalable"),
    ],
}


def test_every_framework_level_appears_once_in_order():
    assert set(stages.frameworks()) == set(EXPECTED_LEVELS)
    for key, expected in EXPECTED_LEVELS.items():
        assert [(lv.level, lv.name) for lv in stages.levels(key)] == expected
    pairs = [(lv.framework, lv.level) for lv in stages.levels()]
    assert len(pairs) == len(set(pairs)) == 12
    table = stages.frameworks_table()
    assert table.shape[0] == 12 and table.index.is_unique


@pytest.mark.parametrize("framework", sorted(EXPECTED_LEVELS))
def test_each_stage_maps_to_a_level_of_each_framework_and_levels_climb(framework):
    own = stages.levels(framework)
    for stage in stages.STAGE_NUMBERS:
        assert any(stage in lv.stages for lv in own), f"{framework}: nothing covers Stage {stage}"
    firsts, lasts = [min(lv.stages) for lv in own], [max(lv.stages) for lv in own]
    assert firsts == sorted(firsts) and lasts == sorted(lasts), "a higher level maps lower"
    for lv in own:
        assert sorted(lv.stages) == list(range(min(lv.stages), max(lv.stages) + 1)), lv
        assert lv.summary and lv.summary.endswith(".")


def test_every_framework_names_its_source():
    sources = stages.load().sources
    for key in stages.frameworks():
        source = sources[key]
        assert source.title and source.publisher and source.url.startswith("https://"), key
    assert "Microsoft" in sources["microsoft"].publisher
    assert "Google" in sources["google"].publisher
    assert "AWS" in sources["aws"].publisher


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.M))


def test_every_command_exists():
    from hdb_mlops.cli import build_parser

    parser = build_parser()
    targets = _make_targets()
    broken = []
    for cap in stages.capabilities():
        words = shlex.split(cap.command)
        assert words[0] in ("hdb-mlops", "make"), cap.command
        if words[0] == "make":
            if words[1] not in targets:
                broken.append(cap.command)
            continue
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            broken.append(cap.command)
    assert broken == [], "commands the CLI or the Makefile does not have"


def test_every_chapter_and_capability_has_its_notebook():
    for chapter in stages.chapters().values():
        assert chapter.notebook, chapter
        assert (config.NOTEBOOKS_DIR / f"{chapter.notebook}.ipynb").is_file(), chapter
    for cap in stages.capabilities():
        path = config.PROJECT_DIR / stages.notebook_of(cap)
        assert path.is_file(), cap
        # the notebook is one of its chapter's: 06b teaches chapter 6, not chapter 5
        first = stages.chapters()[cap.chapter].notebook
        assert path.stem[:2] == first[:2], cap


def test_stage_of_places_a_team_by_its_complete_stages():
    stage1 = [c.id for c in stages.capabilities(1)]
    everything = [c.id for c in stages.capabilities()]
    none = stages.stage_of([])
    assert (none.stage, none.next_stage) == (0, 1) and none.missing == tuple(stage1)
    assert stages.stage_of(stage1).stage == 1
    top = stages.stage_of(everything)
    assert (top.stage, top.missing, top.next_stage) == (3, (), None)
    early = stages.stage_of([*stage1[1:], "monitoring"])
    assert early.stage == 0 and early.missing == (stage1[0],) and early.ahead == ("monitoring",)
    gap = stages.stage_of([c for c in everything if c != "environment_promotion"])
    assert (gap.stage, gap.missing) == (1, ("environment_promotion",))
    assert "drift_detection" in gap.ahead


def test_unknown_ids_are_refused_with_the_known_ones():
    with pytest.raises(StagesError, match=r"unknown capabilities \['ci'\]; the capabilities are: "):
        stages.stage_of(["ci", "model_api"])
    with pytest.raises(StagesError, match="no stage 4: the stages are 0, 1, 2 and 3"):
        stages.capabilities(4)
    with pytest.raises(StagesError, match="no framework 'azure'; choose one of: microsoft"):
        stages.levels("azure")


def test_a_stages_file_that_does_not_hold_together_is_refused(tmp_path):
    text = stages.STAGES_FILE.read_text()
    broken = tmp_path / "stages.yaml"
    broken.write_text(
        text.replace("        stages: [3]\n", "        stages: [5]\n", 1).replace(
            "  - id: drift_detection", "  - id: monitoring", 1
        )
    )
    with pytest.raises(StagesError) as exc:
        stages.load(broken)
    assert "capability 'monitoring' twice" in str(exc.value)
    assert "microsoft 4: stages (5,) not in 0-3" in str(exc.value)


def test_the_tables_show_status_and_evidence():
    caps = stages.capabilities_table()
    assert caps.loc["model_api", "notebook"] == "notebooks/03_first_deployment.ipynb"
    assert caps.loc["build_pipeline", "notebook"] == "notebooks/05c_sagemaker_pipeline.ipynb"
    assert caps.loc["environment_promotion", "notebook"] == "notebooks/05f_build_and_deploy.ipynb"
    progress = stages.progress_table({1: "ran above"})
    assert progress.loc["Stage 1 · Repeatable", "here"] == "ran above"
    assert progress.loc["Stage 0 · Manual", "here"] == "shown in chapter 1"
    assert progress.loc["Stage 2 · Automated", "here"] == "shown in chapter 4, 5C–5F"
    assert "hdb-mlops train" in progress.loc["Stage 1 · Repeatable", "commands"]


def test_the_diagram_draws_a_box_per_stage_and_per_level():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = stages.diagram()
    try:
        [ax] = fig.axes
        assert len(ax.patches) == 4 + 12
        texts = {t.get_text() for t in ax.texts}
        assert {"Microsoft", "Google", "AWS", "our stages"} <= texts
    finally:
        plt.close(fig)
