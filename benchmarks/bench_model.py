"""Benchmark: price-model quality on the real data (holdout and rolling, raw vs location).

Trains the baselines and the default XGBoost model under the time-aware protocols of
:mod:`hdb_mlops.model.evaluate` and prints every metric of
:func:`hdb_mlops.model.evaluate.metrics`, the fit time and the course's quality bars
(PASS/FAIL). It only prints: a benchmark, not a test.

* holdout: train on months <= 2024-12, test on every later month;
* rolling: retrain before every month from 2025-01 on all earlier months, predict that month
  (``--quick``: the first 6 months only).

Usage: python benchmarks/bench_model.py [DATA] [--protocol holdout|rolling|both] [--quick]
       [--features raw|location|both] [--json out.json]

DATA is a resale file or a folder (default: ``hdb_mlops.config.real_data_dir()``); in a folder
the ``latest*resale*`` file is used when present, otherwise every resale file from 2017 on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from hdb_mlops import config
from hdb_mlops.data.ingest import load_file, load_files, resale_files
from hdb_mlops.model.evaluate import DEFAULT_CUTOFF, Evaluation, holdout, level_drift, rolling
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.model.models import LinearModel, MedianPpsmBaseline, PriceModel, XGBoostModel

ROLLING_START = "2025-01"
QUICK_MONTHS = 6
SINCE = "2017-01"

#: The quality bars of the course: (protocol, features) -> [(metric, "<=" | ">=", value)].
#: They apply to the XGBoost model; baselines are shown for comparison only.
BARS: dict[tuple[str, str], list[tuple[str, str, float]]] = {
    ("holdout", "raw"): [("mape", "<=", 4.2)],
    ("holdout", "location"): [("mape", "<=", 3.5), ("within_5", ">=", 75.0)],
    ("rolling", "raw"): [("mean_monthly_mape", "<=", 3.0)],
    ("rolling", "location"): [("mean_monthly_mape", "<=", 3.0)],
}

COLUMNS = [
    ("mape", "MAPE%", "{:.2f}"),
    ("median_ape", "MdAPE%", "{:.2f}"),
    ("mae", "MAE", "{:,.0f}"),
    ("rmse", "RMSE", "{:,.0f}"),
    ("r2", "R2", "{:.4f}"),
    ("within_5", "<=5%", "{:.1f}"),
    ("within_10", "<=10%", "{:.1f}"),
    ("mean_monthly_mape", "mMAPE%", "{:.2f}"),
    ("fit_seconds", "fit s", "{:.1f}"),
    ("n", "rows", "{:,}"),
]


def load_transactions(source: Path) -> pd.DataFrame:
    """Normalised transactions from a resale file or folder (2017 onwards for a folder)."""
    if source.is_file():
        return load_file(source).frame
    latest = sorted(p for p in source.glob("latest*resale*") if p.is_file())
    if latest:
        return load_file(latest[0]).frame
    frame = load_files(resale_files(source)).frame
    return frame[frame["month"] >= pd.Period(SINCE, freq="M")].reset_index(drop=True)


def location_tables(source: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The (geocodes, stations) tables beside the data, or the machine's defaults."""
    from hdb_mlops.data.location_files import default_location_tables

    folder = source if source.is_dir() else source.parent
    previous = os.environ.get(config.REAL_DATA_ENV)
    os.environ[config.REAL_DATA_ENV] = str(folder)
    try:
        return default_location_tables()
    finally:
        if previous is None:
            os.environ.pop(config.REAL_DATA_ENV, None)
        else:
            os.environ[config.REAL_DATA_ENV] = previous


