"""The address encoding of the XGBoost model: per-level address keys and their target encoding.

Repeated sales of the same block are the strongest signal in this market. :class:`AddressEncoder`
encodes a sale by the shrunk mean index-adjusted log price per sqm of the **earlier** sales of
the same block (and block x flat type), shrunk towards its street's and town's (the levels of
:data:`ENCODING_LEVELS`). :func:`address_keys` gives the keys of those levels for a frame,
:func:`row_keys` for one row in plain Python (the serving fast path). The model that uses it is
:class:`hdb_mlops.model.models.XGBoostModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hdb_mlops.model.features import month_index

#: Levels of the address encoding, coarse to fine; each is shrunk towards the one before.
ENCODING_LEVELS: tuple[str, ...] = ("all", "town", "street", "address", "address_type")


def _clean_text(transactions: pd.DataFrame, column: str) -> pd.Series:
    """Upper-case, stripped, single-spaced text ("" when the column or value is missing)."""
    if column not in transactions:
        return pd.Series("", index=transactions.index, dtype=object)
    codes, uniques = pd.factorize(transactions[column], use_na_sentinel=True)
    cleaned = np.array([" ".join(str(u).upper().split()) for u in uniques] + [""], dtype=object)
    return pd.Series(cleaned[codes], index=transactions.index, dtype=object)


def address_keys(transactions: pd.DataFrame) -> dict[str, np.ndarray]:
    """The keys of the :data:`ENCODING_LEVELS` for each row ("" when unknown: a request
    without block or street falls back to the street or town; "all" is the same for all)."""
    town = _clean_text(transactions, "town")
    street = _clean_text(transactions, "street_name")
    block = _clean_text(transactions, "block")
    flat_type = _clean_text(transactions, "flat_type")
    has_street = street != ""
    has_address = has_street & (block != "")
    address = (town + "|" + block + "|" + street).where(has_address, "")
    return {
        "all": np.full(len(transactions), "*", dtype=object),
        "town": town.to_numpy(dtype=object),
        "street": (town + "|" + street).where(has_street, "").to_numpy(dtype=object),
        "address": address.to_numpy(dtype=object),
        "address_type": (address + "|" + flat_type).where(has_address, "").to_numpy(dtype=object),
    }


def _clean(value: object) -> str:
    return "" if value is None or pd.isna(value) else " ".join(str(value).upper().split())


def row_keys(town: object, block: object, street: object, flat_type: object) -> tuple[str, ...]:
    """:func:`address_keys` for one row in plain Python (microseconds, for the API), in the
    order of :data:`ENCODING_LEVELS`."""
    t, b, s, f = (_clean(v) for v in (town, block, street, flat_type))
    address = f"{t}|{b}|{s}" if s and b else ""
    keys = {
        "all": "*",
        "town": t,
        "street": f"{t}|{s}" if s else "",
        "address": address,
        "address_type": f"{address}|{f}" if address else "",
    }
    return tuple(keys[level] for level in ENCODING_LEVELS)


@dataclass
class AddressEncoder:
    """Leak-free target encoding of the address: the mean index-adjusted log price per sqm
    of a block's sales (and of its flats of the same type), shrunk towards the street's,
    itself shrunk towards the town's (``prior`` pseudo-sales), optionally down-weighting old
    sales (``half_life`` months). Features per encoded level: the encoding (``enc_*``), the
    (weighted) number of sales behind it (``n_*``) and their mean age in months (``age_*``).

    :meth:`fit_transform` encodes each training row from the training sales of **earlier
    months only** (a sale never sees its own price, nor a later one), which is how
    :meth:`transform` sees a future row: through all the training sales. The trees therefore
    learn how much a block's history is worth for a sale after it, not a near copy of itself.
    Unknown addresses fall back to the street, town and overall mean (the sales of the first
    training month, which have no earlier sales at all, get NaN: the trees' missing branch).
    """

    prior: float = 5.0
    half_life: float = 0.0
    levels: tuple[str, ...] = ("address", "address_type")

    def _weight(self, months: np.ndarray) -> np.ndarray:
        if not self.half_life:
            return np.ones(len(months))
        return np.exp(np.log(2) * (months - self.origin_) / self.half_life)

    def feature_arrays(
        self, months: np.ndarray, sums: dict[str, np.ndarray], scale: np.ndarray
    ) -> tuple[list[str], np.ndarray]:
        """Column names and the rows x columns features from per-level sums of (weight,
        weight x residual, weight x month), each row's sums multiplied by ``scale``."""
        names: list[str] = []
        columns: list[np.ndarray] = []
        prior = np.full(len(months), np.nan)  # before the root: nothing known
        for level in ENCODING_LEVELS:
            w, wr, wm = (sums[level][:, j] * scale for j in range(3))
            known = ~np.isnan(prior)
            k = np.where(known, self.prior, 0.0)
            total = w + k
            weighted = wr + k * np.where(known, prior, 0.0)
            value = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)
            if level in self.levels:
                seen = w > 0
                age = np.where(seen, months - wm / np.where(seen, w, 1.0), np.nan)
                names += [f"enc_{level}", f"n_{level}", f"age_{level}"]
                columns += [value, w, age]
            prior = value
        matrix = np.column_stack(columns) if columns else np.zeros((len(months), 0))
        return names, matrix

    def scale(self, months: np.ndarray) -> np.ndarray:
        """The factor on the training sums for rows of ``months``: the decay as seen from the
        month after training (counts do not shrink with the horizon)."""
        return 1.0 / self._weight(np.minimum(months, self.last_ + 1))

    def _features(
        self, index: pd.Index, months: np.ndarray, sums: dict[str, np.ndarray], scale: np.ndarray
    ) -> pd.DataFrame:
        names, matrix = self.feature_arrays(months, sums, scale)
        return pd.DataFrame(matrix, index=index, columns=names)

    def fit_transform(self, transactions: pd.DataFrame, residual: np.ndarray) -> pd.DataFrame:
        """Fit on training rows and their residuals; the past-only features of those rows."""
        months = month_index(transactions["month"]).to_numpy(dtype="int64")
        residual = np.asarray(residual, dtype="float64")
        self.origin_ = int(months.min())
        self.last_ = int(months.max())
        weight = self._weight(months)
        keys = address_keys(transactions)
        self.tables_: dict[str, pd.DataFrame] = {}
        past: dict[str, np.ndarray] = {}
        for level in ENCODING_LEVELS:
            frame = pd.DataFrame(
                {
                    "key": keys[level],
                    "month": months,
                    "w": weight,
                    "wr": weight * residual,
                    "wm": weight * months,
                }
            )
            frame = frame[frame["key"] != ""]
            by_month = frame.groupby(["key", "month"], sort=True)[["w", "wr", "wm"]].sum()
            self.tables_[level] = by_month.groupby(level=0).sum()
            before = by_month.groupby(level=0).cumsum() - by_month  # strictly earlier months
            rows = pd.MultiIndex.from_arrays([keys[level], months])
            past[level] = before.reindex(rows).fillna(0.0).to_numpy()
        return self._features(transactions.index, months, past, 1.0 / weight)

    def transform(self, transactions: pd.DataFrame) -> pd.DataFrame:
        """Features of any rows from all the training sales."""
        months = month_index(transactions["month"]).to_numpy(dtype="int64")
        keys = address_keys(transactions)
        sums = {
            level: self.tables_[level].reindex(keys[level]).fillna(0.0).to_numpy()
            for level in ENCODING_LEVELS
        }
        return self._features(transactions.index, months, sums, self.scale(months))
