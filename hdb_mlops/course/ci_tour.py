"""Chapter 5F in the notebook: the SHIP-HATS-style ``.gitlab-ci.yml`` read as data.

- :func:`ci_jobs`: the jobs of the file, each with its ``extends`` templates merged in (what
  GitLab does before it looks at a job), hidden templates (``.name``) left out;
- :func:`rule_applies` and :func:`when_on`: whether (and how: ``on_success`` or ``manual``)
  a job runs on a branch, by evaluating its ``rules: if`` expressions. Only the forms the file
  uses are understood: ``$VAR``, ``$VAR == "x"``, ``$VAR != "x"``, ``$VAR =~ /re/``,
  ``$VAR !~ /re/``, joined by ``&&`` or ``||``;
- :func:`jobs_table`, :func:`branch_summary`, :func:`builds`, :func:`jobs_on`: which job runs
  where and does what;
- :func:`draw_promotion`: the branches as rows, the stages as columns, the jobs as boxes.

``gitlab-ci-local`` runs the real jobs (tests/test_gitlab_ci.py); this module only reads the
file, in milliseconds.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from hdb_mlops import config
from hdb_mlops.course.plots import BLUE, GREEN, ORANGE, SKY, VERMILLION

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CI_FILE = config.PROJECT_DIR / ".gitlab-ci.yml"
#: The branches of the promotion, a feature branch first.
BRANCHES = ("feature/x", "dev", "uat", "main")
#: Top-level keys of a GitLab CI file that are not jobs.
KEYWORDS = {"stages", "variables", "default", "workflow", "include", "image", "services",
            "before_script", "after_script", "cache"}  # fmt: skip


def ci_config(path: Path | str = CI_FILE) -> dict[str, Any]:
    """The parsed CI file."""
    loaded = yaml.safe_load(Path(path).read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a GitLab CI file (no mapping at the top)")
    return loaded


def ci_jobs(source: Path | str | dict[str, Any] = CI_FILE) -> dict[str, dict[str, Any]]:
    """Every job of the file (a path or the parsed mapping), ``extends`` merged in, in file
    order; a job's own keys win over its templates', later templates over earlier ones."""
    parsed = source if isinstance(source, dict) else ci_config(source)

    def resolved(name: str) -> dict[str, Any]:
        body = dict(parsed[name])
        parents = body.pop("extends", [])
        merged: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged.update(resolved(parent))
        merged.update(body)
        return merged

    return {name: resolved(name) for name in parsed
            if name not in KEYWORDS and not str(name).startswith(".")}  # fmt: skip


def _variables(branch: str, source: str) -> dict[str, str]:
    return {"CI_COMMIT_BRANCH": branch, "CI_PIPELINE_SOURCE": source}


def _term(term: str, variables: dict[str, str]) -> bool:
    term = term.strip()
    match = re.fullmatch(r"\$(\w+)\s*(==|!=|=~|!~)\s*(.+)", term)
    if not match:
        if re.fullmatch(r"\$\w+", term):
            return bool(variables.get(term[1:], ""))
        raise ValueError(f"a rule this reader does not understand: {term!r}")
    name, op, right = match.groups()
    value = variables.get(name, "")
    right = right.strip()
    if op in ("==", "!="):
        equal = value == right.strip("\"'")
        return equal if op == "==" else not equal
    pattern = re.fullmatch(r"/(.*)/", right)
    if not pattern:
        raise ValueError(f"{right!r} is not a /regular expression/")
    found = re.search(pattern.group(1), value) is not None
    return found if op == "=~" else not found


def rule_applies(expression: str, branch: str, source: str = "push") -> bool:
    """Whether a ``rules: if`` expression holds for a pipeline on ``branch``, started by
    ``source`` (``push``, or ``merge_request_event``)."""
    variables = _variables(branch, source)
    return any(
        all(_term(term, variables) for term in alternative.split("&&"))
        for alternative in expression.split("||")
    )


def when_on(job: dict[str, Any], branch: str, source: str = "push") -> str | None:
    """How ``job`` runs on ``branch``: its first matching rule's ``when`` (``on_success`` by
    default, or ``manual``), None when no rule matches (or the match says ``never``)."""
    if "rules" not in job:
        return str(job.get("when", "on_success"))
    for rule in job["rules"]:
        if "if" not in rule or rule_applies(rule["if"], branch, source):
            when = str(rule.get("when", "on_success"))
            return None if when == "never" else when
    return None


def script(job: dict[str, Any]) -> str:
    """A job's commands (before_script and script), one a line."""
    return "\n".join(job.get("before_script", []) + job.get("script", []))


def builds(job: dict[str, Any]) -> bool:
    """Whether a job builds (trains) a model: the build stage, or a pipeline run."""
    return job.get("stage") == "build" or "sagemaker run" in script(job)


def jobs_on(jobs: dict[str, dict[str, Any]], branch: str) -> list[str]:
    """The jobs that run (automatically or manually) on ``branch``, in file order."""
    return [name for name, job in jobs.items() if when_on(job, branch) is not None]


