"""``hdb-mlops assess`` (the maturity questionnaire and the repository scan), ``hdb-mlops
modelcard``, ``hdb-mlops fairness`` and ``hdb-mlops cost``: chapters 7 and 8.

* ``assess --scan PATH [--junit F] [--coverage F]``: the evidence a repository shows, the ten
  categories at the level it proves, and the ML Test Score;
* ``assess --answers FILE [--chart OUT.png]``: a filled-in questionnaire scored;
* ``assess template [--out FILE]``: the blank questionnaire;
* ``modelcard [--version V | --alias A] [--data SOURCE] [--out FILE]``: a registered version's
  model card in Markdown;
* ``fairness [--data SOURCE] [--registered REF | --model NAME]``: valuation errors across
  towns, flat types and price bands;
* ``cost``: the Stage 2 set-up's monthly cost on AWS beside the offline path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cli.args import (
    UsageError,
    data_source,
    existing_dir,
    existing_file,
    integer,
    month,
    new_file,
    new_or_existing_dir,
    non_negative_int,
    plain_name,
    positive_int,
    print_json,
    quiet_mlflow,
    with_hint,
)
from hdb_mlops.cli.model import DEFAULT_REGISTERED_NAME, LIST_HINT, MODEL_NAMES, version_or_alias

# ----------------------------------------------------------------------------- assess


def _print_scan(report: Any) -> None:
    from hdb_mlops.course.scan_checks import MET, NOT_MET, UNDECIDED

    counts = {v: len(report.by_verdict(v)) for v in (MET, NOT_MET, UNDECIDED)}
    print(
        f"Maturity scan of {report.root}: {len(report.rules)} statements, {counts[MET]} met, "
        f"{counts[NOT_MET]} not met, {counts[UNDECIDED]} undecided"
    )
    print(
        "(a level counts only when the repository proves it; undecided statements hold it "
        "back: answer them with `hdb-mlops assess template`)\n"
    )
    print(report.table().drop(columns=["next step"]).to_string())
    score = report.ml_test_score
    sections = ", ".join(f"{k} {v:g}" for k, v in score.sections.items())
    print(f"\nML Test Score (Breck et al. 2017): {sections} -> final {score.final:g}")
    print(f"  {score.meaning}")
    tests = report.facts["tests"]
    junit = (
        "; ".join(
            f"{r['path']}: {r['tests']} tests, {r['failures']} failures, {r['errors']} errors"
            for r in report.facts["junit"]
        )
        or "none read"
    )
    cover = (
        "; ".join(f"{r['path']}: {r['line_rate']:.0%} of lines" for r in report.facts["coverage"])
        or "none read"
    )
    print(
        f"  tests: {tests['functions']} functions in {tests['files']} files; "
        f"CI runs: {', '.join(report.facts['ci_runs']) or 'nothing'}"
    )
    print(f"  JUnit: {junit}; coverage: {cover}")
    for verdict, title in ((NOT_MET, "Not met"), (UNDECIDED, "Undecided")):
        rules = report.by_verdict(verdict)
        if rules:
            print(f"\n{title} ({len(rules)}):")
            for rule in rules:
                where = f" [{', '.join(rule.evidence[:2])}]" if rule.evidence else ""
                print(f"  {rule.id:<20} {rule.details}{where}")
    _print_steps(report.categories)


def _print_steps(categories: list[Any]) -> None:
    from hdb_mlops.course.maturity import LEVEL_NAMES, LEVELS

    print("\nNext steps (what the next level needs, and the step that gets it):")
    for c in categories:
        if not c.missing:
            print(f"  {c.name}: {c.level_name}, nothing missing")
            continue
        target = LEVELS[LEVELS.index(c.level) + 1] if c.level else LEVELS[0]
        print(
            f"  {c.name}: {c.level_name}; {LEVEL_NAMES[target]} needs "
            f"{', '.join(e.id for e in c.missing)}"
        )
        for step in c.steps[:2]:
            where = [
                f"chapter {step.chapter}" if step.chapter else "",
                f"`{step.command}`" if step.command else "",
            ]
            extra = ", ".join(x for x in where if x)
            print(f"    -> {step.step}" + (f" [{extra}]" if extra else ""))


def _chart(results: list[Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from hdb_mlops.course.questionnaire import radar_chart

    out.parent.mkdir(parents=True, exist_ok=True)
    radar_chart(results, title=title).savefig(out, dpi=120)


def cmd_assess(args: argparse.Namespace) -> int:
    """Score a questionnaire (``--answers``) or scan a repository (``--scan``)."""
    if args.scan is None and args.answers is None:
        raise UsageError(
            "give --scan PATH or --answers FILE (or `hdb-mlops assess template` "
            "for a blank questionnaire)"
        )
    if args.answers is not None and (args.junit or args.coverage):
        raise UsageError("--junit and --coverage go with --scan, not --answers")
    if args.scan is not None:
        from hdb_mlops.course.scan import scan

        report = scan(args.scan, junit=args.junit, coverage=args.coverage)
        results, title, payload = report.categories, "Maturity proven by the scan", report
    else:
        from hdb_mlops.course.questionnaire import load_answers

        payload = load_answers(args.answers)
        results, title = payload.categories, "Maturity by category (questionnaire)"
    if args.chart:
        _chart(results, args.chart, title)
    if args.json:
        out = payload.to_dict()
        if args.chart:
            out["chart"] = str(args.chart)
        print_json(out)
        return 0
    if args.scan is not None:
        _print_scan(payload)
    else:
        who = " ".join(x for x in (payload.team, payload.date) if x)
        print(f"Maturity questionnaire{' (' + who + ')' if who else ''}\n")
        print(payload.table().drop(columns=["next step", "undecided"]).to_string())
        _print_steps(results)
    if args.chart:
        print(f"\nradar chart: {args.chart}")
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    """Write the blank questionnaire to ``--out`` (or print it)."""
    if getattr(args, "scan", None) is not None or getattr(args, "answers", None) is not None:
        raise UsageError("`assess template` takes no --scan or --answers")
    from hdb_mlops.course.questionnaire import template_text

    text = template_text()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: fill it in, then `hdb-mlops assess --answers {args.out}`")
    return 0


# ----------------------------------------------------------------------------- modelcard


def _transactions(args: argparse.Namespace) -> Any:
    from hdb_mlops.data.storage import prepare

    prepared = prepare(
        args.data,
        args.data_dir,
        rows=getattr(args, "rows", None),
        seed=getattr(args, "seed", config.DEFAULT_SEED),
    )
    tx = prepared.transactions()
    since = getattr(args, "since", None)
    if since:
        import pandas as pd

        tx = tx[tx["month"] >= pd.Period(since, freq="M")]
        if tx.empty:
            raise UsageError(f"argument --since: no sales from {since} on in the data")
    return tx


def cmd_modelcard(args: argparse.Namespace) -> int:
    """Write (or print) the model card of a registered version."""
    quiet_mlflow(args)
    from hdb_mlops.course.modelcard import model_card, write_model_card
    from hdb_mlops.model import registry

    ref = args.version if args.version is not None else args.alias
    transactions = _transactions(args) if args.data is not None else None
    try:
        text = model_card(ref, args.name, transactions)
    except registry.RegistryError as exc:
        raise UsageError(with_hint(exc, LIST_HINT)) from exc
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_model_card(args.out, text)
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- fairness


def _predictions(args: argparse.Namespace, transactions: Any) -> tuple[Any, str]:
    """Predictions to assess, and a sentence saying where they come from."""
    import pandas as pd

    if args.registered is not None:
        quiet_mlflow(args)
        from hdb_mlops.model import registry

        try:
            bundle = registry.load(args.registered, args.name)
        except registry.RegistryError as exc:
            raise UsageError(with_hint(exc, LIST_HINT)) from exc
        cutoff = (bundle.metadata.get("extra") or {}).get("cutoff")
        test = transactions
        if cutoff:
            test = transactions[transactions["month"] > pd.Period(cutoff, freq="M")]
        if test.empty:
            raise UsageError(f"no sales after the model's cut-off {cutoff}: use later data")
        preds = test[["month", "town", "flat_type", "resale_price"]].copy()
        preds["prediction"] = bundle.predict(test)
        where = f"registered {args.name} {args.registered} on the sales after {cutoff}"
        return preds, where
    from hdb_mlops.model.evaluate import holdout
    from hdb_mlops.model.train import build_model

    ev = holdout(transactions, lambda: build_model(args.model, seed=args.seed), cutoff=args.cutoff)
    return ev.predictions, f"{args.model} trained up to {args.cutoff}, tested on the months after"


def cmd_fairness(args: argparse.Namespace) -> int:
    """Valuation errors by town, flat type and price band, with intervals."""
    from hdb_mlops.course.fairness import disparity_advice, display_table, fairness_report
    from hdb_mlops.model.evaluate import metrics

    preds, where = _predictions(args, _transactions(args))
    report = fairness_report(preds, min_n=args.min_group, n_boot=args.n_boot, seed=args.seed)
    overall = metrics(preds["resale_price"], preds["prediction"])
    if args.json:
        print_json(
            {
                "predictions": where,
                "overall": overall,
                "groupings": {by: r.to_dict() for by, r in report.items()},
            }
        )
        return 0
    print(
        f"Valuation errors of {where}: {len(preds):,} sales, MAPE {overall['mape']:.2f}%, "
        f"{overall['within_5']:.2f}% within ±5%"
    )
    for result in report.values():
        print(f"\nBy {result.by} (best first; 95% bootstrap intervals, {result.n_boot} draws):")
        print(display_table(result, top=args.top).to_string())
        print(disparity_advice(result))
    return 0


# ----------------------------------------------------------------------------- cost


def cmd_cost(args: argparse.Namespace) -> int:
    """The monthly cost of the Stage 2 set-up's scenarios, beside the offline path."""
    from hdb_mlops.course import cost

    prices = cost.load_prices()
    table = cost.estimate_scenarios(prices=prices)
    if args.json:
        print_json(
            {
                "disclaimer": cost.disclaimer(prices),
                "scenarios": cost.SCENARIOS,
                "monthly_usd": table.round(2).to_dict(),
                "prices": prices.to_dict("records"),
            }
        )
        return 0
    print(table.round(2).to_string())
    print("\n" + cost.disclaimer(prices))
    return 0


