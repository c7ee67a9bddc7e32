"""The ten-category maturity framework of the MLOps Playbook (chapter 7), as this course
writes it down in ``resources/maturity.yaml``: ten categories, each at Basic, Intermediate or
Advanced, with checkable evidence statements per level and roadmap steps from each level.

How a category is scored, the same way for the questionnaire and the repository scan:

* each evidence statement gets a credit: 1 (met / yes), 0.5 (partial), 0 (not met / no) or
  None (undecided: counted as 0 in the score, and listed);
* the **level reached** is the highest level whose statements, and those of every level below
  it, all have credit 1 (``None`` when Basic is not reached: "below Basic");
* the **score** (0-100) is the weighted share of credit over all the category's statements.

:func:`assess_categories` returns one :class:`CategoryResult` per category, with what is
missing for the next level and the roadmap's next steps: each roadmap step names the
statements it ``closes``, and the next steps are those that close a missing one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config

FRAMEWORK_FILE = config.RESOURCES_DIR / "maturity.yaml"
LEVELS: tuple[str, ...] = ("basic", "intermediate", "advanced")
#: The key of the roadmap's steps for a category below Basic.
BELOW_BASIC = "none"
LEVEL_NAMES = {
    BELOW_BASIC: "below Basic",
    "basic": "Basic",
    "intermediate": "Intermediate",
    "advanced": "Advanced",
}


@dataclass(frozen=True)
class Evidence:
    """One checkable statement of a category at a level."""

    id: str
    category: str
    level: str
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Step:
    """A roadmap step: what to do, the course chapter that teaches it, a command to start."""

    step: str
    chapter: str = ""
    command: str = ""
    #: the evidence statements the step meets once done
    closes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "step": self.step,
            "chapter": self.chapter,
            "command": self.command,
            "closes": list(self.closes),
        }


@dataclass(frozen=True)
class Category:
    """A category with its evidence per level and its roadmap per current level."""

    id: str
    name: str
    playbook: str
    playbook_note: str
    evidence: tuple[Evidence, ...]
    roadmap: Mapping[str, tuple[Step, ...]]

    def at(self, level: str) -> list[Evidence]:
        """The statements of one level."""
        return [e for e in self.evidence if e.level == level]


@dataclass(frozen=True)
class Framework:
    """The ten categories, in the playbook's order."""

    categories: tuple[Category, ...]
    version: int = 1

    def category(self, category_id: str) -> Category:
        """The category with id ``category_id``."""
        for category in self.categories:
            if category.id == category_id:
                return category
        known = ", ".join(c.id for c in self.categories)
        raise KeyError(f"unknown category {category_id!r} (known: {known})")

    @property
    def evidence(self) -> dict[str, Evidence]:
        """Every statement by id."""
        return {e.id: e for c in self.categories for e in c.evidence}


def _parse(data: Mapping[str, Any], source: str) -> Framework:
    """The framework from the YAML's mapping; a ValueError names the first problem."""
    default_weight = float(data.get("default_weight", 1))
    levels = [level["id"] for level in data.get("levels", [])]
    if tuple(levels) != LEVELS:
        raise ValueError(f"{source}: levels must be {', '.join(LEVELS)}, not {levels}")
    categories, seen = [], set()
    for raw in data.get("categories", []):
        cid = raw["id"]
        evidence = []
        for level in LEVELS:
            for item in raw.get("evidence", {}).get(level) or []:
                eid = item["id"]
                if eid in seen or not eid.startswith(f"{cid}."):
                    raise ValueError(f"{source}: evidence id {eid!r} is repeated or not in {cid}")
                seen.add(eid)
                weight = float(item.get("weight", default_weight))
                evidence.append(Evidence(eid, cid, level, str(item["text"]).strip(), weight))
        roadmap = {}
        ids = {e.id for e in evidence}
        for key, steps in (raw.get("roadmap") or {}).items():
            if key not in (BELOW_BASIC, *LEVELS):
                raise ValueError(f"{source}: roadmap of {cid} has an unknown level {key!r}")
            parsed = []
            for s in steps:
                if not isinstance(s, dict) or set(s) - {"step", "chapter", "command", "closes"}:
                    raise ValueError(f"{source}: roadmap step of {cid} is malformed: {s!r}")
                closes = tuple(s.get("closes") or ())
                if set(closes) - ids:
                    raise ValueError(
                        f"{source}: step {s['step']!r} closes unknown evidence "
                        f"{sorted(set(closes) - ids)}"
                    )
                parsed.append(
                    Step(
                        str(s["step"]), str(s.get("chapter", "")), str(s.get("command", "")), closes
                    )
                )
            roadmap[key] = tuple(parsed)
        missing = [level for level in LEVELS if not any(e.level == level for e in evidence)]
        if missing:
            raise ValueError(f"{source}: category {cid} has no evidence at {', '.join(missing)}")
        categories.append(
            Category(
                cid,
                str(raw["name"]),
                str(raw.get("playbook", "silent")),
                " ".join(str(raw.get("playbook_note", "")).split()),
                tuple(evidence),
                roadmap,
            )
        )
    return Framework(tuple(categories), int(data.get("version", 1)))


