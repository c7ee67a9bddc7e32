"""The promotion gate: which registered version of the model becomes ``champion``.

Candidate and current champion are both scored on the same recent window of sales. The
candidate becomes ``champion`` only if it passes the sanity checks (finite, positive
predictions; single-row latency within budget) and there is no champion yet or it beats the
champion's MAPE by at least ``margin`` percentage points. A sane candidate that loses becomes
``challenger``; one that fails a sanity check gets no alias. The decision is written to the
version's tags (``gate.*``) and description.

:func:`promote` is also ``hdb_mlops.model.registry.promote``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hdb_mlops import config
from hdb_mlops.model import registry, tracking
from hdb_mlops.model.bundle import Bundle, BundleError
from hdb_mlops.model.registry import CHALLENGER, CHAMPION, DEFAULT_NAME

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: Timed single-row predictions for the latency check (after two warm-up calls).
LATENCY_CALLS = 20


@dataclass
class GateDecision:
    """Outcome of the promotion gate for one candidate version."""

    promoted: bool
    reasons: list[str]
    candidate_mape: float | None
    champion_mape: float | None
    checks: dict[str, Any]
    candidate_version: int | None = None
    champion_version: int | None = None
    margin: float | None = None
    name: str = DEFAULT_NAME
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """One paragraph for the version's description."""
        verdict = "PROMOTED to champion" if self.promoted else "NOT promoted"
        return f"Gate {self.decided_at}: {verdict}. " + " ".join(
            r if r.endswith(".") else f"{r}." for r in self.reasons
        )


def _latency_ms(bundle: Bundle, row: pd.DataFrame, calls: int = LATENCY_CALLS) -> float:
    """Median wall time of ``bundle.model.predict`` on one row, in ms (after 2 warm-ups)."""
    for _ in range(2):
        bundle.model.predict(row)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        bundle.model.predict(row)
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


def _score(bundle: Bundle, window: pd.DataFrame) -> tuple[np.ndarray, float | None]:
    """Predictions on the window and their MAPE (None when any is not finite)."""
    from hdb_mlops.model.evaluate import metrics

    pred = np.asarray(bundle.model.predict(window), dtype="float64").reshape(-1)
    if pred.shape[0] != len(window) or not np.isfinite(pred).all():
        return pred, None
    return pred, metrics(window["resale_price"], pred)["mape"]


def _sanity(
    bundle: Bundle, window: pd.DataFrame, latency_budget_ms: float
) -> tuple[dict[str, Any], list[str], float | None]:
    checks: dict[str, Any] = {"integrity": True, "n_window": len(window)}
    reasons: list[str] = []
    try:
        pred, mape = _score(bundle, window)
    except Exception as exc:
        checks.update(predict=False, error=f"{type(exc).__name__}: {exc}")
        return checks, [f"sanity: prediction failed ({type(exc).__name__}: {exc})"], None
    checks["predict"] = True
    if pred.shape[0] != len(window):
        checks["n_predictions"] = int(pred.shape[0])
        reasons.append(f"sanity: {pred.shape[0]} predictions for {len(window)} rows")
    finite = np.isfinite(pred)
    checks["n_nonfinite"] = int((~finite).sum())
    checks["finite"] = bool(finite.all())
    if not checks["finite"]:
        reasons.append(f"sanity: {checks['n_nonfinite']} predictions are NaN or infinite")
    checks["n_nonpositive"] = int((pred[finite] <= 0).sum())
    checks["positive"] = checks["n_nonpositive"] == 0 and bool(finite.any())
    if checks["n_nonpositive"]:
        reasons.append(f"sanity: {checks['n_nonpositive']} predictions are zero or negative")
    try:
        latency = _latency_ms(bundle, window.iloc[[0]])
    except Exception as exc:
        latency = float("inf")
        checks["latency_error"] = f"{type(exc).__name__}: {exc}"
    checks["latency_ms"] = round(latency, 3) if np.isfinite(latency) else None
    checks["latency_budget_ms"] = latency_budget_ms
    checks["latency_ok"] = bool(latency <= latency_budget_ms)
    if not checks["latency_ok"]:
        shown = f"{latency:.1f} ms" if np.isfinite(latency) else "failed"
        reasons.append(
            f"sanity: median single-row latency {shown} is over the {latency_budget_ms:g} ms budget"
        )
    return checks, reasons, mape


