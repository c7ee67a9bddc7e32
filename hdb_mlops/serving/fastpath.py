"""The XGBoost fast path: the model's input built from validated rows with plain numpy,
scored by the booster without the wrapper's per-call overhead.

Every feature comes from the training side's own builders
(:func:`hdb_mlops.model.features.numeric_features` through
:func:`hdb_mlops.serving.engines.numeric_rows`, :func:`~hdb_mlops.model.features.category_codes`,
:func:`~hdb_mlops.model.features.location_values`); this module only lays them out in the
model's column order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hdb_mlops.model.bundle import Bundle
from hdb_mlops.model.features import (
    LOCATION_FEATURES,
    FeatureSpec,
    category_codes,
    location_lookup,
    location_values,
)
from hdb_mlops.serving.engines import Engine, PredictionError, flat_type_of, numeric_rows
from hdb_mlops.serving.request_schema import RecordBase

log = logging.getLogger(__name__)


class BoosterCall:
    """``Booster.inplace_predict`` on a dense float64 matrix, minus the wrapper's per-call
    Python overhead (about 0.3 ms of its 0.4 ms for one row: argument checks, a JSON array
    interface built with ``json.dumps``, a class built per result).

    It calls the same C function as the wrapper (``XGBoosterPredictFromDense``) through
    XGBoost's private ``xgboost.core`` names of the pinned version, so :meth:`create`
    returns None (use the wrapper) when they are missing or the two disagree on a probe.
    """

    def __init__(self, booster: Any):
        import ctypes

        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

        self._ctypes = ctypes
        self._predict = _LIB.XGBoosterPredictFromDense
        self._check = _check_call
        self._ulong = c_bst_ulong
        self._handle = booster.handle
        self._args = make_jcargs(
            type=0,
            training=False,
            iteration_begin=0,
            iteration_end=0,
            missing=math.nan,
            strict_shape=False,
            cache_id=0,
        )

    @classmethod
    def create(cls, booster: Any, probe: np.ndarray) -> BoosterCall | None:
        """A direct caller that agrees with ``booster.inplace_predict`` on ``probe``."""
        try:
            call = cls(booster)
            ok = np.array_equal(call(probe), booster.inplace_predict(probe))
        except Exception as exc:  # another XGBoost version: keep the public wrapper
            log.warning("direct XGBoost prediction unavailable: %s", exc)
            return None
        if not ok:
            log.warning("direct XGBoost prediction disagrees with inplace_predict: not used")
        return call if ok else None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Margins (float32) for a C-contiguous float64 matrix."""
        ct = self._ctypes
        data = np.ascontiguousarray(features, dtype="float64")
        rows, cols = data.shape
        interface = (
            b'{"data": [%d, true], "strides": null, "descr": [["", "<f8"]], '
            b'"typestr": "<f8", "shape": [%d, %d], "version": 3}' % (data.ctypes.data, rows, cols)
        )
        preds = ct.POINTER(ct.c_float)()
        shape = ct.POINTER(self._ulong)()
        dims = self._ulong()
        self._check(
            self._predict(
                self._handle,
                interface,
                self._args,
                None,
                ct.byref(shape),
                ct.byref(dims),
                ct.byref(preds),
            )
        )
        size = 1
        for i in range(dims.value):
            size *= int(shape[i])
        if size != rows:
            raise PredictionError(f"expected {rows} predictions, XGBoost returned {size}")
        # the buffer belongs to XGBoost (thread-local): copy it before the next call
        return np.ctypeslib.as_array(preds, shape=(rows,)).copy()


class AddressEncoding:
    """:meth:`hdb_mlops.model.encoding.AddressEncoder.transform` for validated rows, without its
    per-call pandas cost (about 10 ms for one row on a busy 2-core machine): the keys of an
    address from :func:`hdb_mlops.model.encoding.row_keys` (plain Python), the encoder's per-key
    sums from dictionaries made once from its tables, and the encoder's own arithmetic
    (:meth:`~hdb_mlops.model.encoding.AddressEncoder.feature_arrays`) on arrays."""

    def __init__(self, encoder: Any):
        from hdb_mlops.model.encoding import ENCODING_LEVELS

        self.encoder = encoder
        self.levels = tuple(ENCODING_LEVELS)
        self.tables = {
            level: {
                key: (float(w), float(wr), float(wm))
                for key, w, wr, wm in zip(
                    table.index, table["w"], table["wr"], table["wm"], strict=True
                )
            }
            for level, table in encoder.tables_.items()
        }
        self.columns = self._encode(np.zeros(0, dtype="int64"), [])[0]

    def _encode(self, months: np.ndarray, keys: Sequence[tuple]) -> tuple[list[str], np.ndarray]:
        zero = (0.0, 0.0, 0.0)
        sums = {
            level: np.array(
                [self.tables.get(level, {}).get(k[j], zero) for k in keys], dtype="float64"
            ).reshape(len(keys), 3)
            for j, level in enumerate(self.levels)
        }
        return self.encoder.feature_arrays(months, sums, self.encoder.scale(months))

    def features(self, records: Sequence[RecordBase], month_index: np.ndarray) -> np.ndarray:
        """The encoder's features for ``records`` (rows x :attr:`columns`, the model's order)."""
        from hdb_mlops.model.encoding import row_keys

        keys = [
            row_keys(r.town, r.block, r.street_name, flat_type_of(r.flat_type)) for r in records
        ]
        return self._encode(month_index.astype("int64"), keys)[1]


