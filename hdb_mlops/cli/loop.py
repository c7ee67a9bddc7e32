"""``hdb-mlops retrainer`` (the Alertmanager webhook that retrains and promotes) and
``hdb-mlops simulate`` (traffic against the service), chapter 6's closed loop."""

from __future__ import annotations

import argparse
import os
import sys

from hdb_mlops.cli.args import (
    UsageError,
    data_source,
    http_url,
    month,
    new_file,
    new_or_existing_dir,
    non_negative_float,
    positive_float,
    positive_int,
    print_summary,
    quiet_mlflow,
    tcp_port,
)
from hdb_mlops.cli.serve import LOG_LEVELS, check_port_free

SCENARIOS = ("normal", "drift", "outage")
DEFAULT_API_URL = "http://127.0.0.1:8080"
RELOAD_TOKEN_ENV = "HDB_MLOPS_RELOAD_TOKEN"


def cmd_retrainer(args: argparse.Namespace) -> int:
    """Run the webhook receiver until SIGINT/SIGTERM."""
    check_port_free(args.host, args.port)
    quiet_mlflow(args)
    from hdb_mlops.monitoring.retrain import RetrainSettings
    from hdb_mlops.monitoring.webhook import serve_receiver

    if args.prediction_log is not None and not args.prediction_log.exists():
        print(
            f"warning: no prediction log at {args.prediction_log} yet: a retraining fails "
            "until the service writes it (pass the file the service's prediction log is in)",
            file=sys.stderr,
        )
    if args.service_url and not os.environ.get(RELOAD_TOKEN_ENV):
        print(
            f"warning: ${RELOAD_TOKEN_ENV} is not set: the service will refuse to reload "
            "a promoted model (set it to the service's token)",
            file=sys.stderr,
        )
    try:
        settings = RetrainSettings(
            data=str(args.data),
            prediction_log=str(args.prediction_log) if args.prediction_log else None,
            window_months=args.window_months,
            min_window_rows=args.min_window_rows,
            margin=args.margin,
            timeout_s=args.timeout,
            **({"work_dir": str(args.work_dir)} if args.work_dir else {}),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    serve_receiver(
        args.host,
        args.port,
        log_level=args.log_level,
        settings=settings,
        audit_log=args.audit_log,
        service_url=args.service_url,
        cooldown_s=args.cooldown,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a scenario against the service; print the summary."""
    quiet_mlflow(args)
    import httpx

    from hdb_mlops.monitoring.simulate import prepare_scenario, simulate

    if bool(args.first_month) != bool(args.last_month):
        raise UsageError("arguments --first-month and --last-month: give both or neither")
    if args.prepare:
        prepared = prepare_scenario(args.scenario, data=str(args.data))
        if not args.json:
            print(f"champion for {args.scenario}: version {prepared['version']}")
    try:
        httpx.get(f"{args.api_url.rstrip('/')}/health", timeout=5)
    except httpx.HTTPError as exc:
        raise UsageError(
            f"argument --api-url: no service answers at {args.api_url} ({type(exc).__name__}): "
            "start it with `hdb-mlops serve`"
        ) from None
    months = (args.first_month, args.last_month) if args.first_month else None
    summary = simulate(
        args.api_url,
        scenario=args.scenario,
        speed=args.speed,
        data=str(args.data),
        rate=args.rate,
        feedback_delay_s=args.feedback_delay,
        months=months,
        limit=args.limit,
        duration_s=args.duration,
    ).to_dict()
    print_summary(summary, args.json)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``retrainer`` and ``simulate``."""
    p = sub.add_parser(
        "retrainer", help="the Alertmanager webhook: model alerts retrain and promote"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=tcp_port, default=9095)
    p.add_argument(
        "--service-url",
        type=http_url,
        default=None,
        metavar="URL",
        help=f"the service to reload after a promotion (token: ${RELOAD_TOKEN_ENV})",
    )
    p.add_argument(
        "--data", type=data_source, default="sample", help="sample, download, a file or folder"
    )
    p.add_argument("--audit-log", type=new_file, default=None, metavar="PATH")
    p.add_argument(
        "--prediction-log",
        type=new_file,
        default=None,
        metavar="PATH",
        help="the service's prediction log (the evaluation window's feedback)",
    )
    p.add_argument(
        "--cooldown",
        type=non_negative_float,
        default=3600.0,
        metavar="S",
        help="seconds after a retraining before the next may start",
    )
    p.add_argument("--work-dir", type=new_or_existing_dir, default=None, metavar="DIR")
    p.add_argument("--window-months", type=positive_int, default=3)
    p.add_argument("--min-window-rows", type=positive_int, default=200)
    p.add_argument("--margin", type=non_negative_float, default=0.5, help="MAPE points to beat")
    p.add_argument("--timeout", type=positive_float, default=1800.0, metavar="S")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    p.set_defaults(func=cmd_retrainer)

    p = sub.add_parser("simulate", help="replay sales against the service, with feedback")
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--speed", type=positive_float, default=1.0, help="simulated s per wall s")
    p.add_argument("--api-url", type=http_url, default=DEFAULT_API_URL, metavar="URL")
    p.add_argument("--rate", type=positive_float, default=20.0, help="requests per second")
    p.add_argument(
        "--feedback-delay", type=non_negative_float, default=60.0, metavar="S",
        help="simulated seconds before a sale's actual price is sent",
    )  # fmt: skip
    p.add_argument("--first-month", type=month, default=None)
    p.add_argument("--last-month", type=month, default=None)
    p.add_argument("--limit", type=positive_int, default=None, help="most requests to send")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S")
    p.add_argument("--data", type=data_source, default="sample")
    p.add_argument(
        "--prepare", action="store_true", help="first train and register the scenario's champion"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)