def branch_summary(
    jobs: dict[str, dict[str, Any]], branches: tuple[str, ...] = BRANCHES
) -> pd.DataFrame:
    """Per branch: how many jobs run, which of them build a model, which promote and where."""
    rows = []
    for branch in branches:
        names = jobs_on(jobs, branch)
        rows.append(
            {
                "branch": branch,
                "jobs": len(names),
                "jobs that build": ", ".join(n for n in names if builds(jobs[n])) or "none",
                "promotes to": ", ".join(p for n in names if (p := _promotes(jobs[n]))) or "-",
            }
        )
    return pd.DataFrame(rows).set_index("branch")


def _promotes(job: dict[str, Any]) -> str:
    found = re.search(r"hdb-mlops promote --to (\w+)", script(job))
    return found.group(1) if found else ""


def _checks(job: dict[str, Any]) -> str:
    found = re.findall(r"--checks (\S+)", script(job))
    return ", ".join(found)


def jobs_table(
    jobs: dict[str, dict[str, Any]], branches: tuple[str, ...] = BRANCHES
) -> pd.DataFrame:
    """One row per job: its stage, how it runs on each branch (``yes``, ``manual`` or empty),
    whether it builds, the environment it promotes to and the checks it runs."""
    rows = []
    for name, job in jobs.items():
        row: dict[str, Any] = {"job": name, "stage": job.get("stage", "test")}
        for branch in branches:
            when = when_on(job, branch)
            row[branch] = "" if when is None else ("manual" if when == "manual" else "yes")
        row.update({"builds": builds(job), "promotes to": _promotes(job),
                    "checks": _checks(job)})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows).set_index("job")


# ----------------------------------------------------------------------------- the figure


def _colour(job: dict[str, Any]) -> str:
    if builds(job):
        return ORANGE
    if _promotes(job):
        return GREEN
    if job.get("stage") == "approve":
        return VERMILLION
    return BLUE if _checks(job) else SKY


def draw_promotion(
    jobs: dict[str, dict[str, Any]], stages: list[str], branches: tuple[str, ...] = BRANCHES
) -> Figure:
    """Branches as rows, stages as columns, each job a box where it runs (hatched when it
    waits for a person); arrows join the jobs that promote the one artifact, row to row."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    fig, ax = plt.subplots(figsize=(11, 0.6 + 1.15 * len(branches)), layout="constrained")
    width, height, dx, dy = 1.45, 0.36, 1.6, 1.15
    hops: list[tuple[float, float]] = []  # the promotion boxes, top to bottom
    for row, branch in enumerate(branches):
        y = -row * dy
        ax.text(-1.0, y + 0.25, branch, ha="right", va="center", fontsize=10,
                fontweight="bold")  # fmt: skip
        placed: dict[str, int] = {}
        for name, job in jobs.items():
            when = when_on(job, branch)
            if when is None:
                continue
            col = stages.index(job.get("stage", "test"))
            lane = placed.get(job.get("stage", "test"), 0)
            placed[job.get("stage", "test")] = lane + 1
            x, yy = col * dx, y + 0.25 - lane * 0.42
            ax.add_patch(FancyBboxPatch((x - width / 2, yy - height / 2), width, height,
                                        boxstyle="round,pad=0.02", facecolor=_colour(job),
                                        alpha=0.4, edgecolor="#333333", linewidth=0.8,
                                        hatch="//" if when == "manual" else None))  # fmt: skip
            ax.text(x, yy, name, ha="center", va="center", fontsize=7.5)
            if _promotes(job):
                hops.append((x, yy))
    for (x0, y0), (x1, y1) in itertools.pairwise(hops):
        ax.annotate(
            "",
            xy=(x1, y1 + height / 2),
            xytext=(x0, y0 - height / 2),
            arrowprops={"arrowstyle": "-|>", "color": "#333333", "linewidth": 1.2},
        )
        ax.text(x0 - 0.08, (y0 + y1) / 2, "same sha256", ha="right", va="center", fontsize=7.5,
                color="#333333")  # fmt: skip
    for col, stage in enumerate(stages):
        ax.text(col * dx, 0.85, stage, ha="center", va="bottom", fontsize=9, color="#555555")
    ax.set_xlim(-2.6, (len(stages) - 1) * dx + 1.0)
    ax.set_ylim(-(len(branches) - 1) * dy - 0.9, 1.2)
    ax.axis("off")
    legend = [Patch(facecolor=c, alpha=0.4, edgecolor="#333333", label=t) for c, t in (
        (ORANGE, "builds the model"), (BLUE, "tests the artifact"), (VERMILLION, "approval"),
        (GREEN, "promotes the artifact"), (SKY, "other"))]  # fmt: skip
    legend.append(Patch(facecolor="white", edgecolor="#333333", hatch="//", label="manual"))
    fig.legend(handles=legend, loc="outside lower center", ncols=len(legend), fontsize=8,
               frameon=False)  # fmt: skip
    ax.set_title("Which job runs on which branch (.gitlab-ci.yml)", loc="left", fontsize=11)
    return fig
