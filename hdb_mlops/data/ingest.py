"""Read any of the five official resale files into one typed, normalised, validated frame.

Formats: CSV, gzip-compressed CSV and parquet. Every row that is read ends up either in the
returned frame or in the quarantine with the rule it failed: ``rows_in == rows_kept +
rows_quarantined`` for every file. A file that cannot be an HDB resale file (empty, wrong
delimiter, missing or unexpected columns, corrupt compression) raises :class:`DataFormatError`
with a message that names the problem and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hdb_mlops.data import validate
from hdb_mlops.data.normalise import (
    clean_text,
    derive_remaining_lease,
    normalise_flat_type,
    on_unique,
    parse_month,
    parse_number,
    parse_remaining_lease,
    parse_storey_range,
)
from hdb_mlops.data.schema import ALL_COLUMNS, BASE_COLUMNS

#: Columns of the normalised frame, in order.
FRAME_COLUMNS: tuple[str, ...] = (
    "month",
    "town",
    "flat_type",
    "block",
    "street_name",
    "storey_range",
    "storey_low",
    "storey_high",
    "storey_mid",
    "floor_area_sqm",
    "flat_model",
    "lease_commence_date",
    "remaining_lease_months",
    "remaining_lease_derived",
    "resale_price",
    "source_file",
    "source_row",
)
#: Columns of the quarantine: the raw fields as read, where they came from, and why they failed.
QUARANTINE_COLUMNS: tuple[str, ...] = (
    *BASE_COLUMNS,
    "remaining_lease",
    "raw_line",
    "source_file",
    "source_row",
    "rule",
    "reason",
)
SUFFIXES = (".parquet", ".csv.gz", ".csv")


class DataFormatError(ValueError):
    """A file that cannot be read as an HDB resale file; the message says why and what to do."""


@dataclass
class LoadReport:
    """What happened to the rows of one or more files."""

    sources: list[str]
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    by_rule: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    month_min: str | None = None
    month_max: str | None = None

    @property
    def reconciles(self) -> bool:
        """True when every row read is either kept or quarantined."""
        return self.rows_in == self.rows_kept + self.rows_quarantined

    def to_dict(self) -> dict:
        """A JSON-ready dict (used by ``hdb-mlops data load --json``)."""
        out = asdict(self)
        out["reconciles"] = self.reconciles
        return out


@dataclass
class LoadResult:
    """The normalised valid rows, the quarantined rows and the report that reconciles them."""

    frame: pd.DataFrame
    quarantine: pd.DataFrame
    report: LoadReport


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip; errors name the file and the fix."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataFormatError(
                f"{path.name}: the gzip stream is truncated or corrupt ({exc}); "
                "download the file again (hdb-mlops data download)"
            ) from None
    return data


def _check_header(columns: list[str], name: str) -> list[str]:
    """Normalise header names and refuse files that are not resale files."""
    cols = [str(c).strip().lower() for c in columns]
    if len(cols) == 1:
        for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in cols[0]:
                raise DataFormatError(
                    f"{name}: the header is {label}-separated ({cols[0][:60]!r}...); "
                    "HDB resale files are comma-separated CSV: re-export the file with commas"
                )
    missing = [c for c in BASE_COLUMNS if c not in cols]
    unexpected = [c for c in cols if c not in ALL_COLUMNS]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unexpected:
            shown = ", ".join(repr(c) for c in unexpected[:5])
            more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            parts.append(f"unexpected column(s) {shown}{more}")
        raise DataFormatError(
            f"{name} is not an HDB resale file: {'; '.join(parts)}. Expected the data.gov.sg "
            f"columns {', '.join(BASE_COLUMNS)} (and remaining_lease from 2015 on)"
        )
    duplicated = sorted({c for c in cols if cols.count(c) > 1})
    if duplicated:
        raise DataFormatError(f"{name}: duplicated column(s) {', '.join(duplicated)}")
    return cols


def _read_csv(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All fields as strings, plus the records with the wrong number of fields."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    data = _read_bytes(path)
    if not data.strip():
        raise DataFormatError(f"{path.name} is empty: expected a header row and transactions")
    # Undecodable bytes become U+FFFD, which the utf8 rule then quarantines with the field name.
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    header_line = text.split("\n", 1)[0].rstrip("\r")
    header = _check_header(header_line.split(","), path.name)
    bad: list[tuple[int | None, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(
            (
                row.number,
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
                row.text,
            )
        )
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(use_threads=False, column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataFormatError(f"{path.name}: cannot be parsed as CSV ({exc})") from None
    raw = table.to_pandas()
    # Record numbers count the header as 1; pyarrow numbers the skipped rows the same way.
    bad_numbers = sorted(n for n, _, _ in bad if n is not None)
    raw["source_row"] = _fill_record_numbers(len(raw), bad_numbers)
    invalid = pd.DataFrame(
        {
            "raw_line": [t for _, _, t in bad],
            "source_row": [n if n is not None else -1 for n, _, _ in bad],
            "rule": "field_count",
            "reason": [
                f"field_count: {msg}; the line is truncated or has stray commas"
                for _, msg, _ in bad
            ],
        }
    )
    return raw, invalid


def _fill_record_numbers(n_valid: int, bad_numbers: list[int]) -> np.ndarray:
    """Record numbers (header = 1) of the valid rows, skipping those taken by invalid rows."""
    numbers = np.arange(2, n_valid + 2 + len(bad_numbers), dtype=np.int64)
    if bad_numbers:
        numbers = numbers[~np.isin(numbers, bad_numbers)]
    return numbers[:n_valid]


def _read_parquet(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A parquet copy of a resale file, every column as strings like the CSV gives them."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataFormatError(f"{path.name}: cannot be read as parquet ({exc})") from None
    frame.columns = _check_header(list(frame.columns), path.name)
    raw = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            # 450000.0 -> "450000", 60.3 -> "60.3": as the official CSV writes them
            text = on_unique(values, lambda u: u.map(lambda v: "" if pd.isna(v) else f"{v:.10g}"))
        else:
            text = values.astype("str").where(values.notna(), "")
        raw[col] = text.astype("str")
    raw = raw.reset_index(drop=True)
    raw["source_row"] = np.arange(1, len(raw) + 1, dtype=np.int64)
    return raw, pd.DataFrame(columns=["raw_line", "source_row", "rule", "reason"])


def read_raw(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a resale file as strings: (rows, records that could not be split into fields)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    return _read_csv(path)


# --------------------------------------------------------------------------- normalising


def parse_fields(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed, normalised columns from the raw strings (NaN where a value does not parse)."""
    out = pd.DataFrame(index=raw.index)
    out["month"] = parse_month(raw["month"])
    out["town"] = clean_text(raw["town"])
    out["flat_type"] = normalise_flat_type(raw["flat_type"])
    out["block"] = clean_text(raw["block"])
    out["street_name"] = clean_text(raw["street_name"])
    out["storey_range"] = clean_text(raw["storey_range"])
    out = out.join(parse_storey_range(raw["storey_range"]))
    out["floor_area_sqm"] = parse_number(raw["floor_area_sqm"])
    out["flat_model"] = clean_text(raw["flat_model"])
    out["lease_commence_date"] = parse_number(raw["lease_commence_date"])
    reported = (
        parse_remaining_lease(raw["remaining_lease"])
        if "remaining_lease" in raw
        else pd.Series(np.nan, index=raw.index)
    )
    derived = derive_remaining_lease(out["month"], out["lease_commence_date"])
    out["remaining_lease_reported"] = reported
    out["remaining_lease_months"] = reported.fillna(derived)
    out["remaining_lease_derived"] = reported.isna()
    out["resale_price"] = parse_number(raw["resale_price"])
    return out


