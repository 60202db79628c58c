"""The Pareto toolkit: non-dominated mask, front indices, hypervolume, knee point.

One sign convention for every function here (and for `dse`, which re-exports them):

- `values` is [n, m]: n points, m objectives, each in its own units; `directions` says per
  objective whether smaller (`"min"`) or larger (`"max"`) is better (one string applies to all
  objectives). A hypervolume's `reference` is given in the same units and signs as the values.
- A point with a NaN objective is never on a front.
- Constraints, "feasible first": when any point is feasible, the front is the non-dominated set
  of the feasible points (every feasible point dominates every infeasible one); when none is, it
  is the non-dominated set of all points, so a user still sees the least bad designs. The
  hypervolume counts feasible points only (an infeasible design buys nothing).
- Duplicates (equal in every objective) do not dominate each other: all copies are kept.

Non-dominated filtering and hypervolume run moocore's C implementations (O(n log n) filtering in
2-3 objectives; exact hypervolume in any number of objectives).
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
from jaxtyping import ArrayLike, Bool, Float, Int

Directions = str | Sequence[str]


def direction_signs(directions: Directions, m: int) -> Float[np.ndarray, " m"]:
    """Per-objective sign: +1 for "min", -1 for "max" (multiplied in, smaller is better).

    **Arguments:** `directions`: `"min"` / `"max"` per objective, or one string for all; `m`:
    the number of objectives.

    **Returns:** float [m].
    """
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


def as_values(values: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"]) -> np.ndarray:
    """`values` as float64 [n, m] (a 1-D array is one objective)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"values must be [n, m]; got shape {values.shape}")
    return values


def oriented(values: Float[ArrayLike, "n m"], directions: Directions) -> np.ndarray:
    """`values` [n, m] with "max" objectives negated: smaller is better in every column."""
    values = as_values(values)
    return values * direction_signs(directions, values.shape[1])


def _as_feasible(feasible, n: int) -> np.ndarray:
    if feasible is None:
        return np.ones(n, bool)
    feasible = np.asarray(feasible, dtype=bool)
    if feasible.shape != (n,):
        raise ValueError(f"feasible must be bool [{n}]; got shape {feasible.shape}")
    return feasible


def _nondominated_min(x: np.ndarray) -> np.ndarray:
    """Non-dominated mask of rows of x without NaN (all minimized; duplicates kept)."""
    if x.shape[0] == 0:
        return np.zeros(0, bool)
    if x.shape[1] == 1:
        return x[:, 0] == x[:, 0].min()
    return np.asarray(moocore.is_nondominated(x, keep_weakly=True), dtype=bool)


def pareto_mask(
    values: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    directions: Directions = "min",
    feasible: Bool[ArrayLike, " n"] | Sequence[bool] | None = None,
) -> Bool[np.ndarray, " n"]:
    """Mask of the non-dominated points ("feasible first"; NaN rows excluded).

    **Arguments:**

    - `values`: [n, m] objective values (a 1-D array is one objective).
    - `directions`: `"min"` / `"max"` per objective, or one string for all.
    - `feasible`: optional bool [n]; see the module docstring for how it ranks points.

    **Returns:** bool [n], True on the front.
    """
    x = oriented(values, directions)
    valid = ~np.isnan(x).any(axis=1)
    feasible = _as_feasible(feasible, x.shape[0])
    if (valid & feasible).any():
        valid &= feasible
    out = np.zeros(x.shape[0], bool)
    idx = np.flatnonzero(valid)
    out[idx] = _nondominated_min(x[idx])
    return out


def pareto_indices(
    values: Float[ArrayLike, "n m"] | Float[ArrayLike, " n"],
    directions: Directions = "min",
    feasible: Bool[ArrayLike, " n"] | Sequence[bool] | None = None,
) -> Int[np.ndarray, " p"]:
    """Indices of the front (`pareto_mask`), best first in the first objective.

    Ties in the first objective are ordered by the next objectives (each best first), so the
    order walks along the front.

    **Arguments:** as `pareto_mask`.

    **Returns:** int [p], indices into `values`.
    """
    x = oriented(values, directions)
    idx = np.flatnonzero(pareto_mask(x, "min", feasible))
    return idx[np.lexsort(x[idx].T[::-1])] if idx.size else idx


def hypervolume(
    points: Float[ArrayLike, "n m"],
    reference: Float[ArrayLike, " m"] | Sequence[float],
    directions: Directions = "min",
    feasible: Bool[ArrayLike, " n"] | Sequence[bool] | None = None,
) -> float:
    """Hypervolume dominated by the (feasible) `points` and bounded by `reference`, exactly.

    Computed by `moocore.hypervolume`. Points that do not strictly dominate the reference add
    nothing and are dropped, and so are rows with a non-finite objective.

    **Arguments:**

    - `points`: [n, m] objective values.
    - `reference`: [m], a point worse than the front in every objective, in the objectives'
      own units and signs (for a "max" objective, a value below the front's).
    - `directions`: `"min"` / `"max"` per objective, or one string for all.
    - `feasible`: optional bool [n]; only feasible points count (0 when none is).

    **Returns:** the hypervolume, in the product of the objectives' units (0 for no point).
    """
    x = oriented(points, directions)
    m = x.shape[1]
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if ref.shape != (m,):
        raise ValueError(f"reference must have {m} entries, one per objective; got "
                         f"{np.shape(reference)}")
    ref = ref * direction_signs(directions, m)
    keep = _as_feasible(feasible, x.shape[0]) & np.isfinite(x).all(axis=1) & (x < ref).all(axis=1)
    if not keep.any():
        return 0.0
    return float(moocore.hypervolume(x[keep], ref=ref))


def knee_point(
    values: Float[ArrayLike, "n m"],
    directions: Directions = "min",
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
