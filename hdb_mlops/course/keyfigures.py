"""Key figures a notebook records for the pipeline manifest (row counts, metrics, timings).

A notebook calls ``record(run_dir, "05a_data", rows_in=..., mape=...)``; the pipeline collects
every notebook's figures into ``runs/<run-id>/manifest.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FIGURES_DIR = "figures"


def _plain(value: Any) -> Any:
    """A JSON-ready version of numpy scalars, NaN (None) and nested containers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def record(run_dir: Path | str, notebook: str, **figures: Any) -> dict:
    """Merge ``figures`` into ``<run_dir>/figures/<notebook>.json``; return all, sorted by name."""
    path = Path(run_dir) / FIGURES_DIR / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(_plain(figures))
    current = dict(sorted(current.items()))
    path.write_text(json.dumps(current, indent=2) + "\n")
    return current


def collect(run_dir: Path | str) -> dict[str, dict]:
    """Every notebook's recorded figures, keyed by notebook name."""
    folder = Path(run_dir) / FIGURES_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