def check_bars(protocol: str, features: str, overall: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for metric, op, bar in BARS.get((protocol, features), []):
        value = overall.get(metric)
        ok = value is not None and (value <= bar if op == "<=" else value >= bar)
        out.append({"metric": metric, "op": op, "bar": bar, "value": value, "pass": bool(ok)})
    return out


#: Attributes that make two sales "twins": the same flat as far as the published columns tell.
TWIN_KEYS = [
    "block",
    "street_name",
    "flat_type",
    "flat_model",
    "storey_range",
    "floor_area_sqm",
    "lease_commence_date",
    "month",
]


def twin_floor(transactions: pd.DataFrame, start: str) -> dict[str, float]:
    """How far apart twins sell: each sale from ``start`` that has a twin sold in the same
    month is predicted by the mean price of its twins (leave one out).

    That error is a floor for any model of the published columns; for pairs it is about
    sqrt(2) times the error of a perfect model (both prices carry the unexplained part), so
    ``perfect_model_mape`` estimates the best MAPE reachable."""
    t = transactions[transactions["month"] >= pd.Period(start, freq="M")]
    price = t["resale_price"].astype("float64")
    groups = price.groupby([t[k] for k in TWIN_KEYS], observed=True)
    n, total = groups.transform("size"), groups.transform("sum")
    twin = n >= 2
    loo = (total[twin] - price[twin]) / (n[twin] - 1)
    ape = (loo - price[twin]).abs() / price[twin] * 100
    return {
        "sales": len(t),
        "with_twin": int(twin.sum()),
        "twin_mape": float(ape.mean()),
        "twin_within_5": float((ape <= 5).mean() * 100),
        "perfect_model_mape": float(ape.mean() / 2**0.5),
    }


def run_one(
    transactions: pd.DataFrame,
    protocol: str,
    make: Callable[[], PriceModel],
    end: str | None,
) -> Evaluation:
    if protocol == "holdout":
        return holdout(transactions, make, cutoff=DEFAULT_CUTOFF)
    return rolling(transactions, make, start=ROLLING_START, end=end)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'protocol':<9}{'features':<10}{'model':<13}"
    head += "".join(f"{label:>11}" for _, label, _ in COLUMNS)
    print(head)
    print("-" * len(head))
    for row in rows:
        line = f"{row['protocol']:<9}{row['features']:<10}{row['model']:<13}"
        for key, _, fmt in COLUMNS:
            value = row["metrics"].get(key) if key != "fit_seconds" else row["fit_seconds"]
            line += f"{fmt.format(value) if value is not None else '-':>11}"
        print(line)


