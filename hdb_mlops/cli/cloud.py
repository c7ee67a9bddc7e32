"""``hdb-mlops infra lint|deploy|destroy|audit|moto-server``: the Stage 2 infrastructure.

``lint`` checks the template (cfn-lint and checkov, offline); ``deploy`` and ``destroy``
create and remove the stack; ``audit`` checks what the account holds against the Stage 2
controls and exits 1 when one fails. ``deploy``, ``destroy`` and ``audit`` work on one
backend: ``aws`` (a profile and region) or ``moto``. A moto server started by one command
would be gone before the next, so on the command line ``--backend moto`` needs
``--endpoint-url``: run ``hdb-mlops infra moto-server`` in another terminal first.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

from hdb_mlops.cli.args import (
    EXIT_RUN_FAILED,
    UsageError,
    existing_file,
    http_url,
    print_json,
    tcp_port,
)
from hdb_mlops.cloud.backends import DEFAULT_PREFIX, PREFIX_PATTERN

MOTO_HINT = "start one with `hdb-mlops infra moto-server` and pass its URL"


def prefix_name(text: str) -> str:
    """A resource name prefix (the template's ``Prefix`` pattern)."""
    if not re.fullmatch(PREFIX_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a prefix: lower case letters, digits and '-', 3-20 characters, "
            "starting with a letter (e.g. hdb-mlops-dev)"
        )
    return text


def template_parameter(text: str) -> tuple[str, str]:
    """A template parameter as ``NAME=VALUE``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. Environment=uat)")
    return name, value


@contextlib.contextmanager
def _backend(args: argparse.Namespace) -> Iterator[Any]:
    """The backend of ``args``, with AWS client errors turned into one-line messages."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    from hdb_mlops.cloud.backends import open_backend

    if args.backend == "moto" and not args.endpoint_url:
        raise UsageError(f"--backend moto needs --endpoint-url: {MOTO_HINT}")
    try:
        with open_backend(
            args.backend,
            endpoint_url=args.endpoint_url,
            region=args.region,
            profile=args.profile,
            prefix=args.prefix,
        ) as ctx:
            yield ctx
    except EndpointConnectionError as exc:
        hint = f" ({MOTO_HINT})" if args.backend == "moto" else ""
        raise UsageError(f"cannot reach {exc.kwargs.get('endpoint_url')}{hint}") from exc
    except (BotoCoreError, ClientError) as exc:
        raise RuntimeError(f"AWS: {exc}") from exc


def cmd_lint(args: argparse.Namespace) -> int:
    """Run cfn-lint and checkov on the template; exit 1 when either finds something."""
    from hdb_mlops.cloud.lint import lint

    report = lint(args.template)
    if args.json:
        print_json(report.to_dict())
        return 0 if report.ok else EXIT_RUN_FAILED
    cfn, ck = report.cfn_lint, report.checkov
    print(f"template  {report.template}")
    print(f"cfn-lint  {cfn.version}: {len(cfn.matches)} finding(s) ({cfn.seconds:.1f} s)")
    for match in cfn.matches:
        print(f"  {match['rule']} line {match['line']}: {match['message']}")
    print(
        f"checkov   {ck.version}: {ck.passed} passed, {len(ck.failed)} failed, "
        f"{len(ck.skipped)} skipped, {ck.parsing_errors} parsing error(s) ({ck.seconds:.1f} s)"
    )
    for check in ck.failed:
        print(f"  FAILED  {check['id']} {check['resource']}: {check['name']}")
    for check in ck.skipped:
        print(f"  skipped {check['id']} {check['resource']}: {check['reason'] or '(NO REASON)'}")
    print("clean" if report.ok else "NOT clean")
    return 0 if report.ok else EXIT_RUN_FAILED


def cmd_deploy(args: argparse.Namespace) -> int:
    """Create or update the Stage 2 stack; print its outputs."""
    from hdb_mlops.cloud.infra import deploy

    with _backend(args) as ctx:
        result = deploy(ctx, args.template, args.prefix, dict(args.param))
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"{result.stack_name}: {result.status} on {result.backend} ({result.seconds:.1f} s)")
    for key, value in result.outputs.items():
        print(f"  {key:<28}{value}")
    if result.fallback:
        print("applied with boto3 (moto's CloudFormation lacks them):")
        for line in result.fallback:
            print(f"  {line}")
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    """Remove the stack and what it retains; print what was removed."""
    from hdb_mlops.cloud.infra import destroy

    with _backend(args) as ctx:
        result = destroy(ctx, args.prefix, args.template)
    if args.json:
        print_json(result.to_dict())
        return 0
    if not result.removed:
        print(f"{result.stack_name}: nothing to remove on {result.backend}")
    for line in result.removed:
        print(f"removed {line}")
    return 0


