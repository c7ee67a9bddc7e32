"""Benchmark: latency of the prediction service under a fixed request rate.

Starts the service as production does (``hdb_mlops.serving.server.serve``: one uvicorn worker, JSON
request logs) on a free port of 127.0.0.1 and drives it open-loop: requests are sent on a
fixed schedule whatever the answers do, and each latency is measured from the request's
*scheduled* time, so queueing shows up (no coordinated omission). For each rate it runs
``GET /health`` (the no-op baseline), then single-row ``POST /predict`` with rows cycling
through the sample, and prints p50/p95/p99. Then the median of 20 sequential 1,000-row
``POST /predict/batch`` calls, and (with ``--loader``) single rows through the generic
loader path for comparison.

The client is a minimal keep-alive HTTP/1.1 client on asyncio streams (tens of microseconds
per request) so that it takes as little CPU from the server as possible; it still runs on the
same machine, so read the numbers with the load average printed next to them. Prints only.

Usage: python benchmarks/bench_serving.py [--model BUNDLE_DIR] [--rates 50 100 200]
       [--seconds 10] [--loader]
Without --model it trains an XGBoost model on the bundled sample (the quick profile's
parameters, one thread) into a temporary bundle first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

P99_BAR_MS = 10.0
P99_BAR_RATE = 200
P50_RATIO_BAR = 2.0
BATCH_BAR_MS = 100.0
BATCH_ROWS = 1000
BATCH_CALLS = 20
#: The generic path takes tens of ms per row: drive it gently so it does not just queue up.
LOADER_RATE = 5


# --------------------------------------------------------------------------- model and rows


def train_bundle(out: Path) -> Path:
    """An XGBoost bundle trained on the sample (quick-profile parameters, one thread)."""
    import pandas as pd

    from hdb_mlops import config
    from hdb_mlops.data import storage
    from hdb_mlops.model import bundle, train

    tx = storage.prepare("sample", out / "data").transactions()
    cutoff = pd.Period(train.default_cutoff(tx), freq="M")
    fit, valid = tx[tx["month"] <= cutoff], tx[tx["month"] > cutoff]
    params = dict(config.profile_settings("quick")["xgb_params"])
    model = train.build_model("xgboost", params=params)
    model.n_jobs = 1
    started = time.perf_counter()
    model.fit(fit)
    print(f"trained xgboost on {len(fit):,} rows in {time.perf_counter() - started:.1f} s")
    pred = model.predict(valid)
    return bundle.save_bundle(
        model,
        out / "bundle",
        metrics={},
        residual_quantiles=bundle.residual_quantiles(valid["resale_price"], pred),
        profile={},
        data_hash=None,
        git=None,
    )


def sample_rows(n: int, data_dir: Path) -> list[dict]:
    """``n`` request rows from the sample (official columns, mixed case as in the files)."""
    from hdb_mlops.data import examples, storage

    tx = storage.prepare("sample", data_dir).transactions().sample(n, random_state=7, replace=True)
    return examples.request_records(tx)


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(bundle_dir: Path, log_file: Path, *, fast_path: bool = True):
    """The service as production runs it (:func:`hdb_mlops.serving.server.serve`: one uvicorn
    worker, JSON request logs at info level, here to ``log_file``); yields its port."""
    port = free_port()
    env = {**os.environ, "HDB_MLOPS_FAST_PATH": "1" if fast_path else "0"}
    code = (
        "from hdb_mlops.serving.server import serve; "
        f"serve(host='127.0.0.1', port={port}, workers=1, model_ref={str(bundle_dir)!r})"
    )
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the service exited ({proc.returncode}): {tail}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if b" 200 " in s.recv(100):
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the service did not become ready in 120 s")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the client


class Connection:
    """One keep-alive HTTP/1.1 connection (just enough protocol for this service)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        """Send a prepared request; return the status after reading the whole response."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def prepare(method: str, path: str, body: bytes | None = None) -> bytes:
    """A raw HTTP/1.1 request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def open_loop(port: int, requests: list[bytes], rate: float, seconds: float) -> dict:
    """Send ``rate`` requests per second for ``seconds`` (cycling through ``requests``);
    latencies in ms from each request's scheduled time. The generator's own garbage
    collector is off meanwhile: a full collection of this process takes 100-200 ms, and each
    request it delays would be charged to the service."""
    gc.collect()
    gc.freeze()
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return await _open_loop(port, requests, rate, seconds)
    finally:
        if gc_was_on:
            gc.enable()
        gc.unfreeze()


