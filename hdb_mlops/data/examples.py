"""Small example inputs for the notebooks and workshops (made up, never real rows)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hdb_mlops.data.schema import OFFICIAL_2017_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

#: Rows in the official 2017+ format: three valid, then one per kind of problem.
BROKEN_EXAMPLE_ROWS: tuple[str, ...] = (
    "2024-01,ANG MO KIO,3 ROOM,101,ANG MO KIO AVE 9,07 TO 09,67,New Generation,1978,53 years 05 months,380000",
    "2024-01,TAMPINES,4 ROOM,202A,TAMPINES ST 21,10 TO 12,93,Model A,2016,91 years 01 month,620000",
    "2024-02,PUNGGOL,5 ROOM,303,PUNGGOL FIELD,13 TO 15,112,Improved,2012,87 years,688000",
    "2024-13,BEDOK,3 ROOM,12,BEDOK NTH RD,04 TO 06,68,Improved,1980,55 years,350000",
    "2024-02,ATLANTIS,4 ROOM,5,OCEAN DR,04 TO 06,90,Model A,1999,74 years,500000",
    "2024-02,YISHUN,4 ROOM,700,YISHUN AVE 5,04 TO 06,92,Model A,1988,63 years,-450000",
    "2024-03,HOUGANG,4 ROOM,11,HOUGANG AVE 1,4-6,92,Model A,1988,63 years,450000",
    "2024-03,CLEMENTI,3 ROOM,1,CLEMENTI AVE",
)


def write_broken_example(folder: Path | str) -> Path:
    """Write a small resale CSV with three good rows and five broken ones; return its path."""
    path = Path(folder) / "resale-with-problems.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(OFFICIAL_2017_COLUMNS), *BROKEN_EXAMPLE_ROWS]) + "\n")
    return path


#: One flat as a client sends it to the prediction service (official column names).
EXAMPLE_REQUEST: dict = {
    "month": "2025-03",
    "town": "TAMPINES",
    "flat_type": "4 ROOM",
    "block": "123",
    "street_name": "TAMPINES ST 11",
    "storey_range": "07 TO 09",
    "floor_area_sqm": 93,
    "flat_model": "Model A",
    "lease_commence_date": 1995,
    "remaining_lease": "69 years 03 months",
}

#: Requests that the service must refuse, each with what is wrong with it.
BAD_REQUESTS: dict[str, dict] = {
    "unknown town": {**EXAMPLE_REQUEST, "town": "ATLANTIS"},
    "month not YYYY-MM": {**EXAMPLE_REQUEST, "month": "March 2025"},
    "floor area too small": {**EXAMPLE_REQUEST, "floor_area_sqm": 3},
    "unexpected field": {**EXAMPLE_REQUEST, "asking_price": 600000},
    "missing field": {k: v for k, v in EXAMPLE_REQUEST.items() if k != "flat_type"},
}


def request_records(transactions: pd.DataFrame) -> list[dict]:
    """API request bodies (``POST /predict``) for normalised transactions: the official
    columns in the files' own spellings, remaining lease in months, no price."""
    return [
        {
            "month": str(r.month),
            "town": r.town,
            "flat_type": r.flat_type,
            "block": r.block,
            "street_name": r.street_name,
            "storey_range": r.storey_range,
            "floor_area_sqm": float(r.floor_area_sqm),
            "flat_model": r.flat_model.title(),
            "lease_commence_date": int(r.lease_commence_date),
            "remaining_lease": int(r.remaining_lease_months),
        }
        for r in transactions.itertuples()
    ]
