"""``hdb-mlops evaluate``, ``hdb-mlops train`` and ``hdb-mlops model list|show|promote``."""

from __future__ import annotations

import argparse
import re
from typing import Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    integer,
    month,
    new_or_existing_dir,
    non_negative_float,
    non_negative_int,
    plain_name,
    positive_float,
    positive_int,
    print_json,
    print_summary,
    quiet_mlflow,
    with_hint,
)
from hdb_mlops.cli.data import add_source_arguments

#: The names :func:`hdb_mlops.model.models.make_model` knows (kept here so that parsing does
#: not import the models; tests/test_cli.py checks that the two agree).
MODEL_NAMES = ("median_ppsm", "linear", "xgboost")
DEFAULT_REGISTERED_NAME = "hdb-resale-price"
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
LIST_HINT = "`hdb-mlops model list` shows the registered versions and their aliases"


def version_or_alias(text: str) -> int | str:
    """A registry reference: a version number (``3``) or an alias (``champion``)."""
    if text.isdigit():
        return int(text)
    if not _ALIAS_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a version number nor an alias (e.g. 3 or champion)"
        )
    return text


def _registry_error(exc: Exception) -> UsageError:
    return UsageError(with_hint(exc, LIST_HINT))


def _locations(wanted: bool) -> Any:
    """The location tables when ``--location`` is given (a usage error when there are none)."""
    if not wanted:
        return None
    from hdb_mlops.data.location_files import default_location_tables

    tables = default_location_tables()
    if tables is None:
        raise UsageError(
            "argument --location: no geocode table: run `hdb-mlops data geocode --stations` "
            f"or set {config.REAL_DATA_ENV}"
        )
    return tables


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model with the holdout or the rolling protocol; print the metrics."""
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model import evaluate
    from hdb_mlops.model.features import FeatureSpec
    from hdb_mlops.model.models import make_model

    transactions = prepare(
        args.source, args.data_dir, rows=args.rows, seed=args.seed
    ).transactions()
    locations = _locations(args.location)
    kwargs: dict[str, Any] = {}
    if args.model == "xgboost":
        kwargs = {
            "seed": args.seed,
            "spec": FeatureSpec(location=args.location),
            "locations": locations,
        }

    def factory() -> Any:
        return make_model(args.model, **kwargs)

    if args.protocol == "holdout":
        ev = evaluate.holdout(transactions, factory, cutoff=args.cutoff)
    else:
        ev = evaluate.rolling(transactions, factory, start=args.start, end=args.end)
    summary = {
        "protocol": ev.protocol,
        "model": ev.model,
        "fit_seconds": round(ev.fit_seconds, 2),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in ev.overall.items()},
    }
    print_summary(summary, args.json)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, evaluate, track, register and gate a model; print the summary."""
    quiet_mlflow(args)
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model.train import train

    prepared = prepare(args.source, args.data_dir, rows=args.rows, seed=args.seed)
    result = train(
        prepared.transactions(),
        args.out,
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
        print_json(summary)
    else:
        for key, value in summary.items():
            print(f"{key:<12}{value}")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    """Print the registered versions with their aliases and MAPE."""
    quiet_mlflow(args)
    from hdb_mlops.model import registry

    table = registry.list_versions(args.name)
    if args.json:
        print(table.to_json(orient="records", indent=2, date_format="iso"))
    else:
        print(table.to_string(index=False) if len(table) else "no registered versions")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    """Print one registered version (by number or alias) as JSON."""
    quiet_mlflow(args)
    from hdb_mlops.model import registry

    try:
        shown = registry.show(args.ref, args.name)
    except registry.RegistryError as exc:
        raise _registry_error(exc) from exc
    print_json(shown)
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    """Run the promotion gate for a version; exit status 3 when it is not promoted."""
    quiet_mlflow(args)
    from hdb_mlops.data.storage import prepare
    from hdb_mlops.model import registry

    transactions = prepare(args.source, args.data_dir).transactions()
    window = transactions[transactions["month"] > transactions["month"].max() - args.window_months]
    try:
        decision = registry.promote(
            args.version,
            window,
            margin=args.margin,
            latency_budget_ms=args.latency_budget_ms,
            name=args.name,
        )
    except registry.RegistryError as exc:
        raise _registry_error(exc) from exc
    print(decision.summary())
    return 0 if decision.promoted else 3


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("--rows", type=positive_int, default=None, help="keep a seeded subset")
    p.add_argument("--seed", type=integer, default=config.DEFAULT_SEED)


def _add_name_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name", type=plain_name, default=DEFAULT_REGISTERED_NAME, help="registered model name"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate``, ``train`` and ``model`` with its sub-commands."""
    models = " | ".join(MODEL_NAMES)

    p = sub.add_parser("evaluate", help="evaluate a model with a time-aware protocol")
    p.add_argument("--protocol", choices=["holdout", "rolling"], default="holdout")
    p.add_argument("--model", choices=MODEL_NAMES, default="xgboost", metavar="NAME", help=models)
    _add_data_arguments(p)
    p.add_argument("--cutoff", type=month, default="2024-12", help="holdout: last training month")
    p.add_argument("--start", type=month, default="2025-01", help="rolling: first month")
    p.add_argument("--end", type=month, default=None, help="rolling: last predicted month")
    p.add_argument("--location", action="store_true", help="use location features")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train, evaluate, track, register and gate a model")
    p.add_argument("--model", choices=MODEL_NAMES, default="xgboost", metavar="NAME", help=models)
    _add_data_arguments(p)
    p.add_argument(
        "--cutoff", type=month, default=None, help="last training month (default: latest - 3)"
    )
    p.add_argument(
        "--tune-trials", type=non_negative_int, default=0, help="Optuna trials (0: no search)"
    )
    p.add_argument(
        "--tune-timeout", type=positive_float, default=None, help="seconds for the search"
    )
    p.add_argument("--location", action="store_true", help="use location features")
    p.add_argument(
        "--margin", type=non_negative_float, default=0.1, help="gate: MAPE points to beat"
    )
    p.add_argument(
        "--out",
        type=new_or_existing_dir,
        default=str(config.PROJECT_DIR / "models"),
        metavar="DIR",
        help="bundle folder",
    )
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-register", action="store_true", help="log but do not register")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    model = sub.add_parser("model", help="the model registry (MLflow)")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("list", help="registered versions with their aliases and MAPE")
    _add_name_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_list)

    p = msub.add_parser("show", help="one version (number) or alias (champion, challenger)")
    p.add_argument("ref", nargs="?", type=version_or_alias, default="champion", metavar="REF")
    _add_name_argument(p)
    p.set_defaults(func=cmd_model_show)

    p = msub.add_parser("promote", help="run the promotion gate for a version")
    p.add_argument("version", type=positive_int)
    add_source_arguments(p)
    p.add_argument(
        "--window-months", type=positive_int, default=3, help="months of recent sales to score"
    )
    p.add_argument(
        "--margin", type=non_negative_float, default=0.1, help="MAPE points to beat the champion"
    )
    p.add_argument(
        "--latency-budget-ms",
        type=positive_float,
        default=config.GATE_LATENCY_BUDGET_MS,
        help="median single-row latency limit of the gate's sanity check (default: %(default)g)",
    )
    _add_name_argument(p)
    p.set_defaults(func=cmd_model_promote)
