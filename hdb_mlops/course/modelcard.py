"""A model card for a registered model version, in Markdown, on the headings of the Hugging
Face model card (Model details; Intended uses & limitations; Training data; Evaluation; Bias,
risks and limitations; How to use; Version and citation). The template text is the course's
own; every figure comes from the registry: the version's tags and aliases, its bundle's
metadata.json (metrics, residual quantiles, parameters, data hash, git commit, sha256s), its
feature spec, and the run's parameters and per-town table.

Slices by flat type and price band are not stored with a run: pass the sales (``transactions``)
and the card scores the version on the months after its training cut-off for all three slices.
model-card-toolkit would do the rendering, but it needs TensorFlow and Python <= 3.9.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops.course.tables import metrics_table

SLICE_MIN_N = 30
SLICES = {"town": "town", "flat_type": "flat type", "price_band": "price band (actual price)"}
HEADLINE = ("mape", "median_ape", "within_5", "within_10", "mae", "rmse", "r2", "n")


@dataclass
class CardData:
    """Everything the card says, gathered from the registry (and the sales, for slices)."""

    name: str
    version: int
    aliases: list[str]
    created: str
    run_id: str
    model_uri: str
    metadata: dict[str, Any]
    tags: dict[str, str]
    feature_spec: dict[str, Any]
    run_params: dict[str, str]
    slices: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: first and last month of the sales the slices were scored on (when given)
    slice_window: tuple[str, str] | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The holdout metrics recorded with the bundle."""
        return dict(self.metadata.get("metrics") or {})

    @property
    def cutoff(self) -> str | None:
        """The last training month."""
        return (self.metadata.get("extra") or {}).get("cutoff") or self.run_params.get("cutoff")


def _download_table(run_id: str, artifact: str) -> pd.DataFrame | None:
    """A CSV artifact of a run, or None when the run has none."""
    from hdb_mlops.model import tracking

    mlflow = tracking._mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact,
                dst_path=tmp,
                tracking_uri=tracking.tracking_uri(),
            )
        except Exception:  # no such artifact: the card says so
            return None
        return pd.read_csv(path, index_col=0)


def _scored_slices(bundle: Any, transactions: pd.DataFrame, cutoff: str | None) -> tuple:
    """Metrics by town, flat type and price band on the months after ``cutoff``."""
    from hdb_mlops.model.evaluate import metrics_by, price_band

    test = transactions
    if cutoff:
        test = transactions[transactions["month"] > pd.Period(cutoff, freq="M")]
    if test.empty:
        raise ValueError(f"no sales after the version's cut-off {cutoff}: pass later data")
    frame = test[["town", "flat_type", "resale_price"]].copy()
    frame["prediction"] = bundle.predict(test)
    frame["price_band"] = price_band(frame["resale_price"])
    slices = {key: metrics_by(frame, key) for key in SLICES}
    return slices, (str(test["month"].min()), str(test["month"].max()))


def card_data(
    ref: str | int = "champion",
    name: str | None = None,
    transactions: pd.DataFrame | None = None,
) -> CardData:
    """Gather a version's card from the registry (``ref``: a number or an alias)."""
    from hdb_mlops.model import registry, tracking

    name = name or registry.DEFAULT_NAME
    shown = registry.show(ref, name)
    bundle = registry.load(shown["version"], name)
    run_params: dict[str, str] = {}
    if shown["run_id"]:
        run_params = dict(tracking.get_client().get_run(shown["run_id"]).data.params)
    card = CardData(
        name=name,
        version=shown["version"],
        aliases=list(shown["aliases"]),
        created=shown["created"],
        run_id=shown["run_id"],
        model_uri=shown["model_uri"],
        metadata=shown["metadata"],
        tags=shown["tags"],
        feature_spec=bundle.spec.to_dict(),
        run_params=run_params,
    )
    if transactions is not None:
        card.slices, card.slice_window = _scored_slices(bundle, transactions, card.cutoff)
    elif shown["run_id"]:
        towns = _download_table(shown["run_id"], "evaluation/metrics_by_town.csv")
        if towns is not None:
            card.slices["town"] = towns
    return card


# ----------------------------------------------------------------------------- rendering


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a GitHub-flavoured Markdown table (index first). tabulate, which pandas'
    to_markdown needs, is not a dependency; these ten lines are enough."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, *values in frame.astype(object).itertuples():  # object: ints stay ints
        cells = ["" if pd.isna(v) else str(v) for v in values]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)


def _slice_section(card: CardData) -> list[str]:
    out = ["### Slices", ""]
    if card.slice_window:
        first, last = card.slice_window
        out.append(f"Scored for this card on the sales of {first} to {last} (after the cut-off).")
    else:
        out.append(
            "Towns from the training run's evaluation table; flat types and price bands are "
            "not stored with a run (`hdb-mlops modelcard --data ...` scores them)."
        )
    out.append(f"Groups of fewer than {SLICE_MIN_N} sales are left out: their MAPE is noise.")
    for key, title in SLICES.items():
        frame = card.slices.get(key)
        out += ["", f"**By {title}**", ""]
        if frame is None or frame.empty:
            out.append("(not available)")
            continue
        shown = frame[frame["n"] >= SLICE_MIN_N] if "n" in frame else frame
        columns = [m for m in ("mape", "within_5", "within_10", "n") if m in shown]
        table = metrics_table(shown.sort_values("mape"), tuple(columns), index_name=title)
        out.append(markdown_table(table))
        hidden = len(frame) - len(shown)
        if hidden:
            out.append(f"\n{hidden} group(s) with fewer than {SLICE_MIN_N} sales not shown.")
    return out


