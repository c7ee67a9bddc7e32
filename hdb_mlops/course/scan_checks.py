"""hdb-mlops: scan-ignore (patterns, not evidence)

The building blocks of the repository scan's rules (:mod:`hdb_mlops.course.scan_rules`): the
:class:`Finding` a rule returns, the :class:`ScanContext` it reads, :func:`spec` for the rules
that are a few patterns, and the rules that need more than patterns. A rule returns ``met``
with the ``path:line`` locations that prove it, ``not_met`` when
the repository is where the evidence would be and it is not there (or something contradicts
it, such as a committed key or a wildcard IAM action), or ``undecided`` when the evidence may
live outside the repository (an account setting, a CI schedule set in a web UI, a team habit).

The patterns are heuristics, written to be read: a ``met`` says where to look, and a reader
should look. They never run anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from hdb_mlops.course.scan_evidence import RepoIndex
from hdb_mlops.course.scan_reports import CoverageReport, JUnitReport

MET, NOT_MET, UNDECIDED = "met", "not_met", "undecided"
#: Coverage a repository needs for testing.i3 (share of lines).
MIN_LINE_RATE = 0.70
#: A data file of this size or more, not ignored by git, counts as committed data.
BIG_DATA_BYTES = 5_000_000
EVIDENCE_PER_PART = 3

CODE, NB, TESTS, CI, IAC = ("python",), ("notebook",), ("test",), ("ci",), ("iac",)
ANYCODE = ("python", "notebook")
DOCS = ("doc", "readme")
CONFIG = ("config", "iac", "docker")
EVERYWHERE: tuple[str, ...] = ()


@dataclass
class Finding:
    """A rule's verdict with the locations that support it and a sentence about it."""

    verdict: str
    evidence: list[str] = field(default_factory=list)
    details: str = ""


@dataclass
class ScanContext:
    """What the rules read: the index and the CI reports found or passed in."""

    index: RepoIndex
    junit: list[JUnitReport] = field(default_factory=list)
    coverage: list[CoverageReport] = field(default_factory=list)

    def hits(self, pattern: str | re.Pattern, tags: tuple[str, ...], limit: int = 3) -> list[str]:
        """Locations of up to ``limit`` lines matching ``pattern`` in files of ``tags``. The
        tag ``ci_tests`` means the test files when CI runs the tests (else no files)."""
        if "ci_tests" in tags:
            rest = tuple(t for t in tags if t != "ci_tests")
            tags = (*rest, "test") if self.ci_runs_tests else rest
            if not tags:
                return []
        return [line.loc for line in self.index.grep(pattern, *tags, limit=limit)]

    @property
    def has_iac(self) -> bool:
        """Whether the repository has infrastructure code."""
        return bool(self.index.tagged("iac"))

    @cached_property
    def ci_runs_tests(self) -> list[str]:
        """Locations of the CI commands that run the tests (empty if none)."""
        return self.hits(r"\bpytest\b|\btox\b|\bnox\b|\bunittest\b|\bnose2\b", CI)


Rule = Callable[[ScanContext], Finding]


def _absent(ctx: ScanContext, absent: str) -> str:
    if absent == "iac":
        return NOT_MET if ctx.has_iac else UNDECIDED
    return absent


def spec(
    *parts: tuple[str, str, tuple[str, ...]],
    absent: str = NOT_MET,
    found: str = "",
    missing: str = "",
) -> Rule:
    """A rule met when every part — (name, pattern, file kinds) — has a match. When some parts
    match and others do not, it is not met; when none does, the verdict is ``absent``
    (``not_met``, ``undecided``, or ``iac``: not met if the repository has infrastructure
    code, undecided if it has none)."""

    def rule(ctx: ScanContext) -> Finding:
        located = {name: ctx.hits(regex, tags, EVIDENCE_PER_PART) for name, regex, tags in parts}
        evidence = [loc for locs in located.values() for loc in locs]
        lacking = [name for name, locs in located.items() if not locs]
        if not lacking:
            return Finding(MET, evidence, found or "found: " + ", ".join(located))
        if evidence:
            have = [name for name in located if name not in lacking]
            return Finding(
                NOT_MET, evidence, f"found {', '.join(have)}; missing {', '.join(lacking)}"
            )
        return Finding(_absent(ctx, absent), [], missing or "not found: " + ", ".join(lacking))

    return rule


