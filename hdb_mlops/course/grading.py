"""Grading learners' workbooks with otter-grader's ``otter run`` (no Docker, no network).

Each notebook is graded in its own ``otter run`` subprocess with a hard timeout: a notebook that
loops forever, crashes otter or has no autograder scores 0 on every question and is reported in
the ``status`` and ``message`` columns; grading the others goes on. The subprocess gets its own
temporary folder (``TMPDIR``, the Jupyter runtime folder, a fresh IPython profile), so a killed
run leaves nothing behind and a learner's IPython startup files play no part.

Which chapter and which learner a notebook belongs to (:func:`find_submissions`):

* ``<folder>/<chapter>.ipynb``, the file name of a built workbook: the learner is the folder's
  name, e.g. ``submissions/alice/05a_data.ipynb`` is alice's ``05a_data``;
* any other file name (a renamed copy such as ``submissions/alice.ipynb``): the chapter is the
  assignment named in the notebook's otter metadata, the learner is the file's stem;
* otherwise the chapter is the file stem, with status ``no autograder``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdb_mlops import config

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Where ``workbook build`` writes the learner workbooks (one level below the checkout, like
#: ``notebooks/``: the chapters' relative paths such as ``../runs/interactive`` still hold).
WORKBOOKS_DIR = config.PROJECT_DIR / "workbooks"
#: Where it writes the autograder zips, ``<chapter>.zip``.
AUTOGRADER_DIR = WORKBOOKS_DIR / "autograder"
#: A row's ``status``.
STATUSES = ("graded", "timeout", "error", "no autograder")
#: The columns of :func:`check`'s table.
COLUMNS = [
    "learner",
    "chapter",
    "question",
    "points",
    "max_points",
    "status",
    "message",
    "notebook",
    "seconds",
]
DEFAULT_TIMEOUT = 600.0
#: ``otter run --no-logo -a ZIP -o OUT NOTEBOOK`` without otter's command line, whose imports
#: (Docker clients, every otter tool) add ~5 s to each notebook.
_RUNNER = (
    "import sys; from otter.run import main; "
    "main(sys.argv[1], autograder=sys.argv[2], output_dir=sys.argv[3], no_logo=True)"
)
_HINT_RE = re.compile(r"^\s*(\S+ - \d+) message: (.*)$")
_RESULT_RE = re.compile(r"^\s*(\S+ - \d+) result:\s*$")


class WorkbookError(RuntimeError):
    """A workbook problem for the user to fix (no notebooks, no autograders, a bad master);
    the message is one line that says what to do."""


@dataclass(frozen=True)
class Question:
    """An exercise of a workbook and the points it is worth."""

    name: str
    points: float


@dataclass(frozen=True)
class Submission:
    """A learner's notebook and the autograder it is graded with (None when there is none)."""

    learner: str
    chapter: str
    notebook: Path
    autograder: Path | None


@dataclass
class Grade:
    """The outcome of grading one notebook: ``scores`` maps a question to (points, max)."""

    status: str
    message: str = ""
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def read_questions(autograder: Path) -> list[Question]:
    """The questions of an otter autograder zip and their points, read from its test files
    (``tests/<question>.py``) without importing otter."""
    questions = []
    with zipfile.ZipFile(autograder) as zf:
        names = sorted(n for n in zf.namelist() if re.fullmatch(r"tests/[^/]+\.py", n))
        for name in names:
            questions.append(_question_of(zf.read(name).decode(), Path(name).stem))
    return questions


def _question_of(source: str, default_name: str) -> Question:
    """Name and points of one otter test file: its ``name`` and ``points`` assignments, or
    the points of its test cases (1 each when they give none)."""
    tree = ast.parse(source)
    values: dict[str, Any] = {}
    case_points: list[float] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("name", "points"):
                with contextlib.suppress(ValueError):
                    values[target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call):
                    given = [k.value for k in deco.keywords if k.arg == "points"]
                    value = ast.literal_eval(given[0]) if given else None
                    case_points.append(float(value) if value is not None else 1.0)
    points = values.get("points")
    if isinstance(points, list):
        points = sum(points)
    if not isinstance(points, int | float):
        points = sum(case_points)
    return Question(str(values.get("name") or default_name), float(points))


def assignment_name(autograder: Path) -> str | None:
    """The assignment name in an autograder zip's ``otter_config.json``, if any."""
    with zipfile.ZipFile(autograder) as zf:
        if "otter_config.json" not in zf.namelist():
            return None
        return json.loads(zf.read("otter_config.json")).get("assignment_name")


