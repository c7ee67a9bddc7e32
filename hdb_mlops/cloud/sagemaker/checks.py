"""The tests a release runs on ONE artifact (the ``model.tar.gz`` of a digest), never on a
rebuild: the dev -> uat stage of chapter 5F.

- :func:`validate_artifact`: the model, scored on the months after its own cut-off, must
  keep its MAPE under a threshold;
- :func:`ab_compare`: the candidate against the incumbent (what the target environment
  runs now), both scored on the same rows: the months after the later of their cut-offs.
  The candidate passes unless its MAPE is worse than the incumbent's by more than ``margin``
  (relative);
- :func:`endpoint_check`: the artifact served as its SageMaker container serves it (the
  package's service, ``hdb-mlops serve`` in a separate process): ``/ping`` answers 200,
  ``/invocations`` returns the bundle's own predictions for JSON rows, within a latency
  budget (p99 over repeated single-row requests).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _loaded(archive: Path | str, work: Path) -> Any:
    from hdb_mlops.cloud.sagemaker.entrypoints.evaluate import unpack_model
    from hdb_mlops.model.bundle import load_bundle

    source = Path(archive)
    return load_bundle(unpack_model(source.parent if source.is_file() else source, work))


def _after(transactions: pd.DataFrame, cutoff: str) -> pd.DataFrame:
    rows = transactions[transactions["month"] > pd.Period(cutoff, freq="M")]
    if rows.empty:
        raise ValueError(f"the data has no month after the model's cut-off {cutoff}")
    return rows


def validate_artifact(
    archive: Path | str, transactions: pd.DataFrame, threshold: float
) -> dict[str, Any]:
    """Score the artifact on the months after its cut-off; ``passed`` when MAPE <= threshold."""
    from hdb_mlops.cloud.sagemaker.entrypoints.evaluate import evaluation_report

    with tempfile.TemporaryDirectory(prefix="hdb-validate-") as work:
        bundle = _loaded(archive, Path(work))
        cutoff = str(bundle.metadata["extra"]["cutoff"])
        report = evaluation_report(bundle, _after(transactions, cutoff))
    mape = report["regression_metrics"]["mape"]["value"]
    return {
        "check": "validation",
        "passed": bool(mape <= threshold),
        "mape": mape,
        "threshold": threshold,
        "cutoff": cutoff,
        "rows": report["n"],
        "bundle_sha256": report["model"]["bundle_sha256"],
    }


def ab_compare(
    candidate: Path | str,
    incumbent: Path | str | None,
    transactions: pd.DataFrame,
    margin: float = 0.05,
) -> dict[str, Any]:
    """Candidate vs incumbent on the same rows (see the module docstring)."""
    from hdb_mlops.model.evaluate import metrics

    if incumbent is None:
        return {"check": "ab", "passed": True, "reason": "no incumbent: the first release"}
    with tempfile.TemporaryDirectory(prefix="hdb-ab-") as work:
        a = _loaded(candidate, Path(work) / "candidate")
        b = _loaded(incumbent, Path(work) / "incumbent")
        cutoff = max(str(a.metadata["extra"]["cutoff"]), str(b.metadata["extra"]["cutoff"]))
        rows = _after(transactions, cutoff)
        scores = {
            name: metrics(rows["resale_price"], bundle.predict(rows))
            for name, bundle in (("candidate", a), ("incumbent", b))
        }
    limit = scores["incumbent"]["mape"] * (1 + margin)
    return {
        "check": "ab",
        "passed": bool(scores["candidate"]["mape"] <= limit),
        "candidate_mape": scores["candidate"]["mape"],
        "incumbent_mape": scores["incumbent"]["mape"],
        "margin": margin,
        "window_after": cutoff,
        "rows": len(rows),
    }


def endpoint_check(
    archive: Path | str,
    transactions: pd.DataFrame,
    *,
    rows: int = 20,
    requests_count: int = 100,
    p99_budget_ms: float = 250.0,
    folder: Path | str | None = None,
) -> dict[str, Any]:
    """Serve the artifact with the package's service (as its container does) and check
    ``/ping``, ``/invocations`` (the bundle's predictions) and the p99 latency."""
    import requests

    from hdb_mlops.data.examples import request_records
    from hdb_mlops.serving.process import latency_summary, running_server

    sample = transactions.head(rows)
    body = {"instances": request_records(sample)}
    with tempfile.TemporaryDirectory(prefix="hdb-endpoint-") as work:
        bundle = _loaded(archive, Path(work) / "model")
        expected = bundle.predict(sample)
        log_path = Path(folder or work) / "endpoint.log"
        with running_server(bundle.path, log_path=log_path) as server:
            ping = requests.get(f"{server.url}/ping", timeout=10)
            answer = requests.post(f"{server.url}/invocations", json=body, timeout=30)
            answer.raise_for_status()
            got = np.array([p["price"] for p in answer.json()["predictions"]], dtype="float64")
            latency = latency_summary(
                server.url,
                {"instances": body["instances"][:1]},
                requests_count=requests_count,
                path="/invocations",
            )
    agree = bool(np.allclose(got, expected, rtol=1e-9, atol=1e-6))
    return {
        "check": "endpoint",
        "passed": bool(ping.status_code == 200 and agree and latency["p99_ms"] <= p99_budget_ms),
        "ping": ping.status_code,
        "predictions_agree": agree,
        "rows": len(sample),
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "p99_budget_ms": p99_budget_ms,
        "bundle_sha256": bundle.sha256,
    }


#: The checks :func:`run_checks` knows, in the order it runs them.
CHECKS = ("validation", "ab", "endpoint")


def run_checks(
    archive: Path | str,
    transactions: pd.DataFrame,
    wanted: list[str] | tuple[str, ...] = CHECKS,
    *,
    incumbent: Path | str | None = None,
    threshold: float = 10.0,
    margin: float = 0.05,
    p99_budget_ms: float = 250.0,
) -> dict[str, Any]:
    """Run the ``wanted`` checks on one artifact; ``passed`` when every one passed."""
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown or not wanted:
        raise ValueError(f"checks are some of {', '.join(CHECKS)}, not {unknown or 'none'}")
    results = []
    if "validation" in wanted:
        results.append(validate_artifact(archive, transactions, threshold))
    if "ab" in wanted:
        results.append(ab_compare(archive, incumbent, transactions, margin))
    if "endpoint" in wanted:
        results.append(endpoint_check(archive, transactions.tail(200), p99_budget_ms=p99_budget_ms))
    return {"passed": all(r["passed"] for r in results), "checks": results}