class XGBoostEngine(Engine):
    """XGBoost without pandas: a float64 feature matrix in the model's column order scored
    with the booster (see :class:`BoosterCall`), plus the model's market index
    (precomputed as an array)."""

    name = "xgboost"

    def __init__(self, bundle: Bundle, *, nthread: int = 1, direct: bool = True):
        model = bundle.model
        self.model = model
        spec: FeatureSpec = model.spec  # the pickled order (feature_spec.json has sorted keys)
        self.columns = list(spec.columns)
        self.month_col = self.columns.index("month_index")
        self.booster = model.booster_.get_booster()
        encoder = getattr(model, "encoder_", None)
        self.encoding = AddressEncoding(encoder) if encoder is not None else None
        extra = self.encoding.columns if self.encoding is not None else []
        names = self.booster.feature_names
        if names is not None and list(names) != [*self.columns, *extra]:
            raise ValueError(f"booster features {names} are not {[*self.columns, *extra]}")
        if nthread:
            self.booster.set_param({"nthread": int(nthread)})
        self.categorical = {col: tuple(cats) for col, cats in spec.categorical.items()}
        self.location = spec.location
        self.locations = location_lookup(model.locations) if spec.location else {}
        self.detrend = bool(getattr(model, "detrend", False))
        if self.detrend:
            index = model.index_
            self.first, self.last = int(index.first_), int(index.last_)
            values = index.values_.reindex(range(self.first, self.last + 1))
            self.index_values = values.to_numpy(dtype="float64")
            self.slope = float(index.slope_)
        self.call = None
        if direct:
            probe = np.zeros((3, len(self.columns) + len(extra)), dtype="float64")
            probe[1] = np.nan
            probe[2] = 1.0
            self.call = BoosterCall.create(self.booster, probe)

    def _market_index(self, month_index: np.ndarray) -> np.ndarray:
        """TrendIndex.__call__ on an array: the index, carried along its slope after the
        last training month."""
        idx = month_index.astype("int64")
        known = self.index_values[np.minimum(np.maximum(idx, self.first), self.last) - self.first]
        return known + self.slope * np.maximum(idx - self.last, 0)

    def features(self, records: Sequence[RecordBase]) -> np.ndarray:
        """The feature matrix (rows x spec columns, then the address encoding's), categories
        as codes, NaN for unknown."""
        cols: dict[str, Any] = numeric_rows(records)
        if self.location:
            located = location_values(
                self.locations, [r.block for r in records], [r.street_name for r in records]
            )
            for j, col in enumerate(LOCATION_FEATURES):
                cols[col] = located[:, j]
        for col, categories in self.categorical.items():
            if col == "flat_type":
                values = [flat_type_of(r.flat_type) for r in records]
            else:
                values = [getattr(r, col) for r in records]
            cols[col] = category_codes(values, categories)
        # one row: Python numbers and 1-element arrays alike go in by broadcasting
        matrix = np.empty((len(records), len(self.columns)), dtype="float64")
        for j, col in enumerate(self.columns):
            matrix[:, j] = cols[col]
        if self.encoding is not None:
            encoded = self.encoding.features(records, matrix[:, self.month_col])
            matrix = np.concatenate([matrix, encoded], axis=1)
        return matrix

    def predict(self, records: Sequence[RecordBase]) -> np.ndarray:
        features = self.features(records)
        if self.call is not None:
            log_rel = self.call(features)
        else:
            log_rel = self.booster.inplace_predict(features, validate_features=False)
        if self.detrend:
            log_rel = log_rel + self._market_index(features[:, self.month_col])
        return np.exp(np.asarray(log_rel)).astype("float64", copy=False)
