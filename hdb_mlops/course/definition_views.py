"""Chapter 5C in the notebook: the build pipeline's definition JSON read as data.

The definition is read as JSON, never through the SDK's objects: the JSON is what ``upsert``
sends and what a reviewer (or a CI check) can read. Every view is a plain function of that
JSON, so it works as well on a definition a backend stored:

- :func:`all_steps`, :func:`references`, :func:`edges`, :func:`dependencies`: the steps and
  what each one waits for (the data it reads from other steps, ``DependsOn``, and, for a step
  inside a condition's branch, the condition);
- :func:`steps_table`, :func:`parameters_table`, :func:`condition`: the same as tables;
- :func:`draw_step_graph`: the steps left to right by dependency, with what flows on each edge.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from hdb_mlops.course.plots import BLUE, GREEN, ORANGE, PURPLE, SKY, VERMILLION

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: What each step of our pipeline does (our words; the playbook names the stages only).
STEP_JOBS = {
    "Prepare": "check the raw files, take the seeded subset, split by time into train, "
    "validation and test",
    "Train": "fit the price model under the training contract; write the bundle to /opt/ml/model",
    "Tune": "a tuning job: several training jobs, the best by validation MAPE",
    "Evaluate": "score the model on the test months; write evaluation.json",
    "CheckMape": "compare the evaluated MAPE with the threshold",
    "Register": "a new version in the model package group, PendingManualApproval",
    "MapeTooHigh": "stop the execution as Failed, with the reason",
}
#: Colours of the step types in the graph.
TYPE_COLOURS = {
    "Processing": BLUE,
    "Training": ORANGE,
    "Tuning": ORANGE,
    "Condition": SKY,
    "RegisterModel": GREEN,
    "Fail": VERMILLION,
}


@dataclass(frozen=True)
class Edge:
    """One dependency: ``target`` waits for ``source``. ``kind`` is ``data`` (it reads
    ``label`` from it), ``order`` (``DependsOn``), ``if`` or ``else`` (a condition's branch)."""

    source: str
    target: str
    kind: str
    label: str = ""


def all_steps(definition: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """Every step, including those inside a condition's branches, in definition order, as
    ``(step, condition, branch)``: ``("", "")`` for a top-level step, else the condition
    step's name and ``if`` or ``else``."""
    found: list[tuple[dict[str, Any], str, str]] = []

    def walk(steps: list[dict[str, Any]], parent: str, branch: str) -> None:
        for step in steps:
            found.append((step, parent, branch))
            args = step.get("Arguments", {})
            walk(args.get("IfSteps", []), step["Name"], "if")
            walk(args.get("ElseSteps", []), step["Name"], "else")

    walk(definition["Steps"], "", "")
    return found


def references(value: Any, prefix: str = "Steps.") -> list[str]:
    """Every ``{"Get": "<prefix>..."}`` path in ``value`` (nested anywhere), in order."""
    if isinstance(value, dict):
        got = value.get("Get")
        own = [got] if isinstance(got, str) and got.startswith(prefix) else []
        return own + [path for item in value.values() for path in references(item, prefix)]
    if isinstance(value, list):
        return [path for item in value for path in references(item, prefix)]
    return []


def _own_arguments(step: dict[str, Any]) -> dict[str, Any]:
    """A step's arguments without the steps of its branches (those are steps of their own)."""
    return {k: v for k, v in step.get("Arguments", {}).items() if k not in ("IfSteps", "ElseSteps")}


def _label(source: dict[str, Any], path: str) -> str:
    """What a ``Steps.<source>.<path>`` reference carries, in a word or two."""
    if match := re.search(r"Outputs\['([^']+)'\]", path):
        return match.group(1)
    if match := re.match(r"PropertyFiles\.(\w+)", path):
        files = {f["PropertyFileName"]: f["FilePath"] for f in source.get("PropertyFiles", [])}
        return files.get(match.group(1), match.group(1))
    if path.startswith("ModelArtifacts"):
        return "model.tar.gz"
    if path.startswith("TrainingJobSummaries"):
        return "best model.tar.gz"
    return path.split(".")[0]


def edges(definition: dict[str, Any]) -> list[Edge]:
    """Every dependency of the definition (see :class:`Edge`), one per pair and kind; the
    labels of several data references between one pair are joined (``train, validation``)."""
    steps = {step["Name"]: step for step, _, _ in all_steps(definition)}
    found: dict[tuple[str, str, str], list[str]] = {}
    for step, parent, branch in all_steps(definition):
        name = step["Name"]
        for path in references(_own_arguments(step)):
            source, _, rest = path[len("Steps.") :].partition(".")
            labels = found.setdefault((source, name, "data"), [])
            label = _label(steps.get(source, {}), rest)
            if label not in labels:
                labels.append(label)
        for source in step.get("DependsOn", []):
            found.setdefault((source, name, "order"), [])
        if parent:
            found.setdefault((parent, name, branch), [])
    return [Edge(s, t, kind, ", ".join(labels)) for (s, t, kind), labels in found.items()]


def dependencies(definition: dict[str, Any]) -> dict[str, list[str]]:
    """Each step's name -> the steps it waits for, in definition order."""
    order = [step["Name"] for step, _, _ in all_steps(definition)]
    waits: dict[str, list[str]] = {name: [] for name in order}
    for edge in edges(definition):
        if edge.source not in waits[edge.target]:
            waits[edge.target].append(edge.source)
    return {name: sorted(found, key=order.index) for name, found in waits.items()}


def _runs_when(parent: str, branch: str) -> str:
    if not parent:
        return "always"
    return f"{parent} true" if branch == "if" else f"{parent} false"


def steps_table(definition: dict[str, Any]) -> pd.DataFrame:
    """One row per step: its type, when it runs, what it reads from which step, its job."""
    reads: dict[str, list[str]] = {}
    for edge in edges(definition):
        if edge.kind == "data":
            reads.setdefault(edge.target, []).append(f"{edge.label} ({edge.source})")
    rows = []
    for step, parent, branch in all_steps(definition):
        inputs = reads.get(step["Name"], [])
        if not inputs:  # what it reads from outside the pipeline, if anything
            inputs = [p.split(".", 1)[1] for p in references(_own_arguments(step), "Parameters.")
                      if p.endswith("Uri") and "Image" not in p] or ["-"]  # fmt: skip
        rows.append(
            {
                "step": step["Name"],
                "type": step["Type"],
                "runs": _runs_when(parent, branch),
                "reads": "; ".join(inputs),
                "job": STEP_JOBS.get(step["Name"], ""),
            }
        )
    return pd.DataFrame(rows).set_index("step")


def parameters_table(definition: dict[str, Any]) -> pd.DataFrame:
    """The pipeline parameters: type, default, and the steps that read each one."""
    users: dict[str, list[str]] = {}
    for step, _, _ in all_steps(definition):
        for path in references(_own_arguments(step), "Parameters."):
            names = users.setdefault(path.split(".", 1)[1], [])
            if step["Name"] not in names:
                names.append(step["Name"])
    rows = [
        {
            "parameter": p["Name"],
            "type": p["Type"],
            "default": p.get("DefaultValue"),
            "read by": ", ".join(users.get(p["Name"], [])),
        }
        for p in definition["Parameters"]
    ]
    return pd.DataFrame(rows).set_index("parameter")


def _value(value: Any, definition: dict[str, Any]) -> tuple[str, Any]:
    """A condition operand as text, and its value when it is known before the run."""
    if isinstance(value, dict) and isinstance(value.get("Get"), str):
        path = value["Get"]
        if path.startswith("Parameters."):
            defaults = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
            return path, defaults.get(path.split(".", 1)[1])
        return path, None
    if isinstance(value, dict) and "Std:JsonGet" in value:
        get = value["Std:JsonGet"]
        source = references(get.get("PropertyFile"))
        where = source[0].split(".")[1] if source else "?"
        return f"{get['Path']} of {where}'s property file", None
    return json.dumps(value), value


def condition(definition: dict[str, Any]) -> dict[str, Any]:
    """The first condition step: its comparison, the threshold it uses (the parameter's
    default when it is a parameter) and the steps of each branch."""
    for step, _, _ in all_steps(definition):
        if step["Type"] == "Condition":
            args = step["Arguments"]
            (first, *_) = args["Conditions"]
            left, _ = _value(first["LeftValue"], definition)
            right, threshold = _value(first["RightValue"], definition)
            return {
                "step": step["Name"],
                "comparison": first["Type"],
                "left": left,
                "right": right,
                "threshold": threshold,
                "if true": ", ".join(s["Name"] for s in args.get("IfSteps", [])),
                "if false": ", ".join(s["Name"] for s in args.get("ElseSteps", [])),
            }
    raise ValueError("the definition has no condition step")


# ----------------------------------------------------------------------------- the graph


def _layers(definition: dict[str, Any]) -> dict[str, int]:
    """Each step's column: the length of the longest chain of steps it waits for."""
    waits = dependencies(definition)
    layer: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in layer:
            layer[name] = 1 + max((depth(n) for n in waits[name]), default=-1)
        return layer[name]

    for name in waits:
        depth(name)
    return layer


def _positions(definition: dict[str, Any], dx: float, dy: float) -> dict[str, tuple[float, float]]:
    """Box centres: one column per layer, the first step of a column on the main line (y 0),
    the others below it."""
    columns: dict[int, list[str]] = {}
    for name, col in _layers(definition).items():
        columns.setdefault(col, []).append(name)
    return {name: (col * dx, -i * dy) for col, names in columns.items()
            for i, name in enumerate(names)}  # fmt: skip


def _route(start: tuple[float, float], end: tuple[float, float], lane: float,
           half: float) -> list[tuple[float, float]]:  # fmt: skip
    """An edge that skips columns: up (or down) from the source box to ``lane``, across, and
    into the target box from above (or below)."""
    side = half if lane > start[1] else -half
    return [(start[0], start[1] + side), (start[0], lane), (end[0], lane),
            (end[0], end[1] + (half if lane > end[1] else -half))]  # fmt: skip


def draw_step_graph(definition: dict[str, Any], title: str | None = None) -> Figure:
    """The steps as boxes (coloured by type), left to right by dependency. Data edges are
    solid, labelled with what they carry; a condition's branches are dashed; an edge that
    skips columns runs in a lane above or below the main line."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    dx, dy, width, height = 3.0, 1.5, 1.6, 0.8
    kinds = {step["Name"]: step["Type"] for step, _, _ in all_steps(definition)}
    layer = _layers(definition)
    where = _positions(definition, dx, dy)
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    for name, (x, y) in where.items():
        colour = TYPE_COLOURS.get(kinds[name], PURPLE)
        ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                    boxstyle="round,pad=0.04", facecolor=colour, alpha=0.35,
                                    edgecolor=colour, linewidth=1.5))  # fmt: skip
        ax.text(x, y + 0.12, name, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(x, y - 0.2, kinds[name], ha="center", va="center", fontsize=8)
    arrow = {"arrowstyle": "-|>", "color": "#333333", "shrinkA": 0, "shrinkB": 1}
    lanes = {"above": 0, "below": 0}
    for edge in edges(definition):
        (x0, y0), (x1, y1) = where[edge.source], where[edge.target]
        style = "-" if edge.kind in ("data", "order") else "--"
        label = {"if": "MAPE ≤ threshold", "else": "MAPE > threshold"}.get(edge.kind, edge.label)
        if layer[edge.target] - layer[edge.source] > 1:  # below when no box is in the way
            low = [n for n, (_, y) in where.items() if y < 0]
            blocked = any(layer[edge.source] <= layer[n] <= layer[edge.target] for n in low)
            side = "above" if blocked else "below"
            lanes[side] += 1
            lane = (0.85 + 0.45 * lanes[side]) * (1 if side == "above" else -1)
            points = _route((x0, y0), (x1, y1), lane, height / 2)
            xs, ys = zip(*points[:-1], strict=True)
            ax.plot(xs, ys, color="#333333", linestyle=style, linewidth=1)
            ax.annotate("", xy=points[-1], xytext=points[-2],
                        arrowprops={**arrow, "linestyle": style})  # fmt: skip
            tx, ty, va = (x0 + x1) / 2, lane, "bottom" if side == "above" else "top"
        else:
            ax.annotate("", xy=(x1 - width / 2, y1), xytext=(x0 + width / 2, y0),
                        arrowprops={**arrow, "linestyle": style})  # fmt: skip
            tx, ty, va = (x0 + x1) / 2, (y0 + y1) / 2 + 0.06, "bottom"
        ha = "center" if y0 == y1 or edge.kind not in ("if", "else") else "right"
        ax.text(tx - (0.1 if ha == "right" else 0), ty, label.replace(", ", ",\n"), ha=ha,
                va=va, fontsize=7.5, color="#333333")  # fmt: skip
    xs = [x for x, _ in where.values()]
    ys = [y for _, y in where.values()]
    ax.set_xlim(min(xs) - width / 2 - 0.2, max(xs) + width / 2 + 0.2)
    ax.set_ylim(min(min(ys) - height, -0.9 - 0.45 * lanes["below"]) - 0.2,
                max(ys) + 1.3 + 0.45 * lanes["above"])  # fmt: skip
    ax.axis("off")
    shown = sorted(set(kinds.values()), key=lambda k: list(TYPE_COLOURS).index(k)
                   if k in TYPE_COLOURS else len(TYPE_COLOURS))  # fmt: skip
    fig.legend(handles=[Patch(facecolor=TYPE_COLOURS.get(k, PURPLE), alpha=0.5, label=k)
                        for k in shown], loc="outside lower center", fontsize=8,
               ncols=len(shown), frameon=False)  # fmt: skip
    ax.set_title(title or "The build pipeline, drawn from its definition JSON", fontsize=11,
                 loc="left")  # fmt: skip
    return fig
