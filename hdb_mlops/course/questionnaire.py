"""The maturity questionnaire: a YAML answers file in, the ten categories scored out.

* :func:`template_text` writes the blank answers file: per category a ``level:`` line and one
  line per evidence question (the question as a comment above it), from
  ``resources/maturity.yaml`` and ``resources/maturity-questions.yaml``.
* :func:`assess_answers` validates a filled-in file and scores it. Every problem is reported
  at once, each naming the question (or category) and the allowed answers. The structure is
  checked with a JSON Schema built from the framework (jsonschema), the rules a schema says
  badly (answer every question *or* give the level) explicitly.
* :func:`radar_chart` draws the ten scores on a polar chart in the course palette.

Answers are ``yes`` (credit 1), ``partial`` (0.5) or ``no`` (0). YAML 1.1, which PyYAML reads,
turns an unquoted ``yes``/``no`` into true/false: both spellings are accepted. A category
given as ``level: intermediate`` instead counts every statement up to that level as met and
the others as not met (``none`` means below Basic).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.course.maturity import (
    BELOW_BASIC,
    LEVEL_NAMES,
    LEVELS,
    CategoryResult,
    Framework,
    assess_categories,
    load_framework,
    results_table,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

QUESTIONS_FILE = config.RESOURCES_DIR / "maturity-questions.yaml"
ANSWERS: dict[str, float] = {"yes": 1.0, "partial": 0.5, "no": 0.0}
LEVEL_CHOICES: tuple[str, ...] = (BELOW_BASIC, *LEVELS)
TOP_KEYS = ("team", "date", "notes", "categories")


class QuestionnaireError(ValueError):
    """An answers file with problems; ``errors`` lists every one of them."""

    def __init__(self, errors: list[str], source: str = "answers"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} problem(s): " + "; ".join(errors))


@cache
def _questions(path: str) -> dict[str, dict[str, str]]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle)["questions"])


def load_questions(path: Path | str | None = None) -> dict[str, dict[str, str]]:
    """Evidence id -> ``{"ask": question, "hint": how to tell}`` (hint optional)."""
    return _questions(str(Path(path or QUESTIONS_FILE).resolve()))


def template_text(framework: Framework | None = None) -> str:
    """The blank answers file (YAML with the questions as comments)."""
    framework = framework or load_framework()
    questions = load_questions()
    out = [
        "# Maturity questionnaire: the ten categories of the MLOps Playbook (chapter 7).",
        "#",
        "# Answer every question with yes, partial or no (write it after the colon). Or, for a",
        "# category you have already placed, write its level after `level:` (none, basic,",
        "# intermediate or advanced) and leave its answers blank.",
        "# Score it:  hdb-mlops assess --answers THIS_FILE [--chart radar.png] [--json]",
        "# Let the repository answer what it can first:  hdb-mlops assess --scan .",
        'team: ""',
        'date: ""',
        "categories:",
    ]
    for category in framework.categories:
        out += [f"  {category.id}:", f"    # {category.name}", "    level:", "    answers:"]
        for level in LEVELS:
            out.append(f"      # -- {LEVEL_NAMES[level]}")
            for evidence in category.at(level):
                question = questions.get(evidence.id, {})
                ask = question.get("ask", evidence.text)
                hint = question.get("hint")
                text = ask + (f" ({hint})" if hint else "")
                out += ["      # " + line for line in textwrap.wrap(text, 86)]
                out.append(f"      {evidence.id}:")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- validation


def _schema(framework: Framework) -> dict[str, Any]:
    """A JSON Schema of an answers file for ``framework``."""
    answer = {"enum": [None, *ANSWERS]}
    categories = {
        c.id: {
            "type": "object",
            "properties": {
                "level": {"enum": [None, *LEVEL_CHOICES]},
                "answers": {
                    "type": ["object", "null"],
                    "properties": {e.id: answer for e in c.evidence},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        }
        for c in framework.categories
    }
    return {
        "type": "object",
        "properties": {
            "team": {"type": ["string", "null"]},
            "date": {"type": ["string", "null"]},
            "notes": {"type": ["string", "null"]},
            "categories": {
                "type": "object",
                "properties": categories,
                "additionalProperties": False,
            },
        },
        "required": ["categories"],
        "additionalProperties": False,
    }


def _normalise(value: Any) -> Any:
    """yes/no from YAML booleans, lower-case stripped strings, None for a blank."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value.strip().lower() or None
    return value


def _normalised(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key in ("team", "date", "notes"):  # an unquoted 2026-12-01 is a date for YAML
        if out.get(key) is not None and not isinstance(out[key], str):
            out[key] = str(out[key])
    cats = out.get("categories")
    if isinstance(cats, dict):
        out["categories"] = {
            key: (
                {
                    **cat,
                    "level": _normalise(cat.get("level")),
                    "answers": (
                        {k: _normalise(v) for k, v in cat["answers"].items()}
                        if isinstance(cat.get("answers"), dict)
                        else cat.get("answers")
                    ),
                }
                if isinstance(cat, dict)
                else cat
            )
            for key, cat in cats.items()
        }
    return out


def _where(path: list[Any]) -> str:
    if len(path) >= 4 and path[0] == "categories" and path[2] == "answers":
        return f"question {path[3]}"
    if len(path) >= 3 and path[0] == "categories" and path[2] == "level":
        return f"category {path[1]}: level"
    if len(path) >= 2 and path[0] == "categories":
        return f"category {path[1]}"
    return ".".join(str(p) for p in path) or "the file"


def _message(error: Any, framework: Framework) -> str:
    """One schema error as a sentence naming the question and the allowed values."""
    where = _where(list(error.absolute_path))
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value if v is not None)
        return f"{where}: {error.instance!r} is not allowed (use one of: {allowed})"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(error.schema.get("properties", {}))
        path = list(error.absolute_path)
        if path == ["categories"]:
            noun = "category" if len(extra) == 1 else "categories"
            return f"unknown {noun} {', '.join(extra)} (the categories are: {allowed})"
        if len(path) == 3 and path[2] == "answers":
            return f"category {path[1]}: unknown question(s) {', '.join(extra)} " + (
                f"(its questions: {allowed})"
            )
        return f"{where}: unknown key(s) {', '.join(extra)} (allowed: {allowed})"
    if error.validator == "type":
        kind = type(error.instance).__name__
        return f"{where}: expected {error.validator_value}, found a {kind} ({error.instance!r})"
    if error.validator == "required":
        return f"{where}: {error.message} (start from `hdb-mlops assess template`)"
    return f"{where}: {error.message}"


