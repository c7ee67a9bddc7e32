"""hdb-mlops: scan-ignore (patterns, not evidence)

What a repository scan reads: an index of a repository's text files, grouped by kind, with a
``grep`` that answers ``path:line`` locations, the commands CI runs, and CI reports.

Nothing in the repository is run. Files are read as text (at most :data:`MAX_TEXT_BYTES` each);
folders that are not the project's own (``.git``, virtualenvs, caches, ``node_modules``, a
``fixtures`` folder of the tests) are skipped, and so is whatever the repository's root
``.gitignore`` names (a small reader of the common patterns: pathspec, the usual library for
this, is not installed). A file that says
``hdb-mlops: scan-ignore`` in its first lines is skipped too: the scanner's own rules and
tests spell out every pattern they look for, and must not count as evidence.

Kinds (a file may have several): ``python`` (not tests), ``test``, ``notebook`` (code cells,
located as ``path:cellN:line``), ``ci`` (CI configuration), ``deps`` (requirements and lock
files: names of packages, not evidence of their use), ``iac`` (CloudFormation, Terraform,
CDK), ``docker``, ``doc``, ``readme``, ``config``, ``alerts`` (Prometheus alert rules),
``alertmanager``, ``prometheus``, ``rule_tests``, ``dashboard`` (Grafana JSON).

The CI reports (JUnit, Cobertura) are read by :mod:`hdb_mlops.course.scan_reports`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

IGNORE_MARKER = "hdb-mlops: scan-ignore"
MAX_TEXT_BYTES = 1_000_000
MAX_FILES = 20_000
#: Folders that are never the project's own code.
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "node_modules", "__pycache__",
     ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
     ".import_linter_cache", "site-packages", ".eggs", ".terraform", "cdk.out"}
)  # fmt: skip
TEXT_SUFFIXES = frozenset(
    {".py", ".ipynb", ".yml", ".yaml", ".toml", ".cfg", ".ini", ".json", ".md", ".rst", ".txt",
     ".sh", ".tf", ".hcl", ".lock", ".xml", ".env", ".conf", ".j2", ".template", ".mk"}
)  # fmt: skip
TEXT_NAMES = frozenset(
    {"Makefile", "Dockerfile", "Jenkinsfile", "Containerfile", "Procfile", ".gitignore",
     ".dockerignore", "Pipfile", "CODEOWNERS", "run"}
)  # fmt: skip
DATA_SUFFIXES = frozenset({".csv", ".parquet", ".xlsx", ".xls", ".feather", ".h5", ".pkl"})
_CI_PATTERNS = (
    ".gitlab-ci.yml", ".gitlab/ci/*", ".github/workflows/*", ".ci/*", "Jenkinsfile",
    "azure-pipelines.yml", ".circleci/*", "bitbucket-pipelines.yml", "buildspec*.yml",
    ".travis.yml", ".drone.yml",
)  # fmt: skip
_IAC_RE = re.compile(r"AWSTemplateFormatVersion|[\"']?Type[\"']?\s*:\s*[\"']?AWS::\w+::|aws_cdk")
_MAKE_CALL_RE = re.compile(r"\$\(MAKE\)\s+([\w.-]+)|\bmake\s+(?:-\S+\s+)*([A-Za-z][\w.-]*)")
_PATH_RE = re.compile(r"[\w./-]+")
#: Files named in CI commands that are followed (scripts and included CI files).
_FOLLOWED = frozenset({"", ".sh", ".py", ".mk", ".yml", ".yaml"})


@dataclass(frozen=True)
class Line:
    """One line of a file: its location (``path:line`` or ``path:cellN:line``) and text."""

    loc: str
    text: str


@dataclass
class SourceFile:
    """A text file of the repository, its kinds and its lines."""

    path: str
    tags: set[str]
    lines: list[Line]
    size: int

    @cached_property
    def lowered(self) -> str:
        """:attr:`text` in lower case (for :func:`literals`)."""
        return self.text.lower()

    @cached_property
    def text(self) -> str:
        """The file's (indexed) text: its lines joined (a notebook's code cells)."""
        return "\n".join(line.text for line in self.lines)


def _ignore_patterns(root: Path) -> list[tuple[str, bool, bool]]:
    """(pattern, anchored, directory-only) for each plain line of the root .gitignore.
    Negations (``!``) are not applied: a file they re-include is skipped (conservative)."""
    path = root / ".gitignore"
    if not path.is_file():
        return []
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        dir_only = line.endswith("/")
        line = line.strip("/")
        out.append((line, "/" in line, dir_only))
    return out


def _ignored(rel: str, is_dir: bool, patterns: list[tuple[str, bool, bool]]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern, anchored, dir_only in patterns:
        if dir_only and not is_dir:
            continue
        target = rel if anchored else name
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def _is_text_file(path: Path) -> bool:
    name = path.name
    return (
        path.suffix.lower() in TEXT_SUFFIXES
        or name in TEXT_NAMES
        or "." not in name  # scripts such as .ci/run, bin/deploy
        or name.startswith(("Dockerfile", "docker-compose", "compose", "requirements"))
    )


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.I)


@lru_cache(maxsize=1024)
def literals(pattern: str) -> tuple[str, ...] | None:
    """Lower-case strings one of which every match of ``pattern`` contains (the literal
    start of each top-level alternative), or None when there is no such set. A file whose
    lower-cased text holds none of them cannot match, and ``str`` containment is hundreds of
    times faster than Python's regex engine on long alternations. Reads the pattern with
    the re module's own parser; any surprise means no shortcut."""
    try:
        from re import _constants as c
        from re import _parser

        def starts(seq: Any) -> list[str] | None:
            out = ""
            for op, av in seq:
                if op is c.AT and not out:
                    continue
                if op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] == 0 and not out:
                    continue
                if op is c.LITERAL:
                    out += chr(av)
                    continue
                if op is c.SUBPATTERN and not out:
                    return starts(av[-1])
                if op is c.BRANCH and not out:
                    alternatives = [starts(alt) for alt in av[1]]
                    if any(a is None for a in alternatives):
                        return None
                    return [x for a in alternatives for x in a or []]
                break
            return [out.lower()] if len(out) >= 2 else None

        found = starts(_parser.parse(pattern))
    except Exception:
        return None
    return tuple(found) if found else None


