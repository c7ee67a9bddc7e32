"""The service's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)


LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
PRICE_BUCKETS = tuple(float(x) for x in range(200_000, 1_600_001, 100_000))


class ServiceMetrics:
    """The service's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.predictions = Counter(
            "hdb_predictions", "Prices predicted, by route.", ["endpoint"], registry=r
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

    def observe_predictions(self, endpoint: str, predictions: list[dict[str, Any]]) -> None:
        """Count predictions and add their prices to the histogram."""
        self._child(self.predictions, endpoint).inc(len(predictions))
        self._child(self.batch_rows, endpoint).observe(len(predictions))
        observe = self.price.observe
        for p in predictions:
            observe(p["price"])
