"""Learner workbooks: ``otter assign`` on a small master, ``otter run`` on learners' copies.

The master is ``tests/fixtures/workbooks/00_toy.ipynb`` (plain Python, two questions, public and
hidden exception-based tests). ``otter run`` costs 15-30 s a notebook, so one build (with its
self-check) is shared by the module and the learners are graded in one ``check`` call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from hdb_mlops import cli
from hdb_mlops.course import grading, workbook
from hdb_mlops.course.workbook import Question, WorkbookError, build, check, totals

FIXTURES = Path(__file__).parent / "fixtures" / "workbooks"
TOY = FIXTURES / "00_toy.ipynb"
assert TOY.is_file(), (
    f"{TOY} is missing: is tests/fixtures/workbooks/ git-ignored? (use /workbooks/)"
)
#: Seconds per notebook in the shared grading: a looping notebook costs this much, and the
#: others must finish well within it on a loaded two-core machine (2 at a time).
GRADE_TIMEOUT = 60.0

Q1_DONE = "mape = 100 * sum(abs(p - y) / y for y, p in zip(prices, predicted)) / len(prices)\nmape"
Q1_NAME_ERROR = Q1_DONE.replace("zip(prices,", "zip(price,")  # a typo: NameError
Q2_DONE = (
    "def within(y, p, pct):\n"
    "    return [abs(b - a) <= pct / 100 * abs(a) for a, b in zip(y, p)]\n"
    "within(prices, predicted, 3)"
)
LOOP = "while True:\n    pass"
SOLUTION_FRAGMENTS = ["abs(p - y) / y", "abs(b - a) <=", "# SOLUTION", "BEGIN", "END"]


def answers_filled(student: Path, dest: Path, *answers: str | None) -> Path:
    """A learner's copy of the student workbook at ``dest`` with its answer cells (in order)
    replaced by ``answers`` (None keeps the cell as it was handed out)."""
    nb = json.loads(student.read_text())
    cells = [c for c in nb["cells"] if "otter_answer_cell" in c["metadata"].get("tags", [])]
    assert len(cells) == 2
    for cell, answer in zip(cells, answers, strict=False):
        if answer is not None:
            cell["source"] = answer
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb, indent=1))
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> workbook.Workbook:
    """The toy workbook, built once with the self-check (its solutions score 100%)."""
    out = tmp_path_factory.mktemp("repo") / "workbooks"
    start = time.perf_counter()
    [record] = build([TOY], out, run_tests=True, timeout=300)
    print(f"build with self-check: {time.perf_counter() - start:.1f} s")
    return record


@pytest.fixture(scope="module")
def submissions(built, tmp_path_factory) -> Path:
    """One folder per learner: all done, half done, none done, an endless loop, a NameError,
    a notebook otter cannot read, and a notebook of no workbook."""
    subs = tmp_path_factory.mktemp("submissions")
    name = built.student.name
    answers_filled(built.student, subs / "alice" / name, Q1_DONE, Q2_DONE)
    answers_filled(built.student, subs / "bob" / name, Q1_DONE)
    answers_filled(built.student, subs / "carol" / name)
    answers_filled(built.student, subs / "dave" / name, Q1_DONE, LOOP)
    answers_filled(built.student, subs / "erin" / name, Q1_NAME_ERROR, Q2_DONE)
    (subs / "frank").mkdir()
    (subs / "frank" / name).write_text('{"cells": [ not json')
    (subs / "gina").mkdir()
    (subs / "gina" / "99_notes.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    return subs


@pytest.fixture(scope="module")
def graded(built, submissions):
    """The learners graded in one call, two notebooks at a time."""
    start = time.perf_counter()
    results = check([submissions], built.autograder.parent, timeout=GRADE_TIMEOUT, jobs=2)
    print(f"graded {results.notebook.nunique()} notebooks in {time.perf_counter() - start:.1f} s")
    print(results[["learner", "question", "points", "status", "seconds"]].to_string())
    return results


# --------------------------------------------------------------------------------- build


def test_build_writes_the_student_workbook_without_solutions(built):
    assert built.chapter == "00_toy" and built.status == "written"
    assert built.student == built.autograder.parent.parent / "00_toy.ipynb"
    assert built.autograder.name == "00_toy.zip"
    assert built.questions == (Question("q1_mape", 2.0), Question("q2_within", 2.0))
    text = built.student.read_text()
    assert not [f for f in SOLUTION_FRAGMENTS if f in text]
    nb = json.loads(text)
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert 'grader = otter.Notebook("00_toy.ipynb")' in sources[0]
    assert 'grader.check("q1_mape")' in sources and 'grader.check("q2_within")' in sources
    answers = [
        s
        for s, c in zip(sources, nb["cells"], strict=True)
        if "otter_answer_cell" in c["metadata"].get("tags", [])
    ]
    assert answers[0] == "errors = ...\nmape = ...\nmape"
    assert answers[1].startswith("def within(y, p, pct):\n    ...\n")
    # the tests: none in a cell, the public ones in the metadata, the hidden ones not at all
    assert not [s for s in sources if "def test_" in s]
    tests = nb["metadata"]["otter"]["tests"]
    assert set(tests) == {"q1_mape", "q2_within"}
    assert "def test_mape_is_a_number" in tests["q1_mape"]
    assert "test_mape_value" not in text and "test_within_edges" not in text
    assert nb["metadata"]["otter"]["assignment_name"] == "00_toy"


def test_the_masters_solutions_score_100_percent(built):
    """The fixture built with run_tests: its solutions notebook, graded with the new
    autograder exactly as check grades a learner (grading.grade), scored every point."""
    assert built.points == 4


def test_the_autograder_zip_holds_the_hidden_tests(built):
    with zipfile.ZipFile(built.autograder) as zf:
        names = set(zf.namelist())
        q1 = zf.read("tests/q1_mape.py").decode()
        dates = {info.date_time for info in zf.infolist()}
    assert {"tests/q1_mape.py", "tests/q2_within.py", "otter_config.json"} <= names
    assert "def test_mape_value" in q1 and "hidden=True" in q1
    assert dates == {(1980, 1, 1, 0, 0, 0)}


def test_building_again_gives_the_same_bytes_and_leaves_the_master_alone(built, tmp_path):
    before = {p.name: p.read_bytes() for p in FIXTURES.iterdir()}
    [first] = build([TOY], tmp_path / "a")
    [second] = build([TOY], tmp_path / "b")
    for record in (first, second):
        assert record.student.read_bytes() == built.student.read_bytes()
        assert record.autograder.read_bytes() == built.autograder.read_bytes()
    [again] = build([TOY], tmp_path / "a")
    assert again.status == "unchanged"
    assert {p.name: p.read_bytes() for p in FIXTURES.iterdir()} == before
    ids = [c["id"] for c in json.loads(first.student.read_text())["cells"]]
    assert len(set(ids)) == len(ids)


def test_a_workbook_a_learner_edited_is_not_overwritten_unless_forced(tmp_path):
    [record] = build([TOY], tmp_path)
    answers_filled(record.student, record.student, Q1_DONE)
    edited = record.student.read_bytes()
    with pytest.raises(WorkbookError, match=r"edited since it was built.*--force"):
        build([TOY], tmp_path)
    assert record.student.read_bytes() == edited
    # outputs alone (an executed, unedited workbook) are no edit
    [record] = build([TOY], tmp_path, force=True)
    nb = json.loads(record.student.read_text())
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
    record.student.write_text(json.dumps(nb))
    assert build([TOY], tmp_path)[0].status == "written"


def test_chapters_without_an_assignment_config_are_skipped(tmp_path):
    plain = json.loads(TOY.read_text())
    plain["cells"] = [c for c in plain["cells"] if c["cell_type"] != "raw"]
    master = tmp_path / "masters" / "01_plain.ipynb"
    master.parent.mkdir()
    master.write_text(json.dumps(plain))
    records = build([master, TOY], tmp_path / "out")
    assert [(r.chapter, r.status) for r in records] == [
        ("01_plain", "skipped"),
        ("00_toy", "written"),
    ]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.*")) == ["00_toy.ipynb", "00_toy.zip"]


def test_a_self_check_below_100_percent_writes_nothing(monkeypatch, tmp_path):
    def half(notebook, autograder, *, timeout):
        hints = {"q1_mape": "Hint: MAPE is in percent"}
        return grading.Grade("graded", "", {"q1_mape": (1.0, 2.0), "q2_within": (2.0, 2.0)}, hints)

    monkeypatch.setattr(workbook, "grade", half)
    with pytest.raises(WorkbookError, match=r"00_toy: the solutions score q1_mape 1/2 \(Hint"):
        build([TOY], tmp_path, run_tests=True)
    assert not list(tmp_path.iterdir())


def test_with_jobs_the_self_checks_overlap_and_one_failure_still_writes_nothing(
    monkeypatch, tmp_path
):
    masters = tmp_path / "masters"
    masters.mkdir()
    for name in ("00_toy", "01_toy"):
        shutil.copy(TOY, masters / f"{name}.ipynb")
    running, overlapped = [], []

    def slow(notebook, autograder, *, timeout):  # otter run's place: a process per chapter
        running.append(notebook.stem)
        time.sleep(0.5)
        overlapped.append(len(running))
        running.remove(notebook.stem)
        full = notebook.stem == "00_toy"
        scores = {"q1_mape": (2.0 if full else 0.0, 2.0), "q2_within": (2.0, 2.0)}
        return grading.Grade("graded", "", scores, {})

    monkeypatch.setattr(workbook, "grade", slow)
    masters_list = sorted(masters.glob("*.ipynb"))
    with pytest.raises(WorkbookError, match=r"01_toy: the solutions score q1_mape 0/2"):
        build(masters_list, tmp_path / "out", run_tests=True, jobs=2)
    assert 2 in overlapped and not (tmp_path / "out").exists()


def test_a_master_otter_refuses_is_one_line_naming_it(tmp_path):
    broken = TOY.read_text().replace("points: 2", "points: [oops", 1)
    master = tmp_path / "00_toy.ipynb"
    master.write_text(broken)
    with pytest.raises(WorkbookError, match=r"00_toy\.ipynb: otter assign failed"):
        build([master], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------- check


def test_find_submissions_names_learners_and_chapters(built, tmp_path):
    autograders = built.autograder.parent
    answers_filled(built.student, tmp_path / "alice" / "00_toy.ipynb")
    answers_filled(built.student, tmp_path / "hana.ipynb")  # a renamed copy: the metadata says
    answers_filled(
        built.student, tmp_path / "alice" / ".ipynb_checkpoints" / "00_toy-checkpoint.ipynb"
    )
    (tmp_path / "ivan").mkdir()
    (tmp_path / "ivan" / "05a_data.ipynb").write_text("{}")
    found = grading.find_submissions([tmp_path, tmp_path / "alice" / "00_toy.ipynb"], autograders)
    assert [(s.learner, s.chapter, s.autograder) for s in found] == [
        ("alice", "00_toy", built.autograder),
        ("hana", "00_toy", built.autograder),
        ("ivan", "05a_data", None),
    ]
    (tmp_path / "x" / "alice").mkdir(parents=True)
    shutil.copy(built.student, tmp_path / "x" / "alice" / "00_toy.ipynb")
    with pytest.raises(WorkbookError, match="two notebooks for learner alice"):
        grading.find_submissions([tmp_path], autograders)


def test_check_grades_each_learner_and_reports_what_it_could_not(graded):
    table = {
        (r.learner, r.question if isinstance(r.question, str) else None): (
            r.points,
            r.max_points,
            r.status,
        )
        for r in graded.itertuples()
    }
    assert table == {
        ("alice", "q1_mape"): (2, 2, "graded"),
        ("alice", "q2_within"): (2, 2, "graded"),
        ("bob", "q1_mape"): (2, 2, "graded"),
        ("bob", "q2_within"): (0, 2, "graded"),
        ("carol", "q1_mape"): (0, 2, "graded"),
        ("carol", "q2_within"): (0, 2, "graded"),
        ("dave", "q1_mape"): (0, 2, "timeout"),
        ("dave", "q2_within"): (0, 2, "timeout"),
        ("erin", "q1_mape"): (0, 2, "graded"),
        ("erin", "q2_within"): (2, 2, "graded"),
        ("frank", "q1_mape"): (0, 2, "error"),
        ("frank", "q2_within"): (0, 2, "error"),
        ("gina", None): (0, 0, "no autograder"),
    }
    assert list(graded.columns) == grading.COLUMNS
    messages = graded.groupby("learner")["message"].first()
    assert "no result after 60 s" in messages["dave"]
    assert messages["frank"].startswith("otter run failed:")
    assert messages["gina"].startswith("no 99_notes.zip in")
    carol = graded[graded.learner == "carol"].set_index("question")["message"]
    assert "Hint: mape should be one number" in carol["q1_mape"]
    assert graded[graded.learner == "alice"]["message"].tolist() == ["", ""]


def test_totals_per_learner(graded):
    out = totals(graded).set_index("learner")
    assert out.loc["alice"].tolist() == [4, 4, 100.0, "1/1"]
    assert out.loc["bob"].tolist() == [2, 4, 50.0, "1/1"]
    assert out.loc["dave"].tolist() == [0, 4, 0.0, "0/1"]
    assert out.loc["erin", "percent"] == 50.0
    assert out.loc["gina", "graded"] == "0/1" and out.loc["gina", "max_points"] == 0


def test_check_usage_errors(built, tmp_path):
    with pytest.raises(WorkbookError, match="no notebooks"):
        check([tmp_path], built.autograder.parent)
    with pytest.raises(WorkbookError, match=r"no autograder folder .*workbook build"):
        check([tmp_path], tmp_path / "missing")
    with pytest.raises(WorkbookError, match="no autograder zips"):
        check([tmp_path], tmp_path)


# ----------------------------------------------------------------------------------- CLI


def test_cli_check_prints_the_table_and_writes_the_same_numbers(
    built, submissions, graded, monkeypatch, tmp_path, capsys
):
    """The command is a thin layer over check (graded above): its arguments go through, the
    table and the CSV show the same numbers, and it exits 0 although learners scored 0."""
    import pandas as pd

    some = graded[graded.learner.isin(["bob", "dave", "gina"])].reset_index(drop=True)
    calls = []

    def fake_check(paths, autograders, *, timeout, jobs):
        calls.append((paths, autograders, timeout, jobs))
        return some

    monkeypatch.setattr(grading, "check", fake_check)
    csv = tmp_path / "out" / "grades.csv"
    argv = ["workbook", "check", str(submissions), "--autograders", str(built.autograder.parent)]
    assert cli.main([*argv, "--csv", str(csv), "--jobs", "2", "--timeout", "30"]) == 0
    assert calls == [([submissions], built.autograder.parent, 30.0, 2)]
    out = capsys.readouterr().out
    rows = pd.read_csv(csv, keep_default_na=False)
    assert rows[["learner", "question", "points", "max_points", "status"]].values.tolist() == [
        ["bob", "q1_mape", 2, 2, "graded"],
        ["bob", "q2_within", 0, 2, "graded"],
        ["dave", "q1_mape", 0, 2, "timeout"],
        ["dave", "q2_within", 0, 2, "timeout"],
        ["gina", "", 0, 0, "no autograder"],
    ]
    lines = [line.split() for line in out.splitlines()]
    for row in rows.itertuples():
        label = [row.chapter, row.question or "-"]
        score = [f"{row.points:g}", "/", f"{row.max_points:g}"]
        assert [*label, *score, *row.status.split()] in lines
    assert ["total", "2", "/", "4", "50%"] in lines
    assert ["bob", "2", "/", "4", "50%", "1/1"] in lines
    assert ["dave", "0", "/", "4", "0%", "0/1"] in lines
    assert ["gina", "0", "/", "0", "-", "0/1"] in lines
    text = out.splitlines()
    assert "  ! 00_toy: timeout: no result after 60 s: an endless loop or a very slow cell?" in text
    assert any(line.startswith("  ! 99_notes: no autograder: no 99_notes.zip in") for line in text)
    assert cli.main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["points"] for r in printed["results"]] == rows["points"].tolist()
    assert printed["totals"][0] == {
        "learner": "bob",
        "points": 2.0,
        "max_points": 4.0,
        "percent": 50.0,
        "graded": "1/1",
    }


def test_cli_build_prints_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "workbooks"
    assert cli.main(["workbook", "build", "--notebooks-dir", str(FIXTURES), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "00_toy" in text and "2 questions, 4 points" in text and "q1_mape (2)" in text
    assert str(out / "00_toy.ipynb") in text and str(out / "autograder" / "00_toy.zip") in text
    assert (
        cli.main(
            ["workbook", "build", "--notebooks-dir", str(FIXTURES), "--out", str(out), "--json"]
        )
        == 0
    )
    [record] = json.loads(capsys.readouterr().out)
    assert record["status"] == "unchanged" and record["points"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "{tmp}"], "no notebooks (.ipynb) in"),
        (["check", "{tmp}", "--autograders", "{tmp}/missing"], "no such folder"),
        (["check", "{tmp}", "--autograders", "{tmp}"], "no autograder zips"),
        (["check", "{tmp}/nope.ipynb"], "no such file or folder"),
        (["check", "{tmp}", "--jobs", "0"], "not a positive whole number"),
        (["build", "zz"], "no notebook matches zz"),
        (["build", "--jobs", "0"], "not a positive whole number"),
    ],
)
def test_cli_usage_errors_are_one_line_with_status_2(built, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "check" and "--autograders" not in argv:
        argv += ["--autograders", str(built.autograder.parent)]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(["workbook", *argv]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# -------------------------------------------------------------------- the learner's view


def test_grader_check_in_the_workbook_shows_the_hint(built, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from hdb_mlops.course.pipeline import ensure_kernel

    ensure_kernel()
    folder = tmp_path / "workbooks"
    folder.mkdir()
    path = shutil.copy(built.student, folder / built.student.name)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    outputs = {
        cell.source: json.dumps(cell.outputs) for cell in nb.cells if cell.cell_type == "code"
    }
    q1 = outputs['grader.check("q1_mape")']
    assert "Hint: mape should be one number" in q1
    assert "Hint: MAPE is in percent" not in q1  # the hidden test stays hidden
    assert "Hint: within should return a list" in outputs['grader.check("q2_within")']
    assert (folder / ".OTTER_LOG").exists()  # where the learner works: .gitignore it


# ------------------------------------------------------------------------ real chapters


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_chapter_workbooks_build_and_run_end_to_end(tmp_path):
    """Every chapter's workbook as a trainer makes it (``workbook build --check --jobs 2``: the
    solutions score 100%) and as a learner first runs it: blank, top to bottom, with no error,
    and every check showing a hint. Two chapters at a time, as on a 2-core laptop."""
    from concurrent.futures import ThreadPoolExecutor

    from hdb_mlops.course.pipeline import ensure_kernel, list_notebooks

    masters = [nb for nb in list_notebooks() if workbook.has_assignment(nb)]
    if not masters:
        pytest.skip("no chapter notebook has an otter # ASSIGNMENT CONFIG cell yet")
    ensure_kernel()
    out = tmp_path / "workbooks"  # one level below tmp_path, like notebooks/ in the checkout
    (tmp_path / "executed").mkdir()
    # run_tests: otter grades the masters' solutions and refuses anything below 100%
    records = build(masters, out, run_tests=True, timeout=900, jobs=2)
    assert [r.chapter for r in records] == [m.stem for m in masters]

    def run_blank(record: workbook.Workbook) -> tuple[Path, str | None]:
        executed = tmp_path / "executed" / record.student.name
        argv = [sys.executable, "-m", "papermill", str(record.student), str(executed)]
        argv += ["--cwd", str(out), "-k", "python3", "--no-progress-bar"]
        argv += ["--execution-timeout", "900"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        failure = None
        if done.returncode != 0:
            failure = f"{record.chapter}: papermill exit {done.returncode}: {done.stderr[-800:]}"
        return executed, failure

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(run_blank, records))
    assert [f for _, f in runs if f] == []
    passed_blank = []
    for executed, _ in runs:
        # a blank workbook passes none of its checks: each grader.check shows a hint
        for cell in json.loads(executed.read_text())["cells"]:
            if cell["cell_type"] == "code" and "grader.check(" in "".join(cell["source"]):
                text = json.dumps(cell.get("outputs", []))
                if "All test cases passed" in text or "Hint" not in text:
                    passed_blank.append(f"{executed.stem}: {''.join(cell['source'])}")
    assert passed_blank == [], "blank answers must fail their checks, with a hint"
