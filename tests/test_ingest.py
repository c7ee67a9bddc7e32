"""The loader: typed normalised rows, named validation rules whose reasons are root causes, a
quarantine that reconciles, extra columns loaded with a warning (refused in strict mode),
clear errors for files that are not resale files, and no row lost on the real data."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from hdb_mlops.data.ingest import (
    QUARANTINE_COLUMNS,
    DataFormatError,
    ExtraColumnsWarning,
    load_file,
    load_files,
    resale_files,
)
from hdb_mlops.data.validate import RULE_NAMES

HEADER = (
    "month,town,flat_type,block,street_name,storey_range,floor_area_sqm,flat_model,"
    "lease_commence_date,remaining_lease,resale_price"
)
GOOD = [
    "2024-01,ANG MO KIO,3 ROOM,101,ANG MO KIO AVE 9,07 TO 09,67,New Generation,1978,53 years 05 months,380000",
    "2024-01,TAMPINES,4 ROOM,202A,TAMPINES ST 21,10 TO 12,93,Model A,2016,91 years 01 month,620000",
    "2024-02,PUNGGOL,5 ROOM,303,PUNGGOL FIELD,13 TO 15,112.5,Improved,2012,87 years,688888.88",
]


def write_csv(
    tmp_path: Path, lines: list[str], name: str = "resale.csv", header: str = HEADER
) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def load_one(tmp_path: Path, line: str):
    return load_file(write_csv(tmp_path, [*GOOD, line]), max_month="2026-07")


def reason_rules(reason: str) -> list[str]:
    """The rule names a quarantine reason cites, in order ("rule: text; rule: text")."""
    names = "|".join(RULE_NAMES)
    return re.findall(rf"(?:^|; )({names}): ", reason)


# ------------------------------------------------------------------ normalisation


def test_good_rows_are_typed_and_normalised(tmp_path):
    result = load_file(write_csv(tmp_path, GOOD), max_month="2026-07")
    frame = result.frame
    assert result.report.rows_in == 3 and result.report.rows_kept == 3
    assert str(frame["month"].dtype) == "period[M]"
    assert frame["flat_model"].tolist() == ["NEW GENERATION", "MODEL A", "IMPROVED"]
    assert frame[["storey_low", "storey_high"]].iloc[0].tolist() == [7, 9]
    assert frame["storey_mid"].tolist() == [8.0, 11.0, 14.0]
    assert frame["remaining_lease_months"].tolist() == [53 * 12 + 5, 91 * 12 + 1, 87 * 12]
    assert not frame["remaining_lease_derived"].any()
    assert frame["floor_area_sqm"].tolist() == [67.0, 93.0, 112.5]
    assert frame["resale_price"].iloc[2] == pytest.approx(688888.88)
    assert frame["source_row"].tolist() == [2, 3, 4]  # header is record 1


def test_old_schema_derives_remaining_lease_and_unifies_spellings(tmp_path):
    header = HEADER.replace("remaining_lease,", "")
    lines = [
        "1995-06,BEDOK,MULTI GENERATION,12,BEDOK NTH RD,04 TO 06,150,MULTI GENERATION,1985,420000",
        "2013-04,YISHUN,4 ROOM,700,YISHUN AVE 5,06 TO 10,104,model a,1990,400000",
    ]
    frame = load_file(write_csv(tmp_path, lines, header=header)).frame
    assert frame["flat_type"].tolist() == ["MULTI-GENERATION", "4 ROOM"]
    assert frame["flat_model"].tolist() == ["MULTI GENERATION", "MODEL A"]
    assert frame["remaining_lease_derived"].all()
    # 99-year lease from mid-1985, sold June 1995: 89 years 1 month left
    assert frame["remaining_lease_months"].iloc[0] == (1985 + 99) * 12 + 6 - (1995 * 12 + 5)
    assert frame[["storey_low", "storey_high", "storey_mid"]].iloc[1].tolist() == [6, 10, 8.0]


def test_2015_integer_remaining_lease(tmp_path):
    line = "2015-03,CLEMENTI,3 ROOM,1,CLEMENTI AVE 1,01 TO 03,68,Improved,1977,61,300000"
    frame = load_file(write_csv(tmp_path, [line])).frame
    assert frame["remaining_lease_months"].tolist() == [61 * 12]


def test_duplicate_sales_are_kept(tmp_path):
    result = load_file(write_csv(tmp_path, [GOOD[0], GOOD[0], GOOD[0]]), max_month="2026-07")
    assert result.report.rows_kept == 3 and result.report.rows_quarantined == 0


def test_parquet_and_gzip_give_the_same_frame(tmp_path):
    csv = write_csv(tmp_path, GOOD)
    gz = tmp_path / "resale.csv.gz"
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    raw = pd.read_csv(csv)  # floats as pandas infers them, as in the published parquet
    pq = tmp_path / "resale.parquet"
    raw.to_parquet(pq)
    frames = [
        load_file(p, max_month="2026-07").frame.drop(columns=["source_file", "source_row"])
        for p in (csv, gz, pq)
    ]
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pd.testing.assert_frame_equal(frames[0], frames[2])


# ------------------------------------------------------------------ the broken-input corpus

ROW_CASES = {
    "bad month": (
        "2024-13,ANG MO KIO,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000",
        "month_format",
        "month='2024-13'",
    ),
    "future month": (
        "2031-01,ANG MO KIO,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000",
        "month_range",
        "month='2031-01'",
    ),
    "negative price": (
        "2024-01,ANG MO KIO,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,-380000",
        "price_range",
        "resale_price='-380000'",
    ),
    "price not a number": (
        "2024-01,ANG MO KIO,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,abc",
        "price_range",
        "resale_price='abc'",
    ),
    "unknown town": (
        "2024-01,ATLANTIS,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000",
        "town_known",
        "town='ATLANTIS'",
    ),
    "unknown flat type": (
        "2024-01,BEDOK,9 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000",
        "flat_type_known",
        "flat_type='9 ROOM'",
    ),
    "bad storey": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,7-9,67,Improved,1978,53 years,380000",
        "storey_pattern",
        "storey_range='7-9'",
    ),
    "tiny floor area": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,2,Improved,1978,53 years,380000",
        "floor_area_range",
        "floor_area_sqm='2'",
    ),
    "lease year": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1850,53 years,380000",
        "lease_year_range",
        "lease_commence_date='1850'",
    ),
    "lease after sale": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,2026,53 years,380000",
        "lease_before_sale",
        "more than a year after",
    ),
    "bad remaining lease": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,lots,380000",
        "remaining_lease_format",
        "remaining_lease='lots'",
    ),
    "empty town": (
        "2024-01,,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000",
        "required_values",
        "empty town",
    ),
    "truncated line": ("2024-01,BEDOK,3 ROOM,1,AVE", "field_count", "expected 11 fields, found 5"),
    "stray comma": (
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380,000",
        "field_count",
        "found 12",
    ),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_bad_row_is_quarantined_with_its_rule(tmp_path, case):
    line, rule, fragment = ROW_CASES[case]
    result = load_one(tmp_path, line)
    report = result.report
    assert (report.rows_in, report.rows_kept, report.rows_quarantined) == (4, 3, 1)
    assert report.reconciles
    assert report.by_rule == {rule: 1}
    bad = result.quarantine.iloc[0]
    assert bad["rule"] == rule
    assert fragment in bad["reason"]
    assert reason_rules(bad["reason"]) == [rule]  # one problem, one reason
    assert bad["source_row"] == 5  # the 5th record of the file (header = 1)
    assert bad["source_file"] == "resale.csv"


def test_row_breaking_several_rules_lists_them_all(tmp_path):
    line = "2024-01,ATLANTIS,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,-5"
    bad = load_one(tmp_path, line).quarantine.iloc[0]
    assert bad["rule"] == "town_known"
    assert "town_known:" in bad["reason"] and "price_range:" in bad["reason"]


def test_non_utf8_bytes_are_quarantined_naming_the_field(tmp_path):
    path = write_csv(tmp_path, GOOD)
    path.write_bytes(
        path.read_bytes()
        + b"2024-03,BEDOK,3 ROOM,1,JLN \xe9\xff TEMBUSU,07 TO 09,67,Improved,1978,53 years,380000\n"
    )
    result = load_file(path, max_month="2026-07")
    assert result.report.by_rule == {"utf8": 1}
    assert "street_name" in result.quarantine.iloc[0]["reason"]
    assert result.report.rows_kept == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"   \n\n", "is empty"),
        (HEADER.replace(",", ";").encode() + b"\n2024-01;BEDOK\n", "semicolon-separated"),
        (HEADER.replace(",", "\t").encode() + b"\n", "tab-separated"),
        (HEADER.replace("town,", "").encode() + b"\n", "missing column(s) town"),
        (
            HEADER.replace("town,", "agent_fee,").encode() + b"\n",
            "missing column(s) town; unexpected column(s) 'agent_fee'",
        ),
        (HEADER.encode() + b",town\n", "duplicated column(s) 'town'"),
        (b"name,age\nbob,3\n", "is not an HDB resale file"),
    ],
    ids=[
        "empty",
        "blank",
        "semicolons",
        "tabs",
        "missing column",
        "column renamed",
        "duplicated column",
        "other csv",
    ],
)
def test_files_that_are_not_resale_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "input.csv"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=r"input\.csv") as info:
        load_file(path)
    assert message in str(info.value)


# ------------------------------------------------------------------ root causes only

#: A valid row with the month and the lease year as placeholders.
TEMPLATE = "{month},BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,{lease},{remaining},380000"
#: Month values and the rule each must get on its own (None: valid, sold in 2024).
MONTHS = {
    "2024-01": None,
    "2025/03": "month_format",
    "March 2024": "month_format",
    "2024-13": "month_format",
    "": "required_values",
    "1980-01": "month_range",
    "2024\ufffd01": "utf8",
}
#: Lease commencement values and the rule each must get on its own (None: a valid year).
LEASES = {
    "1984": None,
    "2026": None,  # a valid year, but more than a year after a 2024 sale
    "2030": "lease_year_range",
    "abc": "lease_year_range",
    "19 84": "lease_year_range",
    "": "required_values",
    "198\ufffd": "utf8",
}


def expected_rules(month: str, lease: str) -> list[str]:
    """What the quarantine must cite: each input's own rule, lease_before_sale only when both
    inputs are valid, in the order of the rules."""
    own = {MONTHS[month], LEASES[lease]} - {None}
    if not own and lease == "2026":  # the only valid pair that breaks lease_before_sale
        own = {"lease_before_sale"}
    return [r for r in RULE_NAMES if r in own]


def test_unreadable_month_gets_exactly_one_reason(tmp_path):
    # the example: an unparseable month must not also "break" lease_before_sale
    line = TEMPLATE.format(month="2025/03", lease="1984", remaining="58 years")
    result = load_one(tmp_path, line)
    bad = result.quarantine.iloc[0]
    assert bad["rule"] == "month_format"
    assert reason_rules(bad["reason"]) == ["month_format"]
    assert "lease_before_sale" not in bad["reason"]
    assert result.report.by_rule == {"month_format": 1}


@pytest.mark.parametrize("lease", ["abc", "", "2030", "1850", "198\ufffd"])
def test_unreadable_lease_year_does_not_also_break_lease_before_sale(tmp_path, lease):
    line = TEMPLATE.format(month="2024-01", lease=lease, remaining="")
    bad = load_one(tmp_path, line).quarantine.iloc[0]
    rules = reason_rules(bad["reason"])
    assert len(rules) == 1 and rules[0] == bad["rule"]
    assert bad["rule"] in {"lease_year_range", "required_values", "utf8"}


@pytest.mark.parametrize("month", sorted(MONTHS))
@pytest.mark.parametrize("lease", sorted(LEASES))
def test_each_quarantined_row_carries_its_root_causes(tmp_path, month, lease):
    """Every pairing of month and lease values: a rule never fires on a failed input."""
    line = TEMPLATE.format(month=month, lease=lease, remaining="")
    result = load_one(tmp_path, line)
    expected = expected_rules(month, lease)
    report = result.report
    assert report.reconciles and report.rows_in == 4
    if not expected:
        assert report.rows_quarantined == 0
        return
    bad = result.quarantine.iloc[0]
    assert reason_rules(bad["reason"]) == expected
    assert bad["rule"] == expected[0]


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("2024-01,,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000", "required_values"),
        ("2024-01,BED\ufffdK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,,380000", "utf8"),
        ("2024-01,BEDOK,,1,AVE 1,07 TO 09,67,Improved,1978,53 years,380000", "required_values"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,,67,Improved,1978,53 years,380000", "required_values"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,,Improved,1978,53 years,380000", "required_values"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 years,", "required_values"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,6\ufffd,Improved,1978,,380000", "utf8"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1978,53 y\ufffd,380000", "utf8"),
        ("2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1850,,380000", "lease_year_range"),
    ],
    ids=[
        "empty town",
        "utf8 town",
        "empty flat type",
        "empty storey",
        "empty floor area",
        "empty price",
        "utf8 floor area",
        "utf8 remaining lease",
        "ancient lease, derived lease",
    ],
)
def test_a_field_that_failed_is_not_judged_again(tmp_path, line, rule):
    """An empty or undecodable field gets that reason only, not also its format rule; a
    remaining lease derived from a bad lease year is not blamed on remaining_lease."""
    bad = load_one(tmp_path, line).quarantine.iloc[0]
    assert reason_rules(bad["reason"]) == [rule]


def test_independent_problems_are_all_listed_under_the_first(tmp_path):
    line = "2024-13,ATLANTIS,3 ROOM,1,AVE 1,7-9,67,Improved,abc,lots,-5"
    result = load_one(tmp_path, line)
    bad = result.quarantine.iloc[0]
    assert reason_rules(bad["reason"]) == [
        "month_format",
        "town_known",
        "storey_pattern",
        "price_range",
        "lease_year_range",
        "remaining_lease_format",
    ]
    assert bad["rule"] == "month_format"
    assert result.report.by_rule == {"month_format": 1}  # one row, counted once
    assert result.report.reconciles


# ------------------------------------------------------------------ columns added upstream

EXTRA_HEADER = HEADER + ",agent_fee"
EXTRA_LINES = [line + f",{fee}" for line, fee in zip(GOOD, ["5000", "", "n/a \ufffd"], strict=True)]


def write_format(tmp_path: Path, fmt: str, header: str, lines: list[str]) -> Path:
    """The rows as CSV, CSV.gz or parquet (floats as pandas infers them, as published)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv = write_csv(tmp_path, lines, name=f"resale-{fmt}.csv", header=header)
    if fmt == "csv":
        return csv
    if fmt == "csv.gz":
        path = tmp_path / "resale-gz.csv.gz"
        path.write_bytes(gzip.compress(csv.read_bytes()))
        return path
    path = tmp_path / "resale-pq.parquet"
    pd.read_csv(csv).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_extra_column_loads_with_a_warning_and_is_reported(tmp_path, fmt):
    path = write_format(tmp_path, fmt, EXTRA_HEADER, EXTRA_LINES)
    with pytest.warns(ExtraColumnsWarning, match=rf"{re.escape(path.name)}: .*'agent_fee'"):
        result = load_file(path, max_month="2026-07")
    report = result.report
    assert report.extra_columns == {path.name: ["agent_fee"]}
    assert report.to_dict()["extra_columns"] == {path.name: ["agent_fee"]}
    assert (report.rows_in, report.rows_kept, report.rows_quarantined) == (3, 3, 0)
    # ignored downstream: the same rows as without the column
    plain = load_file(write_format(tmp_path / "plain", fmt, HEADER, GOOD), max_month="2026-07")
    pd.testing.assert_frame_equal(
        result.frame.drop(columns=["source_file"]), plain.frame.drop(columns=["source_file"])
    )
    assert list(result.quarantine.columns) == list(QUARANTINE_COLUMNS)


