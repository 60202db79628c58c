"""Streaming Pareto fronts for sweeps: `ParetoFront` and the on-device dominance table.

The one-shot toolkit (`pareto_mask`, `pareto_indices`, `hypervolume`, `knee_point`) and its
conventions (directions "min"/"max" per objective, NaN never on a front, "feasible first",
duplicates kept) live in `dse.optimizers`; `ParetoFront` merges chunk fronts with that same
`pareto_mask`, and hands out a staircase table of the current front that the sweep kernel uses
to discard dominated points before they leave the device; domination is transitive, so this
pruning never changes the final front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jaxtyping import ArrayLike, Bool, Float

from dse.optimizers import direction_signs, pareto_mask
from dse.optimizers._pareto import as_values


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
        self.sign = direction_signs(directions, len(directions))
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
        values = as_values(values)
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

