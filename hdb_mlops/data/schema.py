"""The official HDB resale schema: columns, known values and the five data.gov.sg datasets.

Everything here is a fact about the published data (collection 189 on data.gov.sg), kept in
one place so the loader, the validator, the sample generator and the download client agree;
:func:`check_header` is how a file's header is held against it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Columns every resale file has, in the official order.
BASE_COLUMNS: tuple[str, ...] = (
    "month",
    "town",
    "flat_type",
    "block",
    "street_name",
    "storey_range",
    "floor_area_sqm",
    "flat_model",
    "lease_commence_date",
    "resale_price",
)
#: Present from January 2015 onwards only (integer years in 2015-2016, "NN years NN months" after).
OPTIONAL_COLUMNS: tuple[str, ...] = ("remaining_lease",)
#: The column order of the Jan-2017-onwards file (the schema of the bundled sample).
OFFICIAL_2017_COLUMNS: tuple[str, ...] = (*BASE_COLUMNS[:9], "remaining_lease", "resale_price")
ALL_COLUMNS: frozenset[str] = frozenset(BASE_COLUMNS) | frozenset(OPTIONAL_COLUMNS)

#: The 27 towns that appear in the resale data since 1990 (LIM CHU KANG only before 2000).
TOWNS: tuple[str, ...] = (
    "ANG MO KIO", "BEDOK", "BISHAN", "BUKIT BATOK", "BUKIT MERAH", "BUKIT PANJANG",
    "BUKIT TIMAH", "CENTRAL AREA", "CHOA CHU KANG", "CLEMENTI", "GEYLANG", "HOUGANG",
    "JURONG EAST", "JURONG WEST", "KALLANG/WHAMPOA", "LIM CHU KANG", "MARINE PARADE",
    "PASIR RIS", "PUNGGOL", "QUEENSTOWN", "SEMBAWANG", "SENGKANG", "SERANGOON", "TAMPINES",
    "TOA PAYOH", "WOODLANDS", "YISHUN",
)  # fmt: skip

#: Flat types after normalisation ("MULTI GENERATION" of the 1990s file becomes "MULTI-GENERATION").
FLAT_TYPES: tuple[str, ...] = (
    "1 ROOM", "2 ROOM", "3 ROOM", "4 ROOM", "5 ROOM", "EXECUTIVE", "MULTI-GENERATION",
)  # fmt: skip
FLAT_TYPE_ALIASES: dict[str, str] = {"MULTI GENERATION": "MULTI-GENERATION"}

#: Length of an HDB lease in years.
LEASE_YEARS = 99
#: First month of the published data.
FIRST_MONTH = "1990-01"

# Plausibility bounds used by the validation rules (they are far outside the real data's range:
# prices 5,000-1,728,000, floor areas 28-367 sqm, lease years 1966-2022).
PRICE_RANGE: tuple[float, float] = (5_000.0, 5_000_000.0)
FLOOR_AREA_RANGE: tuple[float, float] = (20.0, 400.0)
LEASE_YEAR_MIN = 1960


@dataclass(frozen=True)
class Dataset:
    """One of the five resale datasets of data.gov.sg collection 189."""

    key: str
    dataset_id: str
    title: str
    first_month: str
    last_month: str | None  # None: still published monthly
    date_basis: str  # "approval" or "registration"
    has_remaining_lease: bool
    file_stem: str  # the official CSV file name without ".csv"


COLLECTION_ID = 189

DATASETS: tuple[Dataset, ...] = (
    Dataset(
        "1990-1999", "d_ebc5ab87086db484f88045b47411ebc5",
        "Resale flat prices (based on approval date), 1990 - 1999",
        "1990-01", "1999-12", "approval", False,
        "resale-flat-prices-based-on-approval-date-1990-1999",
    ),
    Dataset(
        "2000-2012", "d_43f493c6c50d54243cc1eab0df142d6a",
        "Resale flat prices (based on approval date), 2000 - Feb 2012",
        "2000-01", "2012-02", "approval", False,
        "resale-flat-prices-based-on-approval-date-2000-feb-2012",
    ),
    Dataset(
        "2012-2014", "d_2d5ff9ea31397b66239f245f57751537",
        "Resale flat prices (based on registration date), from Mar 2012 to Dec 2014",
        "2012-03", "2014-12", "registration", False,
        "resale-flat-prices-based-on-registration-date-from-mar-2012-to-dec-2014",
    ),
    Dataset(
        "2015-2016", "d_ea9ed51da2787afaf8e51f827c304208",
        "Resale flat prices (based on registration date), from Jan 2015 to Dec 2016",
        "2015-01", "2016-12", "registration", True,
        "resale-flat-prices-based-on-registration-date-from-jan-2015-to-dec-2016",
    ),
    Dataset(
        "2017-onwards", "d_8b84c4ee58e3cfc0ece0d773c8ca6abc",
        "Resale flat prices (based on registration date), from Jan 2017 onwards",
        "2017-01", None, "registration", True,
        "resale-flat-prices-based-on-registration-date-from-jan-2017-onwards",
    ),
)  # fmt: skip


def dataset(key_or_id: str) -> Dataset:
    """Return the dataset with this key ("2017-onwards") or data.gov.sg id ("d_8b84...").

    Raises KeyError naming the valid keys when there is none.
    """
    for ds in DATASETS:
        if key_or_id in (ds.key, ds.dataset_id):
            return ds
    keys = ", ".join(ds.key for ds in DATASETS)
    raise KeyError(f"unknown dataset {key_or_id!r}: use one of {keys} or a data.gov.sg dataset id")


def datasets_table():
    """The five datasets as a DataFrame (for notebooks and ``hdb-mlops data download --help``)."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "key": ds.key,
                "dataset id": ds.dataset_id,
                "months": f"{ds.first_month} .. {ds.last_month or 'latest'}",
                "month is the": f"{ds.date_basis} date",
                "remaining_lease": "yes" if ds.has_remaining_lease else "derived",
            }
            for ds in DATASETS
        ]
    )


