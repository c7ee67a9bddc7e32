"""The chapter 2 diagram: our stages as columns, the frameworks' levels as boxes under them.

Each framework gets a row; a level's box spans the stages of ours it overlaps
(:attr:`hdb_mlops.course.stages.Level.stages`), and levels whose spans overlap go into separate
lanes of the row. Colours from the course palette (:mod:`hdb_mlops.course.plots`).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from hdb_mlops.course.stages import STAGE_NUMBERS, Level, frameworks, levels, stage_definitions

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _lanes(spans: list[tuple[int, int]]) -> list[int]:
    """A lane for each (first, last) span so that spans in one lane do not overlap."""
    ends: list[int] = []
    lanes = []
    for first, last in spans:
        lane = next((i for i, end in enumerate(ends) if end < first), len(ends))
        if lane == len(ends):
            ends.append(last)
        else:
            ends[lane] = last
        lanes.append(lane)
    return lanes


def _box(ax: Any, x0: float, x1: float, y: float, height: float, text: str, colour: str,
         *, bold: bool = False, width: int = 26) -> None:  # fmt: skip
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x0 + 0.04, y),
            x1 - x0 - 0.08,
            height,
            boxstyle="round,pad=0.02",
            facecolor=colour,
            edgecolor="#333333",
            linewidth=0.8,
            alpha=0.9,
        )
    )
    chars = max(12, int(width * (x1 - x0)))
    ax.text(
        (x0 + x1) / 2,
        y + height / 2,
        "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in text.splitlines()),
        ha="center",
        va="center",
        fontsize=8,
        fontweight="bold" if bold else "normal",
    )


def draw() -> Figure:
    """Our stages as columns, and under them each framework's levels as boxes spanning the
    stages they overlap (a level covering two stages spans two columns)."""
    import matplotlib.pyplot as plt

    from hdb_mlops.course.plots import BLUE, GREEN, ORANGE, SKY

    colours = {"microsoft": SKY, "google": ORANGE, "aws": GREEN}
    names = frameworks()
    rows: list[tuple[str, list[Level], list[int]]] = []
    for key in names:
        own = list(levels(key))
        rows.append((key, own, _lanes([(min(lv.stages), max(lv.stages)) for lv in own])))
    lane_height, gap = 0.55, 0.35
    heights = [(max(lanes) + 1) * lane_height for _, _, lanes in rows]
    total = 1.0 + gap + sum(heights) + gap * len(rows)
    fig, ax = plt.subplots(figsize=(11, 1.0 + 1.05 * total), layout="constrained")
    top = total
    for s in stage_definitions():
        _box(
            ax,
            s.stage,
            s.stage + 1,
            top - 1.0,
            0.9,
            f"{s.label}\n{s.tagline}",
            "#F2F2F2",
            bold=True,
            width=24,
        )
    ax.text(-0.05, top - 0.55, "our stages", ha="right", va="center", fontsize=9, fontweight="bold")
    y = top - 1.0 - gap
    for (key, own, lanes), height in zip(rows, heights, strict=True):
        y -= height
        ax.text(
            -0.05,
            y + height / 2,
            names[key],
            ha="right",
            va="center",
            fontsize=9,
            fontweight="bold",
        )
        for lv, lane in zip(own, lanes, strict=True):
            y_box = y + height - (lane + 1) * lane_height
            _box(
                ax,
                min(lv.stages),
                max(lv.stages) + 1,
                y_box + 0.04,
                lane_height - 0.08,
                lv.label,
                colours.get(key, BLUE),
            )
        y -= gap
    for x in STAGE_NUMBERS[1:]:
        ax.axvline(x, color="#999999", linewidth=0.6, linestyle=":", zorder=0)
    ax.set_xlim(-0.9, 4.02)
    ax.set_ylim(y + gap - 0.05, total + 0.05)
    ax.axis("off")
    ax.set_title("Our stages and the levels of three published frameworks", fontsize=11)
    fig.supxlabel(
        "a box spans the stages of ours that the level overlaps; sources: "
        "Microsoft, Google Cloud, AWS (see the sources table)",
        fontsize=8,
        color="#555555",
        x=0.01,
        ha="left",
    )
    return fig