def test_extra_column_rows_are_still_checked_and_reconcile(tmp_path):
    lines = [
        *EXTRA_LINES,
        "2025/03,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1984,58 years,380000,0",
        "2024-01,BEDOK,3 ROOM,1,AVE 1,07 TO 09,67,Improved,1984,58 years,380000",  # no fee
    ]
    path = write_csv(tmp_path, lines, header=EXTRA_HEADER)
    with pytest.warns(ExtraColumnsWarning):
        result = load_file(path, max_month="2026-07")
    report = result.report
    assert (report.rows_in, report.rows_kept, report.rows_quarantined) == (5, 3, 2)
    assert report.by_rule == {"field_count": 1, "month_format": 1}
    assert "expected 12 fields, found 11" in result.quarantine["reason"].str.cat()
    assert "agent_fee" not in result.quarantine.columns


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_strict_refuses_an_extra_column_and_says_how_to_proceed(tmp_path, fmt):
    path = write_format(tmp_path, fmt, EXTRA_HEADER, EXTRA_LINES)
    with pytest.raises(DataFormatError) as info:
        load_file(path, strict=True)
    message = str(info.value)
    assert path.name in message and "'agent_fee'" in message
    assert "rerun without --strict to load it with a warning" in message
    with pytest.raises(DataFormatError, match="agent_fee"):
        load_files([write_format(tmp_path / "ok", fmt, HEADER, GOOD), path], strict=True)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
