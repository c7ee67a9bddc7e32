"""``hdb-mlops``: the command line over the package's functions.

Every command prints a short human summary, or JSON with ``--json``; errors are one line
starting with ``error:`` and exit status 2 (usage or data) or 1 (a failed pipeline).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hdb_mlops import config

EXIT_ERROR = 2


def _print_report(report: dict, as_json: bool) -> None:
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


def cmd_data_load(args: argparse.Namespace) -> int:
    from hdb_mlops.data.ingest import load_files, resale_files

    paths: list[Path] = []
    for p in args.paths:
        paths.extend(resale_files(p) if Path(p).is_dir() else [Path(p)])
    result = load_files(paths, max_month=args.max_month)
    if args.quarantine_out:
        result.quarantine.to_csv(args.quarantine_out, index=False)
    if args.out:
        result.frame.to_parquet(args.out, index=False)
    _print_report(result.report.to_dict(), args.json)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from hdb_mlops.data.storage import prepare

    prepared = prepare(args.source, args.data_dir, rows=args.rows, seed=args.seed, force=args.force)
    if args.json:
        print(json.dumps(prepared.manifest, indent=2))
    else:
        _print_report(prepared.manifest["load"], False)
        for name, info in prepared.manifest["layers"].items():
            print(f"{name:<34}{info['rows']:>10,} rows  sha256 {info['sha256'][:12]}")
        print(f"data hash: {prepared.data_hash[:16]}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from hdb_mlops.data.download import download_all

    files = download_all(
        args.cache_dir, keys=args.datasets or None, base_url=args.base_url, force=args.force
    )
    for f in files:
        origin = "cache" if f.from_cache else "downloaded"
        print(f"{f.key:<14}{f.bytes:>12,} bytes  sha256 {f.sha256[:12]}  {origin}  {f.path}")
    return 0


def cmd_data_rules(args: argparse.Namespace) -> int:
    from hdb_mlops.data.validate import describe_rules

    print(describe_rules().to_string(index=False))
    return 0


def cmd_data_calibrate(args: argparse.Namespace) -> int:
    from hdb_mlops.data.calibrate import calibrate_from_file, find_real_file, write_calibration

    real = Path(args.real) if args.real else None
    if real is None or real.is_dir():
        real = find_real_file(real)
    if real is None:
        raise FileNotFoundError(
            "no real 2017-onwards resale file found: "
            f"pass --real PATH or set {config.REAL_DATA_ENV}"
        )
    path = write_calibration(calibrate_from_file(real), Path(args.out))
    print(f"calibration written to {path}")
    return 0


def cmd_data_sample(args: argparse.Namespace) -> int:
    from hdb_mlops.data.synth import write_sample

    path = write_sample(Path(args.out), n_rows=args.rows, seed=args.seed)
    print(f"synthetic sample written to {path}")
    return 0


def cmd_data_geocode(args: argparse.Namespace) -> int:
    from hdb_mlops.data.geocode import fetch_stations, geocode_frame
    from hdb_mlops.data.location import geocode_dir
    from hdb_mlops.data.storage import prepare

    cache = Path(args.cache_dir) if args.cache_dir else geocode_dir()
    transactions = prepare(args.source, args.data_dir).transactions()
    table = geocode_frame(transactions, cache, base_url=args.base_url, rate=args.rate)
    found = int(table["latitude"].notna().sum())
    print(f"addresses: {len(table):,}; with coordinates: {found:,}; cache: {cache}")
    if args.stations:
        stations = fetch_stations(cache, base_url=args.base_url, rate=args.rate)
        print(f"stations: {len(stations):,}")
    return 0


def _evaluation_summary(ev) -> dict:
    return {
        "protocol": ev.protocol,
        "model": ev.model,
        "fit_seconds": round(ev.fit_seconds, 2),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in ev.overall.items()},
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model import evaluate
    from hdb_mlops.model.features import FeatureSpec
    from hdb_mlops.model.models import make_model

    transactions = prepare(
        args.source, args.data_dir, rows=args.rows, seed=args.seed
    ).transactions()
    kwargs: dict = {}
    locations = None
    if args.location:
        from hdb_mlops.data.location import default_location_tables

        locations = default_location_tables()
        if locations is None:
            raise FileNotFoundError(
                "no geocode table: run `hdb-mlops data geocode` or set HDB_MLOPS_REAL_DATA"
            )
    if args.model == "xgboost":
        kwargs = {
            "seed": args.seed,
            "spec": FeatureSpec(location=args.location),
            "locations": locations,
        }

    def factory():
        return make_model(args.model, **kwargs)

    if args.protocol == "holdout":
        ev = evaluate.holdout(transactions, factory, cutoff=args.cutoff)
    else:
        ev = evaluate.rolling(transactions, factory, start=args.start, end=args.end)
    summary = _evaluation_summary(ev)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<20}{value}")
    return 0


def _locations(wanted: bool):
    if not wanted:
        return None
    from hdb_mlops.data.location import default_location_tables

    tables = default_location_tables()
    if tables is None:
        raise FileNotFoundError(
            "no geocode table: run `hdb-mlops data geocode --stations` or set HDB_MLOPS_REAL_DATA"
        )
    return tables


def cmd_train(args: argparse.Namespace) -> int:
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model.train import train

    prepared = prepare(args.source, args.data_dir, rows=args.rows, seed=args.seed)
    result = train(
        prepared.transactions(),
        Path(args.out),
        model=args.model,
        location=args.location,
        locations=_locations(args.location),
        cutoff=args.cutoff,
        tune_trials=args.tune_trials,
        tune_timeout=args.tune_timeout,
        seed=args.seed,
        data_hash=prepared.data_hash,
        track=not args.no_track,
        register=not args.no_register and not args.no_track,
        margin=args.margin,
    )
    summary = {
        "model": result.model.name,
        "cutoff": result.cutoff,
        "bundle": str(result.bundle_dir),
        "run_id": result.run_id,
        "version": result.version,
        "promoted": getattr(result.decision, "promoted", None),
        "gate": getattr(result.decision, "reasons", None),
        **{k: round(v, 4) for k, v in result.evaluation.overall.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<12}{value}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from hdb_mlops.model import registry

    table = registry.list_versions(args.name)
    if args.json:
        print(table.to_json(orient="records", indent=2, date_format="iso"))
    else:
        print(table.to_string(index=False) if len(table) else "no registered versions")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from hdb_mlops.model import registry

    ref = int(args.ref) if args.ref.isdigit() else args.ref
    print(json.dumps(registry.show(ref, args.name), indent=2, default=str))
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model import registry

    transactions = prepare(args.source, args.data_dir).transactions()
    window = transactions[transactions["month"] > transactions["month"].max() - args.window_months]
    decision = registry.promote(
        args.version,
        window,
        margin=args.margin,
        latency_budget_ms=args.latency_budget_ms,
        name=args.name,
    )
    print(decision.summary())
    return 0 if decision.promoted else 3


def cmd_serve(args: argparse.Namespace) -> int:
    from hdb_mlops.serving.server import serve

    ref = args.model
    serve(
        host=args.host,
        port=args.port,
        workers=args.workers,
        model_ref=int(ref) if ref is not None and ref.isdigit() else ref,
        log_level=args.log_level,
        max_batch=args.max_batch,
    )
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from hdb_mlops.course.pipeline import parse_parameter, run

    overrides = dict(parse_parameter(p) for p in args.parameter)
    only = [o for item in args.only for o in item.split(",")] if args.only else None
    manifest = run(
        args.profile,
        overrides,
        only=only,
        start=args.start,
        run_id=args.run_id,
        runs_dir=Path(args.runs_dir),
        notebooks_dir=Path(args.notebooks_dir),
        cell_timeout=args.cell_timeout,
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        for step in manifest["notebooks"]:
            print(f"{step['notebook']:<28}{step['status']:<8}{step.get('seconds', 0):>8.1f} s")
        print(f"run {manifest['run_id']}: {manifest['status']} in {manifest['seconds']:.1f} s")
        print(f"manifest: {Path(args.runs_dir) / manifest['run_id'] / 'manifest.json'}")
    return 0


def cmd_pipeline_list(args: argparse.Namespace) -> int:
    from hdb_mlops.course.pipeline import list_notebooks

    for nb in list_notebooks(Path(args.notebooks_dir)):
        print(nb.stem)
    return 0


def cmd_notebooks_refresh(args: argparse.Namespace) -> int:
    from hdb_mlops.course.pipeline import refresh_committed

    for nb in refresh_committed(names=args.names or None):
        print(f"refreshed {nb.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hdb-mlops``."""
    parser = argparse.ArgumentParser(
        prog="hdb-mlops", description="The hdb-mlops course: data, pipeline and notebooks."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="load, validate, download and sample the resale data")
    dsub = data.add_subparsers(dest="data_command", required=True)

    p = dsub.add_parser("load", help="load and validate resale files; report the row counts")
    p.add_argument("paths", nargs="+", help="CSV, CSV.gz or parquet files, or folders of them")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quarantine-out", metavar="CSV", help="write the quarantined rows here")
    p.add_argument("--out", metavar="PARQUET", help="write the normalised valid rows here")
    p.add_argument("--max-month", metavar="YYYY-MM", help="latest valid month (default: now)")
    p.set_defaults(func=cmd_data_load)

    p = dsub.add_parser("prepare", help="build the raw -> interim -> processed layers")
    p.add_argument("--source", default="sample", help="sample | download | a file or folder")
    p.add_argument("--data-dir", type=Path, default=None, help="layer root (default: data/)")
    p.add_argument("--rows", type=int, default=None, help="keep a seeded subset of N rows")
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_data_prepare)

    p = dsub.add_parser("download", help="download the official files from data.gov.sg")
    p.add_argument(
        "datasets", nargs="*", help="keys (1990-1999 ... 2017-onwards) or ids; default all"
    )
    p.add_argument("--cache-dir", type=Path, default=config.data_dir() / "raw")
    p.add_argument("--base-url", default=None, help="API server (default: data.gov.sg)")
    p.add_argument("--force", action="store_true", help="download even when cached")
    p.set_defaults(func=cmd_data_download)

    p = dsub.add_parser("rules", help="list the validation rules")
    p.set_defaults(func=cmd_data_rules)

    p = dsub.add_parser("calibrate", help="compute the sample's aggregates from the real data")
    p.add_argument("--real", default=None, help="the real 2017+ file or its folder")
    p.add_argument("--out", default=str(config.CALIBRATION_FILE))
    p.set_defaults(func=cmd_data_calibrate)

    p = dsub.add_parser("sample", help="generate the synthetic sample from the calibration")
    p.add_argument("--out", default=str(config.SAMPLE_DIR))
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.set_defaults(func=cmd_data_sample)

    p = dsub.add_parser("geocode", help="geocode the addresses of a data source with OneMap")
    p.add_argument("--source", default="sample", help="sample | download | a file or folder")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--cache-dir", default=None, help="default: data/geocode")
    p.add_argument("--base-url", default=None, help="OneMap server (default: onemap.gov.sg)")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second")
    p.add_argument("--stations", action="store_true", help="also fetch MRT/LRT stations")
    p.set_defaults(func=cmd_data_geocode)

    p = sub.add_parser("evaluate", help="evaluate a model with a time-aware protocol")
    p.add_argument("--protocol", choices=["holdout", "rolling"], default="holdout")
    p.add_argument("--model", default="xgboost", help="median_ppsm | linear | xgboost")
    p.add_argument("--source", default="sample", help="sample | download | a file or folder")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.add_argument("--cutoff", default="2024-12", help="holdout: last training month")
    p.add_argument("--start", default="2025-01", help="rolling: first predicted month")
    p.add_argument("--end", default=None, help="rolling: last predicted month")
    p.add_argument("--location", action="store_true", help="use location features")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train, evaluate, track, register and gate a model")
    p.add_argument("--model", default="xgboost", help="median_ppsm | linear | xgboost")
    p.add_argument("--source", default="sample", help="sample | download | a file or folder")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    p.add_argument("--cutoff", default=None, help="last training month (default: latest - 3)")
    p.add_argument("--tune-trials", type=int, default=0, help="Optuna trials (0: no search)")
    p.add_argument("--tune-timeout", type=float, default=None, help="seconds for the search")
    p.add_argument("--location", action="store_true", help="use location features")
    p.add_argument("--margin", type=float, default=0.1, help="gate: MAPE points to beat")
    p.add_argument("--out", default=str(config.PROJECT_DIR / "models"), help="bundle folder")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-register", action="store_true", help="log but do not register")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    model = sub.add_parser("model", help="the model registry (MLflow)")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("list", help="registered versions with their aliases and MAPE")
    p.add_argument("--name", default="hdb-resale-price")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_list)
    p = msub.add_parser("show", help="one version (number) or alias (champion, challenger)")
    p.add_argument("ref", nargs="?", default="champion")
    p.add_argument("--name", default="hdb-resale-price")
    p.set_defaults(func=cmd_model_show)
    p = msub.add_parser("promote", help="run the promotion gate for a version")
    p.add_argument("version", type=int)
    p.add_argument("--source", default="sample")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--window-months", type=int, default=3)
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--latency-budget-ms", type=float, default=50.0)
    p.add_argument("--name", default="hdb-resale-price")
    p.set_defaults(func=cmd_model_promote)

    p = sub.add_parser("serve", help="serve the model over HTTP (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--model",
        default=None,
        help="a bundle folder, a registry version or alias (default: $HDB_MLOPS_MODEL or champion)",
    )
    p.add_argument("--max-batch", type=int, default=1000, help="most rows in one request")
    p.add_argument("--log-level", default="info")
    # SageMaker starts an inference image as `docker run IMAGE serve`: accept that word.
    p.add_argument("sagemaker_command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    pipe = sub.add_parser("pipeline", help="run the chapter notebooks in order (papermill)")
    psub = pipe.add_subparsers(dest="pipeline_command", required=True)
    p = psub.add_parser("run", help="execute the notebooks into runs/<run-id>/")
    p.add_argument("--profile", default="quick", help="quick (bundled sample) | full (real data)")
    p.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a notebook parameter (repeatable)",
    )
    p.add_argument("--only", action="append", metavar="NAME", help="run only these notebooks")
    p.add_argument("--from", dest="start", metavar="NAME", help="start at this notebook")
    p.add_argument("--run-id", default=None)
    p.add_argument("--runs-dir", default=str(config.RUNS_DIR))
    p.add_argument(
        "--notebooks-dir",
        default=str(config.NOTEBOOKS_DIR),
        help="run the numbered notebooks of this folder (e.g. a workshop's copies)",
    )
    p.add_argument(
        "--cell-timeout",
        type=int,
        default=None,
        help="seconds per cell (default: 900 in the quick profile, 10800 in the full one)",
    )
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_pipeline_run)
    p = psub.add_parser("list", help="the notebooks in pipeline order")
    p.add_argument("--notebooks-dir", default=str(config.NOTEBOOKS_DIR))
    p.set_defaults(func=cmd_pipeline_list)

    nbs = sub.add_parser("notebooks", help="maintain the committed notebooks")
    nsub = nbs.add_subparsers(dest="notebooks_command", required=True)
    p = nsub.add_parser(
        "refresh", help="re-execute the notebooks in place (their committed outputs)"
    )
    p.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    p.set_defaults(func=cmd_notebooks_refresh)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hdb-mlops`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from hdb_mlops.course.pipeline import PipelineError
    from hdb_mlops.data.ingest import DataFormatError

    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (DataFormatError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as exc:  # DownloadError and friends
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
