"""The bundled synthetic sample: rows in the official 2017+ schema drawn from the calibration.

`generate_sample` draws every column from the aggregates in ``hdb_mlops/resources/calibration.json``
(see `hdb_mlops.data.calibrate` for what they are and the order of the draws) and prices each flat with
the hedonic model fitted on the real data plus normal noise. Blocks and street names are made up
from the town name by a fixed rule; they are plausible, not real addresses. The same seed gives the
same rows, and `write_sample` writes them byte for byte the same.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdb_mlops.data.calibrate import area_era_of, era_of, load_calibration
from hdb_mlops.config import DEFAULT_SEED, SAMPLE_DIR, SAMPLE_FILE
from hdb_mlops.data.normalise import format_remaining_lease
from hdb_mlops.data.schema import LEASE_YEARS, OFFICIAL_2017_COLUMNS, dataset

#: Bounds of the synthetic prices (the real 2017+ prices lie in 140,000..1,728,000).
PRICE_BOUNDS: tuple[int, int] = (140_000, 1_800_000)
PRICE_STEP = 1_000
#: Fallback minimum age (sale year - lease year) of a resold flat (the real minimum is 1-4 years).
MIN_YEARS_BEFORE_RESALE = 3
#: Address slots per (town, lease year): flats of one slot share a block, street and lease start.
SLOTS_PER_LEASE_YEAR = 8
_FIRST_LEASE_YEAR = 1960
_STREET_STEMS: dict[str, tuple[str, ...]] = {
    "KALLANG/WHAMPOA": ("KALLANG", "WHAMPOA"),
    "CENTRAL AREA": ("CENTRAL",),
}
_STREETS_PER_TOWN = 12


def _draw(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: for each row i, the index of the category u[i] falls in (probs[i] rows)."""
    probs = np.atleast_2d(probs)
    cdf = np.cumsum(probs, axis=1)
    cdf = cdf / cdf[:, -1:]
    idx = (u[:, None] >= cdf).sum(axis=1)
    return np.minimum(idx, probs.shape[1] - 1)


def _vector(dist: dict[str, float], labels: list[str]) -> np.ndarray:
    return np.array([dist.get(label, 0.0) for label in labels], dtype="float64")


def _draw_by_group(u: np.ndarray, groups: pd.Series, dist_of: Any, labels: list[str]) -> np.ndarray:
    """Draw a label index per row from the distribution `dist_of(group)` of the row's group."""
    out = np.zeros(len(u), dtype="int64")
    for key, rows in groups.groupby(groups, sort=True).groups.items():
        pos = groups.index.get_indexer(rows)
        out[pos] = _draw(u[pos], _vector(dist_of(key), labels)[None, :])
    return out


def _street_names(town: str) -> list[str]:
    """Made-up but plausible street names for a town ("TAMPINES AVE 14", "WOODLANDS ST 37").

    Numbered as HDB estates number their roads, but with numbers the real estates do not use
    (avenues and crescents 13-19, streets and drives ending in 7-9), so no name is a real one.
    """
    rng = np.random.default_rng(zlib.crc32(town.encode()))
    stems = _STREET_STEMS.get(town, (town,))
    names: set[str] = set()
    while len(names) < _STREETS_PER_TOWN:
        stem = stems[int(rng.integers(len(stems)))]
        kind = ("AVE", "ST", "DR", "CRES", "NTH AVE", "STH ST", "CTRL")[int(rng.integers(7))]
        if kind in ("ST", "DR", "STH ST"):
            number = int(rng.integers(1, 10)) * 10 + int(rng.integers(7, 10))
        else:
            number = int(rng.integers(13, 20))
        names.add(f"{stem} {kind} {number}")
    return sorted(names)


