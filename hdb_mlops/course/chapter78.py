"""hdb-mlops: scan-ignore (tables about the scan, not evidence)

Display helpers of the chapter 7 and 8 notebooks: the maturity framework, a questionnaire and
two repository scans side by side, the ML Test Score beside the ten categories (chapter 7);
who owns which category, a model card safe to commit, fairness summaries and a figure
(chapter 8). The logic lives in :mod:`~hdb_mlops.course.maturity`,
:mod:`~hdb_mlops.course.questionnaire`, :mod:`~hdb_mlops.course.scan`,
:mod:`~hdb_mlops.course.mltestscore`, :mod:`~hdb_mlops.course.modelcard` and
:mod:`~hdb_mlops.course.fairness`; these functions only arrange what they return.

The tables keep to what stays the same from one edit of a repository to the next (levels,
scores, verdicts, counts of verdicts): :func:`evidence_table` is the exception, since the
``path:line`` locations move whenever a file above them changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.course import maturity
from hdb_mlops.course.maturity import (
    FRAMEWORK_FILE,
    LEVEL_NAMES,
    LEVELS,
    CategoryResult,
    Framework,
    load_framework,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hdb_mlops.course.fairness import GroupFairness
    from hdb_mlops.course.questionnaire import Assessment
    from hdb_mlops.course.scan import ScanReport

EXAMPLE_ANSWERS_FILE = config.RESOURCES_DIR / "maturity-answers-example.yaml"
BARE_REPOSITORY = config.PROJECT_DIR / "tests" / "fixtures" / "repos" / "bare"
VERDICTS: tuple[str, ...] = ("met", "not_met", "undecided")

#: Where the evidence of a statement may be when a repository does not show it (our words).
ELSEWHERE: dict[str, str] = {
    "env_cicd.a2": "environments can be AWS accounts or CI environments set up outside the code",
    "env_cicd.a3": "scaling and restarts can be settings of the platform that runs the service",
    "security.b2": "S3 encrypts new objects by default (since 2023); an account can enforce more",
    "security.b3": "accounts and roles are often managed in the console or by a central team",
    "security.i1": "policies written in the console or by a platform team leave no file here",
    "security.i2": "one account-wide Block Public Access setting covers every bucket",
    "security.i3": "keys can be created and rotated by a central team",
    "security.i4": "secrets kept as CI variables in the web UI are never named in the code",
    "security.a1": "the network can come from the agency's landing zone, not this repository",
    "security.a2": "isolation can be a setting of jobs started from elsewhere",
    "storage.b2": "raw files can sit in a bucket that the repository never names",
    "storage.i3": "bucket versioning and lifecycle rules can be set in the console",
    "storage.a1": "a feature store is a managed service, configured where it runs",
    "storage.a2": "lineage can be kept by a platform (SageMaker lineage, a data catalogue)",
    "storage.a3": "retention rules live in data agreements and account policies",
    "data_pipeline.a1": "GitLab and GitHub schedules are set in the web UI",
    "data_pipeline.a2": "data-quality alerts can live in the monitoring system's own set-up",
    "data_pipeline.a3": "failure e-mails and chat messages are often CI settings in the web UI",
    "orchestration.a1": "triggers can be set in the CI web UI or in the cloud console",
    "orchestration.a2": "a roll-out strategy can be a deployment setting of the platform",
    "testing.i3": "coverage is a result of running the tests; the scan runs nothing and reads "
    "a coverage report only when there is one",
    "monitoring.b2": "a person who checks the error by hand leaves no trace in the code",
    "monitoring.a3": "tracing can be switched on by the platform (an agent, an X-Ray setting)",
    "optimization.b2": "instance types can be chosen in the console or in another repository",
    "optimization.i3": "budgets are often set in AWS Budgets by a finance or platform team",
    "optimization.a1": "scaling policies can be set on the endpoint in the console",
    "optimization.a2": "spot capacity and right-sizing can be chosen job by job",
    "feedback.b2": "the rule can be written in a runbook or a wiki",
    "feedback.i3": "GitLab and GitHub schedules are set in the web UI",
}
ELSEWHERE_DEFAULT = "the evidence may live outside the repository: ask the team"

#: The ten categories that each section of the ML Test Score speaks to (our reading).
SECTION_CATEGORIES: dict[str, tuple[str, ...]] = {
    "data": ("data_pipeline", "storage", "testing"),
    "model": ("experimentation", "feedback"),
    "infrastructure": ("env_cicd", "orchestration", "testing"),
    "monitoring": ("monitoring", "optimization", "feedback"),
}

#: Who leads the work of each category in a team of four, and who helps (our reading of
#: the playbook's roles).
CATEGORY_OWNERS: dict[str, tuple[str, str]] = {
    "env_cicd": ("ML engineer", "tech lead"),
    "security": ("ML engineer", "the agency's IT security"),
    "storage": ("data engineer", "ML engineer"),
    "data_pipeline": ("data engineer", "data scientist"),
    "orchestration": ("ML engineer", "data scientist"),
    "testing": ("ML engineer", "data engineer"),
    "monitoring": ("ML engineer", "data scientist"),
    "optimization": ("ML engineer", "tech lead"),
    "feedback": ("data scientist", "ML engineer"),
    "experimentation": ("data scientist", "tech lead"),
}


# ----------------------------------------------------------------------------- framework


def levels_table() -> pd.DataFrame:
    """The three levels: the playbook's name for each and what it means, in one line."""
    import yaml

    levels = yaml.safe_load(FRAMEWORK_FILE.read_text(encoding="utf-8"))["levels"]
    return pd.DataFrame(
        {
            "playbook": [lv["playbook"] for lv in levels],
            "in one line": [lv["summary"] for lv in levels],
        },
        index=pd.Index([lv["name"] for lv in levels], name="level"),
    )