@pytest.mark.parametrize("strict", [False, True])
def test_a_missing_column_is_still_refused(tmp_path, fmt, strict):
    header = EXTRA_HEADER.replace("flat_model,", "")
    lines = [",".join(v for i, v in enumerate(line.split(",")) if i != 7) for line in EXTRA_LINES]
    path = write_format(tmp_path, fmt, header, lines)
    with pytest.raises(DataFormatError, match=r"missing column\(s\) flat_model") as info:
        load_file(path, strict=strict)
    assert "is not an HDB resale file" in str(info.value)


def test_strict_accepts_official_files_and_no_warning_without_extras(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtraColumnsWarning)
        result = load_file(write_csv(tmp_path, GOOD), max_month="2026-07", strict=True)
    assert result.report.extra_columns == {}
    assert result.report.rows_kept == 3


def test_load_files_reports_extra_columns_per_file(tmp_path):
    extra = write_csv(tmp_path, EXTRA_LINES, name="new.csv", header=EXTRA_HEADER)
    plain = write_csv(tmp_path, GOOD, name="old.csv")
    with pytest.warns(ExtraColumnsWarning, match="new.csv"):
        result = load_files([plain, extra], max_month="2026-07")
    assert result.report.extra_columns == {"new.csv": ["agent_fee"]}
    assert result.report.rows_kept == 6


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = gzip.compress(write_csv(tmp_path, GOOD * 50).read_bytes())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        load_file(path)