def _addresses(towns: np.ndarray, lease_years: np.ndarray, slots: np.ndarray) -> pd.DataFrame:
    """Block, street and lease-start offset (months from mid-year) of each (town, lease year, slot).

    A fixed rule per town, independent of the seed: one address always has the same lease year and
    lease start, as in the real data, and different slots never share a block number in a town.
    """
    n_slots = (2030 - _FIRST_LEASE_YEAR) * SLOTS_PER_LEASE_YEAR
    slot = (lease_years - _FIRST_LEASE_YEAR).clip(0) * SLOTS_PER_LEASE_YEAR + slots
    block = np.empty(len(towns), dtype=object)
    street = np.empty(len(towns), dtype=object)
    offset = np.zeros(len(towns), dtype="int64")
    for town in np.unique(towns):
        rows = np.flatnonzero(towns == town)
        rng = np.random.default_rng(zlib.crc32(f"blocks {town}".encode()))
        perm = rng.permutation(899)[: max(n_slots, 1)]
        streets = _street_names(str(town))
        code = perm[slot[rows]]
        number = (101 + code).astype(str)
        letter = np.array(list("ABCD"))[(code // 3) % 4]
        suffix = np.where((lease_years[rows] >= 2000) & (code % 3 == 0), letter, "")
        block[rows] = np.char.add(number, suffix)
        street_idx = (slot[rows] // (2 * SLOTS_PER_LEASE_YEAR) + slots[rows] % 3) % len(streets)
        street[rows] = np.array(streets, dtype=object)[street_idx]
        offset[rows] = code % 12 - 6
    return pd.DataFrame({"block": block, "street_name": street, "offset": offset})


def rake(joint: np.ndarray, row_share: np.ndarray, col_share: np.ndarray, iterations: int = 50):
    """Scale a joint share table so its margins match the given shares (iterative fitting)."""
    p = joint.copy()
    for _ in range(iterations):
        rows = p.sum(axis=1, keepdims=True)
        p = p * np.divide(row_share[:, None], rows, out=np.zeros_like(rows), where=rows > 0)
        cols = p.sum(axis=0, keepdims=True)
        p = p * np.divide(col_share[None, :], cols, out=np.zeros_like(cols), where=cols > 0)
    return p / p.sum()


def _cell_probs_by_year(cal: dict[str, Any], cells: list[tuple[str, str]], years: list[int]):
    """P(town, flat type | sale year): the overall joint share raked to each year's margins."""
    share = cal["town_flat_type_share"]
    towns = sorted(share)
    types = sorted({f for d in share.values() for f in d})
    joint = np.array([[share[t].get(f, 0.0) for f in types] for t in towns])
    out = []
    for year in years:
        town_share = cal.get("town_share_by_year", {}).get(str(year))
        type_share = cal.get("flat_type_share_by_year", {}).get(str(year))
        p = joint / joint.sum()
        if town_share and type_share:
            p = rake(p, _vector(town_share, towns), _vector(type_share, types))
        out.append([p[towns.index(t), types.index(f)] for t, f in cells])
    return np.array(out)


def _lease_year_probs(cal: dict[str, Any], cells: list[tuple[str, str]], years: list[int]):
    """P(lease year | cell, sale year) for every cell and sale year: (cells, years, lease years)."""
    lease = cal["lease_commence_date"]
    by_cell = lease["by_town_flat_type"]
    labels = sorted({int(y) for t in by_cell.values() for d in t.values() for y in d})
    str_labels = [str(y) for y in labels]
    base = np.array([_vector(by_cell[t][f], str_labels) for t, f in cells])
    weight = np.array(
        [_vector(lease["sale_year_weight"].get(str(y), {}), str_labels) for y in years]
    )
    probs = base[:, None, :] * weight[None, :, :]
    lease_arr = np.array(labels)
    for j, year in enumerate(years):
        # A cell with no re-weighted mass in a year: any of its lease years that ended the
        # minimum occupation period by the sale year (else none, and the cell is not drawn).
        empty = probs[:, j, :].sum(axis=1) == 0
        probs[empty, j, :] = base[empty] * (lease_arr <= year - MIN_YEARS_BEFORE_RESALE)
    return probs, lease_arr


def generate_sample(
    n_rows: int = 30_000, seed: int = DEFAULT_SEED, calibration: dict | None = None
) -> pd.DataFrame:
    """Draw `n_rows` synthetic resale transactions in the official 2017+ schema and column order.

    Text columns are strings as the official CSV writes them; floor_area_sqm and resale_price are
    float64 and lease_commence_date int64 (the types pandas infers from the official file).
    Deterministic for a given seed and calibration.
    """
    cal = load_calibration() if calibration is None else calibration
    hed = cal["hedonic"]
    rng = np.random.default_rng(seed)
    # Every random number is drawn up front, in a fixed order.
    u_month, u_cell, u_lease, u_model, u_area, u_decimal, u_storey = rng.random((7, n_rows))
    slots = rng.integers(0, SLOTS_PER_LEASE_YEAR, n_rows)
    jitter = rng.integers(0, 2, n_rows)
    noise = rng.standard_normal(n_rows)

    months = sorted(cal["month_share"])
    month = np.array(months)[_draw(u_month, _vector(cal["month_share"], months))]
    sale_year = np.array([int(m[:4]) for m in month], dtype="int64")
    sale_index = sale_year * 12 + np.array([int(m[5:]) for m in month], dtype="int64") - 1

    share = cal["town_flat_type_share"]
    cells = [(t, f) for t in sorted(share) for f in sorted(share[t])]
    years = sorted({int(m[:4]) for m in months})
    year_idx = sale_year - years[0]
    lease_probs, lease_labels = _lease_year_probs(cal, cells, years)
    # A (town, flat type) with no flat old enough to be resold in a year is not drawn that year.
    cell_probs = _cell_probs_by_year(cal, cells, years) * (lease_probs.sum(axis=2).T > 0)
    cell = _draw(u_cell, cell_probs[year_idx])
    town = np.array([t for t, _ in cells])[cell]
    flat_type = np.array([f for _, f in cells])[cell]

    lease_year = lease_labels[_draw(u_lease, lease_probs[cell, year_idx])]
    era = era_of(lease_year)

    fm = cal["flat_model"]
    models = sorted({m for d in fm["by_flat_type"].values() for m in d})

    def model_dist(key: str) -> dict[str, float]:
        ft, e = key.split("|")
        return fm["by_flat_type_era"].get(ft, {}).get(e) or fm["by_flat_type"][ft]

    type_era = pd.Series(np.char.add(np.char.add(flat_type, "|"), era.astype(str)))
    flat_model = np.array(models)[_draw_by_group(u_model, type_era, model_dist, models)]

    area_era = area_era_of(lease_year)
    area = _floor_area(cal["floor_area"], flat_type, flat_model, area_era, u_area, u_decimal)

    storeys = sorted({s for d in cal["storey_range"]["by_town"].values() for s in d})
    by_town = cal["storey_range"]["by_town"]
    storey = np.array(storeys)[
        _draw_by_group(u_storey, pd.Series(town), lambda t: by_town[t], storeys)
    ]

    addr = _addresses(town, lease_year, slots)
    lease_end = (lease_year + LEASE_YEARS) * 12 + 6 + addr["offset"].to_numpy() + jitter
    remaining = lease_end - sale_index

    log_price = (
        np.array([hed["town_flat_type"][t][f] for t, f in cells])[cell]
        + _lookup(hed["month"], month)
        + _lookup(hed["storey_range"], storey)
        + _lookup(hed["flat_model"], flat_model)
        + _lookup(hed["log_floor_area_slope"], flat_type)
        * (np.log(area) - np.log(_lookup(hed["floor_area_centre"], flat_type)))
        + np.interp(remaining / 12, hed["remaining_lease_knots_years"], hed["remaining_lease"])
        + _lookup_pair(hed.get("town_lease_era", {}), town, era)
        + _lookup_pair(hed.get("town_year", {}), town, sale_year)
        + hed["residual_sd"] * noise
    )
    price = np.clip(np.round(np.exp(log_price) / PRICE_STEP) * PRICE_STEP, *PRICE_BOUNDS)

    out = pd.DataFrame(
        {
            "month": month,
            "town": town,
            "flat_type": flat_type,
            "block": addr["block"].to_numpy(),
            "street_name": addr["street_name"].to_numpy(),
            "storey_range": storey,
            "floor_area_sqm": area,
            "flat_model": flat_model,
            "lease_commence_date": lease_year.astype("int64"),
            "remaining_lease": _remaining_lease_text(remaining),
            "resale_price": price.astype("float64"),
        }
    )
    for col in ("month", "town", "flat_type", "block", "street_name", "storey_range"):
        out[col] = out[col].astype("str")
    out["flat_model"] = out["flat_model"].astype("str")
    out["remaining_lease"] = out["remaining_lease"].astype("str")
    out = out.sort_values(["month", "town", "flat_type", "block", "street_name"], kind="stable")
    return out.reset_index(drop=True)[list(OFFICIAL_2017_COLUMNS)]


def _remaining_lease_text(months: np.ndarray) -> np.ndarray:
    """`format_remaining_lease` of the months ("61 years 04 months")."""
    return format_remaining_lease(pd.Series(months)).to_numpy()


def _lookup(table: dict[str, float], keys: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(keys, return_inverse=True)
    return np.array([table[str(k)] for k in uniq], dtype="float64")[inv]


def _lookup_pair(table: dict[str, dict[str, float]], outer: np.ndarray, inner: np.ndarray):
    """table[outer][inner] per row, 0 where the pair was not calibrated."""
    keys = np.char.add(np.char.add(outer.astype(str), "|"), inner.astype(str))
    uniq, inv = np.unique(keys, return_inverse=True)
    values = [table.get(k.split("|")[0], {}).get(k.split("|")[1], 0.0) for k in uniq]
    return np.array(values, dtype="float64")[inv]


def _floor_area(
    fa: dict[str, Any],
    flat_type: np.ndarray,
    flat_model: np.ndarray,
    era: np.ndarray,
    u_area: np.ndarray,
    u_decimal: np.ndarray,
) -> np.ndarray:
    """Floor areas by interpolating the quantiles of the finest calibrated group of each row.

    Most are whole square metres (the official file writes "93"); a calibrated share per flat
    type keeps one decimal ("60.3").
    """
    levels = np.asarray(fa["quantile_levels"])
    area = np.zeros(len(u_area))
    keys = pd.Series(
        np.char.add(np.char.add(np.char.add(flat_type, "|"), flat_model), "|" + era.astype(str))
    )
    for key, rows in keys.groupby(keys, sort=True).groups.items():
        ft, model, e = key.split("|")
        q = fa["by_flat_type_model_era"].get(ft, {}).get(model, {}).get(e) or fa["by_flat_type"][ft]
        pos = keys.index.get_indexer(rows)
        area[pos] = np.interp(u_area[pos], levels, q)
    decimal_share = _lookup(fa["decimal_share"], flat_type)
    # u_decimal < share: keep one decimal (never a whole number); else round to whole sqm.
    frac = u_decimal / np.maximum(decimal_share, 1e-12)
    with_decimal = np.floor(area) + 0.1 + np.floor(frac * 9) / 10
    return np.where(u_decimal < decimal_share, np.round(with_decimal, 1), np.round(area))


def _format_number(values: pd.Series) -> pd.Series:
    """Numbers as the official CSV writes them: "93", "60.3", "410000"."""
    whole = values == values.round()
    out = values.map(lambda v: f"{v:.2f}".rstrip("0").rstrip("."))
    out[whole] = values[whole].astype("int64").astype("str")
    return out


def sample_readme(n_rows: int, seed: int, calibration: dict | None = None) -> str:
    """The README written beside the sample."""
    cal = load_calibration() if calibration is None else calibration
    src = cal["source"]
    ds = dataset("2017-onwards")
    return "\n".join(
        [
            "# Synthetic HDB resale sample",
            "",
            f"**Synthetic data, not real transactions.** `{SAMPLE_FILE.name}` holds {n_rows:,} "
            f"made-up resale transactions (seed {seed}).",
            "",
            "- Generated by `hdb-mlops data sample` from `hdb_mlops/resources/calibration.json`.",
            "- That calibration holds only aggregate statistics (shares, quantiles and the "
            "coefficients of a hedonic price model), which `hdb-mlops data calibrate` computes "
            f"from the real files: here {src['rows']:,} transactions, {src['first_month']} to "
            f"{src['last_month']}. Neither file holds a real row or address; the blocks and "
            "street names are made up.",
            f'- Same schema as data.gov.sg\'s "{ds.title}" (dataset `{ds.dataset_id}`): the '
            "same columns, in the same order, written the same way, so code written for the "
            "sample runs on the real file.",
            "- Not for real valuation: the prices are a simple model plus noise.",
            "- To get the real data, run `hdb-mlops data download`.",
            "",
        ]
    )


def write_sample(
    out_dir: Path = SAMPLE_DIR,
    n_rows: int = 30_000,
    seed: int = DEFAULT_SEED,
    calibration: dict | None = None,
) -> Path:
    """Write the sample CSV (UTF-8, "\\n" line endings) and its README into `out_dir`.

    Returns the CSV path. The same seed and calibration give byte-identical files.
    """
    cal = load_calibration() if calibration is None else calibration
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = generate_sample(n_rows=n_rows, seed=seed, calibration=cal)
    text = df.copy()
    for col in ("floor_area_sqm", "lease_commence_date", "resale_price"):
        text[col] = _format_number(df[col].astype("float64"))
    path = out_dir / SAMPLE_FILE.name
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        text.to_csv(fh, index=False, lineterminator="\n")
    readme = sample_readme(n_rows, seed, cal)
    (out_dir / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    return path
