"""Pareto fronts: non-dominated filtering (one shot and streaming), hypervolume, knee point.

Conventions shared by every function here:

- `values` is [n, m]: n points, m objectives; `directions` says per objective whether smaller
  (`"min"`) or larger (`"max"`) is better (one string applies to all objectives).
- A point with a NaN objective is never on a front (the sweep reports such points).
- Constraints, "feasible first": when any point is feasible, the front is the non-dominated set
  of the feasible points (every feasible point dominates every infeasible one); when none is, it
  is the non-dominated set of all points, so a user still sees the least bad designs.
- Duplicates (equal in every objective) do not dominate each other: all copies are kept.

The one-shot filter runs moocore's O(n log n) C implementation (2-3 objectives; its general
algorithm beyond). `ParetoFront` streams: chunk fronts are merged, and it hands out a few
staircase table of the current front that the sweep kernel uses to discard dominated points before
they leave the device; domination is transitive, so this pruning never changes the final front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import moocore
import numpy as np
from jaxtyping import ArrayLike, Bool, Float


def _directions(directions, m: int) -> np.ndarray:
    """Per-objective sign: +1 for "min", -1 for "max" (so that smaller is better after it)."""
    if isinstance(directions, str):
        directions = [directions] * m
    directions = list(directions)
    if len(directions) != m:
        raise ValueError(f"directions must name one of 'min'/'max' per objective ({m}); got "
                         f"{directions!r}")
    bad = [d for d in directions if d not in ("min", "max")]
    if bad:
        raise ValueError(f"directions must be 'min' or 'max'; got {bad!r}")
    return np.array([1.0 if d == "min" else -1.0 for d in directions])


def _as_values(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"values must be [n, m]; got shape {values.shape}")
    return values


def oriented(values, directions) -> np.ndarray:
    """`values` [n, m] with "max" objectives negated: smaller is better in every column."""
    values = _as_values(values)
    return values * _directions(directions, values.shape[1])


def _nondominated_min(x: np.ndarray) -> np.ndarray:
    """Non-dominated mask of finite rows of x (all minimized; duplicates kept)."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, bool)
    if x.shape[1] == 1:
        return x[:, 0] == x[:, 0].min()
    return np.asarray(moocore.is_nondominated(x, keep_weakly=True), dtype=bool)


def pareto_mask(
    values: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    directions: str | Sequence[str] = "min",
    feasible: Bool[ArrayLike, " n"] | None = None,
) -> Bool[np.ndarray, " n"]:
    """Mask of the non-dominated points ("feasible first"; NaN rows excluded).

    **Arguments:**

    - `values`: [n, m] objective values (a 1-D array is one objective).
    - `directions`: `"min"` / `"max"` per objective, or one string for all.
    - `feasible`: optional bool [n]; see the module docstring for how it ranks points.

    **Returns:** bool [n], True on the front.
    """
    x = oriented(values, directions)
    n = x.shape[0]
    valid = ~np.isnan(x).any(axis=1)
    if feasible is not None:
        feasible = np.asarray(feasible, dtype=bool)
        if feasible.shape != (n,):
            raise ValueError(f"feasible must be bool [{n}]; got shape {feasible.shape}")
        if (valid & feasible).any():
            valid &= feasible
    out = np.zeros(n, bool)
    idx = np.flatnonzero(valid)
    out[idx] = _nondominated_min(x[idx])
    return out


