"""A small client for Prometheus' HTTP API: instant and range queries as pandas DataFrames,
the active alerts and the scrape targets.

Errors are meant for a learner: a bad expression raises :class:`PromQLError` with
Prometheus' own explanation, a server that does not answer raises
:class:`PrometheusUnreachable` with what to start.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import pandas as pd

DEFAULT_TIMEOUT_S = 10.0


class PromQLError(RuntimeError):
    """Prometheus refused a query (a bad expression, a bad time range)."""


class PrometheusUnreachable(PromQLError):
    """No Prometheus answers at the URL."""


def _timestamp(value: datetime | float | str | None) -> float | str | None:
    """Unix seconds for the API (a datetime, a number, or RFC 3339 text as it is)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def _api(url: str, path: str, params: dict[str, Any], timeout: float) -> Any:
    """GET ``url/api/v1/path`` and return its ``data``; raise the module's errors."""
    import requests

    endpoint = f"{url.rstrip('/')}/api/v1/{path}"
    try:
        response = requests.get(endpoint, params=params, timeout=timeout)
    except requests.ConnectionError:
        raise PrometheusUnreachable(
            f"cannot reach Prometheus at {url}: start it with `hdb-mlops monitor up` "
            "(or check the URL)"
        ) from None
    except requests.Timeout:
        raise PrometheusUnreachable(
            f"Prometheus at {url} did not answer within {timeout:g} s"
        ) from None
    try:
        body = response.json()
    except ValueError:
        raise PromQLError(
            f"{endpoint} answered {response.status_code} without JSON: is this Prometheus?"
        ) from None
    if body.get("status") != "success":
        what = params.get("query")
        prefix = f"bad PromQL expression {what!r}" if what else f"{path} failed"
        raise PromQLError(f"{prefix}: {body.get('error') or body}")
    return body["data"]


def _value(text: str) -> float:
    """A sample value as Prometheus writes it ("NaN", "+Inf", "1.5")."""
    return float(text)


def _frame(rows: list[dict[str, Any]], label_names: list[str]) -> pd.DataFrame:
    columns = [*label_names, "series", "time", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    frame["value"] = frame["value"].astype(float)
    return frame


def series_name(labels: dict[str, str]) -> str:
    """A series as Prometheus prints it: ``name{a="1", b="2"}``."""
    name = labels.get("__name__", "")
    pairs = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{pairs}}}" if pairs or not name else name


def _label_names(result: list[dict[str, Any]]) -> list[str]:
    return sorted({name for item in result for name in item.get("metric", {})})


def query(
    url: str,
    expr: str,
    *,
    at: datetime | float | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """Evaluate ``expr`` at one instant (now by default): one row per series, a column per
    label, ``series`` (its name and labels), ``time`` (UTC) and ``value``. A scalar result is
    one row without labels; an empty result, an empty frame."""
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = _timestamp(at)
    data = _api(url, "query", params, timeout)
    kind, result = data["resultType"], data["result"]
    if kind == "string":
        raise PromQLError(f"{expr!r} is a string, not a number or series")
    if kind == "scalar":
        return _frame([{"series": "", "time": result[0], "value": _value(result[1])}], [])
    names = _label_names(result)
    rows = []
    for item in result:
        labels = item.get("metric", {})
        samples = [item["value"]] if kind == "vector" else item.get("values", [])
        for ts, value in samples:
            rows.append(
                {**labels, "series": series_name(labels), "time": ts, "value": _value(value)}
            )
    return _frame(rows, names)


def query_range(
    url: str,
    expr: str,
    start: datetime | float | str,
    end: datetime | float | str,
    step: float | str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """Evaluate ``expr`` from ``start`` to ``end`` every ``step`` (seconds or a duration such
    as ``"15s"``): a long frame, one row per series and time, with a column per label,
    ``series``, ``time`` (UTC) and ``value``."""
    params = {
        "query": expr,
        "start": _timestamp(start),
        "end": _timestamp(end),
        "step": step,
    }
    result = _api(url, "query_range", params, timeout)["result"]  # always a matrix
    names = _label_names(result)
    rows = []
    for item in result:
        labels = item.get("metric", {})
        name = series_name(labels)
        for ts, value in item.get("values", []):
            rows.append({**labels, "series": name, "time": ts, "value": _value(value)})
    return _frame(rows, names)


def has_data(frame: pd.DataFrame) -> bool:
    """Whether a query result has at least one number (not NaN)."""
    return bool(len(frame)) and bool(frame["value"].map(lambda v: not math.isnan(v)).any())


def wait_for(
    url: str,
    expr: str,
    *,
    timeout: float = 60.0,
    interval: float = 0.5,
    predicate: Any = has_data,
) -> pd.DataFrame:
    """Query ``expr`` until ``predicate(frame)`` holds (default: it has data) and return the
    frame; TimeoutError after ``timeout`` seconds with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        frame = query(url, expr)
        if predicate(frame):
            return frame
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{expr!r} did not give the expected result within {timeout:g} s; last: "
                + (frame[["series", "value"]].to_string(index=False) if len(frame) else "no data")
            )
        time.sleep(interval)


def alerts(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> pd.DataFrame:
    """Prometheus' active alerts (pending and firing): ``alertname``, ``state``, ``labels``,
    ``annotations``, ``active_at``, ``value``."""
    data = _api(url, "alerts", {}, timeout)
    rows = [
        {
            "alertname": a["labels"].get("alertname"),
            "state": a.get("state"),
            "labels": a.get("labels", {}),
            "annotations": a.get("annotations", {}),
            "active_at": a.get("activeAt"),
            "value": _value(a["value"]) if a.get("value") is not None else math.nan,
        }
        for a in data.get("alerts", [])
    ]
    columns = ["alertname", "state", "labels", "annotations", "active_at", "value"]
    return pd.DataFrame(rows, columns=columns)


def targets(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> pd.DataFrame:
    """The active scrape targets: ``job``, ``instance``, ``health`` (up/down/unknown),
    ``last_error``, ``last_scrape``."""
    data = _api(url, "targets", {"state": "active"}, timeout)
    rows = [
        {
            "job": t.get("labels", {}).get("job"),
            "instance": t.get("labels", {}).get("instance"),
            "health": t.get("health"),
            "last_error": t.get("lastError", ""),
            "last_scrape": t.get("lastScrape"),
        }
        for t in data.get("activeTargets", [])
    ]
    return pd.DataFrame(rows, columns=["job", "instance", "health", "last_error", "last_scrape"])