def print_bars(rows: list[dict[str, Any]]) -> None:
    print("\nquality bars (XGBoost):")
    for row in rows:
        for bar in row["bars"]:
            value = "-" if bar["value"] is None else f"{bar['value']:.2f}"
            print(
                f"  {row['protocol']:<8}{row['features']:<9}{bar['metric']:<18}"
                f"{value:>7} {bar['op']} {bar['bar']:<5}  {'PASS' if bar['pass'] else 'FAIL'}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None, help="resale file or folder")
    parser.add_argument("--protocol", choices=("holdout", "rolling", "both"), default="both")
    parser.add_argument("--features", choices=("raw", "location", "both"), default="both")
    parser.add_argument(
        "--quick", action="store_true", help=f"rolling on the first {QUICK_MONTHS} months only"
    )
    parser.add_argument("--no-baselines", action="store_true", help="XGBoost only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    source = Path(args.data) if args.data else config.real_data_dir()
    if source is None or not source.exists():
        print(
            f"no real data: pass a resale file or folder, or set {config.REAL_DATA_ENV}",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    transactions = load_transactions(source)
    print(
        f"data: {source} — {len(transactions):,} rows, "
        f"{transactions['month'].min()} .. {transactions['month'].max()} "
        f"(loaded in {time.perf_counter() - t0:.1f} s)"
    )
    features = ["raw", "location"] if args.features == "both" else [args.features]
    locations = None
    if "location" in features:
        locations = location_tables(source)
        if locations is None:
            print("no geocode/station tables: skipping the location features", file=sys.stderr)
            features.remove("location")
        else:
            geocodes, stations = locations
            print(f"location: {len(geocodes):,} geocoded addresses, {len(stations)} stations")
    protocols = ["holdout", "rolling"] if args.protocol == "both" else [args.protocol]
    end = None
    if args.quick:
        end = str(pd.Period(ROLLING_START, freq="M") + QUICK_MONTHS - 1)
    print(f"XGBoost defaults: {json.dumps(XGBoostModel().params(), default=str)}")
    print(
        f"holdout: train <= {DEFAULT_CUTOFF}; "
        f"rolling: monthly from {ROLLING_START} to {end or 'the end'}"
    )

    def xgb(feature_set: str) -> Callable[[], PriceModel]:
        if feature_set == "location":
            return lambda: XGBoostModel(spec=FeatureSpec(location=True), locations=locations)
        return lambda: XGBoostModel(spec=FeatureSpec())

    rows: list[dict[str, Any]] = []
    for protocol in protocols:
        runs: list[tuple[str, str, Callable[[], PriceModel]]] = []
        if not args.no_baselines:
            runs.append(("raw", "median_ppsm", MedianPpsmBaseline))
            runs.append(("raw", "linear", LinearModel))
        runs += [(f, "xgboost", xgb(f)) for f in features]
        for feature_set, name, make in runs:
            start = time.perf_counter()
            ev = run_one(transactions, protocol, make, end)
            wall = time.perf_counter() - start
            row = {
                "protocol": protocol,
                "features": feature_set,
                "model": name,
                "metrics": ev.overall,
                "fit_seconds": ev.fit_seconds,
                "wall_seconds": wall,
                "per_month_mape": {str(k): float(v) for k, v in ev.per_month["mape"].items()},
                "level_drift": level_drift(ev.predictions),
                "bars": check_bars(protocol, feature_set, ev.overall) if name == "xgboost" else [],
            }
            rows.append(row)
            print(
                f"  done {protocol} {feature_set} {name}: MAPE {ev.overall['mape']:.2f}% "
                f"(fit {ev.fit_seconds:.0f} s, wall {wall:.0f} s)",
                flush=True,
            )
    print()
    print_table(rows)
    for row in rows:
        if row["model"] == "xgboost":
            months = " ".join(f"{v:.2f}" for v in row["per_month_mape"].values())
            print(f"\nper-month MAPE, {row['protocol']} {row['features']} xgboost:\n  {months}")
            drift = row["level_drift"]
            adjusted = " ".join(f"{v:.2f}" for v in drift["level_adjusted_mape"])
            bias = " ".join(f"{v:+.1f}" for v in drift["level_bias"])
            pooled = (drift["level_adjusted_mape"] * drift["n"]).sum() / drift["n"].sum()
            print(
                f"  level bias % (actual/predicted - 1): {bias}\n"
                f"  MAPE if the market level were known: {adjusted}\n"
                f"  (all months: {pooled:.2f}%; a diagnostic, not a score)"
            )
    print_bars(rows)
    floor = twin_floor(transactions, ROLLING_START)
    print(
        f"\ntwins (same block, flat type, model, storey band, area, lease start and month), "
        f"from {ROLLING_START}: {floor['with_twin']:,} of {floor['sales']:,} sales\n"
        f"  predicted by their twins' mean price: MAPE {floor['twin_mape']:.2f}%, "
        f"within 5% {floor['twin_within_5']:.1f}%\n"
        f"  implied MAPE of a perfect model of the published columns: "
        f"~{floor['perfect_model_mape']:.1f}%"
    )
    if args.json:
        payload = {
            "data": str(source),
            "rows_total": len(transactions),
            "cutoff": DEFAULT_CUTOFF,
            "rolling": {"start": ROLLING_START, "end": end},
            "xgboost_params": XGBoostModel().params(),
            "results": rows,
            "twin_floor": floor,
        }
        for row in rows:
            row["level_drift"] = {
                str(month): values
                for month, values in row["level_drift"].to_dict(orient="index").items()
            }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
