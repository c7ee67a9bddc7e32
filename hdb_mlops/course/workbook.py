"""Learner workbooks: the chapters' otter exercises, built for learners and graded.

A chapter notebook is an otter-grader master when it has a raw ``# ASSIGNMENT CONFIG`` cell
(questions between ``# BEGIN QUESTION`` / ``# END QUESTION`` raw cells, solutions marked
``# SOLUTION``, exception-based tests; ``tests: {files: false, ok_format: false}``). :func:`build`
runs ``otter assign`` on each and writes

* ``workbooks/<chapter>.ipynb``, the learner's copy: solutions replaced by ``...``, the public
  tests in its metadata, ``grader.check("q")`` cells; one level below the checkout like
  ``notebooks/``, so the chapters' relative paths (``../runs/interactive``) hold;
* ``workbooks/autograder/<chapter>.zip``, the autograder with the hidden tests too, for
  :func:`check` (``otter run``, see :mod:`hdb_mlops.course.grading`).

The same masters give byte-identical files: otter gives the cells it adds (the grader's init
cell, the ``grader.check`` cells) random ids, which are replaced by ids derived from the cell's
place and source, and the zip is rewritten with sorted entries and a fixed date.

A workbook a learner has edited since it was built (its cell sources no longer match the hash
recorded in its metadata) is not overwritten unless ``force`` is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hdb_mlops.course.grading import (
    AUTOGRADER_DIR,
    DEFAULT_TIMEOUT,
    WORKBOOKS_DIR,
    Question,
    WorkbookError,
    check,
    grade,
    read_questions,
    totals,
)

__all__ = [
    "AUTOGRADER_DIR",
    "WORKBOOKS_DIR",
    "Question",
    "Workbook",
    "WorkbookError",
    "build",
    "check",
    "has_assignment",
    "totals",
]

log = logging.getLogger(__name__)

#: The notebook metadata key under which a built workbook records the hash of its sources.
METADATA_KEY = "hdb_mlops"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Workbook:
    """What :func:`build` did with one chapter: ``status`` is ``written``, ``unchanged``
    (the files on disk were already these) or ``skipped`` (no assignment config)."""

    chapter: str
    master: Path
    student: Path | None
    autograder: Path | None
    questions: tuple[Question, ...] = ()
    status: str = "written"

    @property
    def points(self) -> float:
        """The workbook's total points."""
        return sum(q.points for q in self.questions)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able values."""
        out = asdict(self)
        out["points"] = self.points
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def has_assignment(notebook: Path) -> bool:
    """Whether ``notebook`` is an otter master: it has a raw ``# ASSIGNMENT CONFIG`` cell."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "raw" and text.lstrip().startswith("# ASSIGNMENT CONFIG"):
            return True
    return False


