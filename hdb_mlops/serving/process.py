"""Run the prediction service as a real separate process (``hdb-mlops serve``) and talk to it:
what the chapter 3 notebook, the integration tests and the benchmarks do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``hdb-mlops serve`` process."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        """What the server has logged so far (JSON lines)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM (a graceful shutdown), wait for the exit and return its status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_server(
    model_ref: str | Path | int,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    workers: int = 1,
    log_path: Path | str | None = None,
    startup_timeout: float = 120.0,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> ServerProcess:
    """Start ``hdb-mlops serve`` for ``model_ref`` and return once ``/ready`` answers 200.
    ``args`` are more ``serve`` options (``--no-monitoring``, ``--prediction-log PATH``).

    Raises RuntimeError with the server's log when it exits or is not ready in time.
    """
    import requests

    port = port or free_port(host)
    log_path = Path(log_path) if log_path else Path(os.devnull)
    if log_path != Path(os.devnull):
        log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "hdb_mlops.cli", "serve", "--host", host, "--port", str(port),
        "--workers", str(workers), "--model", str(model_ref), "--log-level", "warning", *args,
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = ServerProcess(f"http://{host}:{port}", process, log_path)
    deadline = time.monotonic() + startup_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with status {process.returncode} before it was ready:\n"
                + server.log()[-3000:]
            )
        try:
            if requests.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server was not ready after {startup_timeout:.0f} s")
        time.sleep(0.2)


@contextmanager
def running_server(model_ref: str | Path | int, **kwargs: Any) -> Iterator[ServerProcess]:
    """:func:`start_server` as a context manager that stops the server on exit."""
    server = start_server(model_ref, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def latency_summary(
    url: str, payload: dict[str, Any], *, requests_count: int = 200, path: str = "/predict"
) -> dict[str, float]:
    """Send ``payload`` ``requests_count`` times, one after another, over one keep-alive
    connection; return p50/p95/p99/max latency in milliseconds as seen by the client."""
    import requests

    timings = []
    with requests.Session() as session:
        session.post(f"{url}{path}", json=payload, timeout=10).raise_for_status()  # warm-up
        for _ in range(requests_count):
            start = time.perf_counter()
            response = session.post(f"{url}{path}", json=payload, timeout=10)
            timings.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    values = np.array(timings)
    return {
        "requests": requests_count,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }
