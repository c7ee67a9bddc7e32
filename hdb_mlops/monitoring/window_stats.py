"""The drift statistics of a window's arrays against a reference, in this process or in a
child process of its own.

:class:`~hdb_mlops.monitoring.window.DriftWindow` keeps the last rows priced as numpy
arrays; :func:`window_statistics` turns them into one dict of statistics per feature. It
costs about 10 ms for the course's model (ten features; each ``ks_2samp`` about 1 ms, most
of it scipy's argument handling in Python). In the service's own process those 10 ms hold
the interpreter lock that the event loop needs: every request that arrives meanwhile waits,
and at 200 requests a second the p99 latency doubles. :class:`StatisticsWorker` therefore
computes them in one child process of its own: the service only pickles the arrays (about
120 kB, under a millisecond) and waits for the answer without the lock. Should the child
die or hang, that computation runs in this process instead and a new child is started for
the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from hdb_mlops.monitoring import drift

log = logging.getLogger(__name__)

#: Seconds a scrape waits for the child's answer before computing in this process.
CHILD_TIMEOUT_S = 10.0
#: Failed children in a row after which the statistics stay in the service's process.
MAX_FAILURES = 3


@dataclass(frozen=True)
class ReferenceData:
    """What the statistics compare with (plain data, picklable): per numeric feature its
    name, profile column and reference sample (None: profile version 1); per categorical
    feature its name, profile column and number of bins; the predictions' column and
    sample (None: the profile has none)."""

    numeric: tuple[tuple[str, dict[str, Any], np.ndarray | None], ...]
    categorical: tuple[tuple[str, dict[str, Any], int], ...]
    prediction: dict[str, Any] | None
    prediction_sample: np.ndarray | None


def window_statistics(
    ref: ReferenceData, numeric: np.ndarray, codes: np.ndarray, prices: np.ndarray
) -> list[dict[str, Any]]:
    """Every statistic of a window: ``numeric`` (rows x numeric features), ``codes`` (rows x
    categorical features, -1 for missing) and ``prices`` against ``ref``; one dict per feature
    (feature, kind, psi, ks_statistic, ks_pvalue, chi2_pvalue; None where a statistic does
    not apply), ``prediction`` last. Empty for an empty window."""
    if len(prices) == 0:
        return []
    out = []
    for k, (name, column, sample) in enumerate(ref.numeric):
        out.append(_numeric_stats(name, "numeric", numeric[:, k], column, sample))
    for k, (name, column, n_bins) in enumerate(ref.categorical):
        col = codes[:, k]
        counts = np.bincount(col[col >= 0], minlength=n_bins).astype("float64")
        out.append(
            {
                "feature": name,
                "kind": "categorical",
                "psi": drift.categorical_psi(counts, column),
                "ks_statistic": None,
                "ks_pvalue": None,
                "chi2_pvalue": drift.chi2_pvalue(counts, column),
            }
        )
    if ref.prediction is not None:
        out.append(
            _numeric_stats(
                "prediction", "prediction", prices, ref.prediction, ref.prediction_sample
            )
        )
    return out


def _numeric_stats(
    name: str, kind: str, values: np.ndarray, column: dict[str, Any], sample: np.ndarray | None
) -> dict[str, Any]:
    ks = drift.ks_test(values, sample) if sample is not None else None
    return {
        "feature": name,
        "kind": kind,
        "psi": drift.numeric_psi(values, column),
        "ks_statistic": ks[0] if ks else None,
        "ks_pvalue": ks[1] if ks else None,
        "chi2_pvalue": None,
    }


class StatisticsWorker:
    """:func:`window_statistics` in one child process, ``python -m
    hdb_mlops.monitoring.window_stats``, started by :meth:`start` or the first
    :meth:`compute`; :meth:`close` stops it. Jobs and answers are pickles on the child's
    stdin and stdout, each after its length (4 bytes, big-endian).

    Why a plain child process rather than ``multiprocessing`` or ``concurrent.futures``:
    their ``spawn`` start method re-runs the parent's main script in the child (a notebook
    kernel's, a test runner's, a user's script without an ``if __name__ == "__main__"``
    guard), and ``fork`` is unsafe in a process that runs threads, as the service does."""

    def __init__(self, timeout_s: float = CHILD_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one job at a time
        self.fallbacks = 0  # computations done in this process because the child failed
        self._failures = 0  # in a row; after MAX_FAILURES no more children

    def start(self) -> None:
        """Start the child (if none runs); it imports numpy and scipy before its first job."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen | None:
        # select() on a pipe (the answer's timeout) needs a POSIX system: elsewhere (Windows)
        # the statistics stay in the service's process
        if self._failures >= MAX_FAILURES or os.name != "posix":
            return None
        if self._proc is None or self._proc.poll() is not None:
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, env.get("PYTHONPATH")) if p
            )
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        return self._proc

    def compute(
        self, ref: ReferenceData, numeric: np.ndarray, codes: np.ndarray, prices: np.ndarray
    ) -> list[dict[str, Any]]:
        """:func:`window_statistics` of the arrays, from the child; in this process when the
        child fails or takes longer than ``timeout_s`` (a new child for the next call)."""
        with self._lock:
            started = time.monotonic()
            proc = None
            try:
                proc = self._ensure()
                if proc is not None:
                    assert proc.stdin is not None and proc.stdout is not None
                    _send(proc.stdin, (ref, numeric, codes, prices))
                    answer = _receive(proc.stdout, self.timeout_s)
                    self._failures = 0
                    return answer
            except (OSError, EOFError, TimeoutError, ValueError, pickle.PickleError) as exc:
                self._failures += 1
                log.warning(
                    "drift: the statistics process failed (%s: %s) after %.1f s; computed in "
                    "the service's process%s",
                    type(exc).__name__,
                    exc,
                    time.monotonic() - started,
                    ", a new one starts for the next scrape"
                    if self._failures < MAX_FAILURES
                    else f"; {MAX_FAILURES} failures in a row: from now on always",
                )
                self._stop(proc, kill=True)  # it failed: no grace period
            self.fallbacks += 1
            return window_statistics(ref, numeric, codes, prices)

    def _stop(self, proc: subprocess.Popen | None, kill: bool = False) -> None:
        if proc is None:
            return
        if self._proc is proc:
            self._proc = None
        if kill:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                # a pipe the dead child broke can still hold part of a job: closing raises
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            proc.wait(timeout=5)  # EOF on its stdin: it exits
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the child (a no-op when none runs)."""
        with self._lock:
            self._stop(self._proc)


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _read(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError("the statistics process closed its output")
        data += chunk
    return data


def _receive(stream: BinaryIO, timeout_s: float | None = None) -> Any:
    if timeout_s is not None:
        readable, _, _ = select.select([stream], [], [], timeout_s)
        if not readable:
            raise TimeoutError(f"no answer in {timeout_s:g} s")
    (length,) = struct.unpack(">I", _read(stream, 4))
    return pickle.loads(_read(stream, length))


def main() -> int:
    """The child: answer each job on stdin with its statistics on stdout, until stdin
    closes (the service stopped or died)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    import scipy.stats  # noqa: F401  (now, not at the first job: 0.4 s)

    jobs = sys.stdin.buffer
    while True:
        try:
            ref, numeric, codes, prices = _receive(jobs)
        except EOFError:
            return 0
        _send(out, window_statistics(ref, numeric, codes, prices))


if __name__ == "__main__":
    sys.exit(main())