def _is_comment(text: str) -> bool:
    return text.lstrip().startswith("#")


def _notebook_lines(path: str, text: str) -> tuple[list[Line], bool]:
    """Code-cell lines of a notebook, and whether a cell is tagged ``parameters``."""
    try:
        cells = json.loads(text).get("cells", [])
    except (json.JSONDecodeError, AttributeError):
        return [], False
    lines, has_params = [], False
    for n, cell in enumerate(cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        has_params |= "parameters" in (cell.get("metadata", {}).get("tags") or [])
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        for i, text_line in enumerate(source.splitlines(), start=1):
            lines.append(Line(f"{path}:cell{n}:{i}", text_line))
    return lines, has_params


def _tags(rel: str, text: str) -> set[str]:
    """The kinds of a file from its path and content."""
    name = rel.rsplit("/", 1)[-1]
    suffix = Path(name).suffix.lower()
    tags: set[str] = set()
    if any(fnmatch.fnmatchcase(rel, p) for p in _CI_PATTERNS) or rel.startswith(".ci/"):
        tags.add("ci")
    if suffix == ".py":
        parts = rel.split("/")
        is_test = name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
        tags.add("test" if is_test or "tests" in parts[:-1] or "test" in parts[:-1] else "python")
    elif suffix == ".ipynb":
        tags.add("notebook")
    if suffix in (".tf", ".hcl") or name in ("cdk.json", "Pulumi.yaml") or _IAC_RE.search(text):
        tags.add("iac")
    if name.startswith(("Dockerfile", "Containerfile", "docker-compose", "compose.y")) or (
        rel.startswith(".devcontainer/")
    ):
        tags.add("docker")
    if suffix in (".md", ".rst") or (suffix == ".txt" and not name.startswith("requirements")):
        tags.add("doc")
    if "/" not in rel and name.lower().startswith("readme"):
        tags.add("readme")
    if suffix == ".lock" or name.startswith("requirements") or name in ("Pipfile",):
        tags.add("deps")  # names of packages, not evidence of their use
    elif suffix in (".yml", ".yaml", ".toml", ".cfg", ".ini", ".json", ".sh", ".mk") or (
        name in ("Makefile", ".gitignore") or (suffix == "" and "ci" not in tags)
    ):
        tags.add("config")
    if suffix in (".yml", ".yaml"):
        if re.search(r"^\s*-?\s*alert:", text, re.M):
            tags.add("alerts")
        if re.search(r"^receivers:", text, re.M) and re.search(r"^route:", text, re.M):
            tags.add("alertmanager")
        if re.search(r"^scrape_configs:", text, re.M):
            tags.add("prometheus")
        if re.search(r"^rule_files:", text, re.M) and re.search(r"^tests:", text, re.M):
            tags.add("rule_tests")
    if suffix == ".json" and re.search(r"\"panels\"\s*:", text):
        tags.add("dashboard")
    return tags


@dataclass
class RepoIndex:
    """The text files of a repository, by kind (see the module docstring)."""

    root: Path
    files: list[SourceFile] = field(default_factory=list)
    #: every file seen (text or not): relative path -> size in bytes
    sizes: dict[str, int] = field(default_factory=dict)
    #: notebooks with a cell tagged ``parameters`` (papermill)
    parameterised_notebooks: list[str] = field(default_factory=list)
    truncated: bool = False

    @classmethod
    def build(cls, root: Path | str) -> RepoIndex:
        """Walk ``root`` and read its text files (see the module docstring)."""
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise NotADirectoryError(20, "not a folder", str(root))
        index = cls(root)
        patterns = _ignore_patterns(root)
        for folder, dirs, names in os.walk(root):
            here = Path(folder)
            rel_dir = here.relative_to(root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            in_tests = bool({"tests", "test"} & set(rel_dir.split("/")))
            dirs[:] = sorted(
                d for d in dirs
                if d not in SKIP_DIRS and not d.endswith(".egg-info")
                and not (in_tests and d == "fixtures")  # the tests' data, not the project
                and not (here / d / "pyvenv.cfg").exists()
                and not _ignored(rel_dir + d, True, patterns)
            )  # fmt: skip
            for name in sorted(names):
                rel = rel_dir + name
                if _ignored(rel, False, patterns):
                    continue
                if len(index.sizes) >= MAX_FILES:
                    index.truncated = True
                    return index
                index._add(here / name, rel)
        return index

    def _add(self, path: Path, rel: str) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return
        self.sizes[rel] = size
        if not _is_text_file(path) or size > MAX_TEXT_BYTES or not path.is_file():
            return
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        if "\x00" in text[:8192] or IGNORE_MARKER in "\n".join(text.splitlines()[:5]):
            return
        tags = _tags(rel, text)
        if "notebook" in tags:
            lines, has_params = _notebook_lines(rel, text)
            if has_params:
                self.parameterised_notebooks.append(rel)
        else:
            lines = [Line(f"{rel}:{i}", t) for i, t in enumerate(text.splitlines(), start=1)]
        self.files.append(SourceFile(rel, tags, lines, size))

    # ------------------------------------------------------------------------- queries

    def tagged(self, *tags: str) -> list[SourceFile]:
        """The files with any of ``tags`` (every text file when none are given)."""
        return [f for f in self.files if not tags or f.tags & set(tags)]

    def file(self, rel: str) -> SourceFile | None:
        """The indexed text file at ``rel`` (relative, posix), if any."""
        return next((f for f in self.files if f.path == rel), None)

    def lines(self, *tags: str) -> list[Line]:
        """The lines of the files with any of ``tags``; the tag ``ci`` means the commands CI
        runs (:attr:`ci_lines`), not only the CI files."""
        plain = [t for t in tags if t != "ci"]
        out = [line for f in self.tagged(*plain) for line in f.lines] if plain or not tags else []
        if "ci" in tags:
            out.extend(self.ci_lines)
        return out

    def grep(self, pattern: str | re.Pattern, *tags: str, limit: int | None = None) -> list[Line]:
        """The lines of files with ``tags`` that match ``pattern`` (case-insensitive)."""
        regex = pattern if isinstance(pattern, re.Pattern) else _compile(pattern)
        needles = literals(regex.pattern)
        plain = [t for t in tags if t != "ci"]
        files = self.tagged(*plain) if plain or not tags else []
        if needles is not None:  # files without any of the literals cannot match
            files = [f for f in files if any(n in f.lowered for n in needles)]
        sources = [f.lines for f in files]
        if "ci" in tags:
            sources.append(self.ci_lines)
        hits: list[Line] = []
        for lines in sources:
            for line in lines:
                if regex.search(line.text):
                    hits.append(line)
                    if limit is not None and len(hits) >= limit:
                        return hits
        return hits

    def paths(self, pattern: str) -> list[str]:
        """Relative paths of every file seen (text or not) matching a glob pattern."""
        return [p for p in self.sizes if fnmatch.fnmatchcase(p, pattern)]

    @cached_property
    def ci_lines(self) -> list[Line]:
        """The CI configuration's lines, and the lines of what they run: scripts they name
        (e.g. ``.ci/run``) and the recipes of the make targets they call (``make test``),
        followed four levels deep."""
        seen_files: set[str] = set()
        seen_targets: set[str] = set()
        out: list[Line] = []
        files = [f.path for f in self.tagged("ci")]
        targets: list[str] = []
        for _depth in range(4):
            new: list[Line] = []
            for rel in files:
                source = self.file(rel)
                if rel in seen_files or source is None or source.tags & {"doc", "test"}:
                    continue
                seen_files.add(rel)
                new.extend(line for line in source.lines if not _is_comment(line.text))
            for target in targets:
                if target not in seen_targets:
                    seen_targets.add(target)
                    new.extend(self.make_recipe(target))
            if not new:
                break
            out.extend(new)
            targets = [
                m.group(1) or m.group(2) for line in new for m in _MAKE_CALL_RE.finditer(line.text)
            ]
            tokens = (t.removeprefix("./") for line in new for t in _PATH_RE.findall(line.text))
            files = [t for t in tokens if Path(t).suffix in _FOLLOWED and t in self.sizes]
        return out

    def make_recipe(self, target: str, _depth: int = 0) -> list[Line]:
        """The recipe lines of make target ``target`` in the root Makefile, with those of its
        prerequisites (two levels)."""
        makefile = self.file("Makefile")
        if makefile is None or _depth > 2:
            return []
        out: list[Line] = []
        head = re.compile(rf"^{re.escape(target)}\s*:(?!=)\s*(.*)$")
        for i, line in enumerate(makefile.lines):
            match = head.match(line.text)
            if not match:
                continue
            out.append(line)
            for follower in makefile.lines[i + 1 :]:
                if not follower.text.startswith("\t"):
                    break
                out.append(follower)
            for prereq in match.group(1).split():
                if not prereq.startswith("$"):
                    out.extend(self.make_recipe(prereq, _depth + 1))
        return out

    def pytest_options(self) -> list[Line]:
        """The lines that configure pytest's options (``addopts``) in pyproject.toml,
        pytest.ini, setup.cfg or tox.ini."""
        return [
            line
            for name in ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")
            if (f := self.file(name)) is not None
            for line in f.lines
            if re.match(r"\s*addopts\s*=", line.text)
        ]

    def test_functions(self) -> dict[str, int]:
        """Test file -> number of ``def test_...`` functions in it (files with at least one)."""
        regex = re.compile(r"^\s*(?:async\s+)?def test_\w*\s*\(")
        counts = {
            f.path: sum(1 for line in f.lines if regex.match(line.text))
            for f in self.tagged("test")
        }
        return {path: n for path, n in counts.items() if n}
