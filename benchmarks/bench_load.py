"""Benchmark: load, normalise and validate the real 1990-2026 resale files.

Prints rows in / kept / quarantined per file and the wall time of each load (best of N).
Usage: python benchmarks/bench_load.py [FOLDER] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hdb_mlops.config import real_data_dir
from hdb_mlops.data.ingest import load_file, load_files, resale_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else real_data_dir()
    if folder is None:
        print("no real data: pass a folder or set HDB_MLOPS_REAL_DATA", file=sys.stderr)
        return 2
    files = resale_files(folder)
    print(f"{'file':<80}{'rows in':>10}{'kept':>10}{'quar.':>7}{'seconds':>9}")
    for path in files:
        best, result = float("inf"), None
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = load_file(path)
            best = min(best, time.perf_counter() - start)
        r = result.report
        print(
            f"{path.name:<80}{r.rows_in:>10,}{r.rows_kept:>10,}{r.rows_quarantined:>7}{best:>9.2f}"
        )
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = load_files(files)
        best = min(best, time.perf_counter() - start)
    r = result.report
    label = "all files together"
    print(f"{label:<80}{r.rows_in:>10,}{r.rows_kept:>10,}{r.rows_quarantined:>7}{best:>9.2f}")
    print(f"reconciles: {r.reconciles}; months {r.month_min} .. {r.month_max}; by rule {r.by_rule}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