# ----------------------------------------------------------------------------- parsers


def _add_data(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--data",
        type=data_source,
        default=default,
        metavar="SOURCE",
        help="sample | download | a resale file or a folder of them",
    )
    p.add_argument(
        "--data-dir",
        type=new_or_existing_dir,
        default=None,
        metavar="DIR",
        help="layer root (default: $HDB_MLOPS_DATA_DIR or data/)",
    )
    p.add_argument("--since", type=month, default=None, help="use sales from this month on")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``assess`` (with ``template``), ``modelcard``, ``fairness`` and ``cost``."""
    p = sub.add_parser("assess", help="maturity: scan a repository or score a questionnaire")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--scan", type=existing_dir, metavar="PATH", help="repository to scan")
    source.add_argument(
        "--answers", type=existing_file, metavar="FILE", help="a filled-in questionnaire (YAML)"
    )
    p.add_argument(
        "--junit",
        type=existing_file,
        action="append",
        default=[],
        metavar="FILE",
        help="a JUnit XML report of the tests (repeatable)",
    )
    p.add_argument(
        "--coverage",
        type=existing_file,
        action="append",
        default=[],
        metavar="FILE",
        help="a Cobertura XML coverage report",
    )
    p.add_argument("--chart", type=new_file, metavar="PNG", help="write a radar chart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_assess)
    asub = p.add_subparsers(dest="assess_command", required=False, metavar="{template}")
    t = asub.add_parser("template", help="write the blank questionnaire")
    t.add_argument("--out", type=new_file, metavar="FILE", help="where (default: stdout)")
    t.set_defaults(func=cmd_template)

    p = sub.add_parser("modelcard", help="the model card of a registered version (Markdown)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=positive_int, default=None)
    which.add_argument("--alias", type=plain_name, default="champion")
    p.add_argument("--name", type=plain_name, default=DEFAULT_REGISTERED_NAME)
    _add_data(p, None)
    p.add_argument("--out", type=new_file, metavar="FILE", help="where (default: stdout)")
    p.set_defaults(func=cmd_modelcard)

    p = sub.add_parser("fairness", help="valuation errors across towns, flat types, price bands")
    _add_data(p, "sample")
    p.add_argument("--rows", type=positive_int, default=None, help="keep a seeded subset")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        choices=MODEL_NAMES,
        default="xgboost",
        help="train this model on the holdout protocol (default)",
    )
    which.add_argument(
        "--registered",
        type=version_or_alias,
        default=None,
        metavar="REF",
        help="assess a registered version (number or alias) instead",
    )
    p.add_argument("--name", type=plain_name, default=DEFAULT_REGISTERED_NAME)
    p.add_argument("--cutoff", type=month, default="2024-12", help="last training month")
    p.add_argument("--min-group", type=positive_int, default=30, help="smallest group ranked")
    p.add_argument("--n-boot", type=non_negative_int, default=200, help="bootstrap draws")
    p.add_argument(
        "--top", type=positive_int, default=None, help="show the best and the worst N groups"
    )
    p.add_argument("--seed", type=integer, default=config.DEFAULT_SEED)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fairness)

    p = sub.add_parser("cost", help="monthly AWS cost of the Stage 2 set-up vs offline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)
