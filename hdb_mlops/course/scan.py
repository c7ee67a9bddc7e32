"""``scan(path)``: the maturity evidence a repository shows, without running anything.

The scan indexes the repository's text files (:mod:`~hdb_mlops.course.scan_evidence`), reads
the CI reports it finds or is given (:mod:`~hdb_mlops.course.scan_reports`), applies one rule
per evidence statement of the framework (:mod:`~hdb_mlops.course.scan_rules`) and scores the
ten categories the way the questionnaire does (:mod:`~hdb_mlops.course.maturity`), except that
a level counts only when the scan can **prove** it: an undecided statement holds a level back
like an unmet one, and is listed so that the questionnaire can settle it. Beside the ten
categories it reports Google's ML Test Score (:mod:`~hdb_mlops.course.mltestscore`).

Each rule's record follows mllint's: id, category, level, weight, the evidence as
``path:line`` strings, a verdict (met, not_met or undecided) and details.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.course.maturity import (
    CategoryResult,
    Framework,
    assess_categories,
    load_framework,
    results_table,
)
from hdb_mlops.course.mltestscore import MLTestScore, ml_test_score
from hdb_mlops.course.scan_checks import MET, NOT_MET, UNDECIDED, Finding, ScanContext
from hdb_mlops.course.scan_evidence import RepoIndex
from hdb_mlops.course.scan_reports import find_reports, read_cobertura, read_junit
from hdb_mlops.course.scan_rules import RULES

CREDIT = {MET: 1.0, NOT_MET: 0.0, UNDECIDED: None}
#: Test-file name keywords -> the area of the system the tests cover.
TEST_AREAS: dict[str, tuple[str, ...]] = {
    "data": ("data", "ingest", "validat", "schema", "download", "sample", "storage", "geocode",
             "location"),
    "model": ("model", "train", "evaluat", "feature", "registry", "tracking", "pyfunc", "tune"),
    "serving": ("serv", "api", "predict", "contract", "endpoint"),
    "monitoring": ("monitor", "drift", "alert", "prometheus", "grafana", "loop", "feedback"),
    "infrastructure": ("cloud", "infra", "cfn", "template", "sagemaker", "release", "pipeline"),
}  # fmt: skip


@dataclass
class RuleResult:
    """One rule's record (after mllint's): id, category, level, weight, evidence, verdict."""

    id: str
    category: str
    level: str
    weight: float
    text: str
    verdict: str
    evidence: list[str] = field(default_factory=list)
    details: str = ""

    @property
    def score(self) -> int | None:
        """100 when met, 0 when not met, None when undecided (mllint's 0-100 score)."""
        credit = CREDIT[self.verdict]
        return None if credit is None else int(credit * 100)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**vars(self), "score": self.score}


@dataclass
class ScanReport:
    """What the scan found: the rule records, the ten categories at the level the scan can
    prove, the ML Test Score, and facts about the repository (files, tests, CI reports)."""

    root: str
    rules: list[RuleResult]
    categories: list[CategoryResult]
    ml_test_score: MLTestScore
    facts: dict[str, Any]

    def by_verdict(self, verdict: str) -> list[RuleResult]:
        """The rules with one verdict (``met``, ``not_met``, ``undecided``)."""
        return [r for r in self.rules if r.verdict == verdict]

    @property
    def undecided(self) -> list[RuleResult]:
        """What the scan could not decide (answer these in the questionnaire)."""
        return self.by_verdict(UNDECIDED)

    def category(self, category_id: str) -> CategoryResult:
        """One category's result."""
        return next(c for c in self.categories if c.id == category_id)

    def table(self) -> pd.DataFrame:
        """The ten categories as a display table (see :func:`maturity.results_table`)."""
        return results_table(self.categories)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "root": self.root,
            "summary": dict(Counter(r.verdict for r in self.rules)),
            "categories": [c.to_dict() for c in self.categories],
            "ml_test_score": self.ml_test_score.to_dict(),
            "facts": self.facts,
            "rules": [r.to_dict() for r in self.rules],
        }


def _test_areas(test_files: dict[str, int]) -> dict[str, int]:
    """Test functions per area of the system, from the test files' names."""
    areas: Counter[str] = Counter()
    for path, n in test_files.items():
        name = path.rsplit("/", 1)[-1].lower()
        area = next(
            (a for a, words in TEST_AREAS.items() if any(w in name for w in words)), "other"
        )
        areas[area] += n
    return dict(areas)


def _facts(ctx: ScanContext) -> dict[str, Any]:
    index = ctx.index
    kinds = Counter(tag for f in index.files for tag in f.tags)
    tests = index.test_functions()
    return {
        "files_seen": len(index.sizes),
        "text_files": len(index.files),
        "files_by_kind": dict(sorted(kinds.items())),
        "truncated": index.truncated,
        "tests": {
            "files": len(tests),
            "functions": sum(tests.values()),
            "by_area": _test_areas(tests),
        },
        "ci_files": [f.path for f in index.tagged("ci")],
        "ci_runs": sorted({line.loc.split(":", 1)[0] for line in index.ci_lines}),
        "junit": [vars(r) for r in ctx.junit],
        "coverage": [vars(r) for r in ctx.coverage],
    }


def scan(
    path: Path | str,
    *,
    junit: list[Path | str] | Path | str | None = None,
    coverage: list[Path | str] | Path | str | None = None,
    framework: Framework | None = None,
) -> ScanReport:
    """Scan the repository at ``path``. The CI reports (JUnit XML, Cobertura XML) are those
    found in the repository, unless ``junit`` or ``coverage`` name the ones to read instead;
    a report given here that is not of its kind raises ValueError."""
    framework = framework or load_framework()
    index = RepoIndex.build(path)
    found_junit, found_coverage = find_reports(index)
    as_list = lambda x: [] if x is None else list(x) if isinstance(x, list | tuple) else [x]  # noqa: E731
    given_junit = [read_junit(p) for p in as_list(junit)]
    given_coverage = [read_cobertura(p) for p in as_list(coverage)]
    ctx = ScanContext(  # reports given replace those found of the same kind
        index,
        junit=given_junit or found_junit,
        coverage=given_coverage or found_coverage,
    )
    rules = []
    for evidence in framework.evidence.values():
        check = RULES.get(evidence.id)
        finding = (
            check(ctx)
            if check
            else Finding(
                UNDECIDED, [], "a repository cannot show this: answer it in the questionnaire"
            )
        )
        rules.append(
            RuleResult(
                evidence.id,
                evidence.category,
                evidence.level,
                evidence.weight,
                evidence.text,
                finding.verdict,
                finding.evidence,
                finding.details,
            )
        )
    credits = {r.id: CREDIT[r.verdict] for r in rules}
    return ScanReport(
        str(index.root),
        rules,
        assess_categories(credits, framework),
        ml_test_score(ctx),
        _facts(ctx),
    )