async def _open_loop(port: int, requests: list[bytes], rate: float, seconds: float) -> dict:
    idle: list[Connection] = [await Connection.open(port) for _ in range(4)]
    latencies: list[float] = []
    errors = 0
    n = int(rate * seconds)
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []

    reconnects = 0
    bad_statuses: list[int] = []

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors, reconnects
        reused = bool(idle)
        conn = idle.pop() if reused else await Connection.open(port)
        try:
            status = await conn.request(requests[i % len(requests)])
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
            if not reused:
                errors += 1
                return
            # the server closed a keep-alive connection that sat idle (uvicorn: 5 s), as a
            # real client would see it: reconnect and send again, the latency includes it
            reconnects += 1
            conn = await Connection.open(port)
            try:
                status = await conn.request(requests[i % len(requests)])
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                conn.close()
                return
        latencies.append((loop.time() - scheduled) * 1000)
        if status != 200:
            errors += 1
            bad_statuses.append(status)
        idle.append(conn)

    for i in range(n):
        scheduled = start + i * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    achieved = n / (loop.time() - start)
    for conn in idle:
        conn.close()
    return {
        "latencies": latencies,
        "errors": errors,
        "reconnects": reconnects,
        "bad_statuses": bad_statuses,
        "achieved": achieved,
        "n": n,
    }


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def closed_loop(port: int, raw: bytes, calls: int) -> list[float]:
    """Sequential calls on one connection; latencies in ms."""
    conn = await Connection.open(port)
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        status = await conn.request(raw)
        out.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"batch request failed with status {status}")
    conn.close()
    return out


# --------------------------------------------------------------------------- main


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a bundle directory")
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate and endpoint")
    parser.add_argument("--loader", action="store_true", help="also time the loader path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp_dir = Path(tmp)
        bundle_dir = args.model or train_bundle(tmp_dir)
        rows = sample_rows(max(BATCH_ROWS, 500), tmp_dir / "data")
        singles = [prepare("POST", "/predict", json.dumps(r).encode()) for r in rows[:500]]
        health = [prepare("GET", "/health")]
        batch = prepare(
            "POST", "/predict/batch", json.dumps({"records": rows[:BATCH_ROWS]}).encode()
        )
        print(f"model: {bundle_dir}")
        print(f"before: {load()}")
        results = {}
        with running_service(bundle_dir, tmp_dir / "service.log") as port:
            asyncio.run(open_loop(port, singles + health, 50, 2))  # warm-up
            print(f"\n{'endpoint':<16}{'rate':>6}{'sent/s':>8}{'p50 ms':>9}{'p95 ms':>9}"
                  f"{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'reconn.':>8}")  # fmt: skip
            for rate in args.rates:
                for name, reqs in (("GET /health", health), ("POST /predict", singles)):
                    r = asyncio.run(open_loop(port, reqs, rate, args.seconds))
                    lat = r["latencies"]
                    results[(name, rate)] = r
                    print(
                        f"{name:<16}{rate:>6g}{r['achieved']:>8.1f}{pct(lat, 50):>9.2f}"
                        f"{pct(lat, 95):>9.2f}{pct(lat, 99):>9.2f}{max(lat):>9.2f}{r['errors']:>8}"
                        f"{r['reconnects']:>8}"
                    )
                    if r["bad_statuses"]:
                        print(f"{'':<22}non-200 answers: {sorted(r['bad_statuses'])}")
                print(f"{'':<16}{'':>6}  ({load()})")
            asyncio.run(closed_loop(port, batch, 2))  # warm-up
            batch_ms = asyncio.run(closed_loop(port, batch, BATCH_CALLS))
        batch_median = statistics.median(batch_ms)
        print(
            f"\nPOST /predict/batch, {BATCH_ROWS} rows, {BATCH_CALLS} sequential calls: "
            f"median {batch_median:.1f} ms, min {min(batch_ms):.1f}, max {max(batch_ms):.1f}"
        )
        if args.loader:
            with running_service(bundle_dir, tmp_dir / "loader.log", fast_path=False) as port:
                asyncio.run(open_loop(port, singles, LOADER_RATE, 1))
                r = asyncio.run(open_loop(port, singles, LOADER_RATE, args.seconds))
                lat = r["latencies"]
                print(
                    f"loader path (HDB_MLOPS_FAST_PATH=0), POST /predict at {LOADER_RATE}/s: "
                    f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms"
                )
        print(f"after: {load()}")

        print("\nbars:")
        top = max(args.rates)
        if P99_BAR_RATE in args.rates:
            p99 = pct(results[("POST /predict", P99_BAR_RATE)]["latencies"], 99)
            print(
                f"  {verdict(p99 <= P99_BAR_MS)}  /predict p99 at {P99_BAR_RATE} req/s = "
                f"{p99:.2f} ms (bar {P99_BAR_MS:g} ms)"
            )
        else:
            print(f"  SKIP  /predict p99 at {P99_BAR_RATE} req/s (rate not run; top {top:g})")
        for rate in args.rates:
            p50 = pct(results[("POST /predict", rate)]["latencies"], 50)
            base = pct(results[("GET /health", rate)]["latencies"], 50)
            print(
                f"  {verdict(p50 <= P50_RATIO_BAR * base)}  /predict p50 at {rate:g} req/s = "
                f"{p50:.2f} ms, {p50 / base:.2f}x GET /health's {base:.2f} ms "
                f"(bar {P50_RATIO_BAR:g}x)"
            )
        print(
            f"  {verdict(batch_median <= BATCH_BAR_MS)}  {BATCH_ROWS}-row batch median = "
            f"{batch_median:.1f} ms (bar {BATCH_BAR_MS:g} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