def categories_table(framework: Framework | None = None) -> pd.DataFrame:
    """The ten categories: how much of each the playbook describes, and the number of
    evidence statements at each level."""
    framework = framework or load_framework()
    rows = {
        c.name: {
            "id": c.id,
            "playbook": c.playbook,
            **{LEVEL_NAMES[lv]: len(c.at(lv)) for lv in LEVELS},
        }
        for c in framework.categories
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("category")


def statements_table(category_id: str, framework: Framework | None = None) -> pd.DataFrame:
    """The evidence statements of one category, level by level."""
    category = (framework or load_framework()).category(category_id)
    return pd.DataFrame(
        {
            "level": [LEVEL_NAMES[e.level] for e in category.evidence],
            "statement": [e.text for e in category.evidence],
        },
        index=pd.Index([e.id for e in category.evidence], name="id"),
    )


# ----------------------------------------------------------------------------- questionnaire


def example_answers() -> dict[str, Any]:
    """The fictional team's answers (``resources/maturity-answers-example.yaml``), parsed."""
    import yaml

    return yaml.safe_load(EXAMPLE_ANSWERS_FILE.read_text(encoding="utf-8"))


def example_assessment(validate: bool = True) -> Assessment:
    """The fictional team's answers, scored; validated first unless ``validate`` is False
    (the check imports jsonschema, which takes seconds; the file's own test validates it)."""
    from hdb_mlops.course import questionnaire

    if validate:
        return questionnaire.assess_answers(example_answers(), source=EXAMPLE_ANSWERS_FILE.name)
    data, framework = example_answers(), load_framework()
    credits = questionnaire.credits_from_answers(data, framework)
    results = maturity.assess_categories(credits, framework)
    return questionnaire.Assessment(results, str(data.get("team") or ""), str(data["date"]))


def roadmap_table(results: list[CategoryResult], steps: int = 1) -> pd.DataFrame:
    """The next ``steps`` roadmap steps of each category: the level it is at, the level it
    aims for, the statements still missing, and each step with its chapter and command."""
    rows = []
    for r in results:
        target = (
            "—"
            if not r.missing
            else LEVEL_NAMES[LEVELS[LEVELS.index(r.level) + 1] if r.level else LEVELS[0]]
        )
        for n, step in enumerate(r.steps[:steps] or [None], start=1):
            rows.append(
                {
                    "category": r.name,
                    "#": n,
                    "at": r.level_name,
                    "aims for": target,
                    "missing": ", ".join(e.id.split(".", 1)[1] for e in r.missing),
                    "step": step.step if step else "",
                    "chapter": step.chapter if step else "",
                    "command": step.command if step else "",
                }
            )
    return pd.DataFrame(rows).set_index(["category", "#"])


def owners_table(results: list[CategoryResult]) -> pd.DataFrame:
    """The first roadmap step of each category, with the role that leads it and the role
    that helps (:data:`CATEGORY_OWNERS`)."""
    table = roadmap_table(results, steps=1).droplevel("#")[["at", "step"]]
    ids = [r.id for r in results]
    table.insert(0, "leads", [CATEGORY_OWNERS[i][0] for i in ids])
    table.insert(1, "helps", [CATEGORY_OWNERS[i][1] for i in ids])
    return table


# ----------------------------------------------------------------------------- scans


def _counts(report: ScanReport) -> dict[str, int]:
    return {v: len(report.by_verdict(v)) for v in VERDICTS}


def scan_summary(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """Per repository: statements met, not met and undecided, and the ML Test Score."""
    rows = {
        label: {**_counts(r), "statements": len(r.rules), "ML Test Score": r.ml_test_score.final}
        for label, r in reports.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("repository")


def categories_side_by_side(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """The ten categories, with the level and score (whole points) that each scan proves
    and its statements met / not met / undecided."""
    parts = {}
    for label, report in reports.items():
        counts = [
            "/".join(str(sum(v == x for v in c.credits.values())) for x in (1, 0, None))
            for c in report.categories
        ]
        parts[label] = pd.DataFrame(
            {
                "level": [c.level_name for c in report.categories],
                "score": [round(c.score) for c in report.categories],
                "met/not/undecided": counts,
            },
            index=pd.Index([c.name for c in report.categories], name="category"),
        )
    return pd.concat(parts, axis=1)


def verdicts_side_by_side(
    reports: Mapping[str, ScanReport], *, differences_only: bool = True, category: str | None = None
) -> pd.DataFrame:
    """Every statement's verdict in each scan (only those that differ, by default; only one
    category's when ``category`` is given)."""
    first = next(iter(reports.values()))
    table = pd.DataFrame(
        {"level": [r.level for r in first.rules]},
        index=pd.Index([r.id for r in first.rules], name="statement"),
    )
    for label, report in reports.items():
        table[label] = pd.Series({r.id: r.verdict for r in report.rules})
    if differences_only:
        table = table[table[list(reports)].nunique(axis=1) > 1]
    if category is not None:
        table = table[table.index.str.startswith(f"{category}.")]
    return table


def undecided_side_by_side(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """The statements some scan left undecided, with each scan's verdict and where the
    evidence may be instead of the repository (:data:`ELSEWHERE`)."""
    table = verdicts_side_by_side(reports, differences_only=False)
    table = table[(table[list(reports)] == "undecided").any(axis=1)]
    table["where else the evidence may be"] = [
        ELSEWHERE.get(i, ELSEWHERE_DEFAULT) for i in table.index
    ]
    return table


def evidence_table(
    report: ScanReport, per_rule: int = 2, verdict: str | None = None
) -> pd.DataFrame:
    """Each rule's verdict, details and first ``per_rule`` locations (``path:line``). The
    locations and some details (counts of files and tests) change with every edit of the
    repository: show this table in a cell whose output is not compared."""
    rules = [r for r in report.rules if verdict is None or r.verdict == verdict]
    return pd.DataFrame(
        {
            "verdict": [r.verdict for r in rules],
            "details": [r.details for r in rules],
            "evidence": [", ".join(r.evidence[:per_rule]) for r in rules],
        },
        index=pd.Index([r.id for r in rules], name="statement"),
    )


def ml_test_sections(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """The four section scores and the final score (their minimum) of each scan."""
    table = pd.DataFrame(
        {
            label: {**r.ml_test_score.sections, "final (lowest)": r.ml_test_score.final}
            for label, r in reports.items()
        }
    )
    table.index.name = "section"
    return table


def ml_tests_side_by_side(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """The 28 tests of the ML Test Score with each scan's status (automated, manual, none,
    unknown)."""
    first = next(iter(reports.values())).ml_test_score.tests
    table = pd.DataFrame(
        {"test": [t.title for t in first]}, index=pd.Index([t.id for t in first], name="id")
    )
    for label, report in reports.items():
        table[label] = pd.Series({t.id: t.status for t in report.ml_test_score.tests})
    return table


def ml_test_beside_categories(reports: Mapping[str, ScanReport]) -> pd.DataFrame:
    """Each ML Test Score section's points beside the levels and scores that each scan
    proves for the categories the section speaks to (:data:`SECTION_CATEGORIES`)."""
    parts = {}
    for label, report in reports.items():
        sections = report.ml_test_score.sections
        rows = {
            (section, report.category(cid).name): {
                "section points": sections[section],
                "level": report.category(cid).level_name,
                "score": round(report.category(cid).score),
            }
            for section, ids in SECTION_CATEGORIES.items()
            for cid in ids
        }
        parts[label] = pd.DataFrame.from_dict(rows, orient="index")
    table = pd.concat(parts, axis=1)
    table.index.names = ["section", "category"]
    return table


# ----------------------------------------------------------------------------- chapter 8

_MASKS = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}T[\d:.]+(\+00:00|Z)?"), "<timestamp>"),
    (re.compile(r"\(\d{4}-\d{2}-\d{2}\)"), "(<date>)"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"\b[0-9a-f]{40}\b"), "<git commit>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<run id>"),
    (re.compile(r" \(uncommitted changes\)"), ""),
)


def stable_card(text: str, keep: tuple[str, ...] = ()) -> str:
    """A model card with what differs on every run masked: timestamps, MLflow run ids, git
    commits, sha256 hashes (except the strings in ``keep``, e.g. the data hash, which is
    the same for the same data) and the note on uncommitted changes."""
    kept = {f"<kept {i}>": value for i, value in enumerate(keep)}
    for placeholder, value in kept.items():
        text = text.replace(value, placeholder)
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    for placeholder, value in kept.items():
        text = text.replace(placeholder, value)
    return text


def fairness_summary(
    report: Mapping[str, GroupFairness], metrics: tuple[str, ...] = ("mape", "mean_pct_error")
) -> pd.DataFrame:
    """Per grouping and metric, over the ranked groups: the group with the lowest and the one
    with the highest value, fairlearn's difference between them with its 95 % bootstrap
    interval, and the ratio (MAPE only), in 0.01 points. For the bias (``mean_pct_error``)
    the lowest group is the most under-valued one, not the best."""
    rows = []
    for by, result in report.items():
        s, ranked = result.summary, result.ranked
        if "difference" not in s:
            continue
        for metric in metrics:
            row = s.loc[metric]
            low, high = row.get("difference_low", float("nan")), row.get("difference_high")
            ratio = row["ratio"]
            rows.append(
                {
                    "grouping": by,
                    "metric": metric,
                    "lowest": ranked[metric].idxmin(),
                    "highest": ranked[metric].idxmax(),
                    "difference": round(row["difference"], 2),
                    "95% interval": "" if pd.isna(low) else f"{low:.2f} to {high:.2f}",
                    "ratio": "" if pd.isna(ratio) else f"{ratio:.2f}",
                    "groups ranked": len(ranked),
                    "too small": int(result.groups["small"].sum()),
                }
            )
    return pd.DataFrame(rows).set_index(["grouping", "metric"])


def fairness_figure(
    result: GroupFairness, overall_mape: float | None = None, source: str | None = None
) -> Figure:
    """MAPE and bias by group with their 95 % intervals: ranked groups in blue, best first;
    groups too small to rank in grey at the end, marked with a star and without intervals."""
    import matplotlib.pyplot as plt
    import numpy as np

    from hdb_mlops.course.plots import BLUE, ORANGE, source_note

    groups = pd.concat([result.ranked, result.groups[result.groups["small"]]])
    y = np.arange(len(groups))[::-1]
    colours = ["#999999" if small else BLUE for small in groups["small"]]
    height = max(3.0, 0.28 * len(groups) + 1.4)
    fig, axes = plt.subplots(1, 2, figsize=(10, height), sharey=True, layout="constrained")
    panels = (
        ("mape", "MAPE %", overall_mape),
        ("mean_pct_error", "bias % (above 0: over-valued)", 0),
    )
    for ax, (metric, title, line) in zip(axes, panels, strict=True):
        values = groups[metric].to_numpy(dtype=float)
        if f"{metric}_low" in groups:
            below = values - groups[f"{metric}_low"].to_numpy(dtype=float)
            above = groups[f"{metric}_high"].to_numpy(dtype=float) - values
            ax.errorbar(
                values,
                y,
                xerr=np.nan_to_num(np.vstack([below, above])),
                fmt="none",
                ecolor="#555555",
                elinewidth=1,
                capsize=2,
            )
        ax.scatter(values, y, color=colours, zorder=3, s=18)
        if line is not None:
            ax.axvline(line, color=ORANGE, linewidth=1, linestyle="--")
        ax.set_title(title, fontsize=10)
    labels = [
        f"{g} *" if small else str(g)
        for g, small in zip(groups.index, groups["small"], strict=True)
    ]
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(f"Valuation error by {result.by.replace('_', ' ')} (95% bootstrap intervals)")
    notes = [
        f"* fewer than {result.min_n} sales: not ranked, no interval",
        "dashed: overall MAPE and zero bias" if overall_mape is not None else "dashed: zero bias",
        source_note(source) if source else None,
    ]
    fig.supxlabel(" · ".join(n for n in notes if n), fontsize=8, color="#555555", x=0.01, ha="left")
    return fig
