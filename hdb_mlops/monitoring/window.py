"""The drift monitor: a sliding window of the most recent rows the service priced, compared
with the served bundle's reference profile each time Prometheus scrapes ``/metrics``.

:class:`DriftWindow` is both a prediction observer (:mod:`hdb_mlops.serving.observers`) and
a Prometheus collector. On the request path it only appends the validated rows and their
prices to a bounded queue (a lock, a deque append: about a microsecond). A background thread
(every 0.1 s) turns the queued rows into model features, in small batches, with the served
engine's own feature builder (the XGBoost fast path's
:meth:`~hdb_mlops.serving.fastpath.XGBoostEngine.features`, else
``model.features(records_frame(rows))``: the function the reference profile was made with),
and writes them into numpy ring buffers of the last ``size`` rows. A scrape of ``/metrics`` (in
the thread pool, never on the event loop) featurises what is left and computes the statistics
of :mod:`hdb_mlops.monitoring.drift` (:mod:`hdb_mlops.monitoring.window_stats`; in the
service, in a child process, so that they do not hold the event loop's interpreter lock).
The result is cached for ``max_age_s`` (1 s), so scrapes from several Prometheus servers cost
one computation.

Gauges (label ``feature``: a column of the profile, or ``prediction`` for predicted prices):
``hdb_drift_psi``, ``hdb_drift_ks_statistic`` and ``hdb_drift_ks_pvalue`` (numeric and
prediction; only for profiles with a reference sample, version 2), ``hdb_drift_chi2_pvalue``
(categorical) and ``hdb_drift_window_rows``. A reload (:mod:`hdb_mlops.serving.reload`)
empties the window and compares against the new model's profile from then on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hdb_mlops.monitoring import drift
from hdb_mlops.monitoring.window_stats import ReferenceData, StatisticsWorker, window_statistics
from hdb_mlops.serving.request_schema import RecordBase
from hdb_mlops.serving.served import ServedModel

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 1000
#: Rows featurised per call when the window catches up (see :meth:`DriftWindow._drain`).
_CHUNK_ROWS = 50
#: Seconds between the background featuriser's batches (None: only at scrape time).
DEFAULT_DRAIN_S = 0.1
#: Seconds a computed set of drift gauges is served from the cache.
DEFAULT_MAX_AGE_S = 1.0
_KS_HELP = " (left out for a bundle whose profile has no reference sample: profile version 1)"
HELP = {
    "hdb_drift_psi": "Population stability index of the last window_rows rows against the "
    "training profile, by feature (prediction: predicted prices). >0.2: a significant shift.",
    "hdb_drift_ks_statistic": "Two-sample Kolmogorov-Smirnov statistic of the window against "
    "the training profile's reference sample, by numeric feature and prediction" + _KS_HELP,
    "hdb_drift_ks_pvalue": "p-value of the two-sample KS test of the window against the "
    "training profile's reference sample, by numeric feature and prediction" + _KS_HELP,
    "hdb_drift_chi2_pvalue": "p-value of the chi-squared test of the window's category counts "
    "against the training profile's, by categorical feature.",
}


@dataclass
class Reference:
    """What the window compares with, prepared once per served model from its bundle's
    profile and feature spec."""

    model: ServedModel
    columns: list[str]  # the feature spec's columns (the engine's matrix order)
    numeric: list[tuple[str, int, dict[str, Any], np.ndarray | None]] = field(default_factory=list)
    #: (name, spec position, profile column, spec code -> bin, number of bins)
    categorical: list[tuple[str, int, dict[str, Any], np.ndarray, int]] = field(
        default_factory=list
    )
    prediction: dict[str, Any] | None = None
    prediction_sample: np.ndarray | None = None

    @classmethod
    def of(cls, model: ServedModel) -> Reference:
        """The reference of ``model`` (empty when its bundle has no profile)."""
        profile = model.bundle.profile or {}
        spec = model.bundle.model.spec
        columns = list(spec.columns)
        ref = cls(model=model, columns=columns)
        for name, column in (profile.get("numeric") or {}).items():
            if name in columns and column.get("bins"):
                sample = column.get("sample")
                values = np.asarray(sample, dtype="float64") if sample else None
                ref.numeric.append((name, columns.index(name), column, values))
        for name, column in (profile.get("categorical") or {}).items():
            if name in columns and name in spec.categorical and column.get("shares"):
                bins = drift.categories(column)
                position = {b: i for i, b in enumerate(bins[:-1])}
                code_map = np.array(
                    [position.get(c, len(bins) - 1) for c in spec.categorical[name]],
                    dtype="int64",
                )
                ref.categorical.append((name, columns.index(name), column, code_map, len(bins)))
        prediction = profile.get("prediction")
        if prediction and prediction.get("bins"):
            ref.prediction = prediction
            sample = prediction.get("sample")
            ref.prediction_sample = np.asarray(sample, dtype="float64") if sample else None
        return ref

    @property
    def data(self) -> ReferenceData:
        """The profile parts the statistics need (picklable: for the statistics process)."""
        return ReferenceData(
            numeric=tuple((name, column, sample) for name, _, column, sample in self.numeric),
            categorical=tuple((name, column, n) for name, _, column, _, n in self.categorical),
            prediction=self.prediction,
            prediction_sample=self.prediction_sample,
        )

    @property
    def needs_features(self) -> bool:
        """Whether any feature is compared (else only the predictions are)."""
        return bool(self.numeric or self.categorical)

    @property
    def has_samples(self) -> bool:
        """Whether the profile has reference samples (version 2: KS gauges)."""
        return any(s is not None for *_, s in self.numeric) or self.prediction_sample is not None


def feature_matrix(model: ServedModel, records: Sequence[RecordBase]) -> np.ndarray:
    """The model's features of validated rows in the feature spec's column order, the
    categorical columns as codes into the spec's categories (NaN: missing or unknown), built
    by the served engine's own builder when it has one, else by the model's
    :meth:`~hdb_mlops.model.models.PriceModel.features` (what the profile was made with)."""
    spec = model.bundle.model.spec
    columns = list(spec.columns)
    engine = model.engine
    if callable(getattr(engine, "features", None)) and getattr(engine, "columns", None) == columns:
        return np.asarray(engine.features(records), dtype="float64")[:, : len(columns)]
    from hdb_mlops.serving.engines import records_frame

    frame = model.bundle.model.features(records_frame(records))
    out = np.empty((len(records), len(columns)), dtype="float64")
    for j, col in enumerate(columns):
        values = frame[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.to_numpy(dtype="float64")
            out[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            out[:, j] = values.to_numpy(dtype="float64")
    return out


class DriftWindow(Collector):
    """The last ``size`` rows priced, and the drift gauges computed from them when scraped
    (see the module docstring). Thread-safe: rows arrive from the event loop and the thread
    pool, scrapes run in the thread pool. ``statistics_process``: compute the statistics in
    a child process (:class:`~hdb_mlops.monitoring.window_stats.StatisticsWorker`; the
    service does) rather than in this one."""

    def __init__(
        self,
        size: int = DEFAULT_WINDOW,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        drain_every_s: float | None = DEFAULT_DRAIN_S,
        statistics_process: bool = False,
    ):
        if size < 1:
            raise ValueError(f"the drift window must hold at least 1 row, not {size}")
        self.size = int(size)
        self.max_age_s = float(max_age_s)
        self.drain_every_s = drain_every_s
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None
        self._lock = threading.Lock()  # the queue of rows not yet featurised
        self._compute = threading.Lock()  # the ring buffers and the cache
        self._pending: deque[tuple[ServedModel, Sequence[RecordBase], list[float]]] = deque()
        self._pending_rows = 0
        self._ref: Reference | None = None
        self._ref_data: ReferenceData | None = None
        self._worker = StatisticsWorker() if statistics_process else None
        self._cache: tuple[float, list[GaugeMetricFamily]] | None = None
        self._reset_buffers(0, 0)

    # ---- the observer side (request path: cheap)

    def observe(
        self,
        endpoint: str,
        records: Sequence[RecordBase],
        predictions: list[dict[str, Any]],
        model: ServedModel,
    ) -> None:
        """Queue the rows and their prices (only the last ``size`` rows are kept)."""
        prices = [p["price"] for p in predictions]
        with self._lock:
            pending = self._pending
            pending.append((model, records, prices))
            self._pending_rows += len(prices)
            while self._pending_rows - len(pending[0][2]) >= self.size:
                self._pending_rows -= len(pending.popleft()[2])

    def model_changed(self, model: ServedModel) -> None:
        """Compare with ``model``'s profile from now on (the window starts empty)."""
        ref = Reference.of(model)
        if not ref.needs_features and ref.prediction is None:
            log.warning(
                "the served bundle has no reference profile: no drift gauges",
                extra={"model_sha256": model.info["sha256"]},
            )
        elif not ref.has_samples:
            log.warning(
                "the served bundle's reference profile has no reference sample (profile "
                "version 1): PSI and chi-squared only, the KS gauges are left out; retrain "
                "to get them",
                extra={"model_sha256": model.info["sha256"]},
            )
        with self._compute:
            with self._lock:
                self._pending.clear()
                self._pending_rows = 0
            self._ref = ref
            self._ref_data = ref.data
            self._reset_buffers(len(ref.numeric), len(ref.categorical))
            self._cache = None
        if self.drain_every_s and self._drainer is None:
            self._drainer = threading.Thread(
                target=self._drain_forever, name="hdb-drift-drainer", daemon=True
            )
            self._drainer.start()
        if self._worker is not None:
            self._worker.start()  # the child imports scipy now, not at the first scrape

    def close(self) -> None:
        """Stop the background featuriser and the statistics process (the service calls it
        at shutdown)."""
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self._worker is not None:
            self._worker.close()

    def _drain_forever(self) -> None:
        """Featurise the queued rows every ``drain_every_s``: the work is spread over time in
        small batches (about 20 rows at 200 requests/s), so a scrape has only the statistics
        left to compute and no request waits behind a long featurisation."""
        while not self._stop.wait(self.drain_every_s):
            try:
                with self._compute:
                    self._drain()
            except Exception:  # never let the drainer die silently
                log.warning("drift: the background featuriser failed", exc_info=True)

    # ---- the ring buffers (scrape side)

    def _reset_buffers(self, n_numeric: int, n_categorical: int) -> None:
        self._numeric = np.full((self.size, n_numeric), np.nan)
        self._codes = np.full((self.size, n_categorical), -1, dtype="int64")
        self._prices = np.full(self.size, np.nan)
        self._next = 0
        self._rows = 0

    def _drain(self) -> None:
        """Featurise the queued rows of the current model into the ring buffers."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
        ref = self._ref
        if ref is None or not items:
            return
        records: list[RecordBase] = []
        prices: list[float] = []
        for model, rows, row_prices in items:
            if model is ref.model:  # rows priced by a model that is no longer served: out
                records.extend(rows)
                prices.extend(row_prices)
        records, prices = records[-self.size :], prices[-self.size :]
        n = len(prices)
        if n == 0:
            return
        if ref.needs_features:
            try:
                # in chunks, handing the GIL back between them: one call on 1,000 rows holds
                # it for tens of ms, and every request waiting on the event loop with it
                parts = []
                for start in range(0, n, _CHUNK_ROWS):
                    parts.append(feature_matrix(ref.model, records[start : start + _CHUNK_ROWS]))
                    time.sleep(0)
                matrix = np.vstack(parts)
            except Exception:
                log.warning("drift: cannot build the features of %d rows", n, exc_info=True)
                return
            numeric = matrix[:, [pos for _, pos, _, _ in ref.numeric]]
            codes = np.empty((n, len(ref.categorical)), dtype="int64")
            for k, (_, pos, _, code_map, _) in enumerate(ref.categorical):
                raw = matrix[:, pos]
                known = np.isfinite(raw)
                codes[:, k] = -1
                codes[known, k] = code_map[raw[known].astype("int64")]
        slots = (self._next + np.arange(n)) % self.size
        if ref.needs_features:
            self._numeric[slots] = numeric
            self._codes[slots] = codes
        self._prices[slots] = prices
        self._next = int((self._next + n) % self.size)
        self._rows = min(self.size, self._rows + n)

    def statistics(self) -> list[dict[str, Any]]:
        """Drain the queue and compute every statistic of the current window: one dict per
        feature (feature, kind, psi, ks_statistic, ks_pvalue, chi2_pvalue; None where a
        statistic does not apply), ``prediction`` last."""
        with self._compute:
            self._drain()
            return self._statistics()

    def _statistics(self) -> list[dict[str, Any]]:
        ref, n = self._ref_data, self._rows
        if ref is None or n == 0:
            return []
        arrays = (self._numeric[:n], self._codes[:n], self._prices[:n])
        if self._worker is not None:
            return self._worker.compute(ref, *arrays)
        return window_statistics(ref, *arrays)

    @property
    def rows(self) -> int:
        """Rows in the window at the last computation."""
        return self._rows

    # ---- the collector side

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names (for the registry's duplicate check), without computing."""
        yield from self._families([], 0)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The drift gauges, computed at most once per ``max_age_s``."""
        with self._compute:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] >= self.max_age_s:
                started = time.perf_counter()
                self._drain()
                families = self._families(self._statistics(), self._rows)
                self._cache = (time.monotonic(), families)
                log.debug("drift computed", extra={"seconds": time.perf_counter() - started})
            families = self._cache[1]
        yield from families

    @staticmethod
    def _families(stats: list[dict[str, Any]], rows: int) -> list[GaugeMetricFamily]:
        out = []
        for name, key in (
            ("hdb_drift_psi", "psi"),
            ("hdb_drift_ks_statistic", "ks_statistic"),
            ("hdb_drift_ks_pvalue", "ks_pvalue"),
            ("hdb_drift_chi2_pvalue", "chi2_pvalue"),
        ):
            family = GaugeMetricFamily(name, HELP[name], labels=["feature"])
            for row in stats:
                value = row[key]
                if value is not None and np.isfinite(value):
                    family.add_metric([row["feature"]], float(value))
            out.append(family)
        window = GaugeMetricFamily(
            "hdb_drift_window_rows", "Rows in the drift window (the most recent rows priced)."
        )
        window.add_metric([], float(rows))
        out.append(window)
        return out
