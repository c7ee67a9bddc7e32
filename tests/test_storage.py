"""The data layers: parquet files with a manifest of rows and sha256, reused when unchanged;
a column added upstream stays in the raw input, is named in the manifest and is dropped from
interim and processed (strict mode refuses it)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.data.examples import write_broken_example
from hdb_mlops.data.ingest import DataFormatError, ExtraColumnsWarning, sha256_file


@pytest.fixture()
def source(tmp_path):
    return write_broken_example(tmp_path / "in")


def test_prepare_writes_layers_with_a_manifest_that_matches_the_files(tmp_path, source):
    prepared = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest == prepared.manifest
    assert manifest["load"]["rows_in"] == 8
    assert manifest["load"]["rows_kept"] + manifest["load"]["rows_quarantined"] == 8
    for name, info in manifest["layers"].items():
        path = tmp_path / "data" / name
        assert info["sha256"] == sha256_file(path), name
        assert info["rows"] == len(pd.read_parquet(path)), name
    assert manifest["inputs"][0]["sha256"] == sha256_file(source)
    quarantine_csv = pd.read_csv(tmp_path / "data" / storage.QUARANTINE_CSV)
    assert len(quarantine_csv) == manifest["load"]["rows_quarantined"] == 5
    processed = prepared.transactions()
    assert {"year", "price_per_sqm", "flat_age_years", "months_since_1990"} <= set(
        processed.columns
    )
    assert processed["price_per_sqm"].iloc[0] == pytest.approx(380000 / 67)


def test_prepare_is_idempotent_and_notices_changes(tmp_path, source):
    first = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    layer = tmp_path / "data" / storage.PROCESSED_TRANSACTIONS
    stamp = layer.stat().st_mtime_ns
    again = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    assert again.data_hash == first.data_hash
    assert layer.stat().st_mtime_ns == stamp  # reused, not rewritten

    fewer = storage.prepare(source, tmp_path / "data", rows=2, max_month="2026-07")
    assert fewer.data_hash != first.data_hash
    assert len(fewer.transactions()) == 2
    assert fewer.manifest["load"]["rows_kept"] == 3  # the report still covers every row

    source.write_text(source.read_text().replace("380000", "381000"))
    changed = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    assert changed.data_hash != first.data_hash


def test_prepare_sample_source_is_the_bundled_file(tmp_path):
    prepared = storage.prepare("sample", tmp_path / "data")
    assert prepared.manifest["inputs"][0]["name"] == "resale-flat-prices-sample.csv"
    assert prepared.report.rows_in == 30_000
    assert prepared.report.reconciles
    # the full profile's models read from 2017 on; `since` keeps every later row
    everything = prepared.transactions()
    since = prepared.transactions(since="2020-01")
    assert since["month"].min() == pd.Period("2020-01", freq="M")
    assert len(since) == int((everything["month"] >= pd.Period("2020-01", freq="M")).sum())
    assert list(since.index) == list(range(len(since)))


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'sample', 'download'"):
        storage.prepare(tmp_path / "nope", tmp_path / "data")


def _with_extra_column(folder: Path) -> Path:
    """The broken example with a column the publisher might add, as a new dataset would."""
    path = write_broken_example(folder)
    lines = path.read_text().splitlines()
    lines = [lines[0] + ",agent_fee", *(line + ",0" for line in lines[1:])]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_extra_column_stays_raw_is_dropped_downstream_and_in_the_manifest(tmp_path):
    source = _with_extra_column(tmp_path / "in")
    before = sha256_file(source)
    with pytest.warns(ExtraColumnsWarning, match="'agent_fee'"):
        prepared = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["load"]["extra_columns"] == {source.name: ["agent_fee"]}
    assert prepared.report.extra_columns == {source.name: ["agent_fee"]}
    # the raw layer is the input as given: untouched, the column still there
    assert sha256_file(source) == before == manifest["inputs"][0]["sha256"]
    assert source.read_text().splitlines()[0].endswith(",agent_fee")
    for layer in (storage.INTERIM_TRANSACTIONS, storage.INTERIM_QUARANTINE):
        assert "agent_fee" not in pd.read_parquet(prepared.path(layer)).columns, layer
    assert "agent_fee" not in prepared.transactions().columns
    # the same rows as without the column
    assert (manifest["load"]["rows_in"], manifest["load"]["rows_quarantined"]) == (8, 5)


def test_strict_prepare_refuses_extra_columns_even_when_up_to_date(tmp_path):
    source = _with_extra_column(tmp_path / "in")
    with pytest.raises(DataFormatError, match="rerun without --strict"):
        storage.prepare(source, tmp_path / "strict", max_month="2026-07", strict=True)
    assert not (tmp_path / "strict" / storage.MANIFEST).exists()

    with pytest.warns(ExtraColumnsWarning):
        loose = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    with pytest.raises(DataFormatError, match="'agent_fee'"):  # the cached layers too
        storage.prepare(source, tmp_path / "data", max_month="2026-07", strict=True)
    assert storage.read_manifest(tmp_path / "data") == loose.manifest


def test_strict_prepare_of_official_files_is_the_same_data(tmp_path, source):
    loose = storage.prepare(source, tmp_path / "data", max_month="2026-07")
    strict = storage.prepare(source, tmp_path / "data", max_month="2026-07", strict=True)
    assert strict.data_hash == loose.data_hash
    assert strict.manifest["load"]["extra_columns"] == {}