def _files(ctx: ScanContext, globs: tuple[str, ...]) -> list[str]:
    return sorted({p for g in globs for p in ctx.index.paths(g)})


# ----------------------------------------------------------------------------- custom rules


def dependencies_listed(ctx: ScanContext) -> Finding:
    """env_cicd.b1: a requirements file, pyproject.toml, environment.yml, Pipfile, setup.py."""
    globs = ("requirements*.txt", "pyproject.toml", "environment.y*ml", "Pipfile", "setup.py",
             "setup.cfg", "*/requirements*.txt")  # fmt: skip
    found = _files(ctx, globs)
    if found:
        return Finding(MET, [f"{p}:1" for p in found[:5]], "dependency files: " + ", ".join(found))
    return Finding(NOT_MET, [], "no requirements.txt, pyproject.toml or environment.yml")


def dependencies_pinned(ctx: ScanContext) -> Finding:
    """env_cicd.i1: a lock file, or requirements files whose every line pins ``==``."""
    names = ("poetry.lock", "uv.lock", "Pipfile.lock", "pdm.lock", "conda-lock.y*ml",
             "requirements*.lock", "*/requirements*.lock")  # fmt: skip
    # a non-empty file: an empty *.lock is a mutex (e.g. a virtualenv's), not a lock file
    locks = [p for p in _files(ctx, names) if ctx.index.sizes.get(p)]
    if locks:
        return Finding(MET, [f"{p}:1" for p in locks[:3]], "lock files: " + ", ".join(locks))
    unpinned, pinned = [], []
    for source in ctx.index.tagged("deps"):
        if not re.match(r"(.*/)?requirements[\w.-]*\.txt$", source.path):
            continue
        for line in source.lines:
            text = line.text.split("#", 1)[0].strip()
            if not text or text.startswith("-"):
                continue
            (pinned if re.search(r"==\s*[\w.*+!-]+", text) else unpinned).append(line)
    if pinned and not unpinned:
        return Finding(MET, [pinned[0].loc], f"all {len(pinned)} requirements pinned with ==")
    if unpinned:
        names = ", ".join(line.text.strip() for line in unpinned[:3])
        return Finding(
            NOT_MET,
            [line.loc for line in unpinned[:3]],
            f"{len(unpinned)} requirement(s) not pinned to a version ({names}) and no lock file",
        )
    return Finding(NOT_MET, [], "no lock file and no pinned requirements file")


def readme_setup(ctx: ScanContext) -> Finding:
    """env_cicd.b2: a README that says how to install and run."""
    readmes = ctx.index.tagged("readme")
    if not readmes:
        return Finding(NOT_MET, [], "no README at the repository's root")
    hits = ctx.hits(r"\b(pip install|make \w+|conda (env )?create|uv (pip|sync)|install|set ?up)\b",
                    ("readme",))  # fmt: skip
    if hits:
        return Finding(MET, hits, "the README has set-up instructions")
    return Finding(NOT_MET, [f"{readmes[0].path}:1"], "the README does not say how to set up")


def ci_configured(ctx: ScanContext) -> Finding:
    """env_cicd.i2: CI configuration files."""
    files = [f.path for f in ctx.index.tagged("ci")]
    if files:
        return Finding(MET, [f"{p}:1" for p in files[:5]], "CI configuration: " + ", ".join(files))
    return Finding(NOT_MET, [], "no CI configuration (.gitlab-ci.yml, .github/workflows, .ci/ ...)")


