"""hdb-mlops: scan-ignore (this file writes the patterns the scanner looks for)

Google's ML Test Score from a repository scan: the rubric's shape (28 tests, 7 a section),
its arithmetic (0.5 manual, 1 automated, the final score the lowest section), and when a
test counts as automated: only where the evidence runs by itself (CI-run tests, alert rules)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hdb_mlops.course import mltestscore
from hdb_mlops.course.mltestscore import MLTestScore, TestResult
from hdb_mlops.course.scan import scan

BARE = Path(__file__).parent / "fixtures" / "repos" / "bare"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def status(report, test_id: str) -> str:
    return next(t.status for t in report.ml_test_score.tests if t.id == test_id)


def test_the_rubric_has_28_tests_seven_per_section():
    assert len(mltestscore.TESTS) == 28
    assert Counter(t.section for t in mltestscore.TESTS) == dict.fromkeys(mltestscore.SECTIONS, 7)
    assert len({t.id for t in mltestscore.TESTS}) == 28
    assert len({t.title for t in mltestscore.TESTS}) == 28


def test_sections_sum_and_the_final_score_is_the_lowest_section():
    points = {"automated": 1.0, "manual": 0.5, "none": 0.0, "unknown": 0.0}
    plan = {"data": ["automated"] * 3 + ["manual"] * 2 + ["none"] * 2,  # 4.0
            "model": ["automated"] * 7,  # 7.0
            "infrastructure": ["manual"] * 7,  # 3.5
            "monitoring": ["automated", "manual", "unknown"] + ["none"] * 4}  # 1.5  # fmt: skip
    tests = [TestResult(f"{s}.{i}", s, "t", st, points[st])
             for s, statuses in plan.items() for i, st in enumerate(statuses, 1)]  # fmt: skip
    score = MLTestScore(tests)
    assert score.sections == {"data": 4.0, "model": 7.0, "infrastructure": 3.5, "monitoring": 1.5}
    assert score.final == 1.5
    assert score.meaning.startswith("(1, 2]")
    assert mltestscore.interpret(0).startswith("0:") and mltestscore.interpret(5.5).startswith(">")


def test_evidence_counts_as_automated_only_where_it_runs_by_itself(tmp_path):
    code = {"pkg/validate.py": "SCHEMA = {'price': float}\n\ndef validate_rows(rows):\n    ...\n"}
    only_code = scan(write(tmp_path / "a", code))
    assert status(only_code, "data.1") == "manual"  # a schema, checked by hand
    with_tests = {**code, "tests/test_validate.py": "from pkg.validate import validate_rows\n\n"
                  "def test_rows():\n    validate_rows([])\n"}  # fmt: skip
    no_ci = scan(write(tmp_path / "b", with_tests))
    assert status(no_ci, "data.1") == "manual"
    t = next(t for t in no_ci.ml_test_score.tests if t.id == "data.1")
    assert t.details == "found, but CI does not run it"
    with_ci = scan(
        write(tmp_path / "c", {**with_tests, ".gitlab-ci.yml": "t:\n  script: [pytest]\n"})
    )
    assert status(with_ci, "data.1") == "automated"
    assert with_ci.ml_test_score.sections["data"] == 1.0  # nothing else in the data section


def test_alert_rules_make_live_quality_monitoring_automated(tmp_path):
    rules = ("groups:\n  - name: model\n    rules:\n      - alert: ModelErrorHigh\n"
             "        expr: hdb_rolling_mape > 8\n")  # fmt: skip
    report = scan(write(tmp_path, {"prometheus/rules/alerts.yml": rules}))
    assert status(report, "monitoring.7") == "automated"
    assert status(report, "model.2") == "automated"


def test_tests_a_repository_cannot_show_are_unknown_not_none(bare_score):
    assert {t.id for t in bare_score.tests if t.status == "unknown"} == {"data.3", "data.4",
                                                                         "data.6"}  # fmt: skip


@pytest.fixture(scope="module")
def bare_score():
    return scan(BARE).ml_test_score


def test_bare_repository_scores_zero(bare_score):
    assert bare_score.final == 0
    assert bare_score.sections["data"] == 0 and bare_score.sections["monitoring"] == 0
    # train.py fixes its seeds and fits a model: half points, by hand
    assert {t.id: t.status for t in bare_score.tests}["infrastructure.1"] == "manual"


def test_this_repository_has_automated_tests_in_every_section():
    from hdb_mlops import config

    score = scan(config.PROJECT_DIR).ml_test_score
    assert score.final == min(score.sections.values())
    automated = {t.section for t in score.tests if t.status == "automated"}
    assert automated == set(mltestscore.SECTIONS)
    by_id = {t.id: t for t in score.tests}
    # CI runs pytest, whose addopts run the notebooks with nbval: an integration test
    assert by_id["infrastructure.3"].status == "automated"
    assert all(":" in e for t in score.tests for e in t.evidence)
