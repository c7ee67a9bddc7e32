"""``hdb-mlops monitor up|down|status|check|render``: chapter 6's local Prometheus and
Alertmanager (Debian's ``prometheus`` and ``prometheus-alertmanager`` packages).

``up`` renders ``prometheus/`` into a work folder (default ``runs/monitor/``) and starts both
servers in the background; ``down`` and ``status`` find them from that folder's state file,
from any shell. ``check`` runs promtool and amtool on the committed files (exit status 1 when
a check fails). ``render --compose`` rewrites the docker-compose variant
(``prometheus/docker/``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    http_url,
    new_or_existing_dir,
    positive_float,
    print_json,
    tcp_port,
)

if TYPE_CHECKING:
    from hdb_mlops.monitoring.stack import Stack

#: As in :mod:`hdb_mlops.monitoring.stack` (kept here so that parsing imports nothing).
DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_RETRAINER_URL = "http://127.0.0.1:9095"


CONFIG_DIR = config.PROJECT_DIR / "prometheus"


def _stack(args: argparse.Namespace) -> Stack:
    from hdb_mlops.monitoring.stack import Stack

    return Stack(args.workdir)


def _answers(url: str) -> bool:
    import requests

    try:
        requests.get(f"{url.rstrip('/')}/metrics", timeout=1)
    except requests.RequestException:
        return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    """Render the configuration and start Prometheus and Alertmanager in the background."""
    stack = _stack(args)
    info = stack.start(
        args.api_url,
        args.retrainer_url,
        prometheus_port=args.prometheus_port,
        alertmanager_port=args.alertmanager_port,
        speed=args.speed,
    )
    if args.json:
        print_json(info.to_dict())
        return 0
    print(f"{'Prometheus':<14}{info.prometheus_url}  (pid {info.pids['prometheus']})")
    print(f"{'Alertmanager':<14}{info.alertmanager_url}  (pid {info.pids['alertmanager']})")
    print(f"{'scraping':<14}{info.api_url} (hdb-api), {info.retrainer_url} (hdb-retrainer)")
    print(f"{'speed':<14}{info.speed:g}x (scrape every {info.scrape_seconds:g} s)")
    print(f"{'work folder':<14}{info.workdir} (logs in {info.workdir / 'logs'})")
    print(f"{'stop with':<14}hdb-mlops monitor down" + _workdir_option(args))
    for url, what in ((info.api_url, "the service"), (info.retrainer_url, "the retrainer")):
        if not _answers(url):
            print(
                f"warning: nothing answers at {url} yet ({what}): Prometheus scrapes it once "
                "it does",
                file=sys.stderr,
            )
    return 0


def _workdir_option(args: argparse.Namespace) -> str:
    return f" --workdir {args.workdir}" if args.workdir else ""


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the stack started in the work folder."""
    stack = _stack(args)
    stopped = stack.stop()
    if args.json:
        print_json({"workdir": str(stack.workdir), "stopped": stopped})
    elif stopped:
        print(f"stopped {', '.join(stopped)} ({stack.workdir})")
    else:
        print(f"no monitoring stack runs in {stack.workdir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print whether Prometheus and Alertmanager run and are ready."""
    status = _stack(args).status()
    if args.json:
        print_json(status)
        return 0
    for name, component in status["components"].items():
        if component["running"]:
            state = "ready" if component["ready"] else "running, not ready"
            print(f"{name:<14}{state:<20}{component['url']}  (pid {component['pid']})")
        else:
            print(f"{name:<14}{'stopped':<20}")
    if "api_url" in status:
        print(f"{'scraping':<14}{status['api_url']}, {status['retrainer_url']}")
        print(f"{'speed':<14}{status['speed']:g}x")
    print(f"{'work folder':<14}{status['workdir']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run promtool and amtool on the committed configuration; exit 1 when a check fails."""
    from hdb_mlops.monitoring.checks import check_committed

    results = check_committed(args.config_dir)
    failed = [r for r in results if not r.ok]
    if args.json:
        print_json({"ok": not failed, "checks": [r.to_dict() for r in results]})
    else:
        for result in results:
            print(f"{'ok' if result.ok else 'FAILED':<8}{result.name}")
            if not result.ok or args.verbose:
                for line in result.output.splitlines():
                    print(f"        {line}")
    if failed:
        print(f"error: {len(failed)} of {len(results)} checks failed", file=sys.stderr)
        return 1
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Write the rendered configuration (``--compose``: the docker-compose variant)."""
    from hdb_mlops.monitoring import stack_config

    if args.compose:
        written = stack_config.write_compose(args.config_dir)
    else:
        stack = _stack(args)
        workdir = stack.workdir
        if any(c["running"] for c in stack.status()["components"].values()):
            raise UsageError(
                f"a monitoring stack runs in {workdir}: render into another --workdir, or "
                f"stop it first with `hdb-mlops monitor down{_workdir_option(args)}`"
            )
        rendered = stack_config.render_local(
            workdir,
            api_url=args.api_url,
            retrainer_url=args.retrainer_url,
            prometheus_port=args.prometheus_port or 9090,
            alertmanager_port=args.alertmanager_port or 9093,
            speed=args.speed,
            config_dir=args.config_dir,
        )
        written = [rendered.prometheus_config, *rendered.rule_files, rendered.alertmanager_config]
    if args.json:
        print_json({"written": [str(p) for p in written]})
    else:
        for path in written:
            print(path)
    return 0


def _add_workdir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workdir",
        type=new_or_existing_dir,
        default=None,
        metavar="DIR",
        help="the stack's folder: rendered files, data, logs, state (default: runs/monitor)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-url", type=http_url, default=DEFAULT_API_URL, metavar="URL",
        help=f"the service to scrape (default {DEFAULT_API_URL})",
    )  # fmt: skip
    p.add_argument(
        "--retrainer-url", type=http_url, default=DEFAULT_RETRAINER_URL, metavar="URL",
        help=f"the retraining webhook to scrape and alert (default {DEFAULT_RETRAINER_URL})",
    )  # fmt: skip
    p.add_argument(
        "--prometheus-port", type=tcp_port, default=0, metavar="N", help="default: a free port"
    )
    p.add_argument(
        "--alertmanager-port", type=tcp_port, default=0, metavar="N", help="default: a free port"
    )
    p.add_argument(
        "--speed", type=positive_float, default=1.0, metavar="N",
        help="divide every interval, window and wait by N (floor 1 s): a scenario runs N "
        "times faster than real time",
    )  # fmt: skip


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``monitor up|down|status|check|render``."""
    monitor = sub.add_parser("monitor", help="local Prometheus + Alertmanager (chapter 6)")
    msub = monitor.add_subparsers(dest="monitor_command", required=True)

    p = msub.add_parser("up", help="render the configuration, start Prometheus and Alertmanager")
    _add_run_options(p)
    _add_workdir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_up)

    p = msub.add_parser("down", help="stop the stack of a work folder")
    _add_workdir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_down)

    p = msub.add_parser("status", help="whether Prometheus and Alertmanager run and are ready")
    _add_workdir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = msub.add_parser(
        "check", help="promtool check/test rules and amtool check-config on prometheus/"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check, config_dir=CONFIG_DIR)

    p = msub.add_parser(
        "render", help="write the rendered configuration (--compose: prometheus/docker/)"
    )
    p.add_argument(
        "--compose", action="store_true", help="the docker-compose variant, into prometheus/docker/"
    )
    _add_run_options(p)
    _add_workdir(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_render, config_dir=CONFIG_DIR)