def _record(client: MlflowClient, decision: GateDecision) -> None:
    """Write the decision to the candidate version's tags and description."""
    name, version = decision.name, str(decision.candidate_version)
    if not decision.promoted and not decision.checks.get("sane", False):
        outcome = "failed"
    else:
        outcome = "promoted" if decision.promoted else "refused"
    tags = {
        "gate.outcome": outcome,
        "gate.promoted": str(decision.promoted).lower(),
        "gate.reasons": " | ".join(decision.reasons),
        "gate.candidate_mape": str(decision.candidate_mape),
        "gate.champion_mape": str(decision.champion_mape),
        "gate.champion_version": str(decision.champion_version),
        "gate.margin": str(decision.margin),
        "gate.checks": json.dumps(decision.checks, sort_keys=True, default=str),
        "gate.decided_at": decision.decided_at,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    client.update_model_version(name, version, description=decision.summary()[:5000])


def promote(
    candidate: int,
    window: pd.DataFrame,
    *,
    margin: float = 0.1,
    latency_budget_ms: float = config.GATE_LATENCY_BUDGET_MS,
    name: str = DEFAULT_NAME,
) -> GateDecision:
    """Run the promotion gate for version ``candidate`` on ``window`` (recent transactions
    with true ``resale_price``) and move the aliases accordingly.

    The candidate becomes ``champion`` only if (a) its bundle verifies and its predictions
    on the window are all finite and positive, with a median single-row latency within
    ``latency_budget_ms``; and (b) there is no champion yet, or its MAPE is at most the
    champion's MAPE on the same window minus ``margin`` percentage points. A sane loser
    becomes ``challenger``. The previous champion keeps its version number (it only loses
    the alias). The decision is recorded on the candidate version and returned.

    A candidate whose bundle fails verification is refused (``checks["integrity"]`` False);
    a champion whose bundle fails verification raises
    :class:`~hdb_mlops.model.bundle.IntegrityError`, since that needs a person, not an
    automatic replacement.
    """
    if window is None or len(window) == 0:
        raise ValueError("the gate needs a non-empty window of recent transactions")
    if "resale_price" not in window.columns:
        raise ValueError("the window has no resale_price column: the gate needs true prices")
    prices = window["resale_price"].to_numpy(dtype="float64")
    if not (np.isfinite(prices).all() and (prices > 0).all()):
        raise ValueError("the window's resale_price must be finite and positive")

    client = tracking.get_client()
    cand_mv = registry._version(client, name, int(candidate))
    cand_v = int(cand_mv.version)
    champ_v = registry._alias_version(client, name, CHAMPION)
    decision = GateDecision(
        promoted=False,
        reasons=[],
        candidate_mape=None,
        champion_mape=None,
        checks={},
        candidate_version=cand_v,
        champion_version=champ_v,
        margin=margin,
        name=name,
    )
    if champ_v == cand_v:
        decision.reasons.append(f"version {cand_v} is already the champion")
        decision.checks["sane"] = True
        return decision

    try:
        bundle = registry._cached_bundle(client, name, cand_mv)
    except BundleError as exc:
        decision.checks = {"integrity": False, "error": str(exc), "sane": False}
        decision.reasons.append(f"integrity: the candidate's bundle does not verify ({exc})")
    else:
        checks, reasons, cand_mape = _sanity(bundle, window, latency_budget_ms)
        checks["sane"] = not reasons
        decision.checks, decision.candidate_mape = checks, cand_mape
        decision.reasons.extend(reasons)

    sane = decision.checks["sane"]
    if sane and champ_v is None:
        decision.promoted = True
        decision.reasons.append(
            f"no champion yet: version {cand_v} (MAPE {decision.candidate_mape:.2f}%) "
            "passes the sanity checks"
        )
    elif champ_v is not None:
        champion = registry._cached_bundle(client, name, registry._version(client, name, champ_v))
        try:
            _, champ_mape = _score(champion, window)
        except Exception as exc:
            log.warning("champion version %s fails to predict on the window: %s", champ_v, exc)
            champ_mape = None
        decision.champion_mape = champ_mape
        cand_mape = decision.candidate_mape
        if not sane:
            pass
        elif champ_mape is None:
            decision.promoted = True
            decision.reasons.append(
                f"champion version {champ_v} gives no finite predictions on the window; "
                f"version {cand_v} (MAPE {cand_mape:.2f}%) passes the sanity checks"
            )
        elif cand_mape is not None and cand_mape <= champ_mape - margin:
            decision.promoted = True
            decision.reasons.append(
                f"MAPE {cand_mape:.2f}% beats champion version {champ_v}'s {champ_mape:.2f}% "
                f"by {champ_mape - cand_mape:.2f} pp (margin {margin:g} pp)"
            )
        else:
            decision.reasons.append(
                f"MAPE {cand_mape:.2f}% is not at least {margin:g} pp below champion version "
                f"{champ_v}'s MAPE {champ_mape:.2f}% on the same window"
            )

    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(cand_v))
        if champ_v is not None:
            client.set_model_version_tag(name, str(champ_v), "gate.superseded_by", str(cand_v))
    if registry._alias_version(client, name, CHALLENGER) == cand_v and (
        decision.promoted or not sane
    ):
        client.delete_registered_model_alias(name, CHALLENGER)
    if not decision.promoted and sane:
        client.set_registered_model_alias(name, CHALLENGER, str(cand_v))
    _record(client, decision)
    return decision