def no_secrets(ctx: ScanContext) -> Finding:
    """security.b1: no access keys, private keys or long literal passwords/tokens."""
    patterns = [
        re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
        re.compile(r"-----BEGIN (RSA |EC |DSA |OPENSSH |PGP )?PRIVATE KEY( BLOCK)?-----"),
        re.compile(r"\b(ghp|gho|ghs)_[A-Za-z0-9]{36}\b|\bglpat-[A-Za-z0-9_-]{20}\b"),
        re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
        re.compile(
            r"(?i)(secret|password|passwd|api_?key|token)[\w-]*[\"']?\s*[:=]\s*[\"']"
            r"(?=[A-Za-z0-9/+_-]*[0-9])(?=[A-Za-z0-9/+_-]*[A-Za-z])[A-Za-z0-9/+_-]{20,}[\"']"
        ),
    ]
    hits = []
    for line in ctx.index.lines():
        if "EXAMPLE" in line.text:  # the documentation's sample keys
            continue
        if any(p.search(line.text) for p in patterns):
            hits.append(line.loc)
    env_files = [p for p in ctx.index.sizes if re.search(r"(^|/)\.env$", p)]
    if hits or env_files:
        what = f"{len(hits)} line(s) look like committed secrets" if hits else ""
        if env_files:
            what += ("; " if what else "") + "a .env file is committed: " + ", ".join(env_files)
        return Finding(NOT_MET, (hits + [f"{p}:1" for p in env_files])[:10], what)
    return Finding(MET, [], f"no key or token patterns in {len(ctx.index.files)} text files")


_WILDCARD = re.compile(r"^(\*|[\w-]+:\*)$")
_TF_WILDCARD = re.compile(r"actions?\s*=\s*\[?[^\]]*[\"'](\*|[\w-]+:\*)[\"']", re.I)


def _scalars(node: Any) -> list[Any]:
    """The scalar nodes of a YAML node (itself, or the items of a sequence)."""
    import yaml

    if isinstance(node, yaml.ScalarNode):
        return [node]
    if isinstance(node, yaml.SequenceNode):
        return [n for n in node.value if isinstance(n, yaml.ScalarNode)]
    return []


