"""The stages of MLOps (course chapter 2): our Stage 0 to Stage 3, the capabilities each adds,
and how three published maturity frameworks line up with them.

The content is data, in ``hdb_mlops/resources/stages.yaml``: the course's chapters, our four
stages, the capabilities (each with its stage, the chapter that teaches it and the command that
runs it), the sources, and the levels of Microsoft's MLOps
maturity model (0-4), Google's MLOps levels (0-2) and AWS's phases (Initial, Repeatable,
Reliable, Scalable), each described in our own words with the stages of ours it overlaps.

A team is at stage N when it has every capability of stages 1 to N (:func:`stage_of`); a
capability it has from a higher stage counts once the stages below are complete. The playbook
advises building capabilities gradually, the most useful first, so such early ones are normal.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from hdb_mlops import config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGES_FILE = config.RESOURCES_DIR / "stages.yaml"
STAGE_NUMBERS = (0, 1, 2, 3)


class StagesError(ValueError):
    """Unknown stage, capability or framework, or a stages file that does not hold together."""


@dataclass(frozen=True)
class Chapter:
    """A chapter of the course: its id (``"5B"``), title and notebook (None until written)."""

    id: str
    title: str
    notebook: str | None


@dataclass(frozen=True)
class Stage:
    """One of our stages."""

    stage: int
    name: str
    tagline: str
    summary: str
    price_model: str
    people: str
    chapters: tuple[str, ...]

    @property
    def label(self) -> str:
        """``Stage 1 · Repeatable``."""
        return f"Stage {self.stage} · {self.name}"


@dataclass(frozen=True)
class Capability:
    """What a stage adds: taught in ``chapter`` (in its ``notebook``, where the chapter has
    more than one; None: the chapter's first), run by ``command``."""

    id: str
    stage: int
    name: str
    chapter: str
    command: str
    notebook: str | None = None


@dataclass(frozen=True)
class Level:
    """One level of a published framework, in our words, with the stages of ours it overlaps."""

    framework: str
    level: str
    name: str
    summary: str
    stages: tuple[int, ...]
    note: str | None = None

    @property
    def label(self) -> str:
        """``level 3 Automated Model Deployment``, or the phase's name alone (AWS)."""
        return self.name if self.level == self.name else f"level {self.level} {self.name}"


@dataclass(frozen=True)
class Source:
    """A framework's source: its title and publisher (and where to read it)."""

    title: str
    publisher: str
    url: str


@dataclass(frozen=True)
class StagesModel:
    """Everything ``stages.yaml`` holds."""

    chapters: dict[str, Chapter]
    stages: tuple[Stage, ...]
    capabilities: tuple[Capability, ...]
    sources: dict[str, Source]
    framework_names: dict[str, str]
    levels: tuple[Level, ...]


@dataclass(frozen=True)
class Placement:
    """Where a set of capabilities puts a team (:func:`stage_of`): its ``stage``, the
    capabilities it lacks for the next one (``missing``, empty at Stage 3), and those it has
    built early, from the stages beyond the next one (``ahead``)."""

    stage: int
    missing: tuple[str, ...]
    ahead: tuple[str, ...]

    @property
    def next_stage(self) -> int | None:
        """The stage the missing capabilities would reach (None at Stage 3)."""
        return self.stage + 1 if self.stage < STAGE_NUMBERS[-1] else None


def chapter_label(chapter: str) -> str:
    """A chapter id as printed: ``5C-5F`` with an en dash."""
    return chapter.replace("-", "–")


def _spans(stages: Iterable[int]) -> str:
    """``0–1`` for (0, 1), ``2`` for (2,)."""
    ordered = sorted(stages)
    return str(ordered[0]) if len(ordered) == 1 else f"{ordered[0]}–{ordered[-1]}"


def _text(value: Any) -> str:
    return " ".join(str(value).split())


def _read(path: Path) -> StagesModel:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    chapters = {
        str(k): Chapter(str(k), str(v["title"]), v.get("notebook"))
        for k, v in raw["chapters"].items()
    }
    stage_defs = tuple(
        Stage(
            int(s["stage"]),
            str(s["name"]),
            _text(s["tagline"]),
            _text(s["summary"]),
            _text(s["price_model"]),
            _text(s["people"]),
            tuple(map(str, s["chapters"])),
        )
        for s in raw["stages"]
    )
    capabilities = tuple(
        Capability(
            str(c["id"]),
            int(c["stage"]),
            _text(c["name"]),
            str(c["chapter"]),
            _text(c["command"]),
            str(c["notebook"]) if c.get("notebook") else None,
        )
        for c in raw["capabilities"]
    )
    sources = {
        str(k): Source(_text(v["title"]), _text(v["publisher"]), str(v["url"]))
        for k, v in raw["sources"].items()
    }
    names = {str(k): str(v["name"]) for k, v in raw["frameworks"].items()}
    levels = tuple(
        Level(
            str(key),
            str(lv["level"]),
            str(lv["name"]),
            _text(lv["summary"]),
            tuple(int(s) for s in lv["stages"]),
            _text(lv["note"]) if lv.get("note") else None,
        )
        for key, spec in raw["frameworks"].items()
        for lv in spec["levels"]
    )
    model = StagesModel(chapters, stage_defs, capabilities, sources, names, levels)
    _check(model, path)
    return model


def _check(model: StagesModel, path: Path) -> None:
    """Refuse a stages file whose parts do not refer to each other correctly."""
    problems = []
    if tuple(s.stage for s in model.stages) != STAGE_NUMBERS:
        problems.append(f"the stages must be {STAGE_NUMBERS} in order")
    named = [ch for s in model.stages for ch in s.chapters]
    named += [c.chapter for c in model.capabilities]
    problems += [f"unknown chapter {ch!r}" for ch in sorted(set(named) - set(model.chapters))]
    ids = [c.id for c in model.capabilities]
    problems += [f"capability {i!r} twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    problems += [
        f"{c.id}: no stage {c.stage}" for c in model.capabilities if c.stage not in STAGE_NUMBERS
    ]
    for level in model.levels:
        if not level.stages or set(level.stages) - set(STAGE_NUMBERS):
            problems.append(f"{level.framework} {level.level}: stages {level.stages} not in 0-3")
    problems += [
        f"no source for framework {k!r}" for k in model.framework_names if k not in model.sources
    ]
    if problems:
        raise StagesError(f"{path.name}: " + "; ".join(problems))


@functools.cache
def _default() -> StagesModel:
    return _read(STAGES_FILE)


def load(path: Path | str = STAGES_FILE) -> StagesModel:
    """Read and check ``stages.yaml`` (the package's, cached, unless ``path`` is another)."""
    return _default() if Path(path) == STAGES_FILE else _read(Path(path))


def chapters() -> dict[str, Chapter]:
    """The course's chapters by id, in course order."""
    return dict(load().chapters)


def stage_definitions() -> tuple[Stage, ...]:
    """Our four stages, 0 to 3."""
    return load().stages


def capabilities(stage: int | None = None) -> tuple[Capability, ...]:
    """Every capability, or those ``stage`` adds."""
    if stage is not None and stage not in STAGE_NUMBERS:
        raise StagesError(f"no stage {stage!r}: the stages are 0, 1, 2 and 3")
    return tuple(c for c in load().capabilities if stage is None or c.stage == stage)


def frameworks() -> dict[str, str]:
    """The frameworks compared with our stages: key -> name."""
    return dict(load().framework_names)


def levels(framework: str | None = None) -> tuple[Level, ...]:
    """The levels of one framework (``microsoft``, ``google``, ``aws``), or of all, in order."""
    names = load().framework_names
    if framework is not None and framework not in names:
        raise StagesError(f"no framework {framework!r}; choose one of: {', '.join(names)}")
    return tuple(lv for lv in load().levels if framework is None or lv.framework == framework)


def stage_of(capabilities_present: Iterable[str]) -> Placement:
    """The stage a team with ``capabilities_present`` (capability ids) has reached: the
    highest N with every capability of stages 1..N. Unknown ids raise :class:`StagesError`."""
    have = set(capabilities_present)
    known = {c.id for c in load().capabilities}
    if unknown := sorted(have - known):
        raise StagesError(
            f"unknown capabilities {unknown}; the capabilities are: {', '.join(sorted(known))}"
        )
    stage = 0
    for number in STAGE_NUMBERS[1:]:
        if not {c.id for c in capabilities(number)} <= have:
            break
        stage = number
    missing = tuple(c.id for c in capabilities(stage + 1) if c.id not in have) if stage < 3 else ()
    ahead = tuple(c.id for c in load().capabilities if c.stage > stage + 1 and c.id in have)
    return Placement(stage, missing, ahead)


# ------------------------------------------------------------------------------ tables


def stages_table() -> pd.DataFrame:
    """Our stages: what each means, who works on it, the chapters that build it."""
    rows = [
        {
            "stage": s.label,
            "in one line": s.summary,
            "people": s.people,
            "chapters": ", ".join(map(chapter_label, s.chapters)),
        }
        for s in stage_definitions()
    ]
    return pd.DataFrame(rows).set_index("stage")


def notebook_of(capability: Capability) -> str:
    """The notebook file that teaches ``capability`` (``notebooks/04_stage2_on_aws.ipynb``)."""
    stem = capability.notebook or chapters()[capability.chapter].notebook
    return f"notebooks/{stem}.ipynb" if stem else "not written yet"


def capabilities_table(stage: int | None = None) -> pd.DataFrame:
    """The capabilities (of one stage, or all): stage, what, chapter, command, notebook."""
    rows = [
        {
            "capability": c.id,
            "stage": c.stage,
            "what": c.name,
            "chapter": chapter_label(c.chapter),
            "command": c.command,
            "notebook": notebook_of(c),
        }
        for c in capabilities(stage)
    ]
    return pd.DataFrame(rows).set_index("capability")


def frameworks_table(framework: str | None = None) -> pd.DataFrame:
    """Each framework level (of one framework, or all) beside the stages of ours it overlaps,
    in our words, with a note where the frameworks order things differently."""
    names = frameworks()
    rows = [
        {
            "framework": names[lv.framework],
            "level": lv.label,
            "our stages": _spans(lv.stages),
            "in our words": lv.summary,
            "note": lv.note or "",
        }
        for lv in levels(framework)
    ]
    return pd.DataFrame(rows).set_index(["framework", "level"])


def sources_table() -> pd.DataFrame:
    """The sources of the frameworks (and the playbook): title, publisher, address."""
    rows = [
        {"source": k, "title": s.title, "publisher": s.publisher, "url": s.url}
        for k, s in load().sources.items()
    ]
    return pd.DataFrame(rows).set_index("source")


def progress_table(evidence: Mapping[int, str]) -> pd.DataFrame:
    """What the price model is at each stage, the commands that get it there, and what this
    notebook showed (``evidence``: stage -> text), or the chapters that show it."""
    rows = []
    for s in stage_definitions():
        own = capabilities(s.stage)
        commands = list(dict.fromkeys(c.command for c in own))
        shown = sorted({c.chapter for c in own}, key=list(chapters()).index)
        default = f"shown in chapter {', '.join(map(chapter_label, shown))}"
        rows.append(
            {
                "stage": s.label,
                "the price model": s.price_model,
                "commands": "; ".join(commands),
                "here": evidence.get(s.stage, default),
            }
        )
    return pd.DataFrame(rows).set_index("stage")


def diagram() -> Figure:
    """Our stages as columns and each framework's levels as boxes spanning the stages they
    overlap (:func:`hdb_mlops.course.stage_diagram.draw`)."""
    from hdb_mlops.course.stage_diagram import draw

    return draw()