def print_audit_table(findings: list[Any], level: str) -> None:
    """The audit as a table: status, control, level, resource, finding."""
    width = max((len(f.resource) for f in findings), default=8)
    width = min(width, 60)
    print(f"{'STATUS':<7}{'CONTROL':<11}{'LEVEL':<13}{'RESOURCE':<{width + 2}}FINDING")
    for f in findings:
        resource = f.resource if len(f.resource) <= width else "..." + f.resource[-width + 3 :]
        print(
            f"{f.status.upper():<7}{f.control:<11}{f.level:<13}{resource:<{width + 2}}{f.finding}"
        )
    failing = [f for f in findings if not f.passed]
    for f in failing:
        print(f"fix {f.control} on {f.resource}: {f.fix}")
    print(
        f"{len(findings)} checks: {len(findings) - len(failing)} pass, {len(failing)} fail; "
        f"chapter 7 Networking & Security level evidenced: {level}"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit the account for the prefix; exit 1 when a control fails."""
    from hdb_mlops.cloud.audit import audit
    from hdb_mlops.cloud.controls import evidenced_level, failed

    with _backend(args) as ctx:
        findings = audit(ctx, args.prefix)
    level = evidenced_level(findings)
    failing = failed(findings)
    if args.json:
        print_json(
            {
                "backend": args.backend,
                "prefix": args.prefix,
                "passed": len(findings) - len(failing),
                "failed": len(failing),
                "level": level,
                "findings": [f.to_dict() for f in findings],
            }
        )
    else:
        print_audit_table(findings, level)
    return EXIT_RUN_FAILED if failing else 0


def cmd_moto_server(args: argparse.Namespace) -> int:
    """Run a moto server on 127.0.0.1 in the foreground until interrupted."""
    import threading

    from hdb_mlops.cloud.backends import moto_server

    with moto_server(args.port) as url:
        print(f"moto server on {url} (Ctrl-C stops it; its state is lost then)")
        print(f"  hdb-mlops infra deploy --backend moto --endpoint-url {url}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def _backend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("moto", "aws"), required=True)
    p.add_argument(
        "--endpoint-url", type=http_url, default=None, help="the moto server (moto only)"
    )
    p.add_argument("--region", default=None, help="default: the profile's, else ap-southeast-1")
    p.add_argument("--profile", default=None, help="the AWS profile (aws only)")
    p.add_argument("--prefix", type=prefix_name, default=DEFAULT_PREFIX)
    p.add_argument("--json", action="store_true")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``infra`` and its sub-commands."""
    from hdb_mlops.cloud.template import TEMPLATE

    infra = sub.add_parser("infra", help="the Stage 2 infrastructure (chapter 4)")
    isub = infra.add_subparsers(dest="infra_command", required=True)
    p = isub.add_parser("lint", help="cfn-lint and checkov (offline) on the template")
    p.add_argument("--template", type=existing_file, default=TEMPLATE, metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lint)

    p = isub.add_parser("deploy", help="create or update the Stage 2 stack")
    _backend_arguments(p)
    p.add_argument("--template", type=existing_file, default=TEMPLATE, metavar="FILE")
    p.add_argument(
        "--param",
        type=template_parameter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template parameter (repeatable), e.g. Environment=uat",
    )
    p.set_defaults(func=cmd_deploy)

    p = isub.add_parser("destroy", help="remove the stack, its buckets and keys")
    _backend_arguments(p)
    p.add_argument("--template", type=existing_file, default=TEMPLATE, metavar="FILE")
    p.set_defaults(func=cmd_destroy)

    p = isub.add_parser("audit", help="check the account against the Stage 2 controls")
    _backend_arguments(p)
    p.set_defaults(func=cmd_audit)

    p = isub.add_parser("moto-server", help="run a moto server on 127.0.0.1 (foreground)")
    p.add_argument("--port", type=tcp_port, default=5000, help="0: any free port")
    p.set_defaults(func=cmd_moto_server)
