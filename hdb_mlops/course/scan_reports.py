"""CI reports a repository scan reads instead of re-running the tests, the way mllint does:
JUnit XML (tests, failures, errors, skipped; ``pytest --junitxml``) and Cobertura XML (the
line rate; ``coverage xml`` and ``pytest --cov-report=xml`` write it).

The standard library's ElementTree parses them (its expat rejects entity-expansion bombs).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hdb_mlops.course.scan_evidence import RepoIndex


@dataclass
class JUnitReport:
    """Counts of a JUnit XML report."""

    path: str
    tests: int
    failures: int
    errors: int
    skipped: int

    @property
    def passed(self) -> bool:
        """Whether the report has tests and none of them failed or errored."""
        return self.tests > 0 and self.failures == 0 and self.errors == 0


@dataclass
class CoverageReport:
    """The line rate of a Cobertura XML report (0..1)."""

    path: str
    line_rate: float
    lines_valid: int | None = None


def _root_tag(path: Path) -> str:
    try:
        for _event, element in ET.iterparse(path, events=("start",)):
            return element.tag.rsplit("}", 1)[-1]
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not well-formed XML ({exc})") from None
    return ""


def read_junit(path: Path | str) -> JUnitReport:
    """Test counts of a JUnit XML report (``<testsuites>`` or ``<testsuite>``)."""
    path = Path(path)
    tag = _root_tag(path)
    if tag not in ("testsuites", "testsuite"):
        raise ValueError(
            f"{path} is not a JUnit XML report: its root element is <{tag}>, "
            "expected <testsuites> or <testsuite> (pytest --junitxml=FILE writes one)"
        )
    root = ET.parse(path).getroot()
    suites = [root] if tag == "testsuite" else root.findall(".//testsuite")
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    for suite in suites or [root]:
        for key in counts:
            try:
                counts[key] += int(float(suite.get(key, 0)))
            except ValueError:
                raise ValueError(
                    f"{path}: attribute {key}={suite.get(key)!r} is not a number"
                ) from None
    if not suites and tag == "testsuites":
        cases = root.findall(".//testcase")
        counts["tests"] = len(cases)
        counts["failures"] = sum(1 for c in cases if c.find("failure") is not None)
        counts["errors"] = sum(1 for c in cases if c.find("error") is not None)
        counts["skipped"] = sum(1 for c in cases if c.find("skipped") is not None)
    return JUnitReport(str(path), **counts)


def read_cobertura(path: Path | str) -> CoverageReport:
    """The line rate of a Cobertura XML coverage report (``coverage xml`` writes one)."""
    path = Path(path)
    tag = _root_tag(path)
    root = ET.parse(path).getroot() if tag == "coverage" else None
    rate = root.get("line-rate") if root is not None else None
    if rate is None:
        raise ValueError(
            f"{path} is not a Cobertura coverage report: expected <coverage line-rate=...>, "
            f"found <{tag}> (pytest --cov --cov-report=xml writes one)"
        )
    valid = root.get("lines-valid")
    return CoverageReport(str(path), float(rate), int(valid) if valid else None)


def find_reports(index: RepoIndex) -> tuple[list[JUnitReport], list[CoverageReport]]:
    """The JUnit and Cobertura reports among the repository's XML files."""
    junit, coverage = [], []
    for rel in index.paths("*.xml"):
        path = index.root / rel
        try:
            tag = _root_tag(path)
            if tag in ("testsuites", "testsuite"):
                junit.append(read_junit(path))
            elif tag == "coverage":
                coverage.append(read_cobertura(path))
        except (ValueError, OSError):
            continue
    return junit, coverage