def _notebook_assignment(notebook: Path) -> str | None:
    """The otter assignment name in a notebook's metadata (None if unreadable or absent)."""
    try:
        otter = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {}).get("otter")
    except (OSError, ValueError, AttributeError):
        return None
    return otter.get("assignment_name") if isinstance(otter, dict) else None


def _notebooks_in(paths: Iterable[Path], skip: Path) -> list[Path]:
    """The ``.ipynb`` files given or found (recursively) in the folders given, without
    checkpoints, hidden folders and the autograder folder ``skip``; each file once."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            for nb in sorted(path.rglob("*.ipynb")):
                parts = nb.relative_to(path).parts
                if any(p.startswith(".") for p in parts) or skip in nb.resolve().parents:
                    continue
                found.setdefault(nb.resolve(), None)
        elif path.suffix == ".ipynb":
            found.setdefault(path.resolve(), None)
        elif path.exists():
            raise WorkbookError(f"{path} is not a notebook (.ipynb)")
        else:
            raise WorkbookError(f"no such file or folder: {path}")
    return list(found)


def find_submissions(paths: Iterable[Path], autograders: Path = AUTOGRADER_DIR) -> list[Submission]:
    """The notebooks in ``paths`` (files, or folders searched recursively), each with its
    learner, its chapter and the chapter's autograder zip in ``autograders`` (see the module's
    docstring for the rules), sorted by learner and chapter."""
    autograders = Path(autograders)
    zips = {z.stem: z for z in sorted(autograders.glob("*.zip"))}
    by_assignment = {}
    for chapter, zip_path in zips.items():
        by_assignment.setdefault(assignment_name(zip_path) or chapter, chapter)
    submissions = []
    for nb in _notebooks_in(paths, autograders.resolve()):
        learner, chapter = nb.parent.name, nb.stem
        if chapter not in zips:
            named = by_assignment.get(_notebook_assignment(nb) or "")
            if named is not None:
                learner, chapter = nb.stem, named
        submissions.append(Submission(learner, chapter, nb, zips.get(chapter)))
    seen: dict[tuple[str, str], Path] = {}
    for sub in submissions:
        other = seen.setdefault((sub.learner, sub.chapter), sub.notebook)
        if other != sub.notebook:
            raise WorkbookError(
                f"two notebooks for learner {sub.learner}, chapter {sub.chapter}: {other} and "
                f"{sub.notebook}; grade them separately or give each learner one folder"
            )
    return sorted(submissions, key=lambda s: (s.learner, s.chapter))


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc``, its process group and every process it started (the kernel runs in a
    session of its own), then reap it."""
    import signal

    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        children = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(Exception):  # already gone
            child.kill()
    proc.wait()


def _hints(output: str) -> str:
    """The failure messages of the failed test cases in an otter question output."""
    messages: dict[str, str] = {}
    failed: list[str] = []
    current = None
    for line in output.splitlines():
        if m := _HINT_RE.match(line):
            messages[m[1]] = m[2].strip()
        elif m := _RESULT_RE.match(line):
            current = m[1]
        elif current and "Test case failed" in line:
            failed.append(current)
            current = None
    return "; ".join(dict.fromkeys(messages[c] for c in failed if c in messages))


