"""``hdb-mlops sagemaker ...`` (the SageMaker build pipeline) and ``hdb-mlops promote``.

- ``sagemaker definition``: the pipeline definition JSON, built offline (no AWS call);
- ``sagemaker run --backend local|moto|aws``: local runs the pipeline's entry scripts here;
  moto also upserts and starts the pipeline on a moto server and registers the model
  (PendingManualApproval; ``--approve`` walks the approval); aws upserts and starts it;
- ``sagemaker approve`` / ``sagemaker packages``: the model package registry;
- ``sagemaker deploy``: ModelBuilder's in-process endpoint for an artifact, checked against
  the bundle's own predictions, then taken down;
- ``sagemaker check``: the release tests on one artifact (validation, A/B, endpoint);
- ``sagemaker environments``: what each environment runs (its manifest);
- ``promote --to dev|uat|prod``: move one artifact, by digest, to the next environment.

A check or pipeline run that fails exits with status 1; usage and data errors with 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    EXIT_RUN_FAILED,
    UsageError,
    existing_file,
    existing_path,
    http_url,
    integer,
    month,
    new_file,
    new_or_existing_dir,
    non_negative_float,
    non_negative_int,
    plain_name,
    positive_float,
    positive_int,
    print_json,
)
from hdb_mlops.cli.data import add_source_arguments

BACKENDS = ("local", "moto", "aws")
ENVIRONMENTS = ("dev", "uat", "prod")
DEFAULT_GROUP = "hdb-resale-price"


def _show(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    for key, value in summary.items():
        print(f"{key:<16}{value}")


def _backend(args: argparse.Namespace) -> Any:
    """The backend context manager of the command's --backend options."""
    from hdb_mlops.cloud.backends import open_backend

    if args.backend == "moto" and not args.endpoint_url:
        print(
            "warning: a moto server for this command only: its state ends with it "
            "(give --endpoint-url to keep one)",
            file=sys.stderr,
        )
    return open_backend(args.backend, endpoint_url=args.endpoint_url, region=args.region)


def _settings(args: argparse.Namespace) -> Any:
    from hdb_mlops.cloud.sagemaker.definition import DEFAULT_HYPERPARAMETERS, PipelineSettings
    from hdb_mlops.cloud.sagemaker.entrypoints.contract import decode_value

    params = dict(DEFAULT_HYPERPARAMETERS)
    for item in getattr(args, "param", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"argument --param: {item!r} is not KEY=VALUE (e.g. max_depth=6)")
        params[key] = decode_value(value)
    extra = {"region": args.region} if getattr(args, "region", None) else {}
    for name in ("bucket", "role_arn", "image_uri"):
        if getattr(args, name, None):
            extra[name] = getattr(args, name)
    return PipelineSettings(
        hyperparameters=params,
        mape_threshold=args.threshold,
        model_package_group=getattr(args, "group", DEFAULT_GROUP),
        tuning_jobs=getattr(args, "tuning_jobs", 0),
        **extra,
    )


def _transactions(args: argparse.Namespace) -> Any:
    from hdb_mlops.data.storage import prepare

    return prepare(args.source, args.data_dir, rows=args.rows, seed=args.seed).transactions()


def _artifact(args: argparse.Namespace, ctx: Any, stack: ExitStack) -> Path:
    """The artifact of --artifact, or the one --env runs (or --digest's), fetched verified."""
    from hdb_mlops.cloud import promote

    if args.artifact:
        return Path(args.artifact)
    if not args.env:
        raise UsageError("give --artifact PATH or --env ENV (with --digest D for a given one)")
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hdb-artifact-")))
    store = promote.store_for(ctx, args.root)
    return promote.fetch(store, args.env, work / promote.ARTIFACT_NAME, args.digest)


# ----------------------------------------------------------------------------- commands


