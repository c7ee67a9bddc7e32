"""``hdb-mlops``: the command line over the package's functions.

One module per verb group, each registering its sub-parsers with ``add_parsers``:
:mod:`~hdb_mlops.cli.data` (``data ...``), :mod:`~hdb_mlops.cli.model` (``evaluate``,
``train``, ``model ...``), :mod:`~hdb_mlops.cli.serve` (``serve``) and
:mod:`~hdb_mlops.cli.pipeline` (``pipeline ...``, ``notebooks ...``); the argument types
and the parser class are in :mod:`~hdb_mlops.cli.args`. Heavy libraries are imported inside
the commands only.

Every command prints a short human summary, or JSON with ``--json``. Every error is one line
on stderr starting with ``error:``, with exit status 2 (usage or data: a bad argument, a
missing or wrong path, a model that is not there), or 1 when a pipeline notebook failed;
``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings

from hdb_mlops.cli import (
    assess,
    cloud,
    data,
    loop,
    model,
    monitor,
    pipeline,
    release,
    serve,
    workbook,
)
from hdb_mlops.cli.args import EXIT_RUN_FAILED, EXIT_USAGE, Parser, UsageError, one_line

__all__ = ["EXIT_RUN_FAILED", "EXIT_USAGE", "build_parser", "describe_error", "main"]

#: Optional dependencies and the extra of pyproject.toml that installs them.
_EXTRAS = {
    "mlflow": "track",
    "optuna": "track",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "pydantic": "serve",
    "otter": "lab",
    "sagemaker": "aws",
    "boto3": "aws",
}
#: Exception types whose message is meant for the user as it is (no type name in front).
_EXPECTED = (UsageError, OSError, ValueError, LookupError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hdb-mlops`` (no option abbreviations, one-line errors)."""
    parser = Parser(
        prog="hdb-mlops", description="The hdb-mlops course: data, pipeline and notebooks."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress; tracebacks on errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    groups = (data, model, serve, pipeline, workbook, monitor, loop, cloud, release, assess)
    for group in groups:
        group.add_parsers(sub)
    return parser


def _os_error(exc: OSError) -> str:
    """``PATH: reason`` for an OSError, with what to do for the usual ones."""
    if not exc.filename:
        return str(exc)
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 else "")
    message = f"{where}: {exc.strerror or exc}"
    if isinstance(exc, NotADirectoryError):
        message += " (a part of this path is a file where a folder is expected)"
    elif isinstance(exc, IsADirectoryError):
        message += " (it is a folder where a file is expected)"
    elif isinstance(exc, PermissionError):
        message += " (check its permissions or choose another path)"
    elif isinstance(exc, FileNotFoundError):
        message += " (check the path)"
    return message


def describe_error(exc: BaseException) -> str:
    """The one-line message ``main`` prints after ``error:`` for ``exc``."""
    if isinstance(exc, ImportError) and exc.name:
        top = exc.name.split(".")[0]
        extra = _EXTRAS.get(top)
        fix = f": pip install -e '.[{extra}]'" if extra else ""
        return one_line(f"{top} is not installed{fix}")
    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    elif isinstance(exc, OSError):
        message = _os_error(exc)
    else:
        message = str(exc) or type(exc).__name__
    expected = isinstance(exc, _EXPECTED) or type(exc).__module__.startswith("hdb_mlops")
    if not expected:
        message = f"{type(exc).__name__}: {message} (run with -v for the traceback)"
    return one_line(message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hdb-mlops`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_RUN_FAILED if _is_failed_run(exc) else EXIT_USAGE


def _one_line_warning(message: Warning | str, *_: object, **__: object) -> str:
    """Warnings on the command line as ``warning: ...``, without a file name and source line."""
    return f"warning: {message}\n"


def _is_failed_run(exc: BaseException) -> bool:
    """Whether ``exc`` is a pipeline run that failed (its module is loaded only by then)."""
    course = sys.modules.get("hdb_mlops.course.pipeline")
    return course is not None and isinstance(exc, course.PipelineError)


if __name__ == "__main__":
    sys.exit(main())