def validate(data: Any, framework: Framework | None = None) -> list[str]:
    """Every problem of an answers mapping (empty when it can be scored)."""
    from jsonschema import Draft202012Validator

    framework = framework or load_framework()
    data = _normalised(data)
    if not isinstance(data, dict):
        return [f"the file must be a mapping with a `categories:` key, not {type(data).__name__}"
                " (start from `hdb-mlops assess template`)"]  # fmt: skip
    validator = Draft202012Validator(_schema(framework))
    ordered = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    errors = [_message(e, framework) for e in ordered]
    cats = data.get("categories")
    if not isinstance(cats, dict):
        return errors
    for category in framework.categories:  # what a schema says badly: answers OR a level
        entry = cats.get(category.id)
        if entry is None:
            errors.append(f"category {category.id} ({category.name}) is missing: answer its "
                          "questions or give its level")  # fmt: skip
            continue
        if not isinstance(entry, dict):
            continue  # reported by the schema
        answers = entry.get("answers") if isinstance(entry.get("answers"), dict) else {}
        given = {k: v for k, v in answers.items() if v is not None}
        if entry.get("level") is not None:
            if given:
                errors.append(f"category {category.id}: give either its level or its answers, "
                              f"not both (answered: {', '.join(sorted(given))})")  # fmt: skip
            continue
        for evidence in category.evidence:
            if evidence.id not in given:
                errors.append(f"question {evidence.id} has no answer (use yes, partial or no, "
                              f"or give category {category.id} a level)")  # fmt: skip
    return errors


# ----------------------------------------------------------------------------- scoring


@dataclass
class Assessment:
    """A scored questionnaire."""

    categories: list[CategoryResult]
    team: str = ""
    date: str = ""

    def table(self) -> pd.DataFrame:
        """The ten categories as a display table."""
        return results_table(self.categories)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"team": self.team, "date": self.date,
                "categories": [c.to_dict() for c in self.categories]}  # fmt: skip


def credits_from_answers(data: Mapping[str, Any], framework: Framework) -> dict[str, float]:
    """Evidence id -> credit from a valid answers mapping (levels expanded)."""
    credits: dict[str, float] = {}
    for category in framework.categories:
        entry = data["categories"][category.id]
        level = entry.get("level")
        if level is not None:
            reached = LEVELS.index(level) if level in LEVELS else -1
            for e in category.evidence:
                credits[e.id] = 1.0 if LEVELS.index(e.level) <= reached else 0.0
        else:
            for e in category.evidence:
                credits[e.id] = ANSWERS[entry["answers"][e.id]]
    return credits


def assess_answers(
    data: Mapping[str, Any], framework: Framework | None = None, source: str = "answers"
) -> Assessment:
    """Validate and score an answers mapping; raises :class:`QuestionnaireError` listing
    every problem."""
    framework = framework or load_framework()
    errors = validate(data, framework)
    if errors:
        raise QuestionnaireError(errors, source)
    data = _normalised(data)
    credits = credits_from_answers(data, framework)
    results = assess_categories(credits, framework)
    return Assessment(results, str(data.get("team") or ""), str(data.get("date") or ""))


def load_answers(path: Path | str) -> Assessment:
    """Read, validate and score an answers file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise QuestionnaireError([f"not valid YAML{where}: {problem}"], str(path)) from None
    return assess_answers(data, source=str(path))


# ----------------------------------------------------------------------------- chart


def radar_chart(
    results: list[CategoryResult],
    *,
    title: str = "Maturity by category (score 0-100)",
    compare: list[CategoryResult] | None = None,
    labels: tuple[str, str] = ("assessment", "comparison"),
) -> Figure:
    """The categories' scores on a polar (radar) chart; ``compare`` adds a second outline
    (e.g. the repository scan beside the questionnaire)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from hdb_mlops.course.plots import BLUE, ORANGE

    n = len(results)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    closed = np.append(angles, angles[0])
    fig, ax = plt.subplots(figsize=(8, 8), subplot_kw={"polar": True}, layout="constrained")
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    series = [(results, labels[0], BLUE, "-")]
    if compare is not None:
        series.append((compare, labels[1], ORANGE, "--"))
    for rows, label, colour, style in series:
        values = [r.score for r in rows]
        ax.plot(closed, [*values, values[0]], color=colour, linestyle=style, linewidth=2,
                label=label)  # fmt: skip
        ax.fill(closed, [*values, values[0]], color=colour, alpha=0.2)
    ax.set_xticks(angles, [textwrap.fill(r.name, 18) for r in results], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100"], fontsize=7, color="#555555")
    ax.set_title(title)
    if compare is not None:
        ax.legend(loc="upper right", bbox_to_anchor=(1.15, 1.1))
    return fig
