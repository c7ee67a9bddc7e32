"""Benchmark: how long chapter 6's closed loop takes, from the start of the drift to the
first alert and to the promoted model serving, in wall-clock and simulated time.

Runs :func:`hdb_mlops.monitoring.closed_loop.run_drift_loop` (a 2017-2020 champion facing
2025's sales; real Prometheus and Alertmanager with every duration divided by ``--speed``;
the webhook receiver retraining in a subprocess) in a temporary folder with its own MLflow
store, then prints each step's time since the drift started: wall-clock seconds and
simulated time (wall x speed), which is what the loop would take in production with the
committed (real-time) configuration, the retraining's own duration aside. It only prints: a
benchmark, not a test.

Usage: python benchmarks/bench_loop.py [--speed 60] [--rate 40] [--repeat 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = {
    "first_alert": "first model alert firing (Prometheus)",
    "webhook": "Alertmanager calls the webhook",
    "promoted": "the gate promotes the challenger",
    "serving": "the new version serves",
}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:4.1f} s" if minutes else f"{rest:.1f} s"


def run_once(speed: float, rate: float) -> dict[str, Any]:
    """One run of the loop in a fresh folder and MLflow store; its summary and timings."""
    from hdb_mlops.monitoring.closed_loop import run_drift_loop

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlruns/mlflow.db"
        os.environ["HDB_MLOPS_MLFLOW_ARTIFACTS"] = str(root / "mlruns" / "artifacts")
        os.environ["HDB_MLOPS_MODEL_CACHE"] = str(root / "mlruns" / "cache")
        started = time.perf_counter()
        report = run_drift_loop(root / "work", speed=speed, rate=rate)
        out = report.summary()
        out["total_wall_s"] = round(time.perf_counter() - started, 1)
        retrain = report.audit[report.audit["decision"] == "retrain"]
        out["retraining_s"] = float(retrain["seconds"].iloc[0]) if len(retrain) else None
        out["decisions"] = report.audit["decision"].value_counts().to_dict()
    return out


def main() -> None:
    """Parse the arguments, run the loop, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per wall second")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = [run_once(args.speed, args.rate) for _ in range(args.repeat)]
    for i, run in enumerate(runs, 1):
        print(f"\nrun {i}: speed {run['speed']:g}x, {args.rate:g} requests/s, "
              f"first alert {run['first_alert']}, timed out: {run['timed_out']}")  # fmt: skip
        print(f"  {'since the drift started':<42}{'wall clock':>12}{'simulated':>18}")
        for step, label in STEPS.items():
            wall, simulated = run["wall_s"][step], run["simulated_s"][step]
            shown = "-" if wall is None else f"{wall:.1f} s"
            print(f"  {label:<42}{shown:>12}{_clock(simulated):>18}")
        gate = run["gate"] or {}
        if run["outcome"] != "promoted":
            print(f"  the retraining: {run['outcome']} {run['error'] or run['gate']}")
        print(f"  retraining job {run['retraining_s']} s; gate: candidate MAPE "
              f"{gate.get('candidate_mape', float('nan')):.2f}% vs champion "
              f"{gate.get('champion_mape', float('nan')):.2f}%; decisions {run['decisions']}; "
              f"whole run {run['total_wall_s']} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