class DataFormatError(ValueError):
    """A file that cannot be read as an HDB resale file; the message says why and what to do."""


class ExtraColumnsWarning(UserWarning):
    """A resale file has columns beyond the official ones: they are loaded and ignored."""


def column_names(columns: list[str]) -> str:
    """Column names quoted for a message, at most five of them."""
    shown = ", ".join(repr(c) for c in columns[:5])
    return shown + (f" and {len(columns) - 5} more" if len(columns) > 5 else "")


def check_header(
    columns: list[str], name: str, *, strict: bool = False
) -> tuple[list[str], list[str]]:
    """The normalised header names and the extra ones among them; refuse non-resale files.

    A file lacking an official column, with a duplicated column or another delimiter raises
    :class:`DataFormatError`. A file with every official column plus others is a resale file
    whose publisher added a column (as with ``remaining_lease`` in 2015): the extra columns
    are returned so the loader can ignore them (and warn, naming them); with ``strict`` they
    are refused instead.
    """
    cols = [str(c).strip().lower() for c in columns]
    if len(cols) == 1:
        for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in cols[0]:
                raise DataFormatError(
                    f"{name}: the header is {label}-separated ({cols[0][:60]!r}...); "
                    "HDB resale files are comma-separated CSV: re-export the file with commas"
                )
    missing = [c for c in BASE_COLUMNS if c not in cols]
    extra = [c for c in cols if c not in ALL_COLUMNS]
    if missing:
        parts = [f"missing column(s) {', '.join(missing)}"]
        if extra:
            parts.append(f"unexpected column(s) {column_names(extra)}")
        raise DataFormatError(
            f"{name} is not an HDB resale file: {'; '.join(parts)}. Expected the data.gov.sg "
            f"columns {', '.join(BASE_COLUMNS)} (and remaining_lease from 2015 on)"
        )
    duplicated = sorted({c for c in cols if cols.count(c) > 1})
    if duplicated:
        raise DataFormatError(f"{name}: duplicated column(s) {column_names(duplicated)}")
    if extra and strict:
        raise strict_refusal(name, extra)
    return cols, extra


def strict_refusal(name: str, extra: list[str]) -> DataFormatError:
    """The error for a file with extra columns in strict mode: what they are, how to proceed."""
    return DataFormatError(
        f"{name}: unexpected column(s) {column_names(extra)} beyond the official ones, refused "
        "in strict mode; rerun without --strict to load it with a warning (the extra "
        "column(s) stay in the raw file and are ignored by the interim and processed layers)"
    )