def _typed(parsed: pd.DataFrame) -> pd.DataFrame:
    """Final dtypes of the kept rows."""
    frame = parsed.copy()
    for col in ("storey_low", "storey_high"):
        frame[col] = frame[col].astype("int16")
    frame["lease_commence_date"] = frame["lease_commence_date"].astype("int16")
    frame["remaining_lease_months"] = frame["remaining_lease_months"].astype("int16")
    frame["floor_area_sqm"] = frame["floor_area_sqm"].astype("float64")
    frame["resale_price"] = frame["resale_price"].astype("float64")
    return frame


def load_file(path: Path | str, *, max_month: str | None = None) -> LoadResult:
    """Load one resale file (CSV, CSV.gz or parquet) into normalised valid rows + quarantine.

    ``max_month`` ("YYYY-MM") bounds the month_range rule; by default the current month.
    """
    path = Path(path)
    raw, unsplittable = read_raw(path)
    parsed = parse_fields(raw)
    failures = validate.check(raw, parsed, max_month=max_month)
    bad = failures.index
    kept = _typed(parsed.drop(index=bad))
    kept["source_file"] = path.name
    kept["source_row"] = raw.loc[kept.index, "source_row"].to_numpy()
    frame = kept.reset_index(drop=True)[list(FRAME_COLUMNS)]

    quarantined = raw.loc[bad].copy()
    quarantined["rule"] = failures["rule"]
    quarantined["reason"] = failures["reason"]
    quarantined["raw_line"] = ""
    quarantine = pd.concat([quarantined, unsplittable], ignore_index=True)
    quarantine["source_file"] = path.name
    quarantine = _shape_quarantine(quarantine)

    months = frame["month"]
    report = LoadReport(
        sources=[path.name],
        rows_in=len(raw) + len(unsplittable),
        rows_kept=len(frame),
        rows_quarantined=len(quarantine),
        by_rule=quarantine["rule"].value_counts().sort_index().astype(int).to_dict(),
        sha256={path.name: sha256_file(path)},
        month_min=str(months.min()) if len(months) else None,
        month_max=str(months.max()) if len(months) else None,
    )
    return LoadResult(frame, quarantine, report)