class ParetoFront:
    """A Pareto front that grows chunk by chunk: `update` adds a chunk, fronts merge lazily.

    The front equals `pareto_mask` of every point seen, whatever the chunking (the front of a
    union is the front of the union of the fronts). Chunks wait in a buffer and are merged once
    the buffer is as large as the front (or when the front is read), so merging costs
    O(log) amortized per point even when the front is large.

    **Arguments:**

    - `directions`: `"min"` / `"max"` per objective.
    - `columns`: names of extra per-point columns carried along (parameters, other metrics).

    **Attributes** (reading them merges the buffer): `values` [k, m] (original signs),
    `feasible` bool [k], `columns` dict of [k] arrays; `seen` points added so far.
    """

    def __init__(self, directions: Sequence[str], columns: Sequence[str] = (),
                 min_merge: int = 4096):
        self.sign = _directions(directions, len(directions))
        self.directions = tuple(directions)
        self.column_names = tuple(columns)
        m = len(self.sign)
        self._values = np.zeros((0, m))
        self._feasible = np.zeros(0, bool)
        self._columns = {c: np.zeros(0) for c in self.column_names}
        self._pending: list[tuple[np.ndarray, np.ndarray, dict]] = []
        self._pending_rows = 0
        self._table_cache = None
        self.min_merge = int(min_merge)
        self.seen = 0

    def set_state(self, values, feasible, columns, seen: int) -> None:
        """Restart from saved points (a `snapshot`: the front, maybe with buffered points)."""
        self._values = np.zeros((0, len(self.sign)))
        self._feasible = np.zeros(0, bool)
        self._columns = {c: np.zeros(0) for c in self.column_names}
        values = np.asarray(values, np.float64).reshape(-1, len(self.sign))
        self._pending = [(values, np.asarray(feasible, bool),
                          {c: np.asarray(columns[c]) for c in self.column_names})]
        self._pending_rows, self._table_cache = len(values), None
        self.merge()
        self.seen = int(seen)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The front and the buffered points, unmerged: enough to restart (`set_state`)."""
        parts = [(self._values, self._feasible, self._columns), *self._pending]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                {c: np.concatenate([p[2][c] for p in parts]) for c in self.column_names})

    @property
    def values(self) -> np.ndarray:
        self.merge()
        return self._values

    @property
    def feasible(self) -> np.ndarray:
        self.merge()
        return self._feasible

    @property
    def columns(self) -> dict[str, np.ndarray]:
        self.merge()
        return self._columns

    def __len__(self) -> int:
        self.merge()
        return self._values.shape[0]

    def update(
        self,
        values: Float[ArrayLike, "n m"],
        feasible: Bool[ArrayLike, " n"] | None = None,
        columns: Mapping[str, np.ndarray] | None = None,
        seen: int | None = None,
    ) -> ParetoFront:
        """Add a chunk of points (returns self).

        **Arguments:** `values` [n, m]; `feasible` bool [n] (default all feasible); `columns`
        the carried columns, each [n]; `seen` how many points this chunk stands for (default n:
        a sweep passes the whole chunk size when it pruned the chunk on the device).
        """
        values = _as_values(values)
        n = values.shape[0]
        if values.shape[1] != len(self.sign):
            raise ValueError(f"ParetoFront has {len(self.sign)} objectives; got values of shape "
                             f"{values.shape}")
        feasible = np.ones(n, bool) if feasible is None else np.asarray(feasible, bool)
        columns = dict(columns or {})
        if set(columns) != set(self.column_names):
            raise ValueError(f"ParetoFront columns are {list(self.column_names)}; got "
                             f"{sorted(columns)}")
        self.seen += n if seen is None else int(seen)
        if n == 0:
            return self
        self._pending.append((values, feasible, {c: np.asarray(columns[c])
                                                 for c in self.column_names}))
        self._pending_rows += n
        # The first feasible point changes which class the front holds: merge at once.
        first_feasible = feasible.any() and not self._feasible.any()
        if first_feasible or self._pending_rows >= max(self.min_merge, 2 * self._values.shape[0]):
            self.merge()
        return self

    def merge(self) -> None:
        """Fold the buffered chunks into the front."""
        if not self._pending:
            return
        cache = self._table_cache
        if cache is not None and len(self._values):
            # Most buffered points are dominated by points that came after them: drop those
            # with the (exact) staircase of everything seen before the O(n log n) merge.
            self.dominance_table(cache["bins"])
            if cache["fresh"]:
                table = cache["raw"]
                for axis in range(table.ndim):
                    table = np.minimum.accumulate(table, axis=axis)
                cache["table"] = table.reshape(-1)
            pending = []
            for values, feasible, cols in self._pending:
                keep = ~self._beaten(cache, values * self.sign, feasible)
                pending.append((values[keep], feasible[keep], {c: v[keep] for c, v in
                                                               cols.items()}))
            self._pending = pending
        all_values = np.concatenate([self._values] + [p[0] for p in self._pending])
        all_feasible = np.concatenate([self._feasible] + [p[1] for p in self._pending])
        keep = pareto_mask(all_values * self.sign, "min", all_feasible)
        self._values = all_values[keep]
        self._feasible = all_feasible[keep]
        self._columns = {c: np.concatenate([self._columns[c]] + [p[2][c] for p in
                                                                 self._pending])[keep]
                         for c in self.column_names}
        self._pending, self._pending_rows, self._table_cache = [], 0, None

    def dominance_table(self, bins: int, dtype=np.float32):
        """A staircase lookup of the points seen, for discarding dominated points on the device.

        With `d = m - 1`, each of the first d objectives (oriented: smaller is better) is cut
        into `bins` equal cells of `order_key(v)` (a float32's bits as a monotone integer, which
        spaces cells roughly logarithmically) over the merged front's range:
        `cell(v) = floor((order_key(v) - low) * scale)`, the same float32 operations on the
        host and in the kernel, so both agree bit for bit. A point `a` seen so far is entered at
        index `cell(a) + 1` per axis (`cell(a) < 0` as 0; beyond `bins` not entered) and `table`
        is the prefix minimum of the last objective over the entries, so a point `p` whose
        indices `clip(cell(p), 0, bins + 1)` reach an entry has `cell(p) > cell(a)`, hence
        `p > a`, on every binned axis; `p[-1] > table[...]` then means that `a` dominates `p`.
        Buffered points enter too (a dominated `a` is itself dominated by a front point, which
        then dominates `p`). The filter is exact (it never discards a point of the final front)
        and conservative (dominated points near the front pass, to the host merge).

        **Returns:** `(low, scale, table, front_feasible)`: low, scale float32 [d], table
        [(bins + 2) ** d] of `dtype` (+inf where no point qualifies), and whether the table is
        of feasible points (then every infeasible point is dominated, "feasible first").
        """
        m = len(self.sign)
        d = m - 1
        cache = self._table_cache
        if cache is None or cache["bins"] != bins:
            self.merge()  # cells are cut over the merged front's range
            x = self._values * self.sign
            low = np.zeros(d, np.float32)
            scale = np.ones(d, np.float32)
            for j in range(d):
                if len(x):
                    key = order_key(x[:, j], np)
                    lo, hi = key.min(), key.max()
                    low[j] = lo
                    scale[j] = np.float32(bins) / (hi - lo) if hi > lo else np.float32(1.0)
            feasible = bool(self._feasible.any())
            cache = {"bins": bins, "low": low, "scale": scale, "feasible": feasible,
                     "raw": np.full((bins + 2,) * d, np.inf), "entered": 0}
            self._enter(cache, x, self._feasible)
            self._table_cache = cache
        pending = self._pending[cache["entered"]:]
        for values, feasible, _ in pending:
            self._enter(cache, values * self.sign, feasible)
        cache["entered"] = len(self._pending)
        cache["fresh"] = cache.get("fresh", 0) + sum(len(p[0]) for p in pending)
        # The prefix minimum costs O(bins**d): refresh it once a few thousand points came in
        # (a stale table only lets a few more dominated points through; it stays exact).
        if cache.get("table") is None or cache["fresh"] >= self.min_merge:
            cache["fresh"] = 0
            table = cache["raw"]
            for axis in range(d):
                table = np.minimum.accumulate(table, axis=axis)
            cache["table"] = table.reshape(-1).astype(dtype)
        return cache["low"], cache["scale"], cache["table"], np.bool_(cache["feasible"])

    @staticmethod
    def _beaten(cache, x: np.ndarray, feasible: np.ndarray) -> np.ndarray:
        """The kernel's prefilter in numpy: True where a seen point dominates the row of x."""
        d = x.shape[1] - 1
        size = cache["bins"] + 2
        cell = np.zeros(len(x), np.int64)
        for j in range(d):
            c = np.floor((order_key(x[:, j], np) - cache["low"][j]) * cache["scale"][j])
            cell = cell * size + np.clip(c, 0, size - 1).astype(np.int64)
        table = np.asarray(cache["table"], np.float64)
        with np.errstate(invalid="ignore"):
            beaten = x[:, d] > table[cell]
        beaten = np.where(feasible == cache["feasible"], beaten, cache["feasible"] & ~feasible)
        return beaten & ~np.isnan(x).any(axis=1)

    @staticmethod
    def _enter(cache, x: np.ndarray, feasible: np.ndarray) -> None:
        x = x[feasible == cache["feasible"]]
        if not len(x):
            return
        d = x.shape[1] - 1
        if d == 0:
            cache["raw"] = np.minimum(cache["raw"], x[:, 0].min())
            return
        bins = cache["bins"]
        ok = np.ones(len(x), bool)
        cells = []
        for j in range(d):
            c = np.floor((order_key(x[:, j], np) - cache["low"][j]) * cache["scale"][j])
            ok &= c <= bins
            cells.append(np.maximum(c, 0).astype(np.int64) + 1)
        np.minimum.at(cache["raw"], tuple(c[ok] for c in cells), x[ok, d])