def render(card: CardData) -> str:
    """The card as Markdown."""
    from hdb_mlops.data.examples import EXAMPLE_REQUEST

    meta, metrics = card.metadata, card.metrics
    extra = meta.get("extra") or {}
    git = meta.get("git") or {}
    aliases = ", ".join(card.aliases) or "none"
    headline = {m: metrics[m] for m in HEADLINE if m in metrics}
    metric_table = metrics_table({"holdout": headline}, tuple(headline), index_name="protocol")
    quantiles = meta.get("residual_quantiles") or {}
    spec = card.feature_spec
    params = meta.get("params") or {}
    gate = {k.removeprefix("gate."): v for k, v in card.tags.items() if k.startswith("gate.")}
    lines = [
        f"# Model card: {card.name} version {card.version}",
        "",
        f"Aliases: **{aliases}**. Generated by `hdb-mlops modelcard` from the model registry.",
        "",
        "## Model details",
        "",
        f"- Model: `{meta.get('model_name')}` (`{meta.get('model_class')}`), predicting the "
        "resale price (S$) of an HDB flat from its month, town, flat type, floor area, storey, "
        "flat model and lease.",
        f"- Registered model `{card.name}`, version {card.version}, created {card.created}; "
        f"MLflow run `{card.run_id}`; load it as `{card.model_uri}`.",
        f"- Promotion gate: {gate.get('outcome', 'not run')}"
        + (f" ({gate['reasons']})" if gate.get("reasons") else ""),
        "- Developed in the hdb-mlops course (GovTech MLOps Playbook case study).",
        "",
        "## Intended uses & limitations",
        "",
        "Intended: a first estimate of a resale flat's price for learning, for comparing "
        "flats, and for monitoring how a model of a moving market ages.",
        "",
        "### Out-of-scope uses",
        "",
        "- A valuation for a purchase, a loan, a tax or a legal decision: a licensed valuer's "
        "job. Use the prediction interval below, never the point alone.",
        "- Flats or months unlike the training data: private property, new flat types or "
        "towns, months long after the cut-off (the market moves; retrain).",
        "- Judging a person or a household: the model knows flats, not buyers.",
        "",
        "## Training data",
        "",
        f"- HDB resale transactions (data.gov.sg collection 189) up to and including "
        f"**{card.cutoff}**: {extra.get('train_rows', 'unknown')} sales; evaluated on "
        f"{extra.get('test_rows', 'unknown')} later sales.",
        f"- Data hash `{meta.get('data_hash')}` (the normalised transactions).",
        f"- Features: numeric {', '.join(spec.get('numeric', []))}; categorical "
        f"{', '.join(spec.get('categorical', {}))}; location features "
        f"{'on' if spec.get('location') else 'off'} (feature spec version {spec.get('version')}).",
        "",
        "### Training procedure",
        "",
        "Model parameters: `" + json.dumps(params, sort_keys=True) + "`.",
        "Run parameters: `" + json.dumps(card.run_params, sort_keys=True) + "`.",
        "",
        "## Evaluation",
        "",
        "### Metrics",
        "",
        f"Holdout protocol: trained on sales up to {card.cutoff}, tested on the months after.",
        "",
        markdown_table(metric_table),
        "",
        "### Prediction intervals",
        "",
        "Quantiles of log(actual / predicted) on the test months; a 90 % interval is "
        "prediction × exp(q0.05) to prediction × exp(q0.95).",
        "",
        markdown_table(
            pd.DataFrame({"log ratio": {k: round(v, 4) for k, v in quantiles.items()}}).rename_axis(
                "quantile"
            )
        ),
        "",
        *_slice_section(card),
        "",
        "## Bias, risks and limitations",
        "",
        "- Errors differ between towns, flat types and price bands (above); a group with a "
        "higher error or a systematic over- or under-valuation is served worse. "
        "`hdb-mlops fairness` measures it with intervals.",
        "- The market moves: the error grows month by month after the cut-off until the "
        "model is retrained (chapter 1).",
        "- Rare flats (1-room, multi-generation, terraces) have few sales: their predictions "
        "are the least reliable.",
        "- The model learns what similar flats sold for, so past patterns (location premiums, "
        "lease decay) are reproduced, not judged.",
        "",
        "## How to use",
        "",
        "```bash",
        f"hdb-mlops model show {card.version}          # this version's record",
        f"hdb-mlops serve --model {card.version}       # HTTP on 127.0.0.1:8080",
        "curl -s -X POST 127.0.0.1:8080/predict -H 'content-type: application/json' \\",
        f"  -d '{json.dumps(EXAMPLE_REQUEST)}'",
        "```",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("{card.model_uri}")',
        "```",
        "",
        "## Version and citation",
        "",
        f"- Bundle sha256 (metadata.json): `{card.tags.get('bundle_sha256')}`",
        f"- Model sha256 (model.joblib): `{meta.get('model_sha256')}`"
        + (f"; booster sha256 `{meta['booster_sha256']}`" if meta.get("booster_sha256") else ""),
        f"- Code: git commit `{git.get('commit')}`"
        + (" (uncommitted changes)" if git.get("dirty") else ""),
        f"- Libraries: {', '.join(f'{k} {v}' for k, v in (meta.get('versions') or {}).items())}",
        f"- Created {meta.get('created_at')}.",
        "",
        "Cite as: hdb-mlops course, *HDB resale price model*, "
        f"{card.name} v{card.version} ({card.created[:10]}).",
        "",
    ]
    return "\n".join(lines)


def model_card(
    ref: str | int = "champion",
    name: str | None = None,
    transactions: pd.DataFrame | None = None,
) -> str:
    """The Markdown model card of a registered version."""
    return render(card_data(ref, name, transactions))


def write_model_card(path: Path | str, text: str) -> Path:
    """Write a card to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