def _statements(node: Any) -> list[dict[str, Any]]:
    """The policy statements (mappings with an ``Effect``) in a composed YAML/JSON tree."""
    import yaml

    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            keys = {k.value: v for k, v in current.value if isinstance(k, yaml.ScalarNode)}
            if "Effect" in keys:
                found.append({"line": current.start_mark.line + 1, **keys})
            stack.extend(v for _k, v in current.value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return found


def _principal_is_account_root(node: Any) -> bool:
    """A key or bucket policy's statement for the account itself (delegation to IAM)."""
    import yaml

    if node is None:
        return False
    texts = [n.value for n in _scalars(node)]
    if isinstance(node, yaml.MappingNode):
        texts = [n.value for _k, v in node.value for n in _scalars(v)]
    return bool(texts) and all(str(t).endswith(":root") for t in texts)


def iam_least_privilege(ctx: ScanContext) -> Finding:
    """security.i1: no ``Allow`` statement grants a wildcard action (``*`` or ``s3:*``).

    CloudFormation templates (YAML or JSON) are composed with PyYAML, which keeps line
    numbers and needs no constructor for ``!Ref``/``!Sub``; Deny statements (``s3:*`` in a
    TLS-only policy is right) and statements for the account root (the default key policy,
    which hands control to IAM) are not grants to a workload. Terraform and CDK files are
    matched by pattern."""
    import yaml

    wildcards, policies = [], []
    for source in ctx.index.tagged("iac"):
        if source.path.endswith((".yaml", ".yml", ".json", ".template")):
            try:
                statements = _statements(yaml.compose(source.text))
            except yaml.YAMLError:
                statements = []
            for st in statements:
                policies.append(f"{source.path}:{st['line']}")
                effect = st["Effect"].value if isinstance(st["Effect"], yaml.ScalarNode) else ""
                if effect != "Allow" or _principal_is_account_root(st.get("Principal")):
                    continue
                for action in _scalars(st.get("Action")):
                    if _WILDCARD.match(str(action.value)):
                        wildcards.append(f"{source.path}:{action.start_mark.line + 1}")
        else:
            for line in source.lines:
                if re.search(r"aws_iam_|PolicyStatement|policy_document", line.text):
                    policies.append(line.loc)
                if _TF_WILDCARD.search(line.text) or "AdministratorAccess" in line.text:
                    wildcards.append(line.loc)
    if wildcards:
        return Finding(NOT_MET, wildcards[:10], f"{len(wildcards)} wildcard action(s) allowed")
    if policies:
        return Finding(MET, policies[:5], f"{len(policies)} policy statements, no wildcard grant")
    return Finding(UNDECIDED, [], "no IAM policies in the repository (they may be in the console)")


def data_out_of_git(ctx: ScanContext) -> Finding:
    """storage.b1: .gitignore keeps data out, and no big data files sit in the tree."""
    big = [
        p
        for p, size in ctx.index.sizes.items()
        if size >= BIG_DATA_BYTES and any(p.lower().endswith(s) for s in (".csv", ".parquet",
                                                                           ".xlsx", ".gz", ".zip"))
    ]  # fmt: skip
    ignores = ctx.hits(r"data|\*\.(csv|parquet|gz|xlsx)|raw/|datasets?", ("config",), limit=50)
    ignores = [loc for loc in ignores if loc.startswith(".gitignore:")][:3]
    if big:
        return Finding(NOT_MET, [f"{p}:1" for p in big[:5]], f"{len(big)} data file(s) over "
                       f"{BIG_DATA_BYTES // 1_000_000} MB are not ignored by git")  # fmt: skip
    if ignores:
        return Finding(MET, ignores, ".gitignore keeps the data folders out of git")
    return Finding(NOT_MET, [], "nothing in .gitignore keeps data files out of git")


def data_loaded_by_code(ctx: ScanContext) -> Finding:
    """data_pipeline.b1: data read by a script or package, not only in notebooks."""
    pattern = (
        r"read_(csv|parquet|excel|json|sql|table|feather)\b|load_dataset\(|spark\.read|pq\.read_"
    )
    code, notebooks = ctx.hits(pattern, CODE), ctx.hits(pattern, NB)
    if code:
        return Finding(MET, code, "data is read in scripts or the package")
    if notebooks:
        return Finding(NOT_MET, notebooks, "data is read in notebooks only")
    return Finding(NOT_MET, [], "no code that reads a data file")


def tests_exist(ctx: ScanContext) -> Finding:
    """testing.b1: test files with test functions."""
    counts = ctx.index.test_functions()
    if counts:
        files = sorted(counts, key=counts.get, reverse=True)  # type: ignore[arg-type]
        return Finding(MET, [f"{p}:1" for p in files[:5]],
                       f"{sum(counts.values())} test functions in {len(counts)} files")  # fmt: skip
    return Finding(NOT_MET, [], "no test functions (def test_...)")


def tests_runnable(ctx: ScanContext) -> Finding:
    """testing.b2: pytest configured or a make target / documented command for the tests."""
    if not ctx.index.test_functions():
        return Finding(NOT_MET, [], "there are no tests to run")
    hits = ctx.hits(r"^\[(tool\.pytest|pytest|tool:pytest)|^test[\w-]*\s*:", ("config",))
    hits += [loc for loc in ctx.hits(r"^test[\w-]*\s*:", EVERYWHERE) if loc.startswith("Makefile")]
    hits += ctx.hits(r"\bpytest\b|make test", ("readme",))
    if hits:
        return Finding(MET, sorted(set(hits))[:5], "a configured or documented test command")
    return Finding(NOT_MET, [], "no pytest configuration, test target or documented command")


def tests_in_ci(ctx: ScanContext) -> Finding:
    """testing.i1: CI runs the tests, and the JUnit reports (if any) show no failure."""
    runs = ctx.ci_runs_tests
    failed = [r for r in ctx.junit if not r.passed]
    if failed:
        r = failed[0]
        return Finding(NOT_MET, [*runs, r.path], f"the JUnit report {r.path} has {r.failures} "
                       f"failure(s) and {r.errors} error(s) in {r.tests} tests")  # fmt: skip
    if runs:
        passed = [f"{r.path}: {r.tests} tests, none failed" for r in ctx.junit]
        return Finding(MET, runs + [r.path for r in ctx.junit],
                       "CI runs the tests" + ("; " + "; ".join(passed) if passed else
                                              " (no JUnit report read: pass --junit)"))  # fmt: skip
    return Finding(NOT_MET, [], "no CI command runs the tests")


def coverage_measured(ctx: ScanContext) -> Finding:
    """testing.i3: a Cobertura report with a line rate of at least MIN_LINE_RATE."""
    if ctx.coverage:
        best = max(ctx.coverage, key=lambda r: r.line_rate)
        verdict = MET if best.line_rate >= MIN_LINE_RATE else NOT_MET
        return Finding(verdict, [best.path], f"line coverage {best.line_rate:.0%} "
                       f"(threshold {MIN_LINE_RATE:.0%})")  # fmt: skip
    configured = ctx.hits(r"--cov\b|pytest-cov|coverage (run|xml)", ("config", "ci"))
    return Finding(UNDECIDED, configured, "no coverage report read (pass --coverage coverage.xml)"
                   + ("; coverage is configured" if configured else ""))  # fmt: skip


def notebooks_in_ci(ctx: ScanContext) -> Finding:
    """testing.i4: notebooks executed in CI (nbval/nbmake via pytest, papermill, nbconvert)."""
    notebooks = ctx.index.tagged("notebook")
    if not notebooks:
        return Finding(MET, [], "there are no notebooks")
    direct = ctx.hits(r"nbval|nbmake|papermill|nbconvert .*--execute|jupyter execute|testbook", CI)
    via_pytest = []
    if ctx.ci_runs_tests:
        via_pytest = [line.loc for line in ctx.index.pytest_options()
                      if re.search(r"--nbval|--nbmake", line.text)]  # fmt: skip
    if direct or via_pytest:
        return Finding(MET, direct + via_pytest + ctx.ci_runs_tests[:1],
                       f"CI executes the {len(notebooks)} notebooks")  # fmt: skip
    return Finding(NOT_MET, [f"{notebooks[0].path}:1"],
                   f"{len(notebooks)} notebook(s) and nothing in CI executes them")  # fmt: skip


def alert_rules_tested(ctx: ScanContext) -> Finding:
    """monitoring.a2: Prometheus rule tests that CI runs (promtool test rules)."""
    rules = [f.path for f in ctx.index.tagged("alerts")]
    tests = [f.path for f in ctx.index.tagged("rule_tests")]
    if not rules:
        return Finding(NOT_MET, [], "no alert rules")
    runner = ctx.hits(r"promtool\b.*test rules|test rules|promtool", ("ci", "test"))
    if tests and runner and (ctx.ci_runs_tests or ctx.hits(r"promtool", CI)):
        return Finding(MET, [f"{p}:1" for p in tests[:3]] + runner[:2],
                       f"{len(tests)} rule test file(s), run by CI")  # fmt: skip
    if tests:
        located = [f"{p}:1" for p in tests[:3]]
        return Finding(NOT_MET, located, "rule tests exist; CI does not run them")
    return Finding(NOT_MET, [f"{p}:1" for p in rules[:3]], "alert rules without rule tests")


def alerts_routed(ctx: ScanContext) -> Finding:
    """monitoring.i3: alert rules with a receiver (Alertmanager), or alarms with actions."""
    rules = [f"{f.path}:1" for f in ctx.index.tagged("alerts")]
    routes = [f"{f.path}:1" for f in ctx.index.tagged("alertmanager")]
    alarms = ctx.hits(r"AWS::CloudWatch::Alarm|aws_cloudwatch_metric_alarm", IAC)
    actions = ctx.hits(r"AlarmActions|alarm_actions", IAC)
    if (rules and routes) or (alarms and actions):
        return Finding(MET, (rules + routes + alarms + actions)[:6], "alerts with a receiver")
    if rules or alarms:
        return Finding(NOT_MET, rules + alarms, "alert rules, but nothing routes them to a person")
    return Finding(NOT_MET, [], "no alert rules")


def train_parameterised(ctx: ScanContext) -> Finding:
    """feedback.b1: training takes parameters (a CLI, a function, papermill parameters)."""
    hits = ctx.hits(r"def train\w*\(\s*\w+|add_parser\(\s*[\"']train|@(click|app)\.command", CODE)
    cli = ctx.hits(r"argparse|click|typer|sys\.argv|fire\.Fire", CODE)
    trainers = ctx.hits(r"\.fit\(", CODE, limit=50)
    train_files = {loc.rsplit(":", 1)[0] for loc in trainers}
    cli = [loc for loc in cli if loc.rsplit(":", 1)[0] in train_files]
    params = [f"{p}:1" for p in ctx.index.parameterised_notebooks]
    if hits or cli or params:
        return Finding(MET, (hits + cli + params)[:5], "training takes parameters")
    if trainers:
        return Finding(NOT_MET, trainers[:3], "the training code takes no parameters")
    return Finding(NOT_MET, [], "no training code")
