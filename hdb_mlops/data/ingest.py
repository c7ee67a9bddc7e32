"""Read any of the five official resale files into one typed, normalised, validated frame.

Formats: CSV, gzip-compressed CSV and parquet. Every row that is read ends up either in the
returned frame or in the quarantine with the rule it failed: ``rows_in == rows_kept +
rows_quarantined`` for every file. A file that cannot be an HDB resale file (empty, wrong
delimiter, missing columns, corrupt compression) raises :class:`DataFormatError` with a
message that names the problem and the fix.

Publishers add columns (``remaining_lease`` appeared in 2015): a file with every official
column plus others loads with an :class:`ExtraColumnsWarning` naming them, lists them in
:attr:`LoadReport.extra_columns` and otherwise ignores them; ``strict=True`` refuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

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
from hdb_mlops.data.schema import (
    BASE_COLUMNS,
    DataFormatError,
    ExtraColumnsWarning,
    check_header,
    column_names,
)

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


class RawFile(NamedTuple):
    """A resale file read as strings."""

    #: The official columns of the rows that could be split into fields, plus ``source_row``.
    rows: pd.DataFrame
    #: The records that could not (``raw_line``, ``source_row``, ``rule``, ``reason``).
    unsplittable: pd.DataFrame
    #: Columns beyond the official ones: read past, not returned.
    extra_columns: list[str]


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
    #: Per source file, the columns beyond the official ones that were read and ignored.
    extra_columns: dict[str, list[str]] = field(default_factory=dict)

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


def _read_csv(path: Path, strict: bool) -> RawFile:
    """The official fields as strings, the records with the wrong number of fields, the extra
    columns' names."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    data = _read_bytes(path)
    if not data.strip():
        raise DataFormatError(f"{path.name} is empty: expected a header row and transactions")
    # Undecodable bytes become U+FFFD, which the utf8 rule then quarantines with the field name.
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    header_line = text.split("\n", 1)[0].rstrip("\r")
    header, extra = check_header(header_line.split(","), path.name, strict=strict)
    bad: list[tuple[int | None, str, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        found = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        bad.append((row.number, found, row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(use_threads=False, column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                include_columns=[c for c in header if c not in extra],
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
    return RawFile(raw, invalid, extra)


def _fill_record_numbers(n_valid: int, bad_numbers: list[int]) -> np.ndarray:
    """Record numbers (header = 1) of the valid rows, skipping those taken by invalid rows."""
    numbers = np.arange(2, n_valid + 2 + len(bad_numbers), dtype=np.int64)
    if bad_numbers:
        numbers = numbers[~np.isin(numbers, bad_numbers)]
    return numbers[:n_valid]


def _read_parquet(path: Path, strict: bool) -> RawFile:
    """A parquet copy of a resale file, the official columns as strings like the CSV gives
    them, and the extra columns' names."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataFormatError(f"{path.name}: cannot be read as parquet ({exc})") from None
    frame.columns, extra = check_header(list(frame.columns), path.name, strict=strict)
    raw = pd.DataFrame(index=frame.index)
    for col in (c for c in frame.columns if c not in extra):
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            # 450000.0 -> "450000", 60.3 -> "60.3": as the official CSV writes them
            text = on_unique(values, lambda u: u.map(lambda v: "" if pd.isna(v) else f"{v:.10g}"))
        else:
            text = values.astype("str").where(values.notna(), "")
        raw[col] = text.astype("str")
    raw = raw.reset_index(drop=True)
    raw["source_row"] = np.arange(1, len(raw) + 1, dtype=np.int64)
    return RawFile(raw, pd.DataFrame(columns=["raw_line", "source_row", "rule", "reason"]), extra)


def read_raw(path: Path | str, *, strict: bool = False) -> RawFile:
    """Read a resale file as strings: rows, records that could not be split, extra columns.

    ``strict`` refuses a file with columns beyond the official ones (:class:`DataFormatError`);
    by default they are skipped and named in ``extra_columns``.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path, strict)
    return _read_csv(path, strict)


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


def load_file(
    path: Path | str, *, max_month: str | None = None, strict: bool = False
) -> LoadResult:
    """Load one resale file (CSV, CSV.gz or parquet) into normalised valid rows + quarantine.

    ``max_month`` ("YYYY-MM") bounds the month_range rule; by default the current month.
    Columns beyond the official ones are ignored with an :class:`ExtraColumnsWarning` and
    listed in the report's ``extra_columns``; ``strict`` refuses such a file instead.
    """
    path = Path(path)
    raw, unsplittable, extra = read_raw(path, strict=strict)
    if extra:
        message = (
            f"{path.name}: unexpected column(s) {column_names(extra)} beyond the official ones "
            "were ignored (kept in the raw file, not in the loaded rows); --strict refuses them"
        )
        warnings.warn(message, ExtraColumnsWarning, stacklevel=2)
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
        extra_columns={path.name: extra} if extra else {},
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


def load_files(
    paths: Iterable[Path | str], *, max_month: str | None = None, strict: bool = False
) -> LoadResult:
    """Load several resale files and combine them, sorted by month; reports are summed.

    ``strict`` refuses any file with columns beyond the official ones (see :func:`load_file`).
    """
    results = [load_file(p, max_month=max_month, strict=strict) for p in paths]
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
        extra_columns={k: v for r in results for k, v in r.report.extra_columns.items()},
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