def _error_line(log_text: str) -> str:
    """The line of an ``otter run`` log that says what went wrong (its last exception)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    text = (errors or lines or ["otter run failed without a message"])[-1]
    return text[:300]


def grade(notebook: Path, autograder: Path, *, timeout: float = DEFAULT_TIMEOUT) -> Grade:
    """Grade one notebook with ``otter run`` (``otter.run.main``) in a subprocess killed after
    ``timeout`` seconds.

    Never raises for the notebook's own problems: an endless loop gives status ``timeout``,
    a notebook otter cannot grade (not JSON, another assignment) status ``error``.
    """
    from hdb_mlops.course.pipeline import ensure_kernel

    ensure_kernel()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hdb-mlops-grade-") as tmp:
        tmp_dir = Path(tmp)
        for sub in ("work", "out", "runtime", "ipython"):
            (tmp_dir / sub).mkdir()
        env = {
            **os.environ,
            "TMPDIR": str(tmp_dir),
            "JUPYTER_RUNTIME_DIR": str(tmp_dir / "runtime"),
            "IPYTHONDIR": str(tmp_dir / "ipython"),
            "MPLBACKEND": "Agg",
        }
        args = [Path(notebook).resolve(), Path(autograder).resolve(), tmp_dir / "out"]
        cmd = [sys.executable, "-c", _RUNNER, *map(str, args)]
        log_path = tmp_dir / "otter-run.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp_dir / "work",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc)
                return Grade(
                    "timeout",
                    f"no result after {timeout:g} s: an endless loop or a very slow cell?",
                    seconds=time.perf_counter() - start,
                )
        seconds = time.perf_counter() - start
        results = tmp_dir / "out" / "results.json"
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        if returncode != 0 or not results.exists():
            return Grade("error", f"otter run failed: {_error_line(log_text)}", seconds=seconds)
        tests = json.loads(results.read_text(encoding="utf-8")).get("tests", [])
    scores = {
        t["name"]: (float(t.get("score") or 0), float(t["max_score"]))
        for t in tests
        if t.get("max_score") is not None
    }
    if not scores:
        outputs = "; ".join(str(t.get("output", "")) for t in tests)
        return Grade("error", f"otter gave no scores: {outputs[:300]}", seconds=seconds)
    hints = {t["name"]: _hints(str(t.get("output", ""))) for t in tests if t["name"] in scores}
    return Grade("graded", "", scores, hints, seconds)


def _rows(sub: Submission, result: Grade) -> list[dict[str, Any]]:
    """The table rows of one graded (or failed) notebook: one per question."""
    questions: dict[str | None, float] = {None: 0.0}
    if sub.autograder is not None:
        questions = {q.name: q.points for q in read_questions(sub.autograder)}
        questions.update({name: possible for name, (_, possible) in result.scores.items()})
    rows = []
    for name, possible in questions.items():
        graded = result.status == "graded"
        rows.append(
            {
                "learner": sub.learner,
                "chapter": sub.chapter,
                "question": name,
                "points": result.scores.get(name, (0.0, possible))[0],
                "max_points": possible,
                "status": result.status,
                "message": result.hints.get(name, "") if graded else result.message,
                "notebook": str(sub.notebook),
                "seconds": round(result.seconds, 1),
            }
        )
    return rows


def check(
    paths: Iterable[Path],
    autograders: Path = AUTOGRADER_DIR,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int = 1,
) -> pd.DataFrame:
    """Grade learners' notebooks: one row per learner, chapter and question.

    ``paths`` are notebooks or folders of them (searched recursively, e.g. one folder per
    learner); each notebook is matched to ``autograders/<chapter>.zip`` (rules in the module's
    docstring) and graded with ``otter run`` in a subprocess killed after ``timeout`` seconds,
    ``jobs`` at a time. Columns: :data:`COLUMNS`; ``status`` is one of :data:`STATUSES`, and a
    notebook that is not ``graded`` scores 0 with the reason in ``message`` (for graded rows,
    the hints of the failed tests); a notebook without autograder has one row, with no
    question and 0 points of 0. ``seconds``: the notebook's grading time. Totals per learner:
    :func:`totals`.

    Raises :class:`WorkbookError` when there is no autograder folder, no zip in it, or no
    notebook in ``paths``.
    """
    import pandas as pd

    from hdb_mlops.course.pipeline import ensure_kernel

    autograders = Path(autograders)
    if not autograders.is_dir():
        raise WorkbookError(
            f"no autograder folder {autograders}: build the workbooks first "
            "(hdb-mlops workbook build) or pass the folder of the autograder zips"
        )
    if not any(autograders.glob("*.zip")):
        raise WorkbookError(f"no autograder zips (<chapter>.zip) in {autograders}")
    paths = list(paths)
    submissions = find_submissions(paths, autograders)
    if not submissions:
        raise WorkbookError(f"no notebooks (.ipynb) in {', '.join(map(str, paths))}")
    ensure_kernel()

    def one(sub: Submission) -> Grade:
        if sub.autograder is None:
            return Grade("no autograder", f"no {sub.chapter}.zip in {autograders}")
        result = grade(sub.notebook, sub.autograder, timeout=timeout)
        log.info("%s %s: %s in %.1f s", sub.learner, sub.chapter, result.status, result.seconds)
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, submissions))
    rows = [row for sub, res in zip(submissions, results, strict=True) for row in _rows(sub, res)]
    return pd.DataFrame(rows, columns=COLUMNS)


def totals(results: pd.DataFrame) -> pd.DataFrame:
    """Each learner's total over :func:`check`'s rows: points, max_points, percent, and how
    many of their notebooks were graded / given."""
    import pandas as pd

    if results.empty:
        return pd.DataFrame(columns=["learner", "points", "max_points", "percent", "graded"])
    per_notebook = results.groupby(["learner", "chapter"], sort=False)["status"].first()
    graded = (per_notebook == "graded").groupby(level="learner", sort=False)
    out = results.groupby("learner", sort=False)[["points", "max_points"]].sum()
    out["percent"] = (100 * out["points"] / out["max_points"].where(out["max_points"] > 0)).round(1)
    out["graded"] = [f"{g}/{n}" for g, n in zip(graded.sum(), graded.size(), strict=True)]
    return out.reset_index()
