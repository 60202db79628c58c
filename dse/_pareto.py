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
from jaxtyping import Bool, Float, Int

ArrayLike = np.ndarray


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
    values: Float[ArrayLike, "n m"],
    directions: str | Sequence[str] = "min",
    feasible: Bool[ArrayLike, " n"] | None = None,
) -> Bool[ArrayLike, " n"]:
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
    """A Pareto front that grows chunk by chunk: `update` merges a chunk into the front.

    The merged front equals `pareto_mask` of every point seen, whatever the chunking (the
    front of a union is the front of the union of the fronts).

    **Arguments:**

    - `directions`: `"min"` / `"max"` per objective.
    - `columns`: names of extra per-point columns carried along (parameters, other metrics).

    **Attributes:** `values` [k, m] (original signs), `feasible` bool [k], `columns` dict of [k]
    arrays, `seen` points merged so far.
    """

    def __init__(self, directions: Sequence[str], columns: Sequence[str] = ()):
        self.sign = _directions(directions, len(directions))
        self.directions = tuple(directions)
        self.column_names = tuple(columns)
        m = len(self.sign)
        self.values = np.zeros((0, m))
        self.feasible = np.zeros(0, bool)
        self.columns = {c: np.zeros(0) for c in self.column_names}
        self.seen = 0

    def __len__(self) -> int:
        return self.values.shape[0]

    def update(
        self,
        values: Float[ArrayLike, "n m"],
        feasible: Bool[ArrayLike, " n"] | None = None,
        columns: Mapping[str, np.ndarray] | None = None,
        seen: int | None = None,
    ) -> ParetoFront:
        """Merge a chunk of points into the front (in place; returns self).

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
        all_values = np.concatenate([self.values, values])
        all_feasible = np.concatenate([self.feasible, feasible])
        keep = pareto_mask(all_values * self.sign, "min", all_feasible)
        self.values = all_values[keep]
        self.feasible = all_feasible[keep]
        self.columns = {c: np.concatenate([self.columns[c], np.asarray(columns[c])])[keep]
                        for c in self.column_names}
        self.seen += n if seen is None else int(seen)
        return self

    def dominance_table(self, bins: int, dtype=np.float32):
        """A staircase lookup of the front, for discarding dominated points on the device.

        With `d = m - 1`, each of the first d objectives (oriented: smaller is better) is cut
        into `bins` equal cells of `order_key(v)` (a float32's bits as a monotone integer, which
        spaces cells roughly logarithmically) over the front's range:
        `cell(v) = floor((order_key(v) - low) * scale)`, the same float32 operations on the
        host and in the kernel, so both agree bit for bit. A front point `a` is entered at index
        `cell(a) + 1` per axis and `table` is the prefix minimum of the last objective over the
        entries, so a point `p` whose indices `clip(cell(p), 0, bins + 1)` reach an entry has
        `cell(p) > cell(a)`, hence `p > a`, on every binned axis; `p[-1] > table[...]` then means
        that `a` dominates `p`. The filter is exact (it never discards a point of the final
        front) and conservative (dominated points near the front pass, to the host merge).

        **Returns:** `(low, scale, table, front_feasible)`: low, scale float32 [d], table
        [(bins + 2) ** d] of `dtype` (+inf where no front point qualifies), and whether the
        front holds feasible points (it is all feasible or all infeasible, "feasible first").
        """
        m = len(self.sign)
        d = m - 1
        size = bins + 2
        low = np.zeros(d, np.float32)
        scale = np.ones(d, np.float32)
        table = np.full((size,) * d, np.inf)
        feasible = bool(self.feasible.any())
        if len(self):
            x = self.values * self.sign
            cells = []
            for j in range(d):
                key = order_key(x[:, j], np)
                lo, hi = key.min(), key.max()
                low[j] = lo
                scale[j] = np.float32(bins) / (hi - lo) if hi > lo else np.float32(1.0)
                c = np.floor((key - low[j]) * scale[j])
                cells.append(np.clip(c, 0, bins).astype(np.int64) + 1)
            if d == 0:
                table = np.min(x[:, 0], keepdims=True).reshape(())
            else:
                np.minimum.at(table, tuple(cells), x[:, d])
            for axis in range(d):
                table = np.minimum.accumulate(table, axis=axis)
        return low, scale, table.reshape(-1).astype(dtype), np.bool_(feasible)


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
    reference: Float[ArrayLike, " m"],
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
) -> Int[ArrayLike, ""]:
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
