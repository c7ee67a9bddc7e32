"""``hdb-mlops pipeline run|list`` and ``hdb-mlops notebooks refresh`` (papermill).

Usage errors (an unknown profile, a ``-p`` that is not ``name=value``, a ``--only`` or
``--from`` no notebook matches, a folder without notebooks) are found before any notebook
runs and exit with status 2; a notebook that fails is a run result and exits with status 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    existing_dir,
    new_or_existing_dir,
    plain_name,
    positive_int,
    print_json,
)


def profile_name(text: str) -> str:
    """A pipeline profile (``quick`` or ``full``)."""
    try:
        config.profile_settings(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def notebook_parameter(text: str) -> tuple[str, Any]:
    """A ``-p NAME=VALUE`` override, the value read as JSON when it is JSON."""
    from hdb_mlops.course.pipeline import PipelineError, parse_parameter

    try:
        return parse_parameter(text)
    except PipelineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selected(
    notebooks_dir: Path, only: list[str] | None, start: str | None, option: str
) -> list[Path]:
    """The notebooks a run or a refresh would take, or a usage error naming ``option``."""
    from hdb_mlops.course.pipeline import PipelineError, list_notebooks, select

    notebooks = list_notebooks(notebooks_dir)
    if not notebooks:
        raise UsageError(
            f"argument --notebooks-dir: no chapter notebooks (NN_name.ipynb) in {notebooks_dir}"
        )
    try:
        return select(notebooks, only, start)
    except PipelineError as exc:
        raise UsageError(f"argument {option}: {exc}") from None


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    """Run the chapter notebooks into ``runs/<run-id>/`` and print the steps."""
    from hdb_mlops.course.pipeline import run

    only = [o for item in args.only for o in item.split(",") if o] if args.only else None
    _selected(args.notebooks_dir, only, args.start, "--only" if only else "--from")
    manifest = run(
        args.profile,
        dict(args.parameter),
        only=only,
        start=args.start,
        run_id=args.run_id,
        runs_dir=args.runs_dir,
        notebooks_dir=args.notebooks_dir,
        cell_timeout=args.cell_timeout,
    )
    if args.json:
        print_json(manifest)
    else:
        for step in manifest["notebooks"]:
            print(f"{step['notebook']:<28}{step['status']:<8}{step.get('seconds', 0):>8.1f} s")
        print(f"run {manifest['run_id']}: {manifest['status']} in {manifest['seconds']:.1f} s")
        print(f"manifest: {args.runs_dir / manifest['run_id'] / 'manifest.json'}")
    return 0


def cmd_pipeline_list(args: argparse.Namespace) -> int:
    """Print the notebooks in pipeline order."""
    from hdb_mlops.course.pipeline import list_notebooks

    for nb in list_notebooks(args.notebooks_dir):
        print(nb.stem)
    return 0


def cmd_notebooks_refresh(args: argparse.Namespace) -> int:
    """Re-execute the committed notebooks in place; a failing notebook exits with status 1."""
    names = args.names or None
    _selected(config.NOTEBOOKS_DIR, names, None, "NAME")
    from papermill.exceptions import PapermillExecutionError

    from hdb_mlops.course.pipeline import PipelineError, refresh_committed

    try:
        refreshed = refresh_committed(names=names)
    except PapermillExecutionError as exc:
        count = f" (In [{exc.exec_count}])" if exc.exec_count else ""
        raise PipelineError(
            f"a notebook failed at cell {exc.cell_index}{count}: {exc.ename}: {exc.evalue} "
            "(run with -v to see which; its file now holds the failed run's outputs)"
        ) from exc
    for nb in refreshed:
        print(f"refreshed {nb.name}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``pipeline`` and ``notebooks`` with their sub-commands."""
    pipe = sub.add_parser("pipeline", help="run the chapter notebooks in order (papermill)")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True)
    p = psub.add_parser("run", help="execute the notebooks into runs/<run-id>/")
    p.add_argument(
        "--profile",
        type=profile_name,
        default="quick",
        help="quick (bundled sample) | full (real data)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        type=notebook_parameter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a notebook parameter (repeatable)",
    )
    p.add_argument("--only", action="append", metavar="NAME", help="run only these notebooks")
    p.add_argument("--from", dest="start", metavar="NAME", help="start at this notebook")
    p.add_argument("--run-id", type=plain_name, default=None)
    p.add_argument(
        "--runs-dir", type=new_or_existing_dir, default=str(config.RUNS_DIR), metavar="DIR"
    )
    p.add_argument(
        "--notebooks-dir",
        type=existing_dir,
        default=str(config.NOTEBOOKS_DIR),
        metavar="DIR",
        help="run the numbered notebooks of this folder (e.g. a workshop's copies)",
    )
    p.add_argument(
        "--cell-timeout",
        type=positive_int,
        default=None,
        help="seconds per cell (default: 900 in the quick profile, 10800 in the full one)",
    )
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_pipeline_run)

    p = psub.add_parser("list", help="the notebooks in pipeline order")
    p.add_argument(
        "--notebooks-dir",
        type=existing_dir,
        default=str(config.NOTEBOOKS_DIR),
        metavar="DIR",
    )
    p.set_defaults(func=cmd_pipeline_list)

    nbs = sub.add_parser("notebooks", help="maintain the committed notebooks")
    nsub = nbs.add_subparsers(dest="notebooks_command", required=True)
    p = nsub.add_parser(
        "refresh", help="re-execute the notebooks in place (their committed outputs)"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="notebook name prefixes (default: all)")
    p.set_defaults(func=cmd_notebooks_refresh)