def cmd_definition(args: argparse.Namespace) -> int:
    """Print (or write) the pipeline definition, built offline."""
    import json

    from hdb_mlops.cloud.sagemaker.definition import definition_json

    text = definition_json(_settings(args))
    if not args.out:
        print(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json.loads(text), indent=2) + "\n")
    parsed = json.loads(text)
    summary = {
        "definition": str(args.out),
        "steps": [step["Name"] for step in parsed["Steps"]],
        "parameters": [p["Name"] for p in parsed["Parameters"]],
    }
    _show(summary, args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline (see the module docstring); exit 1 when it fails."""
    from hdb_mlops.cloud.sagemaker import execution
    from hdb_mlops.cloud.sagemaker.local import run_local

    settings = _settings(args)
    options = {"rows": args.rows, "seed": args.seed, "cutoff": args.cutoff}
    options["mape_threshold"] = args.threshold
    if args.backend == "aws" and not (args.role_arn and args.image_uri and args.bucket):
        raise UsageError("--backend aws needs your account's --role-arn, --image-uri and --bucket")
    if args.backend == "local":
        run = run_local(args.source, run_dir=args.run_dir, hyperparameters=settings.hyperparameters,
                        **options)  # fmt: skip
        summary: dict[str, Any] = {k: v for k, v in run.to_dict().items() if k != "steps"}
    else:
        with _backend(args) as ctx:
            if args.backend == "aws":  # the jobs run in the account: upsert and start only
                summary = execution.upsert_and_start(
                    ctx, settings, {"MapeThreshold": args.threshold}
                )
                _show(summary, args.json)
                return 0
            summary = execution.run_on_backend(ctx, settings, source=args.source,
                                               run_dir=args.run_dir, local_options=options,
                                               approve=args.approve)  # fmt: skip
    _show(summary, args.json)
    if summary["status"] != "Succeeded":
        mape = summary["metrics"].get("mape", float("nan"))
        print(f"error: the pipeline failed: MAPE {mape:.3f}% is above {args.threshold:g}%",
              file=sys.stderr)  # fmt: skip
        return EXIT_RUN_FAILED
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve (or reject) a model package version."""
    from hdb_mlops.cloud.sagemaker import registry

    with _backend(args) as ctx:
        try:
            package = registry.resolve(ctx, args.group, args.version)
        except registry.RegistryError as exc:
            raise UsageError(f"{exc}: `hdb-mlops sagemaker packages` lists them") from exc
        status = registry.REJECTED if args.reject else registry.APPROVED
        updated = registry.set_status(ctx, package, status, args.note)
    _show(updated.to_dict(), args.json)
    return 0


def cmd_packages(args: argparse.Namespace) -> int:
    """List the versions of a model package group."""
    from hdb_mlops.cloud.sagemaker import registry

    with _backend(args) as ctx:
        packages = [p.to_dict() for p in registry.list_packages(ctx, args.group, args.status)]
    if args.json:
        print_json(packages)
    elif not packages:
        print(f"no versions in {args.group}")
    for p in [] if args.json else packages:
        digest = (p["digest"] or "")[:12]
        print(f"{p['version']:>4}  {p['status']:<22}  {digest}  {p['model_data_url']}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Serve an artifact in process with ModelBuilder, check it, take it down."""
    from hdb_mlops.cloud.sagemaker.deploy import check_in_process

    with _backend(args) as ctx, ExitStack() as stack:
        archive = _artifact(args, ctx, stack)
        rows = _transactions(args).tail(args.check_rows)
        summary = check_in_process(archive, rows, ctx=ctx, name=args.name)
    _show(summary, args.json)
    return 0 if summary["predictions_agree"] else EXIT_RUN_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    """Run release checks on one artifact; exit 1 when one fails."""
    from hdb_mlops.cloud import promote
    from hdb_mlops.cloud.sagemaker import checks

    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    if not wanted or set(wanted) - set(checks.CHECKS):
        raise UsageError(f"argument --checks: use some of {', '.join(checks.CHECKS)}")
    with _backend(args) as ctx, ExitStack() as stack:
        archive = _artifact(args, ctx, stack)
        incumbent = None
        store = promote.store_for(ctx, args.root)
        if "ab" in wanted and args.against and promote.manifest(store, args.against):
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            incumbent = promote.fetch(store, args.against, work / promote.ARTIFACT_NAME)
        outcome = checks.run_checks(
            archive,
            _transactions(args),
            wanted,
            incumbent=incumbent,
            threshold=args.threshold,
            margin=args.margin,
            p99_budget_ms=args.p99_budget_ms,
        )
    if args.json:
        print_json(outcome)
    for r in [] if args.json else outcome["checks"]:
        print(f"{r['check']:<12}{'PASS' if r['passed'] else 'FAIL'}  {r}")
    if not outcome["passed"]:
        failed = ", ".join(r["check"] for r in outcome["checks"] if not r["passed"])
        print(f"error: release checks failed: {failed}", file=sys.stderr)
    return 0 if outcome["passed"] else EXIT_RUN_FAILED


def cmd_environments(args: argparse.Namespace) -> int:
    """Print what each environment runs."""
    from hdb_mlops.cloud import promote

    with _backend(args) as ctx:
        status = promote.status(promote.store_for(ctx, args.root))
    if args.json:
        print_json(status)
        return 0
    for env, found in status.items():
        print(f"{env:<6}{found['digest'] if found else '(nothing promoted yet)'}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote one artifact (by digest) to an environment."""
    from hdb_mlops.cloud import promote

    with _backend(args) as ctx:
        try:
            done = promote.promote(
                ctx, args.artifact, args.to, digest=args.digest, root=args.root, note=args.note
            )
        except promote.PromotionError as exc:
            raise UsageError(str(exc)) from exc
    summary = {
        "environment": done.environment,
        "digest": done.digest,
        "location": done.location,
        "unchanged": done.unchanged,
        "source": done.manifest["source"],
    }
    _show(summary, args.json)
    return 0


# ----------------------------------------------------------------------------- parsers


def _add_backend(p: argparse.ArgumentParser, choices: tuple[str, ...] = BACKENDS) -> None:
    p.add_argument("--backend", choices=choices, default=choices[0])
    p.add_argument(
        "--endpoint-url",
        type=http_url,
        default=None,
        metavar="URL",
        help="a running moto server (moto backend)",
    )
    p.add_argument("--region", default=None)
    p.add_argument("--json", action="store_true")


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        type=new_or_existing_dir,
        default=None,
        metavar="DIR",
        help="local backend: the environments' folder (default: runs/environments)",
    )


def _add_data(p: argparse.ArgumentParser, rows: int | None = None) -> None:
    add_source_arguments(p)
    p.add_argument("--rows", type=positive_int, default=rows, help="a seeded subset of rows")
    p.add_argument("--seed", type=integer, default=config.DEFAULT_SEED)


def _add_artifact(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifact",
        type=existing_path,
        default=None,
        metavar="PATH",
        help="a model.tar.gz (or an unpacked bundle)",
    )
    p.add_argument("--env", choices=ENVIRONMENTS, default=None, help="the artifact ENV runs")
    p.add_argument("--digest", default=None, help="with --env: this artifact of ENV")
    _add_store(p)


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=positive_float, default=10.0, help="CheckMape: MAPE %%")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a hyperparameter")
    p.add_argument("--bucket", default=None, help="the pipeline's S3 bucket")
    p.add_argument("--role-arn", default=None, help="the SageMaker execution role ARN")
    p.add_argument("--image-uri", default=None, help="the project's image in ECR")
    p.add_argument("--group", type=plain_name, default=DEFAULT_GROUP, help="model package group")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``sagemaker`` with its sub-commands, and ``promote``."""
    sm = sub.add_parser("sagemaker", help="the SageMaker 3.x build pipeline (chapter 5C-5F)")
    ssub = sm.add_subparsers(dest="sagemaker_command", required=True)

    p = ssub.add_parser("definition", help="the pipeline definition JSON (offline)")
    p.add_argument("--out", type=new_file, default=None, metavar="FILE")
    p.add_argument("--tuning-jobs", type=non_negative_int, default=0, help="N > 0: a TuningStep")
    p.add_argument("--region", default=None)
    p.add_argument("--json", action="store_true")
    _add_settings(p)
    p.set_defaults(func=cmd_definition)

    p = ssub.add_parser("run", help="run the pipeline: local entry scripts, or on moto / aws")
    _add_backend(p)
    _add_data(p)
    _add_settings(p)
    p.add_argument("--cutoff", type=month, default=None, help="last training month")
    p.add_argument("--run-dir", type=new_or_existing_dir, default=None, metavar="DIR")
    p.add_argument("--approve", action="store_true", help="moto: approve the registered model")
    p.set_defaults(func=cmd_run)

    p = ssub.add_parser("approve", help="approve (or --reject) a registered model version")
    _add_backend(p, ("moto", "aws"))
    p.add_argument("--group", type=plain_name, default=DEFAULT_GROUP)
    p.add_argument(
        "--version", default="pending", help="a number, an ARN, sha256:DIGEST, latest or pending"
    )
    p.add_argument("--reject", action="store_true")
    p.add_argument("--note", default="", help="the approval description")
    p.set_defaults(func=cmd_approve)

    p = ssub.add_parser("packages", help="the versions of the model package group")
    _add_backend(p, ("moto", "aws"))
    p.add_argument("--group", type=plain_name, default=DEFAULT_GROUP)
    p.add_argument("--status", choices=["PendingManualApproval", "Approved", "Rejected"])
    p.set_defaults(func=cmd_packages)

    p = ssub.add_parser("deploy", help="serve an artifact with ModelBuilder in process, check it")
    _add_backend(p, ("local", "moto"))
    _add_artifact(p)
    _add_data(p, rows=2000)
    p.add_argument("--check-rows", type=positive_int, default=20)
    p.add_argument("--name", type=plain_name, default="hdb-mlops-local")
    p.set_defaults(func=cmd_deploy)

    p = ssub.add_parser("check", help="release checks on one artifact")
    _add_backend(p)
    _add_artifact(p)
    _add_data(p)
    p.add_argument(
        "--checks", default="validation,ab,endpoint", help="some of validation,ab,endpoint"
    )
    p.add_argument("--threshold", type=positive_float, default=10.0, help="validation: MAPE %%")
    p.add_argument("--against", choices=ENVIRONMENTS, default=None, help="ab: the incumbent's env")
    p.add_argument("--margin", type=non_negative_float, default=0.05, help="ab: relative slack")
    p.add_argument("--p99-budget-ms", type=positive_float, default=250.0)
    p.set_defaults(func=cmd_check)

    p = ssub.add_parser("environments", help="what dev, uat and prod run (their manifests)")
    _add_backend(p)
    _add_store(p)
    p.set_defaults(func=cmd_environments)

    p = sub.add_parser("promote", help="move one artifact, by digest, to dev, uat or prod")
    p.add_argument("--to", choices=ENVIRONMENTS, required=True)
    p.add_argument(
        "--artifact",
        type=existing_file,
        default=None,
        metavar="PATH",
        help="the built model.tar.gz (dev; or to name a digest by its file)",
    )
    p.add_argument("--digest", default=None, help="the sha256 of the artifact to promote")
    p.add_argument("--note", default="")
    _add_backend(p)
    _add_store(p)
    p.set_defaults(func=cmd_promote)