def _shape_quarantine(quarantine: pd.DataFrame) -> pd.DataFrame:
    """The quarantine's fixed columns, all as strings except source_row."""
    for col in QUARANTINE_COLUMNS:
        if col not in quarantine:
            quarantine[col] = ""
    out = quarantine[list(QUARANTINE_COLUMNS)].copy()
    for col in QUARANTINE_COLUMNS:
        if col != "source_row":
            out[col] = out[col].fillna("").astype("str")
    out["source_row"] = out["source_row"].astype("int64")
    return out.reset_index(drop=True)


def load_files(paths: Iterable[Path | str], *, max_month: str | None = None) -> LoadResult:
    """Load several resale files and combine them, sorted by month; reports are summed."""
    results = [load_file(p, max_month=max_month) for p in paths]
    if not results:
        raise DataFormatError("no resale files given")
    frame = pd.concat([r.frame for r in results], ignore_index=True)
    frame = frame.sort_values(["month", "source_file", "source_row"], kind="stable").reset_index(
        drop=True
    )
    for col in ("town", "flat_type", "flat_model", "source_file"):
        frame[col] = frame[col].astype("str")
    quarantine = pd.concat([r.quarantine for r in results], ignore_index=True)
    by_rule: dict[str, int] = {}
    for r in results:
        for rule, n in r.report.by_rule.items():
            by_rule[rule] = by_rule.get(rule, 0) + n
    report = LoadReport(
        sources=[s for r in results for s in r.report.sources],
        rows_in=sum(r.report.rows_in for r in results),
        rows_kept=sum(r.report.rows_kept for r in results),
        rows_quarantined=sum(r.report.rows_quarantined for r in results),
        by_rule=dict(sorted(by_rule.items())),
        sha256={k: v for r in results for k, v in r.report.sha256.items()},
        month_min=str(frame["month"].min()) if len(frame) else None,
        month_max=str(frame["month"].max()) if len(frame) else None,
    )
    return LoadResult(frame, quarantine, report)


def resale_files(folder: Path | str) -> list[Path]:
    """The resale files in a folder, one per dataset (parquet preferred over CSV.gz over CSV).

    Files are recognised by "resale" in their name, so a folder that also holds geocodes or
    other tables works.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: not a folder")
    chosen: dict[str, Path] = {}
    for suffix in SUFFIXES:
        for path in sorted(folder.glob(f"*{suffix}")):
            if "resale" not in path.name.lower():
                continue
            stem = path.name[: -len(suffix)]
            if stem not in chosen:
                chosen[stem] = path
    if not chosen:
        raise DataFormatError(
            f"{folder} holds no resale file (*resale*.parquet, *.csv.gz or *.csv): "
            "download them with `hdb-mlops data download`"
        )
    return sorted(chosen.values(), key=lambda p: p.name)
