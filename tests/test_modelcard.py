"""The model card (chapter 8) says what the registry holds: a version is trained, logged and
registered here on a temporary MLflow store, and every figure on its card is checked against
the registry's record (and the slices against a computation of their own)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from hdb_mlops import cli
from hdb_mlops.course import modelcard
from hdb_mlops.course.tables import rounded

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
NAME = "hdb-resale-price"  # the default name: the store is a temporary one


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A median-price model trained on the sample, registered as the champion of NAME."""
    from hdb_mlops.data import storage
    from hdb_mlops.model import registry, train

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("HDB_MLOPS_MLFLOW_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("HDB_MLOPS_MODEL_CACHE", str(root / "cache"))
        prepared = storage.prepare("sample", tmp_path_factory.mktemp("data"))
        tx = prepared.transactions()
        result = train.train(tx, root / "models", model="median_ppsm",
                             data_hash=prepared.data_hash)  # fmt: skip
        assert result.decision.promoted  # the first sane version becomes champion
        yield {"result": result, "tx": tx, "shown": registry.show(result.version, NAME)}


def test_the_card_states_the_registrys_record(registered):
    shown, result = registered["shown"], registered["result"]
    card = modelcard.model_card("champion", NAME)
    meta = shown["metadata"]
    assert card.startswith(f"# Model card: {NAME} version {shown['version']}\n")
    assert "Aliases: **champion**." in card
    for heading in ("## Model details", "## Intended uses & limitations", "### Out-of-scope uses",
                    "## Training data", "## Evaluation", "## Bias, risks and limitations",
                    "## How to use", "## Version and citation"):  # fmt: skip
        assert f"\n{heading}\n" in card
    m = meta["metrics"]
    row = " | ".join(
        str(rounded(m[k], kind))
        for k, kind in (
            ("mape", "percent"),
            ("median_ape", "percent"),
            ("within_5", "percent"),
            ("within_10", "percent"),
            ("mae", "money"),
            ("rmse", "money"),
            ("r2", "ratio"),
            ("n", "count"),
        )
    )
    assert f"| holdout | {row} |" in card
    assert m["mape"] == pytest.approx(result.evaluation.overall["mape"])
    assert shown["tags"]["bundle_sha256"] in card and meta["model_sha256"] in card
    assert f"Data hash `{meta['data_hash']}`" in card
    assert (
        f"up to and including **{meta['extra']['cutoff']}**: {meta['extra']['train_rows']} sales"
        in card
    )
    assert f"run `{shown['run_id']}`" in card and f"`models:/{NAME}/{shown['version']}`" in card
    for q, value in meta["residual_quantiles"].items():
        assert f"| {q} | {round(value, 4)} |" in card


def test_town_slices_come_from_the_runs_evaluation_table(registered):
    card = modelcard.model_card(registered["result"].version, NAME)
    by_town = registered["result"].evaluation.by("town")
    shown = by_town[by_town["n"] >= modelcard.SLICE_MIN_N]
    assert len(shown) > 5
    for town, r in shown.iterrows():
        assert f"| {town} | {rounded(r['mape'], 'percent')} | " in card
    assert "flat types and price bands are not stored with a run" in card


def test_slices_scored_on_the_later_months_match_an_own_computation(registered):
    tx, result = registered["tx"], registered["result"]
    card = modelcard.model_card("champion", NAME, transactions=tx)
    later = tx[tx["month"] > pd.Period(result.cutoff, freq="M")]
    ape = np.abs(result.model.predict(later) - later["resale_price"]) / later["resale_price"] * 100
    by_type = ape.groupby(later["flat_type"]).agg(["mean", "size"])
    for flat_type, (mape, n) in by_type.iterrows():
        if n >= modelcard.SLICE_MIN_N:
            assert f"| {flat_type} | {round(mape, 2)} | " in card
    assert f"sales of {later['month'].min()} to {later['month'].max()}" in card
    assert "**By price band (actual price)**" in card
    bands = re.findall(r"^\| (<400k|400-600k|600-800k|800k-1M|>=1M) \|", card, re.M)
    assert bands  # the price bands were scored


def test_cli_writes_the_card_and_names_a_missing_alias(registered, tmp_path, capsys):
    out = tmp_path / "card.md"
    assert cli.main(["modelcard", "--name", NAME, "--version", str(registered["result"].version),
                     "--out", str(out)]) == 0  # fmt: skip
    assert out.read_text().startswith(f"# Model card: {NAME} version")
    capsys.readouterr()
    assert cli.main(["modelcard", "--name", NAME, "--alias", "challenger"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "no version with alias 'challenger'" in err
