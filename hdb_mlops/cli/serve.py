"""``hdb-mlops serve``: the prediction service over HTTP (FastAPI + uvicorn), with chapter 6's
monitoring (drift gauges, the prediction log and ``POST /feedback``) unless ``--no-monitoring``."""

from __future__ import annotations

import argparse
import errno
import os
import re
from pathlib import Path

from hdb_mlops.cli.args import (
    UsageError,
    positive_float,
    positive_int,
    quiet_mlflow,
    tcp_port,
    with_hint,
)

#: As in :mod:`hdb_mlops.serving.loading`: a reference is a bundle folder when it is an
#: existing folder or not a plain name; otherwise a registry version number or alias.
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
MODEL_ENV = "HDB_MLOPS_MODEL"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
NO_CHAMPION_HINT = (
    "run `hdb-mlops train` first to register a champion, or pass --model PATH to a bundle directory"
)


def check_model_ref(ref: str | None) -> str | int | None:
    """Check a ``--model`` reference (or ``$HDB_MLOPS_MODEL`` when there is none) before
    anything heavy is imported: a bundle folder must exist and be a folder.

    Returns the reference to pass on: a version number as an int, else the text (None: the
    service's default, ``$HDB_MLOPS_MODEL`` or ``champion``).
    """
    text = ref if ref is not None else os.environ.get(MODEL_ENV, "").strip() or None
    if text is None:
        return None
    where = "argument --model" if ref is not None else f"${MODEL_ENV}"
    if not text.strip():
        raise UsageError(f"{where}: an empty model reference")
    if text.isdigit():
        return int(text) if ref is not None else None
    path = Path(text).expanduser()
    if path.is_dir() or not _ALIAS_RE.match(text):
        if not path.exists():
            raise UsageError(
                f"{where}: no bundle directory at {path}: pass --model PATH to a folder "
                "written by `hdb-mlops train`, or a registry version or alias"
            )
        if not path.is_dir():
            raise UsageError(f"{where}: {path} is a file, expected a bundle directory")
    return ref


def check_port_free(host: str, port: int) -> None:
    """A usage error when ``host:port`` cannot be listened on (taken, or not this machine's);
    port 0 (any free port) is not checked."""
    import socket

    if port == 0:
        return
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as exc:
        raise UsageError(f"argument --host: cannot resolve {host!r} ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(
                f"argument --host: {host} is not an address of this machine "
                "(use 127.0.0.1, or 0.0.0.0 for every interface)"
            ) from None
        raise UsageError(
            f"argument --port: cannot listen on {host}:{port} ({exc.strerror or exc}): "
            "choose another --port (or --host), or stop the server already using it"
        ) from None


def _has_registry_cause(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a registry lookup that found nothing."""
    from hdb_mlops.model.registry import RegistryError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RegistryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_prediction_log(path: Path | None) -> None:
    """A usage error when the prediction log's folder cannot be made or written to."""
    if path is None:
        return
    where = "argument --prediction-log"
    if path.is_dir():
        raise UsageError(f"{where}: {path} is a folder: give a file path such as {path}/log.sqlite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"{where}: cannot create {path.parent} ({exc.strerror or exc}): pass "
            "--prediction-log PATH somewhere writable, or --no-prediction-log"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(
            f"{where}: {path.parent} is not writable: pass --prediction-log PATH somewhere "
            "writable, or --no-prediction-log"
        )


def monitoring_options(args: argparse.Namespace) -> dict:
    """The :func:`~hdb_mlops.serving.server.serve` options of the monitored service."""
    if args.no_monitoring:
        if args.prediction_log is not None or args.drift_window is not None:
            raise UsageError(
                "--prediction-log and --drift-window are monitoring options: drop "
                "--no-monitoring to use them"
            )
        return {}
    from hdb_mlops.monitoring.predlog import PREDICTION_LOG_ENV
    from hdb_mlops.monitoring.service import (
        DRIFT_WINDOW_ENV,
        create_monitored_app,
        drift_window_from_env,
        prediction_log_path,
    )

    if args.no_prediction_log and args.prediction_log is not None:
        raise UsageError("--prediction-log and --no-prediction-log contradict: give one")
    path = None if args.no_prediction_log else prediction_log_path(args.prediction_log)
    check_prediction_log(path)
    window = args.drift_window or drift_window_from_env()
    return {
        "app_factory": create_monitored_app,
        "app_options": {
            "prediction_log": path if path is not None else False,
            "drift_window": window,
        },
        "factory": "hdb_mlops.monitoring.service:app_from_env",
        "worker_env": {
            PREDICTION_LOG_ENV: str(path) if path is not None else "off",
            DRIFT_WINDOW_ENV: str(window),
        },
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model until SIGINT/SIGTERM."""
    model_ref = check_model_ref(args.model)
    check_port_free(args.host, args.port)
    options = monitoring_options(args)
    quiet_mlflow(args)
    from hdb_mlops.serving.loading import ModelLoadError
    from hdb_mlops.serving.server import serve

    try:
        serve(
            host=args.host,
            port=args.port,
            workers=args.workers,
            model_ref=model_ref,
            log_level=args.log_level,
            max_batch=args.max_batch,
            body_timeout=args.body_timeout,
            **options,
        )
    except ModelLoadError as exc:
        if _has_registry_cause(exc):
            raise UsageError(with_hint(exc, NO_CHAMPION_HINT)) from exc
        raise
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    p = sub.add_parser("serve", help="serve the model over HTTP (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=tcp_port, default=8080)
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument(
        "--model",
        default=None,
        metavar="REF",
        help="a bundle folder, a registry version or alias (default: $HDB_MLOPS_MODEL or champion)",
    )
    p.add_argument("--max-batch", type=positive_int, default=1000, help="most rows in one request")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    p.add_argument(
        "--body-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="answer 408 when a request body has not arrived by then "
        "(default: $HDB_MLOPS_BODY_TIMEOUT or 10)",
    )
    p.add_argument(
        "--no-monitoring",
        action="store_true",
        help="serve without drift gauges, prediction log and /feedback (chapter 3's service)",
    )
    p.add_argument(
        "--prediction-log",
        type=Path,
        default=None,
        metavar="PATH",
        help="the prediction log's sqlite file (default: $HDB_MLOPS_PREDICTION_LOG or "
        "runs/monitor/predictions.sqlite)",
    )
    p.add_argument(
        "--no-prediction-log",
        action="store_true",
        help="monitor drift but keep no prediction log (no /feedback)",
    )
    p.add_argument(
        "--drift-window",
        type=positive_int,
        default=None,
        metavar="N",
        help="rows in the drift window (default: $HDB_MLOPS_DRIFT_WINDOW or 1000)",
    )
    # SageMaker starts an inference image as `docker run IMAGE serve`: accept that word.
    p.add_argument("sagemaker_command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)
