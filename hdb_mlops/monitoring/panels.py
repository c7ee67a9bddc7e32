"""The Grafana dashboards without Grafana: read a dashboard's JSON (``grafana/dashboards/``),
run every panel's PromQL against Prometheus and draw it with matplotlib, one axes a panel,
titled as in Grafana. The chapter 6 notebook shows the dashboards this way.

Grafana's own variables are given values as Grafana would: ``$__interval`` is the step,
``$__range`` the time range, ``$__rate_interval`` the larger of step + scrape interval and
four scrape intervals. Panel types: ``timeseries`` (lines, or bars when the panel says so),
``stat`` (the latest value of each series as text), ``bargauge`` with ``format: heatmap``
(a histogram's buckets as bars, de-cumulated as Grafana does).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdb_mlops.config import PROJECT_DIR
from hdb_mlops.monitoring import promql
from hdb_mlops.monitoring.stack_config import format_duration

DASHBOARDS_DIR = PROJECT_DIR / "grafana" / "dashboards"
DASHBOARDS = ("service-health", "model-health")
#: Axis labels for Grafana's units.
UNIT_LABELS = {
    "reqps": "requests/s",
    "percentunit": "share",
    "s": "seconds",
    "bytes": "bytes",
    "none": "",
    "short": "",
}
_LEGEND_RE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class PanelTarget:
    """One query of a panel."""

    ref_id: str
    expr: str
    legend: str = ""
    instant: bool = False
    format: str = "time_series"


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: its title, type, unit and queries."""

    id: int
    title: str
    type: str
    unit: str
    targets: tuple[PanelTarget, ...]
    draw_style: str = "line"
    #: A stat panel's text: "value_and_name", "name" (the legend only), "value".
    text_mode: str = "value_and_name"
    #: Value mappings (``{"1": "UP"}``) from the panel's ``type: value`` mappings.
    mappings: tuple[tuple[str, str], ...] = ()


def dashboard_path(name: str | Path) -> Path:
    """The file of a dashboard: a path, or a name of :data:`DASHBOARDS`."""
    path = Path(name)
    if path.suffix == ".json" or path.exists():
        return path
    return DASHBOARDS_DIR / f"{name}.json"


def load_dashboard(name: str | Path) -> dict[str, Any]:
    """A dashboard's JSON (a path, or ``service-health`` / ``model-health``)."""
    path = dashboard_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no dashboard at {path}: use a path or one of {', '.join(DASHBOARDS)}"
        )
    return json.loads(path.read_text())


def _flat_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels in order, with the panels of (collapsed) rows in place of the rows."""
    out = []
    for panel in panels:
        if panel.get("type") == "row":
            out.extend(_flat_panels(panel.get("panels", [])))
        else:
            out.append(panel)
    return out


def dashboard_panels(dashboard: dict[str, Any]) -> list[Panel]:
    """The panels of a dashboard that have queries, in order."""
    panels = []
    for raw in _flat_panels(dashboard.get("panels", [])):
        defaults = raw.get("fieldConfig", {}).get("defaults", {})
        targets = tuple(
            PanelTarget(
                ref_id=t.get("refId", ""),
                expr=t["expr"],
                legend=t.get("legendFormat", ""),
                instant=bool(t.get("instant")) and not t.get("range", False),
                format=t.get("format", "time_series"),
            )
            for t in raw.get("targets", [])
            if t.get("expr")
        )
        if targets:
            panels.append(
                Panel(
                    id=int(raw.get("id", 0)),
                    title=raw.get("title", ""),
                    type=raw.get("type", "timeseries"),
                    unit=defaults.get("unit", "short"),
                    targets=targets,
                    draw_style=defaults.get("custom", {}).get("drawStyle", "line"),
                    text_mode=raw.get("options", {}).get("textMode", "value_and_name"),
                    mappings=_value_mappings(defaults.get("mappings", [])),
                )
            )
    return panels


def _value_mappings(mappings: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (value, option["text"])
        for mapping in mappings
        if mapping.get("type") == "value"
        for value, option in mapping.get("options", {}).items()
        if "text" in option
    )


def rate_interval(step: float, scrape_seconds: float) -> float:
    """Grafana's ``$__rate_interval``: max(step + scrape interval, 4 x scrape interval)."""
    return max(step + scrape_seconds, 4 * scrape_seconds)


def grafana_expr(expr: str, *, step: float, range_seconds: float, scrape_seconds: float) -> str:
    """``expr`` with Grafana's interval variables replaced by durations."""
    values = {
        "__rate_interval": format_duration(rate_interval(step, scrape_seconds)),
        "__range": format_duration(range_seconds),
        "__interval": format_duration(step),
    }
    for name, value in values.items():  # longest names first: __rate_interval, __range
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def legend(template: str, labels: dict[str, Any], fallback: str) -> str:
    """A series' legend from a Grafana ``legendFormat`` (``{{label}}``), else ``fallback``."""
    if not template:
        return fallback
    return _LEGEND_RE.sub(lambda m: str(labels.get(m.group(1), "") or ""), template)


