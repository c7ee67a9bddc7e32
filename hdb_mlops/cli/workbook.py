"""``hdb-mlops workbook build|check``: learner workbooks from the chapters' otter exercises.

``build`` writes ``workbooks/<chapter>.ipynb`` and ``workbooks/autograder/<chapter>.zip``;
``check`` grades learners' notebooks with them (``otter run``, no Docker) and prints a table per
learner. A learner who scores 0 is a result, not a failure: ``check`` exits 0 once grading ran.
Usage errors (no notebooks found, no autograder folder, a master otter refuses, a self-check
that does not score 100%) exit with status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    existing_dir,
    existing_path,
    new_file,
    new_or_existing_dir,
    positive_float,
    positive_int,
    print_json,
)
from hdb_mlops.course.grading import AUTOGRADER_DIR, DEFAULT_TIMEOUT, WORKBOOKS_DIR

if TYPE_CHECKING:
    import pandas as pd


def _num(value: float) -> str:
    """A score as it reads best: ``2``, ``1.5``, ``0.333``."""
    return f"{value:.3g}" if not math.isnan(value) else "-"


def _require_otter() -> None:
    """A usage error naming the extra to install when otter-grader is missing."""
    import importlib.util

    if importlib.util.find_spec("otter") is None:
        raise UsageError("otter-grader is not installed: pip install -e '.[lab]'")


def cmd_build(args: argparse.Namespace) -> int:
    """Build the workbooks and autograders; print what was written."""
    from hdb_mlops.course.pipeline import PipelineError, list_notebooks, select
    from hdb_mlops.course.workbook import build

    notebooks = list_notebooks(args.notebooks_dir)
    if not notebooks:
        raise UsageError(
            "argument --notebooks-dir: no chapter notebooks (NN_name.ipynb) in "
            f"{args.notebooks_dir}"
        )
    try:
        masters = select(notebooks, args.names or None)
    except PipelineError as exc:
        raise UsageError(f"argument NAME: {exc}") from None
    _require_otter()
    records = build(
        masters,
        args.out,
        run_tests=args.check,
        timeout=args.timeout,
        force=args.force,
        jobs=args.jobs,
    )
    if args.json:
        print_json([r.to_dict() for r in records])
        return 0
    for r in records:
        if r.status == "skipped":
            print(f"{r.chapter:<24} skipped (no # ASSIGNMENT CONFIG cell)")
            continue
        questions = ", ".join(f"{q.name} ({_num(q.points)})" for q in r.questions)
        count = f"{len(r.questions)} questions, {_num(r.points)} points"
        print(f"{r.chapter:<24} {r.status:<9} {count}")
        print(f"{'':<24} {questions}")
        print(f"{'':<24} {r.student}")
        print(f"{'':<24} {r.autograder}")
    built = [r for r in records if r.status != "skipped"]
    checked = " (solutions checked: 100%)" if args.check and built else ""
    print(f"{len(built)} workbooks in {args.out}{checked}")
    return 0


def format_results(results: pd.DataFrame, totals: pd.DataFrame) -> str:
    """The text ``workbook check`` prints: a table per learner (exercises, points / max,
    status), the reason for any notebook not graded, then every learner's total."""
    rows = list(results.itertuples(index=False))
    chapters = max([len(str(r.chapter)) for r in rows] + [len("chapter")])
    questions = max([len(r.question) for r in rows if isinstance(r.question, str)] + [8])
    by_learner = totals.set_index("learner")
    lines: list[str] = []
    for learner in dict.fromkeys(r.learner for r in rows):
        mine = [r for r in rows if r.learner == learner]
        header = f"  {'chapter':<{chapters}}  {'exercise':<{questions}}  {'points':>9}  status"
        lines += [str(learner), header]
        for r in mine:
            question = r.question if isinstance(r.question, str) else "-"
            score = f"{_num(r.points)} / {_num(r.max_points)}"
            lines.append(
                f"  {r.chapter:<{chapters}}  {question:<{questions}}  {score:>9}  {r.status}"
            )
        total = by_learner.loc[learner]
        score = f"{_num(total.points)} / {_num(total.max_points)}"
        percent = "" if math.isnan(total.percent) else f"{total.percent:g}%"
        lines.append(f"  {'total':<{chapters + questions + 2}}  {score:>9}  {percent}")
        failed = {r.chapter: r for r in mine if r.status != "graded"}
        lines += [f"  ! {r.chapter}: {r.status}: {r.message}" for r in failed.values()]
        lines.append("")
    name_width = max([len(str(n)) for n in totals.learner] + [len("learner")])
    lines.append(f"{'learner':<{name_width}}  {'points':>9}  {'percent':>7}  graded")
    for t in totals.itertuples(index=False):
        score = f"{_num(t.points)} / {_num(t.max_points)}"
        percent = "-" if math.isnan(t.percent) else f"{t.percent:g}%"
        lines.append(f"{t.learner:<{name_width}}  {score:>9}  {percent:>7}  {t.graded}")
    return "\n".join(line.rstrip() for line in lines)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table as JSON-able records (NaN as null)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def cmd_check(args: argparse.Namespace) -> int:
    """Grade the learners' notebooks; print the tables (or JSON) and write --csv."""
    from hdb_mlops.course.grading import check, totals

    autograders = args.autograders or AUTOGRADER_DIR
    if not autograders.is_dir():
        raise UsageError(
            f"no autograder folder {autograders}: build the workbooks first "
            "(hdb-mlops workbook build) or give --autograders DIR"
        )
    _require_otter()
    results = check(args.paths, autograders, timeout=args.timeout, jobs=args.jobs)
    summary = totals(results)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.csv, index=False)
    if args.json:
        print_json({"results": _records(results), "totals": _records(summary)})
    else:
        print(format_results(results, summary))
        if args.csv:
            print(f"results: {args.csv}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``workbook`` with ``build`` and ``check``."""
    wb = sub.add_parser("workbook", help="learner workbooks: build them, grade them (otter)")
    wsub = wb.add_subparsers(dest="workbook_command", required=True)
    p = wsub.add_parser(
        "build", help="write workbooks/<chapter>.ipynb and workbooks/autograder/<chapter>.zip"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="chapter name prefixes (default: all)")
    p.add_argument(
        "--out",
        type=new_or_existing_dir,
        default=str(WORKBOOKS_DIR),
        metavar="DIR",
        help="where to write them (default: workbooks/ beside notebooks/)",
    )
    p.add_argument(
        "--notebooks-dir",
        type=existing_dir,
        default=str(config.NOTEBOOKS_DIR),
        metavar="DIR",
        help="the chapter notebooks (otter masters) to build from",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="grade each chapter's solutions first; write nothing unless they score 100%%",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds per notebook for --check (default: %(default)g)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="chapters whose solutions --check grades at once (default: %(default)s)",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite workbooks edited since they were built"
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_build)

    p = wsub.add_parser("check", help="grade learners' workbooks (otter run, no Docker)")
    p.add_argument(
        "paths",
        nargs="+",
        type=existing_path,
        metavar="PATH",
        help="notebooks, or folders of them (e.g. one folder per learner)",
    )
    p.add_argument(
        "--autograders",
        type=existing_dir,
        default=None,
        metavar="DIR",
        help="the autograder zips (default: workbooks/autograder)",
    )
    p.add_argument("--csv", type=new_file, metavar="FILE", help="also write the rows as CSV")
    p.add_argument("--json", action="store_true", help="print the rows and totals as JSON")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds per notebook; a slower one scores 0 as timeout (default: %(default)g)",
    )
    p.add_argument(
        "--jobs", type=positive_int, default=1, metavar="N", help="notebooks graded at once"
    )
    p.set_defaults(func=cmd_check)
