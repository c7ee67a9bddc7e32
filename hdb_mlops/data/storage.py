"""The data layers: raw (as downloaded, checksummed) -> interim (normalised, validated, with a
quarantine) -> processed (analysis-ready), each written as parquet and listed in a manifest.

The raw layer is the input files themselves, never rewritten: a column the publisher added
stays there, while interim and processed hold the official columns only and the manifest's
``load.extra_columns`` names what was ignored (``strict=True`` refuses such inputs).

:func:`prepare` is what notebooks, the CLI and the pipeline call. It is idempotent: when the
inputs and parameters have not changed, it returns what is already on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hdb_mlops import config
from hdb_mlops.data.ingest import LoadReport, load_files, resale_files, sha256_file
from hdb_mlops.data.schema import strict_refusal

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INTERIM_TRANSACTIONS = "interim/transactions.parquet"
INTERIM_QUARANTINE = "interim/quarantine.parquet"
QUARANTINE_CSV = "interim/quarantine.csv"
PROCESSED_TRANSACTIONS = "processed/transactions.parquet"
SOURCES = ("sample", "download")


@dataclass
class Prepared:
    """The layers of one prepared dataset and its manifest."""

    data_dir: Path
    manifest: dict

    @property
    def report(self) -> LoadReport:
        """The load report (rows in, kept, quarantined, by rule)."""
        return LoadReport(**{k: v for k, v in self.manifest["load"].items() if k != "reconciles"})

    @property
    def data_hash(self) -> str:
        """sha256 of the inputs and parameters: equal hashes mean equal data."""
        return self.manifest["data_hash"]

    def path(self, layer_file: str) -> Path:
        """Absolute path of a layer file such as ``processed/transactions.parquet``."""
        return self.data_dir / layer_file

    def transactions(self, since: str | None = None) -> pd.DataFrame:
        """The processed, analysis-ready transactions (from month ``since``, e.g. "2017-01",
        when given)."""
        frame = pd.read_parquet(self.path(PROCESSED_TRANSACTIONS))
        if since is None:
            return frame
        return frame[frame["month"] >= pd.Period(since, freq="M")].reset_index(drop=True)

    def quarantine(self) -> pd.DataFrame:
        """The quarantined rows with the rule each failed."""
        return pd.read_parquet(self.path(INTERIM_QUARANTINE))


def resolve_source(
    source: str | Path, data_dir: Path | None = None, **download_kwargs
) -> list[Path]:
    """Input files for a data source: ``sample``, ``download``, a file or a folder of files.

    ``download`` fetches the five data.gov.sg files into ``<data_dir>/raw`` (cached).
    """
    if str(source) == "sample":
        if not config.SAMPLE_FILE.exists():
            raise FileNotFoundError(
                f"the bundled sample {config.SAMPLE_FILE} is missing: run `hdb-mlops data sample`"
            )
        return [config.SAMPLE_FILE]
    if str(source) == "download":
        from hdb_mlops.data.download import download_all

        raw_dir = (data_dir or config.data_dir()) / "raw"
        return [f.path for f in download_all(raw_dir, **download_kwargs)]
    path = Path(source).expanduser()
    if path.is_dir():
        return resale_files(path)
    if path.is_file():
        return [path]
    raise FileNotFoundError(
        f"data source {str(source)!r} is neither 'sample', 'download', a file nor a folder"
    )


def _write_parquet(frame: pd.DataFrame, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return {"rows": len(frame), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def add_derived_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns most analyses want: year, price per sqm, flat age at sale, months since 1990-01."""
    out = frame.copy()
    out["year"] = out["month"].dt.year.astype("int16")
    out["price_per_sqm"] = out["resale_price"] / out["floor_area_sqm"]
    out["flat_age_years"] = (out["year"] - out["lease_commence_date"]).astype("int16")
    first = pd.Period("1990-01", freq="M")
    out["months_since_1990"] = (
        (out["month"].dt.year - first.year) * 12 + out["month"].dt.month - 1
    ).astype("int16")
    return out


def _data_hash(inputs: list[dict], params: dict) -> str:
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(f"{item['name']}:{item['sha256']}\n".encode())
    digest.update(json.dumps(params, sort_keys=True).encode())
    return digest.hexdigest()


def read_manifest(data_dir: Path) -> dict | None:
    """The manifest of a data folder, or None when it has none."""
    path = Path(data_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def prepare(
    source: str | Path = "sample",
    data_dir: Path | str | None = None,
    *,
    rows: int | None = None,
    seed: int = config.DEFAULT_SEED,
    max_month: str | None = None,
    force: bool = False,
    strict: bool = False,
    **download_kwargs,
) -> Prepared:
    """Load, validate and layer a data source into ``data_dir``; reuse it when unchanged.

    ``rows`` keeps a seeded random subset of the valid rows in the processed layer (the
    interim layer and the report always cover every input row). ``strict`` refuses inputs
    with columns beyond the official ones, which otherwise load with a warning and are
    listed in the manifest's ``load.extra_columns``; it does not change the data, so it is
    not part of the data hash.
    """
    data_dir = Path(data_dir) if data_dir is not None else config.data_dir()
    files = resolve_source(source, data_dir, **download_kwargs)
    inputs = [
        {"name": f.name, "path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in files
    ]
    params = {"rows": rows, "seed": seed, "max_month": max_month}
    data_hash = _data_hash(inputs, params)
    existing = read_manifest(data_dir)
    if (
        not force
        and existing is not None
        and existing.get("data_hash") == data_hash
        and all((data_dir / name).exists() for name in existing["layers"])
    ):
        if strict:
            _refuse_extra_columns(existing)
        log.info("data in %s is up to date (%s)", data_dir, data_hash[:12])
        return Prepared(data_dir, existing)

    result = load_files(files, max_month=max_month, strict=strict)
    if not result.report.reconciles:  # a bug, never a data problem: stop loudly
        raise AssertionError(f"row counts do not reconcile: {result.report}")
    processed = add_derived_columns(result.frame)
    if rows is not None and rows < len(processed):
        processed = processed.sample(n=rows, random_state=seed).sort_index().reset_index(drop=True)
    layers = {
        INTERIM_TRANSACTIONS: _write_parquet(result.frame, data_dir / INTERIM_TRANSACTIONS),
        INTERIM_QUARANTINE: _write_parquet(result.quarantine, data_dir / INTERIM_QUARANTINE),
        PROCESSED_TRANSACTIONS: _write_parquet(processed, data_dir / PROCESSED_TRANSACTIONS),
    }
    result.quarantine.to_csv(data_dir / QUARANTINE_CSV, index=False)
    manifest = {
        "data_hash": data_hash,
        "source": str(source),
        "inputs": inputs,
        "params": params,
        "load": result.report.to_dict(),
        "layers": layers,
    }
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Prepared(data_dir, manifest)


def _refuse_extra_columns(manifest: dict) -> None:
    """In strict mode, refuse up-to-date layers that were built ignoring extra columns."""
    for name, extra in manifest.get("load", {}).get("extra_columns", {}).items():
        raise strict_refusal(name, extra)
