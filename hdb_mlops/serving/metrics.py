"""The service's Prometheus metrics, in a registry of its own (one per app).

Besides the service's own series the registry holds prometheus_client's process, platform and
garbage-collector collectors (``process_*``, ``python_*``), so one scrape of ``/metrics``
describes the whole process. Chapter 6's monitoring (:mod:`hdb_mlops.monitoring`) registers its
drift and feedback series in the same registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)


LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PRICE_BUCKETS = tuple(float(x) for x in range(200_000, 1_600_001, 100_000))
#: The ``model_version`` label of a bundle served from a directory (it has no version).
NO_VERSION = "none"
#: Outcomes of ``POST /admin/reload`` (the label values of ``hdb_model_reloads_total``).
RELOAD_OUTCOMES = ("ok", "failed", "unauthorized")
#: Buckets of the absolute percentage error of a prediction (a ratio: 0.05 = 5 %).
APE_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
#: Outcomes of a feedback item (see :mod:`hdb_mlops.monitoring.feedback`).
FEEDBACK_OUTCOMES = ("accepted", "duplicate", "unknown", "late", "invalid", "pending")


def version_label(info: Mapping[str, Any]) -> str:
    """The ``model_version`` label of a served model's info (``"none"`` without a version)."""
    return str(info.get("version") or NO_VERSION)


class ServiceMetrics:
    """The service's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        labels = ["method", "endpoint", "status"]
        self.requests = Counter(
            "hdb_http_requests", "HTTP requests by route and status.", labels, registry=r
        )
        self.latency = Histogram(
            "hdb_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "hdb_rejected_requests",
            "Requests answered with a 4xx, by the error code of the answer's JSON body.",
            ["reason"],
            registry=r,
        )
        self.predictions = Counter(
            "hdb_predictions",
            "Prices predicted, by route and by the version of the model that predicted them.",
            ["endpoint", "model_version"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "hdb_prediction_rows",
            "Rows per prediction request.",
            ["endpoint"],
            buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.price = Histogram(
            "hdb_predicted_price_sgd", "Predicted prices (SGD).", buckets=PRICE_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "hdb_model_info",
            "The served model (value 1), labelled with its name, version and sha256 prefix.",
            ["name", "version", "sha256"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "hdb_model_loaded", "1 when a model is loaded and the service is ready.", registry=r
        )
        self.reloads = Counter(
            "hdb_model_reloads",
            "POST /admin/reload calls: ok (a model is serving after it, new or unchanged), "
            "failed (the old model kept serving), unauthorized (no or a wrong token).",
            ["outcome"],
            registry=r,
        )
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (the lookup is a measurable part of a request)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def observe_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """Count a request and record its latency."""
        self._child(self.requests, method, endpoint, status).inc()
        self._child(self.latency, method, endpoint, status).observe(seconds)

    def observe_rejection(self, reason: str) -> None:
        """Count a 4xx answer by its error code (``invalid_request``, ``not_found``, ...)."""
        self._child(self.rejected, reason).inc()

    def observe_predictions(
        self, endpoint: str, predictions: list[dict[str, Any]], model_version: str = NO_VERSION
    ) -> None:
        """Count predictions (by the predicting model's version) and add their prices to the
        histogram."""
        self._child(self.predictions, endpoint, model_version).inc(len(predictions))
        self._child(self.batch_rows, endpoint).observe(len(predictions))
        observe = self.price.observe
        for p in predictions:
            observe(p["price"])

    def set_model(self, info: Mapping[str, Any] | None) -> None:
        """``hdb_model_info`` for the served model alone (the previous one's series removed)
        and ``hdb_model_loaded``; None: no model (shutting down: the last model's info
        stays)."""
        if info is None:
            self.model_loaded.set(0)
            return
        self.model_info.clear()
        self.model_info.labels(info["name"], version_label(info), info["sha256"]).set(1)
        self.model_loaded.set(1)


class FeedbackMetrics:
    """The prediction log's and the feedback's series (chapter 6's monitoring registers them
    in the service's registry; the bare service has none)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.feedback = Counter(
            "hdb_feedback",
            "Feedback items (actual prices) by outcome; a pending item is counted again as "
            "accepted, late or unknown when it is resolved.",
            ["outcome"],
            registry=r,
        )
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome)
        self.pending = Gauge(
            "hdb_feedback_pending",
            "Feedback items held until their prediction is in the log.",
            registry=r,
        )
        self.expired = Counter(
            "hdb_feedback_expired",
            "Predictions whose feedback window passed without feedback (swept periodically).",
            registry=r,
        )
        self.log_rows = Gauge(
            "hdb_prediction_log_rows",
            "Predictions in the prediction log (every worker's; updated twice a second).",
            registry=r,
        )
        self.log_dropped = Counter(
            "hdb_prediction_log_dropped",
            "Predictions not logged because the log's queue was full.",
            registry=r,
        )
        self.ape = Histogram(
            "hdb_prediction_absolute_percentage_error",
            "Absolute percentage error |predicted - actual| / actual (a ratio: 0.05 = 5 %) of "
            "predictions whose actual price came back, by model version.",
            ["model_version"],
            buckets=APE_BUCKETS,
            registry=r,
        )