def test_damaged_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataFormatError, match="cannot be read as parquet"):
        load_file(path)


def test_cli_reports_json_and_errors_without_traceback(tmp_path):
    path = write_csv(tmp_path, [*GOOD, ROW_CASES["unknown town"][0]])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hdb_mlops.cli",
            "data",
            "load",
            str(path),
            "--json",
            "--quarantine-out",
            str(tmp_path / "q.csv"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    assert (report["rows_in"], report["rows_kept"], report["rows_quarantined"]) == (4, 3, 1)
    assert report["reconciles"] is True
    assert pd.read_csv(tmp_path / "q.csv")["rule"].tolist() == ["town_known"]

    extra = write_csv(tmp_path, EXTRA_LINES, name="new.csv", header=EXTRA_HEADER)
    out = subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", "data", "load", str(extra), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["extra_columns"] == {"new.csv": ["agent_fee"]}
    assert "'agent_fee'" in out.stderr  # the warning

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    err = subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", "data", "load", str(empty)],
        capture_output=True,
        text=True,
    )
    assert err.returncode == 2
    assert err.stderr.startswith("error: empty.csv is empty")
    assert "Traceback" not in err.stderr


# ------------------------------------------------------------------ the real files

REAL_ROWS = {
    "resale-flat-prices-based-on-approval-date-1990-1999": 287_196,
    "resale-flat-prices-based-on-approval-date-2000-feb-2012": 369_651,
    "resale-flat-prices-based-on-registration-date-from-mar-2012-to-dec-2014": 52_203,
    "resale-flat-prices-based-on-registration-date-from-jan-2015-to-dec-2016": 37_153,
    "latest_hdb_resale_prices": 236_273,
}