@cache
def _load(path: str) -> Framework:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return _parse(yaml.safe_load(handle), path)


def load_framework(path: Path | str | None = None) -> Framework:
    """The maturity framework (default: the package's ``resources/maturity.yaml``)."""
    return _load(str(Path(path or FRAMEWORK_FILE).resolve()))


# ----------------------------------------------------------------------------- scoring


@dataclass
class CategoryResult:
    """One category assessed: the level reached, the score, and what comes next."""

    id: str
    name: str
    level: str | None
    score: float
    credits: dict[str, float | None]
    #: statements of the next level (and below) that are not met yet
    missing: list[Evidence] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def level_name(self) -> str:
        """``Basic``, ``Intermediate``, ``Advanced`` or ``below Basic``."""
        return LEVEL_NAMES[self.level or BELOW_BASIC]

    @property
    def undecided(self) -> list[str]:
        """Ids of the statements without a verdict."""
        return [eid for eid, credit in self.credits.items() if credit is None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "name": self.name,
            "level": self.level,
            "level_name": self.level_name,
            "score": round(self.score, 1),
            "credits": self.credits,
            "missing_for_next_level": [{"id": e.id, "text": e.text} for e in self.missing],
            "next_steps": [s.to_dict() for s in self.steps],
        }


def level_reached(category: Category, credits: Mapping[str, float | None]) -> str | None:
    """The highest level whose statements, and all below, have credit 1 (None: below Basic)."""
    reached = None
    for level in LEVELS:
        if all(credits.get(e.id) == 1 for e in category.at(level)):
            reached = level
        else:
            break
    return reached


def category_score(category: Category, credits: Mapping[str, float | None]) -> float:
    """Weighted share of credit over the category's statements, 0-100 (undecided count 0)."""
    total = sum(e.weight for e in category.evidence)
    got = sum(e.weight * (credits.get(e.id) or 0.0) for e in category.evidence)
    return 100.0 * got / total if total else 0.0


def assess_category(category: Category, credits: Mapping[str, float | None]) -> CategoryResult:
    """Level, score, the statements missing for the next level and the roadmap's steps."""
    own = {e.id: credits.get(e.id) for e in category.evidence}
    level = level_reached(category, own)
    if level == LEVELS[-1]:
        missing: list[Evidence] = []
    else:
        upto = LEVELS[: LEVELS.index(level) + 2] if level else LEVELS[:1]
        missing = [e for e in category.evidence if e.level in upto and own[e.id] != 1]
    # the steps that close what is missing, in roadmap order (from any level), else the
    # roadmap's advice for the level reached
    missing_ids = {e.id for e in missing}
    every = [step for key in (BELOW_BASIC, *LEVELS) for step in category.roadmap.get(key, ())]
    steps = [step for step in every if missing_ids & set(step.closes)]
    if not steps:
        steps = list(category.roadmap.get(level or BELOW_BASIC, ()))
    return CategoryResult(
        category.id, category.name, level, category_score(category, own), own, missing, steps
    )


def assess_categories(
    credits: Mapping[str, float | None], framework: Framework | None = None
) -> list[CategoryResult]:
    """Every category assessed from the credits of its statements (missing ids: undecided)."""
    framework = framework or load_framework()
    return [assess_category(c, credits) for c in framework.categories]


def results_table(results: list[CategoryResult]) -> pd.DataFrame:
    """The categories as a display table: level, score (whole points), statements met, and
    the first next step."""
    rows = []
    for r in results:
        met = sum(1 for c in r.credits.values() if c == 1)
        rows.append(
            {
                "category": r.name,
                "level": r.level_name,
                "score": round(r.score),
                "met": f"{met}/{len(r.credits)}",
                "undecided": len(r.undecided),
                "next step": r.steps[0].step if r.steps else "",
            }
        )
    return pd.DataFrame(rows).set_index("category")