def panel_frames(
    prometheus_url: str,
    panel: Panel,
    *,
    start: float,
    end: float,
    step: float,
    scrape_seconds: float,
) -> list[tuple[PanelTarget, Any]]:
    """Run each query of ``panel`` (instant ones at ``end``); ``[(target, frame)]``, each
    frame with a ``legend`` column."""
    out = []
    for target in panel.targets:
        expr = grafana_expr(
            target.expr, step=step, range_seconds=end - start, scrape_seconds=scrape_seconds
        )
        if target.instant:
            frame = promql.query(prometheus_url, expr, at=end)
        else:
            frame = promql.query_range(prometheus_url, expr, start, end, step)
        label_columns = [c for c in frame.columns if c not in ("series", "time", "value")]
        frame["legend"] = [
            legend(target.legend, row, row["series"] or target.ref_id)
            for row in frame[[*label_columns, "series"]].to_dict("records")
        ]
        out.append((target, frame))
    return out


def _draw_timeseries(ax: Any, panel: Panel, frames: list, step: float) -> None:
    for _target, frame in frames:
        for name, series in frame.groupby("legend", sort=True):
            if panel.draw_style == "bars":  # matplotlib's dates are in days
                ax.bar(series["time"], series["value"], width=0.8 * step / 86400, label=name)
            else:
                ax.plot(series["time"], series["value"], label=name, linewidth=1.2)
    if panel.unit == "percentunit":
        ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_ylabel(UNIT_LABELS.get(panel.unit, panel.unit))
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value:.1%}"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:g}"


def _draw_stat(ax: Any, panel: Panel, frames: list) -> None:
    mapped = dict(panel.mappings)
    lines = []
    for _target, frame in frames:
        latest = frame.sort_values("time").groupby("legend").tail(1)
        for row in latest.itertuples():
            value = _format_value(row.value, panel.unit)
            value = mapped.get(value, value)
            if panel.text_mode == "name":
                lines.append(str(row.legend))
            elif panel.text_mode == "value":
                lines.append(value)
            else:
                lines.append(f"{row.legend}: {value}")
    ax.axis("off")
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=10,
            transform=ax.transAxes, wrap=True)  # fmt: skip


def _draw_buckets(ax: Any, panel: Panel, frames: list) -> None:
    """A cumulative histogram's buckets (``le`` labels) as one bar per bucket."""
    for _target, frame in frames:
        if "le" not in frame.columns or frame.empty:
            continue
        latest = frame.sort_values("time").groupby("le").tail(1).copy()
        latest["upper"] = latest["le"].astype(float)
        latest = latest.sort_values("upper")
        counts = latest["value"].diff().fillna(latest["value"]).clip(lower=0)
        labels = [
            "+Inf" if math.isinf(u) else f"{u / 1000:,.0f}k" if u >= 1000 else f"{u:g}"
            for u in latest["upper"]
        ]
        ax.bar(range(len(counts)), counts.to_numpy(), tick_label=labels)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        ax.set_ylabel("count (upper bound of the band)")


def plot_dashboard(
    dashboard: str | Path | dict[str, Any],
    prometheus_url: str,
    *,
    minutes: float = 15.0,
    end: float | None = None,
    step: float | None = None,
    scrape_seconds: float = 15.0,
    columns: int = 2,
    titles: list[str] | None = None,
) -> Any:
    """Draw a dashboard's panels from Prometheus' data over the last ``minutes`` (until
    ``end``, Unix seconds, default now) and return the matplotlib Figure. ``step`` defaults
    to about 200 points; ``scrape_seconds`` is the stack's scrape interval (StackInfo's
    ``scrape_seconds``); ``titles`` keeps only the panels named."""
    import matplotlib.pyplot as plt

    data = dashboard if isinstance(dashboard, dict) else load_dashboard(dashboard)
    panels = dashboard_panels(data)
    if titles is not None:
        unknown = set(titles) - {p.title for p in panels}
        if unknown:
            raise ValueError(f"no panel titled {', '.join(sorted(unknown))} in {data['title']}")
        panels = [p for p in panels if p.title in titles]
    end = time.time() if end is None else float(end)
    start = end - minutes * 60
    step = step or max(1.0, round((end - start) / 200))
    rows = math.ceil(len(panels) / columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        frames = panel_frames(
            prometheus_url, panel, start=start, end=end, step=step, scrape_seconds=scrape_seconds
        )
        if panel.type == "stat":
            _draw_stat(ax, panel, frames)
        elif any(t.format == "heatmap" for t in panel.targets):
            _draw_buckets(ax, panel, frames)
        else:
            _draw_timeseries(ax, panel, frames, step)
        if all(f.empty for _t, f in frames):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    color="grey")  # fmt: skip
        ax.set_title(panel.title, fontsize=10)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(data.get("title", ""), fontsize=12)
    # fixed margins: tight_layout measures every tick label and takes seconds on 24 axes
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.9 / height, top=1 - 0.7 / height, hspace=0.75, wspace=0.22
    )
    return fig