def order_key(v, xp):
    """float -> float32 that is monotone non-decreasing in v (float32 bits as an ordered int).

    Identical in numpy and jax.numpy: a cast to float32, a bitcast, an integer flip of the
    negative half, a cast back. NaN maps above +inf.
    """
    v = xp.asarray(v).astype(xp.float32)
    bits = v.view(xp.int32) if xp is np else jax_bitcast(v)
    bits = bits ^ ((bits >> 31) & xp.int32(0x7FFFFFFF))
    return bits.astype(xp.float32)


def jax_bitcast(v):
    import jax

    return jax.lax.bitcast_convert_type(v, np.int32)


def hypervolume(
    points: Float[ArrayLike, "n m"],
    reference: Float[ArrayLike, " m"] | Sequence[float],
    directions: str | Sequence[str] = "min",
) -> float:
    """Hypervolume dominated by `points` and bounded by `reference` (exact).

    Exact sweeps in 2 objectives (sort, O(n log n)) and 3 objectives (slices along the third
    objective, each a 2-D front, O(n^2 log n)); moocore's exact algorithm beyond. Points that do
    not strictly dominate the reference add nothing; NaN rows are ignored.

    **Arguments:** `points` [n, m]; `reference` [m] (a point worse than the front in every
    objective, in the same units); `directions` per objective.

    **Returns:** the hypervolume, in the product of the objectives' units.
    """
    x = oriented(points, directions)
    m = x.shape[1]
    ref = np.asarray(reference, dtype=np.float64).reshape(-1) * _directions(directions, m)
    if ref.shape != (m,):
        raise ValueError(f"reference must have {m} entries; got {np.shape(reference)}")
    x = x[~np.isnan(x).any(axis=1)]
    x = x[(x < ref).all(axis=1)]
    if x.shape[0] == 0:
        return 0.0
    x = x[_nondominated_min(x)]
    if m == 1:
        return float(ref[0] - x[:, 0].min())
    if m == 2:
        return _hv2(x, ref)
    if m == 3:
        order = np.argsort(x[:, 2], kind="stable")
        x = x[order]
        z = np.append(x[:, 2], ref[2])
        total = 0.0
        for i in range(x.shape[0]):
            depth = z[i + 1] - z[i]
            if depth > 0:
                total += depth * _hv2(x[: i + 1, :2], ref[:2])
        return float(total)
    return float(moocore.hypervolume(x, ref=ref))