def _sources_hash(nb: Any) -> str:
    """The sha256 of a notebook's cell types and sources (not its outputs or metadata)."""
    cells = [[c.get("cell_type"), c.get("source", "")] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def _stable_ids(nb: Any, master_ids: set[str], chapter: str) -> None:
    """Replace the ids otter made up (not in the master) by ids derived from the chapter, the
    cell's place and its source."""
    seen: set[str] = set()
    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id")
        if cell_id is None:  # nbformat < 4.5: no ids at all
            continue
        salt = 0
        while cell_id not in master_ids or cell_id in seen:
            key = f"{chapter}\0{index}\0{salt}\0{cell.source}".encode()
            cell_id, salt = hashlib.sha1(key).hexdigest()[:8], salt + 1
            if cell_id not in master_ids and cell_id not in seen:
                break
        cell["id"] = cell_id
        seen.add(cell_id)


def _student_bytes(path: Path, master: Path) -> bytes:
    """The learner notebook otter wrote, with stable cell ids and the hash of its sources."""
    import nbformat

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    master_nb = nbformat.read(master, as_version=nbformat.NO_CONVERT)
    _stable_ids(nb, {c.get("id") for c in master_nb.cells if c.get("id")}, master.stem)
    nb.metadata[METADATA_KEY] = {"workbook_sha256": _sources_hash(nb)}
    text = nbformat.writes(nb)
    return (text if text.endswith("\n") else text + "\n").encode()


def _stable_zip(path: Path) -> bytes:
    """An autograder zip rewritten with its entries sorted and a fixed date."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(path) as src,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE)
            entry.external_attr = info.external_attr
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, src.read(info.filename))
    return buffer.getvalue()


def _edited(path: Path) -> bool:
    """Whether a workbook on disk was edited since it was built (or was never built here)."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    except Exception:  # not a notebook any more: do not silently replace it
        return True
    recorded = nb.metadata.get(METADATA_KEY, {}).get("workbook_sha256")
    return recorded != _sources_hash(nb)


def _assign(master: Path, dist: Path) -> None:
    """Run otter assign (its Python API) on ``master`` into ``dist``; one-line errors."""
    import otter.assign

    cwd = Path.cwd()
    try:
        otter.assign.main(str(master), str(dist), no_pdfs=True, no_run_tests=True)
    except Exception as exc:
        raise WorkbookError(
            f"{master.name}: otter assign failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        os.chdir(cwd)  # otter changes the working directory while it works
    if (dist / "student" / "tests").exists():
        raise WorkbookError(
            f"{master.name}: otter wrote the tests to a tests/ folder, which breaks grader.check "
            "next to other workbooks: set `tests: {files: false, ok_format: false}` in its "
            "ASSIGNMENT CONFIG"
        )


def _self_check(master: Path, dist: Path, zip_path: Path, timeout: float) -> str | None:
    """Grade the solutions notebook otter made with the new autograder; a message unless it
    scores 100%."""
    result = grade(dist / "autograder" / master.name, zip_path, timeout=timeout)
    if result.status != "graded":
        return f"{master.stem}: the solutions were not graded ({result.status}: {result.message})"
    short = [
        f"{q} {got:g}/{possible:g}" + (f" ({result.hints[q]})" if result.hints.get(q) else "")
        for q, (got, possible) in result.scores.items()
        if got < possible
    ]
    return f"{master.stem}: the solutions score {', '.join(short)}" if short else None


def _keep_edits(path: Path, data: bytes, force: bool) -> None:
    """Raise unless ``path`` may be replaced by ``data``: it is absent, holds ``data``, is
    unedited since it was built, or ``force``."""
    if force or not path.exists() or path.read_bytes() == data or not _edited(path):
        return
    raise WorkbookError(
        f"{path} was edited since it was built (a learner's answers?): move it away, "
        "or build with --force to overwrite it"
    )


def _write(path: Path, data: bytes) -> bool:
    """Write ``data`` (atomically) unless the file already holds it; whether it changed."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def build(
    masters: list[Path] | None = None,
    out: Path = WORKBOOKS_DIR,
    *,
    run_tests: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    force: bool = False,
    jobs: int = 1,
) -> list[Workbook]:
    """Build the learner workbook and the autograder of every chapter that is an otter master.

    ``masters`` defaults to the chapter notebooks in pipeline order
    (:func:`hdb_mlops.course.pipeline.list_notebooks`); those without a ``# ASSIGNMENT CONFIG``
    cell are returned as ``skipped``. Writes ``out/<chapter>.ipynb`` and
    ``out/autograder/<chapter>.zip`` (same masters, same bytes). With ``run_tests``, each
    chapter's solutions are first graded with its autograder (``timeout`` seconds each,
    ``jobs`` chapters at once, each in its own ``otter run`` process) and nothing is written
    unless they all score 100%. A workbook edited since it was built is kept, with a
    :class:`WorkbookError`, unless ``force``.
    """
    if masters is None:
        from hdb_mlops.course.pipeline import list_notebooks

        masters = list_notebooks()
    out = Path(out)
    records: list[Workbook] = []
    todo: list[Path] = []
    for master in map(Path, masters):
        if not master.is_file():
            raise WorkbookError(f"no such notebook: {master}")
        if has_assignment(master):
            todo.append(master)
        else:
            records.append(Workbook(master.stem, master, None, None, (), "skipped"))
    if len({m.name for m in todo}) < len(todo):
        raise WorkbookError("two masters have the same file name: their workbooks would clash")
    with tempfile.TemporaryDirectory(prefix="hdb-mlops-assign-") as tmp:
        built = []
        for master in todo:
            dist = Path(tmp) / master.stem
            log.info("otter assign %s", master.name)
            _assign(master.resolve(), dist)
            zips = sorted((dist / "autograder").glob("*.zip"))
            if len(zips) != 1:
                raise WorkbookError(f"{master.name}: otter assign made {len(zips)} autograder zips")
            zip_path = Path(tmp) / f"{master.stem}.zip"
            zip_path.write_bytes(_stable_zip(zips[0]))
            student = _student_bytes(dist / "student" / master.name, master)
            built.append((master, dist, zip_path, student))
        if run_tests:
            # otter assign (above) works in this process and changes its directory, so it
            # runs one master at a time; the gradings are separate processes and can overlap
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                problems = list(pool.map(lambda b: _self_check(b[0], b[1], b[2], timeout), built))
            if problems := [p for p in problems if p]:
                raise WorkbookError("self-check failed, nothing written: " + "; ".join(problems))
        for master, _, _, student in built:  # check them all before writing any
            _keep_edits(out / master.name, student, force)
        for master, dist, zip_path, student in built:
            student_path = out / master.name
            autograder_path = out / "autograder" / f"{master.stem}.zip"
            changed = _write(student_path, student)
            changed |= _write(autograder_path, zip_path.read_bytes())
            for extra in sorted((dist / "student").iterdir()):
                if extra.name == master.name:
                    continue
                if extra.is_dir():  # support files listed under `files:`
                    shutil.copytree(extra, out / extra.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(extra, out / extra.name)
            questions = tuple(read_questions(autograder_path))
            status = "written" if changed else "unchanged"
            records.append(
                Workbook(master.stem, master, student_path, autograder_path, questions, status)
            )
    order = {m.stem: i for i, m in enumerate(map(Path, masters))}
    return sorted(records, key=lambda r: order[r.chapter])
