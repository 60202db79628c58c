"""Smooth bijections between unconstrained reals and a bounded box, and integer snapping.

A gradient optimizer works best on unconstrained coordinates of similar scale. A bounded
parameter x in [low, high] is written x = low + (high - low) * sigmoid(z) (linear scale) or
x = exp(log low + (log high - log low) * sigmoid(z)) (log scale, for sizes and bandwidths that
span decades), so that every z in R^dim is a design inside the box and a step in z is a relative
step in x.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

# Unit coordinates are kept this far inside (0, 1) before the logit, so that a design on the
# boundary maps to a finite z (logit(1e-6) = -13.8) and sigmoid(z) recovers it to 1e-6.
_UNIT_EPS = 1e-6


def _as_mask(mask, dim: int, name: str) -> tuple[bool, ...]:
    if mask is None:
        return (False,) * dim
    values = tuple(bool(v) for v in np.broadcast_to(np.asarray(mask, dtype=bool), (dim,)))
    if len(values) != dim:  # pragma: no cover - broadcast_to already raises
        raise ValueError(f"Box.{name} must have {dim} entries; got {len(values)}")
    return values


class Box(eqx.Module):
    """An axis-aligned box of parameters with a smooth bijection to R^dim.

    **Fields:**

    - `lower`, `upper`: bounds, shape `[dim]`, `lower < upper` (and `lower > 0` where `log`).
    - `log` (static): per-parameter flag, True for a log-scaled parameter.
    - `integer` (static): per-parameter flag, True for a knob relaxed to a real during the
      search and rounded by `snap` at the end.
    """

    lower: Float[Array, " dim"]
    upper: Float[Array, " dim"]
    log: tuple[bool, ...] = eqx.field(static=True)
    integer: tuple[bool, ...] = eqx.field(static=True)

    def __init__(self, lower: ArrayLike, upper: ArrayLike, log=None, integer=None):
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
        self.lower = jnp.asarray(lo, dtype=jnp.result_type(float))
        self.upper = jnp.asarray(hi, dtype=jnp.result_type(float))

    @property
    def dim(self) -> int:
        """Number of parameters."""
        return len(self.log)

    def _ends(self, shape):
        """Log mask and (log-)bounds broadcast to `shape` (ranks are never promoted implicitly)."""
        log = jnp.asarray(self.log)
        # Safe inner value: log of a linear parameter's bound is never used but must not be NaN.
        lo = jnp.where(log, jnp.log(jnp.where(log, self.lower, 1.0)), self.lower)
        hi = jnp.where(log, jnp.log(jnp.where(log, self.upper, 1.0)), self.upper)
        return tuple(jnp.broadcast_to(a, shape) for a in (log, lo, hi))

    def to_unit(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Parameters -> [0, 1]^dim (log-spaced for log parameters)."""
        x = jnp.asarray(x)
        log, lo, hi = self._ends(x.shape)
        t = jnp.where(log, jnp.log(jnp.where(log, jnp.maximum(x, 1e-300), 1.0)), x)
        return (t - lo) / (hi - lo)

    def from_unit(self, u: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """[0, 1]^dim -> parameters."""
        u = jnp.asarray(u)
        log, lo, hi = self._ends(u.shape)
        t = lo + (hi - lo) * u
        return jnp.where(log, jnp.exp(jnp.where(log, t, 0.0)), t)

    def from_unconstrained(self, z: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """R^dim -> parameters inside the box (smooth, monotone in every coordinate)."""
        return self.from_unit(jax.nn.sigmoid(jnp.asarray(z)))

    def to_unconstrained(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Parameters -> R^dim (inverse of `from_unconstrained`; bounds map to +-13.8)."""
        u = jnp.clip(self.to_unit(x), _UNIT_EPS, 1.0 - _UNIT_EPS)
        return jnp.log(u) - jnp.log1p(-u)

    def snap(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Round the integer parameters to the nearest integer inside the box."""
        x = jnp.asarray(x)
        integer = jnp.broadcast_to(jnp.asarray(self.integer), x.shape)
        lo = jnp.broadcast_to(jnp.ceil(self.lower - 1e-9), x.shape)
        hi = jnp.broadcast_to(jnp.floor(self.upper + 1e-9), x.shape)
        return jnp.where(integer, jnp.clip(jnp.round(x), lo, hi), x)

    def integer_neighbours(self, x: Float[ArrayLike, " dim"]) -> Float[Array, "n dim"]:
        """Every floor/ceil combination of the integer parameters of one relaxed design.

        The candidates a local repair tries when rounding broke a budget: `2^k` rows for `k`
        integer parameters (one row when there are none), continuous parameters unchanged.
        """
        x = np.asarray(x, dtype=np.float64)
        idx = [i for i, flag in enumerate(self.integer) if flag]
        lo = np.ceil(np.asarray(self.lower) - 1e-9)
        hi = np.floor(np.asarray(self.upper) + 1e-9)
        rows = [x.copy()]
        for i in idx:
            new_rows = []
            for row in rows:
                for v in sorted({np.floor(x[i]), np.ceil(x[i])}):
                    r = row.copy()
                    r[i] = np.clip(v, lo[i], hi[i])
                    new_rows.append(r)
            rows = new_rows
        return jnp.asarray(np.unique(np.stack(rows), axis=0))