@pytest.mark.parametrize("stem", sorted(REAL_ROWS))
def test_real_file_loses_no_row(real_data_dir, stem):
    files = [p for p in resale_files(real_data_dir) if p.name.startswith(stem + ".")]
    if not files:
        pytest.skip(f"{stem} is not in {real_data_dir}")
    result = load_file(files[0], max_month="2026-11")
    report = result.report
    assert report.rows_in == REAL_ROWS[stem]
    assert report.reconciles
    # real data is clean: at most a handful of rows break a rule, each with a reason
    assert report.rows_quarantined <= 10
    assert (result.quarantine["reason"] != "").all()
    frame = result.frame
    assert frame["town"].nunique() >= 26
    assert set(frame["flat_type"]) <= {
        "1 ROOM",
        "2 ROOM",
        "3 ROOM",
        "4 ROOM",
        "5 ROOM",
        "EXECUTIVE",
        "MULTI-GENERATION",
    }
    assert (frame["flat_model"] == frame["flat_model"].str.upper()).all()
    assert frame["remaining_lease_months"].between(0, 99 * 12).all()


def test_all_real_files_together(real_data_dir):
    files = resale_files(real_data_dir)
    result = load_files(files, max_month="2026-11")
    if len(files) == 5:
        assert result.report.rows_in == sum(REAL_ROWS.values()) == 982_476
        assert (result.report.month_min, result.report.month_max) == ("1990-01", "2026-07")
    assert result.report.reconciles
    # the 316 exact duplicates of the 2017+ file are genuine sales and are kept
    latest = result.frame[result.frame["source_file"].str.startswith("latest")]
    if len(latest):
        dup = latest.drop(columns=["source_row"]).duplicated().sum()
        assert dup == 316
