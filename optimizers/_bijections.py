"""The bijections of a bounded box: unit cube, unconstrained reals, and integer snapping.

A gradient optimizer works best on unconstrained coordinates of similar scale. A bounded
parameter x in [low, high] is written x = low + (high - low) * sigmoid(z) (linear scale) or
x = exp(log low + (log high - log low) * sigmoid(z)) (log scale, for sizes and bandwidths that
span decades), so that every z in R^dim is a design inside the box and a step in z is a relative
step in x. Samplers work on the unit cube u = sigmoid(z) in [0, 1]^dim, and `draw` maps a uniform
u to a uniform design (integer knobs uniform over their integers).

The bounds are host constants: every affine coefficient is computed once in float64 and enters
a computation as a constant of the input's dtype, so a float32 kernel and a float64 host agree
to the rounding of that dtype, whatever `jax_enable_x64` was when the box was made. The maps
take and return jax arrays; `to_unit`, `from_unit`, `draw` and `snap` also take numpy arrays
and then compute in numpy float64 on the host (sampling, the final snap of a search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

# Unit coordinates are kept this far inside (0, 1) before the logit, so that a design on the
# boundary maps to a finite z (logit(1e-6) = -13.8) and sigmoid(z) recovers it to 1e-6.
_UNIT_EPS = 1e-6
# Integer bounds are the integers inside [lower, upper], with this slack for bounds that are
# integers up to float rounding.
_INTEGER_SLACK = 1e-9


def _as_mask(mask, dim: int, name: str) -> tuple[bool, ...]:
    if mask is None:
        return (False,) * dim
    flags = np.asarray(mask, dtype=bool)
    if flags.ndim > 1 or flags.size not in (1, dim):
        raise ValueError(f"Box.{name} must have {dim} entries (or one for all); got "
                         f"{flags.size}")
    return tuple(bool(v) for v in np.broadcast_to(flags, (dim,)))


def _xp(x):
    """numpy for host arrays (computed in float64), jax.numpy for everything else."""
    return np if isinstance(x, np.ndarray | np.generic) else jnp


def _as_float(x, xp):
    if xp is np:
        return np.asarray(x, dtype=np.float64)
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


class Box(eqx.Module):
    """An axis-aligned box of parameters with a smooth bijection to R^dim.

    **Fields** (all static: host constants, hashable, so a `Box` is free to close over):

    - `lower`, `upper`: bounds, tuples of `dim` floats, `lower < upper` (and `lower > 0` where
      `log`).
    - `log`: per-parameter flag, True for a log-scaled parameter.
    - `integer`: per-parameter flag, True for a knob relaxed to a real during the search and
      rounded by `snap` at the end.
    """

    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    log: tuple[bool, ...] = eqx.field(static=True)
    integer: tuple[bool, ...] = eqx.field(static=True)

    def __init__(self, lower: ArrayLike | Sequence[float], upper: ArrayLike | Sequence[float],
                 log: ArrayLike | Sequence[bool] | None = None,
                 integer: ArrayLike | Sequence[bool] | None = None):
        lo = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        hi = np.atleast_1d(np.asarray(upper, dtype=np.float64))
        if lo.ndim != 1 or lo.shape != hi.shape or lo.size == 0:
            raise ValueError(
                f"Box.lower and Box.upper must be 1-D of the same non-zero length; got shapes "
                f"{lo.shape} and {hi.shape}"
            )
        dim = lo.size
        self.log = _as_mask(log, dim, "log")
        self.integer = _as_mask(integer, dim, "integer")
        bad = ~(np.isfinite(lo) & np.isfinite(hi) & (lo < hi))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"Box bounds must be finite with lower < upper; got lower={lo[i]:g}, "
                f"upper={hi[i]:g} at index {i}"
            )
        log_mask = np.asarray(self.log)
        if np.any(log_mask & (lo <= 0)):
            i = int(np.argmax(log_mask & (lo <= 0)))
            raise ValueError(
                f"Box.lower must be > 0 for a log-scaled parameter; got {lo[i]:g} at index {i}"
            )
        self.lower = tuple(float(v) for v in lo)
        self.upper = tuple(float(v) for v in hi)

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return len(self.log)

    def _affine(self, j: int) -> tuple[float, float]:
        """Offset and span of parameter j's unit map: x (or log x) = offset + u * span.

        Python floats (`math.log` of each bound and the span in float64), so they enter any
        computation weakly typed: rounded once to the input's dtype, the same constants as
        writing `log(low) + u * (log(high) - log(low))` by hand.
        """
        lo, hi = self.lower[j], self.upper[j]
        if self.log[j]:
            lo, hi = math.log(lo), math.log(hi)
        return lo, hi - lo

    def _map(self, x, column) -> Array | np.ndarray:
        """`column(j, x[..., j], xp)` for every parameter, stacked on the last axis.

        Each parameter is its own formula, chosen by its static flags: a log parameter never
        takes the exponential of a linear one's coordinate (no overflow, no NaN cotangent), and
        the ops per column are exactly those of the hand-written formula.
        """
        xp = _xp(x)
        x = _as_float(x, xp)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"Box of {self.dim} parameters needs a last axis of size "
                             f"{self.dim}; got shape {x.shape}")
        return xp.stack([column(j, x[..., j], xp) for j in range(self.dim)], axis=-1)

    def _value(self, j: int, u, xp):
        offset, span = self._affine(j)
        t = offset + u * span
        return xp.exp(t) if self.log[j] else t

    def to_unit(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array | np.ndarray, "*batch dim"]:
        """Parameters -> [0, 1]^dim (log-spaced for log parameters)."""

        def column(j, v, xp):
            offset, span = self._affine(j)
            return ((xp.log(v) if self.log[j] else v) - offset) / span

        return self._map(x, column)

    def from_unit(
        self, u: Float[ArrayLike, "*batch dim"]
    ) -> Float[Array | np.ndarray, "*batch dim"]:
        """[0, 1]^dim -> parameters (integer knobs relaxed: a continuum from lower to upper)."""
        return self._map(u, self._value)

    def draw(self, u: Float[ArrayLike, "*batch dim"]) -> Float[Array | np.ndarray, "*batch dim"]:
        """A uniform draw of the box from a uniform draw of the unit cube.

        Continuous parameters as `from_unit` (log-uniform for log parameters); an integer
        parameter is uniform over the integers `lower..upper`: each of the `upper - lower + 1`
        values takes an equal share of [0, 1) (`floor` of a box one wider, capped at `upper`).
        """

        def column(j, v, xp):
            if not self.integer[j]:
                return self._value(j, v, xp)
            offset, span = self._affine(j)
            return xp.minimum(xp.floor(offset + v * (span + 1.0)), self.upper[j])

        return self._map(u, column)

    def from_unconstrained(self, z: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """R^dim -> parameters inside the box (smooth, monotone in every coordinate)."""
        return self.from_unit(jax.nn.sigmoid(jnp.asarray(z)))

    def to_unconstrained(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Parameters -> R^dim (inverse of `from_unconstrained`; bounds map to +-13.8)."""
        u = jnp.clip(self.to_unit(jnp.asarray(x)), _UNIT_EPS, 1.0 - _UNIT_EPS)
        return jnp.log(u) - jnp.log1p(-u)

    def _integer_bounds(self, j: int) -> tuple[float, float]:
        return (float(math.ceil(self.lower[j] - _INTEGER_SLACK)),
                float(math.floor(self.upper[j] + _INTEGER_SLACK)))

    def snap(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array | np.ndarray, "*batch dim"]:
        """Round the integer parameters to the nearest integer inside the box (half to even)."""

        def column(j, v, xp):
            return xp.clip(xp.round(v), *self._integer_bounds(j)) if self.integer[j] else v

        return self._map(x, column)

    def integer_neighbours(self, x: Float[ArrayLike, " dim"]) -> Float[np.ndarray, "n dim"]:
        """Every floor/ceil combination of the integer parameters of one relaxed design.

        The candidates a local repair tries when rounding broke a budget: up to `2^k` rows for
        `k` integer parameters (one row when there are none), continuous parameters unchanged;
        numpy float64, rows unique and sorted.
        """
        x = np.asarray(x, dtype=np.float64)
        rows = x[None, :]
        for i in (j for j, flag in enumerate(self.integer) if flag):
            lo, hi = self._integer_bounds(i)
            down, up = rows.copy(), rows.copy()
            down[:, i] = np.clip(np.floor(x[i]), lo, hi)
            up[:, i] = np.clip(np.ceil(x[i]), lo, hi)
            rows = np.concatenate([down, up])
        return np.unique(rows, axis=0)
