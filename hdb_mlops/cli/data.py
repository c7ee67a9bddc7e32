"""``hdb-mlops data ...``: load, prepare, download, rules, calibrate, sample, geocode."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    data_source,
    existing_path,
    http_url,
    integer,
    month,
    new_file,
    new_or_existing_dir,
    non_negative_int,
    positive_float,
    positive_int,
)

SOURCE_HELP = "sample | download | a resale file or a folder of them"


def print_report(report: dict[str, Any], as_json: bool) -> None:
    """Print a load report (row counts by rule, month range) as text or JSON."""
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"rows in:          {report['rows_in']:>10,}")
    print(f"rows kept:        {report['rows_kept']:>10,}")
    print(f"rows quarantined: {report['rows_quarantined']:>10,}")
    for rule, n in report["by_rule"].items():
        print(f"  {rule:<24}{n:>8,}")
    print(f"months:           {report['month_min']} .. {report['month_max']}")
    print(f"reconciles:       {report['reconciles']}")
    for name, extra in report.get("extra_columns", {}).items():
        print(f"extra columns:    {name}: {', '.join(extra)} (ignored)")


def dataset_key(text: str) -> str:
    """A data.gov.sg dataset key (``2017-onwards``) or id (``d_...``)."""
    from hdb_mlops.data.schema import dataset

    try:
        return dataset(text).key
    except KeyError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def cmd_data_load(args: argparse.Namespace) -> int:
    """Load and validate resale files; print the report, write the rows if asked."""
    from hdb_mlops.data.ingest import load_files, resale_files

    paths: list[Path] = []
    for path in args.paths:
        paths.extend(resale_files(path) if path.is_dir() else [path])
    result = load_files(paths, max_month=args.max_month, strict=args.strict)
    if args.quarantine_out:
        args.quarantine_out.parent.mkdir(parents=True, exist_ok=True)
        result.quarantine.to_csv(args.quarantine_out, index=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result.frame.to_parquet(args.out, index=False)
    print_report(result.report.to_dict(), args.json)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Build the raw -> interim -> processed layers and print their manifest."""
    from hdb_mlops.data.storage import prepare

    prepared = prepare(
        args.source,
        args.data_dir,
        rows=args.rows,
        seed=args.seed,
        force=args.force,
        strict=args.strict,
    )
    if args.json:
        print(json.dumps(prepared.manifest, indent=2))
    else:
        print_report(prepared.manifest["load"], False)
        for name, info in prepared.manifest["layers"].items():
            print(f"{name:<34}{info['rows']:>10,} rows  sha256 {info['sha256'][:12]}")
        print(f"data hash: {prepared.data_hash[:16]}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    """Download the official files (or verify the cached copies)."""
    from hdb_mlops.data.download import download_all

    files = download_all(
        args.cache_dir,
        keys=args.datasets or None,
        base_url=args.base_url,
        force=args.force,
        retries=args.retries,
    )
    for f in files:
        origin = "cache" if f.from_cache else "downloaded"
        print(f"{f.key:<14}{f.bytes:>12,} bytes  sha256 {f.sha256[:12]}  {origin}  {f.path}")
    return 0


def cmd_data_rules(args: argparse.Namespace) -> int:
    """Print the validation rules."""
    from hdb_mlops.data.validate import describe_rules

    print(describe_rules().to_string(index=False))
    return 0


def cmd_data_calibrate(args: argparse.Namespace) -> int:
    """Compute the synthetic sample's aggregates from the real 2017+ file."""
    from hdb_mlops.data.calibrate import (
        REAL_FILE_NAMES,
        calibrate_from_file,
        find_real_file,
        write_calibration,
    )

    real: Path | None = args.real
    if real is None or real.is_dir():
        found = find_real_file(real)
        if found is None:
            where = f"in {real}" if real else f"in ${config.REAL_DATA_ENV} or ../shared/data/hdb"
            raise UsageError(
                f"argument --real: no real 2017-onwards resale file {where} "
                f"(looked for {', '.join(REAL_FILE_NAMES)}): pass --real PATH to that file "
                f"or set {config.REAL_DATA_ENV} to its folder"
            )
        real = found
    path = write_calibration(calibrate_from_file(real), args.out)
    print(f"calibration written to {path}")
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    """Generate the synthetic sample from the calibration."""
    from hdb_mlops.data.synth import write_sample

    path = write_sample(args.out, n_rows=args.rows, seed=args.seed)
    print(f"synthetic sample written to {path}")
    return 0


def cmd_data_geocode(args: argparse.Namespace) -> int:
    """Geocode the addresses of a data source with OneMap (cached)."""
    from hdb_mlops.data.geocode import fetch_stations, geocode_frame
    from hdb_mlops.data.location_files import geocode_dir
    from hdb_mlops.data.storage import prepare

    cache = args.cache_dir or geocode_dir()
    transactions = prepare(args.source, args.data_dir).transactions()
    table = geocode_frame(transactions, cache, base_url=args.base_url, rate=args.rate)
    found = int(table["latitude"].notna().sum())
    print(f"addresses: {len(table):,}; with coordinates: {found:,}; cache: {cache}")
    if args.stations:
        stations = fetch_stations(cache, base_url=args.base_url, rate=args.rate)
        print(f"stations: {len(stations):,}")
    return 0


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """``--source`` and ``--data-dir``: where the data comes from and its layers go."""
    p.add_argument("--source", type=data_source, default="sample", help=SOURCE_HELP)
    p.add_argument(
        "--data-dir",
        type=new_or_existing_dir,
        default=None,
        metavar="DIR",
        help="layer root (default: $HDB_MLOPS_DATA_DIR or data/)",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``data`` and its sub-commands."""
    data = sub.add_parser("data", help="load, validate, download and sample the resale data")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("load", help="load and validate resale files; report the row counts")
    p.add_argument(
        "paths",
        nargs="+",
        type=existing_path,
        metavar="PATH",
        help="CSV, CSV.gz or parquet files, or folders of them",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--quarantine-out", type=new_file, metavar="CSV", help="write the quarantined rows here"
    )
    p.add_argument("--out", type=new_file, metavar="PARQUET", help="write the valid rows here")
    p.add_argument(
        "--max-month", type=month, metavar="YYYY-MM", help="latest valid month (default: now)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse files with columns beyond the official ones "
        "(default: load them with a warning and ignore those columns)",
    )
    p.set_defaults(func=cmd_data_load)

    p = dsub.add_parser("prepare", help="build the raw -> interim -> processed layers")
    add_source_arguments(p)
    p.add_argument("--rows", type=positive_int, default=None, help="keep a seeded subset")
    p.add_argument("--seed", type=integer, default=config.DEFAULT_SEED)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse files with columns beyond the official ones "
        "(default: load them with a warning and ignore those columns)",
    )
    p.set_defaults(func=cmd_data_prepare)

    p = dsub.add_parser("download", help="download the official files from data.gov.sg")
    p.add_argument(
        "datasets",
        nargs="*",
        type=dataset_key,
        metavar="DATASET",
        help="keys (1990-1999 ... 2017-onwards) or ids; default all",
    )
    p.add_argument(
        "--cache-dir",
        type=new_or_existing_dir,
        default=str(config.data_dir() / "raw"),
        metavar="DIR",
        help="where the files go (default: <data dir>/raw)",
    )
    p.add_argument(
        "--base-url",
        type=http_url,
        default=None,
        help="API server (default: $HDB_MLOPS_DATAGOV_URL or data.gov.sg)",
    )
    p.add_argument(
        "--retries", type=non_negative_int, default=5, help="retries after a failed attempt"
    )
    p.add_argument("--force", action="store_true", help="download even when cached")
    p.set_defaults(func=cmd_data_download)

    p = dsub.add_parser("rules", help="list the validation rules")
    p.set_defaults(func=cmd_data_rules)

    p = dsub.add_parser("calibrate", help="compute the sample's aggregates from the real data")
    p.add_argument(
        "--real",
        type=existing_path,
        default=None,
        metavar="PATH",
        help=f"the real 2017+ file or its folder (default: ${config.REAL_DATA_ENV})",
    )
    p.add_argument("--out", type=new_file, default=str(config.CALIBRATION_FILE), metavar="JSON")
    p.set_defaults(func=cmd_data_calibrate)

    p = dsub.add_parser("sample", help="generate the synthetic sample from the calibration")
    p.add_argument("--out", type=new_or_existing_dir, default=str(config.SAMPLE_DIR), metavar="DIR")
    p.add_argument("--rows", type=positive_int, default=30_000)
    p.add_argument("--seed", type=integer, default=config.DEFAULT_SEED)
    p.set_defaults(func=cmd_data_sample)

    p = dsub.add_parser("geocode", help="geocode the addresses of a data source with OneMap")
    add_source_arguments(p)
    p.add_argument(
        "--cache-dir",
        type=new_or_existing_dir,
        default=None,
        metavar="DIR",
        help="default: <data dir>/geocode",
    )
    p.add_argument(
        "--base-url",
        type=http_url,
        default=None,
        help="OneMap server (default: $HDB_MLOPS_ONEMAP_URL or onemap.gov.sg)",
    )
    p.add_argument("--rate", type=positive_float, default=4.0, help="requests per second")
    p.add_argument("--stations", action="store_true", help="also fetch MRT/LRT stations")
    p.set_defaults(func=cmd_data_geocode)
