"""The playbook's self-check questions as a checklist whose answers point to chapters.

The playbook asks six questions (model complexity, update frequency, impact of failure,
prediction volume, cost of maintenance, an under-used data lake) and says that MLOps helps if
any answer is yes. Here each question has a few answers, each answer a weight (0 = no need on
this count, 1 = some, 2 = a strong reason) and the chapters it points to, with why. The
questions' wording, the answers and the routing are the course's own; they are data, in
``hdb_mlops/resources/checklist.yaml``.

:func:`assess` scores each chapter by the weights of the answers that point to it and returns
the chapters to read first::

    result = assess({"update_frequency": "monthly", "failure_impact": "high"})
    result.first          # ('6', '1', '3'): the highest scores, course order among equals
    result.table()        # chapter, title, score, why

An unknown question or answer raises :class:`ChecklistError`, naming it and the allowed values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from hdb_mlops import config
from hdb_mlops.course import stages

CHECKLIST_FILE = config.RESOURCES_DIR / "checklist.yaml"
#: How many chapters :attr:`Assessment.first` names.
FIRST = 3


class ChecklistError(ValueError):
    """An answer sheet the checklist cannot read: an unknown question or answer."""


@dataclass(frozen=True)
class Answer:
    """One allowed answer: its label, weight and the chapters it points to (chapter, why)."""

    id: str
    label: str
    weight: int
    points_to: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Question:
    """One self-check question and its allowed answers (by id, in order)."""

    id: str
    topic: str
    text: str
    answers: dict[str, Answer]


@dataclass(frozen=True)
class Checklist:
    """The questions, the rule for "any need" and the HDB case's answers."""

    questions: tuple[Question, ...]
    any_need: tuple[str, str]
    hdb_case: dict[str, str]

    def question(self, question_id: str) -> Question:
        """The question ``question_id``, or a :class:`ChecklistError` listing the ids."""
        for question in self.questions:
            if question.id == question_id:
                return question
        ids = ", ".join(q.id for q in self.questions)
        raise ChecklistError(
            f"{question_id!r} is not a question of the checklist; the questions are: {ids}"
        )


@dataclass(frozen=True)
class Recommendation:
    """A chapter to read, its score and the reasons that point to it."""

    chapter: str
    title: str
    score: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Assessment:
    """What :func:`assess` found: the answers (normalised), whether MLOps would pay off, the
    chapters in reading order (highest score first, course order among equals) and the
    questions left unanswered."""

    answers: dict[str, str]
    needs_mlops: bool
    chapters: tuple[Recommendation, ...]
    unanswered: tuple[str, ...] = field(default=())

    @property
    def first(self) -> tuple[str, ...]:
        """The chapters to read first (at most :data:`FIRST`)."""
        return tuple(r.chapter for r in self.chapters[:FIRST])

    def table(self) -> pd.DataFrame:
        """The reading list: one row per chapter, with its score and why, first ones marked."""
        rows = [
            {
                "chapter": stages.chapter_label(r.chapter),
                "title": r.title,
                "read first": "yes" if i < FIRST else "",
                "score": r.score,
                "why": "; ".join(r.reasons),
            }
            for i, r in enumerate(self.chapters)
        ]
        columns = ["chapter", "title", "read first", "score", "why"]
        return pd.DataFrame(rows, columns=columns).set_index("chapter")

    def summary(self) -> str:
        """One sentence: does MLOps pay off, and which chapters to read first."""
        if not self.needs_mlops:
            return "No answer calls for MLOps yet: a notebook may be enough for now."
        first = ", ".join(stages.chapter_label(c) for c in self.first)
        return f"MLOps would pay off here. Read chapters {first} first."


def _answer(answer_id: str, raw: Mapping[str, Any]) -> Answer:
    for point in raw.get("points_to", ()):
        if set(point) != {"chapter", "why"}:  # an unquoted comma splits a YAML flow mapping
            raise ChecklistError(f"answer {answer_id!r}: points_to needs chapter and why: {point}")
    points = tuple((str(p["chapter"]), str(p["why"])) for p in raw.get("points_to", ()))
    return Answer(str(answer_id), str(raw["label"]), int(raw["weight"]), points)


def load(path: Path | str = CHECKLIST_FILE) -> Checklist:
    """Read the checklist from ``path`` (default: the package's ``checklist.yaml``); every
    chapter it names must be one of the course's (:func:`hdb_mlops.course.stages.chapters`)."""
    if Path(path) == CHECKLIST_FILE:
        return _default()
    return _read(Path(path))


@functools.cache
def _default() -> Checklist:
    return _read(CHECKLIST_FILE)


