"""Chapter 6A's tour, drift: the PSI, KS and chi-squared of a window of request bodies
against a bundle's reference profile, how a PSI reads, and the picture of PSI by feature.
:mod:`hdb_mlops.monitoring.tour` re-exports these for the notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hdb_mlops.model.bundle import Bundle

#: PSI bands: below the first stable, up to the second a moderate shift, above it significant
#: (the second is the drift alerts' threshold).
PSI_BANDS = (0.1, 0.2)
#: Okabe-Ito colours of :mod:`hdb_mlops.course.plots` (that layer sits above this one).
_COLOURS, _GREY = ("#0072B2", "#E69F00", "#009E73", "#D55E00"), "#555555"


def request_drift(
    bundle: Bundle | Path | str, records: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """PSI, KS and chi-squared of a window of request bodies against the reference profile
    of the bundle that priced them (a loaded bundle or its folder;
    :func:`hdb_mlops.monitoring.drift.drift_table`, on the model's own features and
    predictions), with each PSI's band (:func:`psi_band`)."""
    from hdb_mlops.model.bundle import load_bundle
    from hdb_mlops.model.features import transactions_from_records
    from hdb_mlops.monitoring import drift

    if not hasattr(bundle, "profile"):
        bundle = load_bundle(bundle)
    rows = transactions_from_records([_as_in_the_files(r) for r in records])
    table = drift.drift_table(
        bundle.model.features(rows), bundle.profile, bundle.model.predict(rows)
    )
    table["band"] = table["psi"].map(psi_band)
    return table.set_index("feature")


def _as_in_the_files(record: Mapping[str, Any]) -> dict[str, Any]:
    """A request body as a row of the data files (what ``transactions_from_records``
    parses): the remaining lease in months spelt out, an empty price."""
    from hdb_mlops.serving.request_fields import format_months

    lease = record.get("remaining_lease")
    if isinstance(lease, int):
        lease = format_months(lease)
    return {**record, "remaining_lease": lease or "", "resale_price": ""}


def psi_band(value: float) -> str:
    """How a PSI reads: ``stable`` (< 0.1), ``moderate`` (0.1 to 0.2) or ``significant``
    (above 0.2, where the drift alerts fire); empty for a missing value."""
    if value is None or pd.isna(value):
        return ""
    low, high = PSI_BANDS
    return "stable" if value < low else "moderate" if value <= high else "significant"


def psi_figure(
    windows: Mapping[str, pd.DataFrame], *, clip: float = 1.0, note: str | None = None
) -> Figure:
    """PSI by feature for each window (``{label: request_drift(...)}``), as horizontal bars
    on one axis with the bands' lines; values above ``clip`` are drawn at ``clip`` and
    labelled with their value. ``note``: a caption under the figure (the data's source)."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(windows)
    features = list(next(iter(windows.values())).index)
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(features) + 1.4), layout="constrained")
    height = 0.8 / len(labels)
    y = np.arange(len(features))
    for k, label in enumerate(labels):
        values = windows[label]["psi"].reindex(features).to_numpy(dtype="float64")
        offsets = y + (k - (len(labels) - 1) / 2) * height
        shown = np.minimum(values, clip)
        ax.barh(offsets, shown, height=height, color=_COLOURS[k % len(_COLOURS)], label=label)
        for yy, value in zip(offsets, values, strict=True):
            if value > clip:
                ax.text(clip, yy, f" {value:.1f} →", va="center", fontsize=7, color=_GREY)
    for line, text in zip(PSI_BANDS, ("moderate", "significant"), strict=True):
        ax.axvline(line, color=_GREY, linestyle="--", linewidth=1)
        ax.text(line, 1.0, f" {text} ", fontsize=7, color=_GREY, rotation=30, ha="left",
                va="bottom", transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set_yticks(y, features)
    ax.invert_yaxis()
    ax.set_xlim(0, clip * 1.15)
    ax.set_xlabel(f"PSI against the reference profile (bars cut at {clip:g})")
    ax.legend(loc="center right", fontsize=8)
    if note:
        fig.supxlabel(note, fontsize=8, color=_GREY, x=0.01, ha="left")
    return fig
