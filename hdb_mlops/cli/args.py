"""What every verb of ``hdb-mlops`` shares: the parser class, the argument types and the
usage error.

The argument types check paths and values while argparse parses, so a missing file, a file
where a folder is expected or a bad number is reported by argparse itself, naming the
argument, before any command starts. Nothing here imports more than the standard library
and :mod:`hdb_mlops.config`: ``hdb-mlops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

#: Exit status of a usage or data error (argparse's own status for a bad argument).
EXIT_USAGE = 2
#: Exit status of a run that started and failed (a pipeline notebook raised).
EXIT_RUN_FAILED = 1

_MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UsageError(Exception):
    """A usage problem found once parsing is over (e.g. a ``--from`` no notebook matches);
    ``main`` prints it as one ``error:`` line with exit status 2."""


def one_line(text: object) -> str:
    """``text`` on one line: its non-blank lines, stripped and joined with ``"; "``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


class Parser(argparse.ArgumentParser):
    """An argument parser that never abbreviates long options and reports an error as one
    ``error: ...`` line on stderr with exit status 2.

    Sub-parsers made with ``add_subparsers().add_parser`` are of the same class, so the rules
    hold for every verb.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # `--data FILE` must not be taken for `--data-dir`: no prefix matching, anywhere.
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        # the deepest sub-parser's default wins: unknown arguments point at its --help
        self.set_defaults(cli_prog=self.prog)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parse like argparse, but report unknown arguments against the verb's own help."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(parsed, "cli_prog", self.prog)
            self.exit(
                EXIT_USAGE,
                f"error: unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)\n",
            )
        return parsed

    def error(self, message: str) -> NoReturn:
        """Print ``error: MESSAGE (see `PROG --help`)`` on one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see `{self.prog} --help`)\n")


def with_hint(message: object, hint: str) -> str:
    """``message: hint``, unless the message already names an ``hdb-mlops`` command to run."""
    text = str(message)
    return text if "hdb-mlops " in text else f"{text}: {hint}"


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (strings for what JSON has no type for)."""
    print(json.dumps(value, indent=2, default=str))


def print_summary(summary: dict[str, Any], as_json: bool = False) -> None:
    """Print a command's summary: as JSON, or one ``key  value`` line per entry."""
    if as_json:
        print_json(summary)
        return
    for key, value in summary.items():
        print(f"{key:<20}{value}")


# ----------------------------------------------------------------------------- paths


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text).expanduser()


def existing_file(text: str) -> Path:
    """An existing file (not a folder)."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return path


def existing_dir(text: str) -> Path:
    """An existing folder (not a file)."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, expected a folder")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {path}")
    return path


def existing_path(text: str) -> Path:
    """An existing file or folder."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {path}")
    return path


def _check_creatable(path: Path) -> None:
    """Raise unless the nearest existing ancestor of ``path`` is a writable folder."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path} cannot be created: {parent} is a file")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{path} cannot be created: no permission to write in {parent}"
        )


def new_or_existing_dir(text: str) -> Path:
    """A folder to write into: an existing folder, or one that can be created."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, expected a folder")
    if not path.exists():
        _check_creatable(path)
    return path


def new_file(text: str) -> Path:
    """A file to write: not a folder, and its folder exists or can be created."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, expected a file")
    if not path.exists():
        _check_creatable(path)
    return path


def data_source(text: str) -> str:
    """A data source: ``sample``, ``download``, or an existing file or folder."""
    if text in ("sample", "download"):
        return text
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(
            f"no such file or folder: {path} (use sample, download, or a resale file or folder)"
        )
    return str(path)


# ----------------------------------------------------------------------------- values


def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def integer(text: str) -> int:
    """Any integer (a seed)."""
    return _number(text, int, "a whole number")


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0."""
    value = _number(text, float, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of at least 0")
    return value


def month(text: str) -> str:
    """A month as ``YYYY-MM``."""
    if not _MONTH_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM (e.g. 2024-12)")
    return text


def tcp_port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    value = _number(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0 to 65535)")
    return value


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)"
        )
    return text


def plain_name(text: str) -> str:
    """A name without spaces or slashes (a registered model name, a run id)."""
    if not _NAME_RE.match(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain name (letters, digits, '.', '_' and '-')"
        )
    return text


# ----------------------------------------------------------------------------- commands


def quiet_mlflow(args: argparse.Namespace) -> None:
    """Keep MLflow's INFO lines (e.g. "Creating initial MLflow database tables...") off
    stderr unless ``-v`` was given or ``$MLFLOW_LOGGING_LEVEL`` says otherwise. Call before
    mlflow is imported."""
    if not getattr(args, "verbose", False):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