def _read(path: Path) -> Checklist:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    questions = tuple(
        Question(
            str(q["id"]),
            str(q["topic"]),
            str(q["text"]),
            {str(a): _answer(a, spec) for a, spec in q["answers"].items()},
        )
        for q in raw["questions"]
    )
    checklist = Checklist(
        questions,
        (str(raw["any_need"]["chapter"]), str(raw["any_need"]["why"])),
        {str(k): str(v) for k, v in raw["hdb_case"].items()},
    )
    known = stages.chapters()
    named = {checklist.any_need[0]} | {
        chapter for q in questions for a in q.answers.values() for chapter, _ in a.points_to
    }
    if unknown := sorted(named - set(known)):
        raise ChecklistError(f"{path.name}: unknown chapters {unknown}; known: {list(known)}")
    validate(checklist.hdb_case, checklist)
    return checklist


def questions() -> tuple[Question, ...]:
    """The checklist's questions, in order."""
    return load().questions


def hdb_case() -> dict[str, str]:
    """The answers for the course's case study (the notebook's default parameters)."""
    return dict(load().hdb_case)


def validate(answers: Mapping[str, Any], checklist: Checklist | None = None) -> dict[str, str]:
    """``answers`` (question id -> answer id) checked and normalised (trimmed, lower case);
    a ``None`` answer means unanswered and is left out. An unknown question id or answer
    raises :class:`ChecklistError` naming it and the allowed values."""
    checklist = checklist or load()
    if not isinstance(answers, Mapping):
        raise ChecklistError(
            f"answers must be a dict of question id -> answer, not {type(answers).__name__}"
        )
    clean: dict[str, str] = {}
    for question_id, given in answers.items():
        question = checklist.question(str(question_id))
        if given is None:
            continue
        allowed = ", ".join(question.answers)
        if not isinstance(given, str):
            raise ChecklistError(
                f"{question.id}: {given!r} is not an answer; answer with one of the words "
                f"{allowed} (a string, in quotes)"
            )
        answer = given.strip().lower()
        if answer not in question.answers:
            raise ChecklistError(
                f"{question.id}: {given!r} is not an answer; choose one of: {allowed}"
            )
        clean[question.id] = answer
    return clean


def assess(answers: Mapping[str, Any]) -> Assessment:
    """Which chapters to read first, and why, for ``answers`` (question id -> answer id; see
    :func:`questions_table` for both). Questions left out are reported as unanswered."""
    checklist = load()
    clean = validate(answers, checklist)
    scores: dict[str, int] = {}
    reasons: dict[str, list[str]] = {}
    for question in checklist.questions:
        if question.id not in clean:
            continue
        answer = question.answers[clean[question.id]]
        for chapter, why in answer.points_to:
            scores[chapter] = scores.get(chapter, 0) + answer.weight
            reasons.setdefault(chapter, []).append(f"{why} ({question.topic})")
    needs = any(checklist.question(q).answers[a].weight > 0 for q, a in clean.items())
    if needs:
        chapter, why = checklist.any_need
        scores[chapter] = scores.get(chapter, 0) + 1
        reasons.setdefault(chapter, []).append(why)
    titles = stages.chapters()
    order = {chapter: i for i, chapter in enumerate(titles)}
    ranked = sorted(scores, key=lambda c: (-scores[c], order[c]))
    chapters = tuple(
        Recommendation(c, titles[c].title, scores[c], tuple(reasons[c])) for c in ranked
    )
    unanswered = tuple(q.id for q in checklist.questions if q.id not in clean)
    return Assessment(clean, needs, chapters, unanswered)


def questions_table(answers: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The questions with their allowed answers (id: label) and, if given, the answer chosen."""
    clean = validate(answers or {})
    rows = []
    for question in questions():
        row = {
            "question id": question.id,
            "question": question.text,
            "allowed answers": " | ".join(f"{a.id}: {a.label}" for a in question.answers.values()),
        }
        if answers is not None:
            row["answer"] = clean.get(question.id, "(unanswered)")
        rows.append(row)
    return pd.DataFrame(rows).set_index("question id")


def widget(answers: Mapping[str, Any] | None = None) -> Any:
    """An ipywidgets form for live use in JupyterLab: one drop-down per question (starting
    from ``answers``, default the HDB case) and the reading list, updated on every change.
    Needs ipywidgets (the ``lab`` extra); the notebooks' executed outputs never depend on it."""
    import ipywidgets as widgets
    from IPython.display import display

    start = validate(answers if answers is not None else hdb_case())
    pickers = {
        q.id: widgets.Dropdown(
            options=[("(unanswered)", None)]
            + [(f"{a.id}: {a.label}", a.id) for a in q.answers.values()],
            value=start.get(q.id),
            description=q.topic,
            style={"description_width": "12em"},
            layout={"width": "48em"},
        )
        for q in questions()
    }
    out = widgets.Output()

    def refresh(_change: object = None) -> None:
        result = assess({q: p.value for q, p in pickers.items()})
        out.clear_output(wait=True)
        with out:
            print(result.summary())
            display(result.table())

    for picker in pickers.values():
        picker.observe(refresh, names="value")
    refresh()
    return widgets.VBox([*pickers.values(), out])
