"""The model as served: verified bundle, chosen engine, prediction interval factors."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from hdb_mlops.model.bundle import Bundle
from hdb_mlops.serving.engines import Engine, PredictionError, choose_engine
from hdb_mlops.serving.loading import ModelLoadError, ModelSource, load_model
from hdb_mlops.serving.request_schema import RecordBase, Schemas

log = logging.getLogger(__name__)


DEFAULT_LEVEL = 0.9


def _quantile(quantiles: dict[str, float], q: float) -> float:
    for key, value in quantiles.items():
        if abs(float(key) - q) < 1e-9:
            return float(value)
    raise ModelLoadError(
        f"the bundle has no {q:g} residual quantile, needed for a {1 - 2 * min(q, 1 - q):g} "
        f"interval (it has {sorted(quantiles)})"
    )


@dataclass
class ServedModel:
    """What ``app.state.model`` holds: the verified bundle and how it is served."""

    bundle: Bundle
    source: ModelSource
    engine: Engine
    level: float
    lower_factor: float
    upper_factor: float
    info: dict[str, Any]
    loaded_at: str

    @classmethod
    def load(
        cls,
        source: ModelSource,
        schemas: Schemas,
        *,
        level: float = DEFAULT_LEVEL,
        fast_path: bool = True,
        nthread: int = 1,
    ) -> ServedModel:
        """Load, verify and prepare a model (see :func:`load_model`, :func:`choose_engine`)."""
        bundle = load_model(source)
        quantiles = bundle.metadata.get("residual_quantiles") or {}
        lo = _quantile(quantiles, (1 - level) / 2)
        hi = _quantile(quantiles, (1 + level) / 2)
        engine = choose_engine(
            bundle, schemas.record, schemas.max_month, fast_path=fast_path, nthread=nthread
        )
        version = None if source.version is None else str(source.version)
        return cls(
            bundle=bundle,
            source=source,
            engine=engine,
            level=level,
            lower_factor=math.exp(lo),
            upper_factor=math.exp(hi),
            info={"name": bundle.name, "version": version, "sha256": bundle.sha256[:12]},
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def predict(self, records: Sequence[RecordBase]) -> list[dict[str, Any]]:
        """One prediction dict (the shape of
        :class:`~hdb_mlops.serving.request_schema.Prediction`) per row."""
        prices = self.engine.predict(records)
        if prices.shape != (len(records),) or not np.all(np.isfinite(prices) & (prices > 0)):
            raise PredictionError(f"the model returned non-finite or non-positive prices: {prices}")
        lower = (prices * self.lower_factor).tolist()
        upper = (prices * self.upper_factor).tolist()
        level, info = self.level, self.info
        return [
            {
                "prediction_id": str(uuid.uuid4()),
                "price": p,
                "interval": {"level": level, "lower": lo, "upper": hi},
                "model": info,
            }
            for p, lo, hi in zip(prices.tolist(), lower, upper, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        """The ``GET /model`` document."""
        meta = self.bundle.metadata
        source: dict[str, Any] = {"kind": self.source.kind, "ref": self.source.ref}
        if self.source.kind == "registry":
            source.update(registered_model=self.source.registry_name, version=self.source.version)
        else:
            source["path"] = str(self.source.path)
        return {
            **self.info,
            "bundle_sha256": self.bundle.sha256,
            "model_sha256": meta.get("model_sha256"),
            "model_class": meta.get("model_class"),
            "created_at": meta.get("created_at"),
            "loaded_at": self.loaded_at,
            "source": source,
            "metrics": meta.get("metrics") or {},
            "residual_quantiles": meta.get("residual_quantiles") or {},
            "interval_level": self.level,
            "params": meta.get("params") or {},
            "data_hash": meta.get("data_hash"),
            "git": meta.get("git"),
            "extra": meta.get("extra") or {},
            "feature_spec": self.bundle.model.spec.to_dict(),
            "engine": self.engine.name,
        }