def _hv2(x: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume of minimized points (dominated ones allowed) below `ref`."""
    order = np.lexsort((x[:, 1], x[:, 0]))
    f0, f1 = x[order, 0], x[order, 1]
    best = np.minimum.accumulate(f1)
    width = np.append(f0[1:], ref[0]) - f0
    return float(np.sum(width * (ref[1] - best)))


def knee_point(
    values: Float[ArrayLike, "n m"],
    directions: str | Sequence[str] = "min",
) -> int:
    """Index of the knee of a front: the point farthest below the plane of the extremes.

    Objectives are normalized over the front to [0, 1] (0 = best); the knee minimizes the sum of
    normalized objectives, i.e. it lies farthest below the hyperplane through the unit extremes
    (in 2 objectives, the line through the two end points of the front), the "maximum bulge"
    of Das (1999), Structural Optimization 18:107-115.

    **Arguments:** `values` [n, m] of front points (dominated rows are ignored); `directions`.

    **Returns:** the row index into `values`.
    """
    x = oriented(values, directions)
    on_front = pareto_mask(x, "min")
    if not on_front.any():
        raise ValueError("knee_point needs at least one point without NaN")
    front = x[on_front]
    lo, hi = front.min(axis=0), front.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    score = np.full(x.shape[0], np.inf)
    score[on_front] = ((front - lo) / span).sum(axis=1)
    return int(np.argmin(score))
