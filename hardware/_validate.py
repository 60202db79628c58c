"""Construction-time validation shared by the hardware Modules.

Checks run only on concrete values: inside `jit`/`vmap` the leaves are tracers and are left alone
(`eqx.error_if` is the tool there). A failing check raises `ValueError` naming the class, the
field, the offending value and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def as_float_array(x):
    """Converter for continuous fields: JAX array of the default float dtype; tracers untouched."""
    if isinstance(x, jax.core.Tracer):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"expected a number, got the boolean {x!r}")
    dtype = jnp.result_type(float)
    if isinstance(x, jax.Array) and x.dtype == dtype and not x.weak_type:
        return x  # already in the working precision: no op to dispatch
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy error text is enough
        raise ValueError(f"expected a number or array, got {x!r}") from e
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"expected a number or array of numbers, got {x!r}")
    with np.errstate(invalid="ignore"):
        beyond = np.abs(arr.astype(np.float64)) > np.finfo(dtype).max
    if np.any(beyond & np.isfinite(arr)):
        # Not representable in the working precision (1e39 in float32 would be inf): kept as
        # given, so that the Module's validation names the value the user wrote.
        return arr.astype(np.float64)
    # Cast on the host, then one transfer (a cast of a JAX array is an op dispatch each time).
    return jnp.asarray(arr.astype(dtype))


def concrete(x) -> np.ndarray | None:
    """`x` as a float64 numpy array, or None when it is traced (inside jit / vmap / grad)."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x, dtype=np.float64)
    except Exception:  # pragma: no cover
        return None


def format_value(values: np.ndarray) -> str:
    """A value or an array for an error message (long arrays abbreviated)."""
    if values.ndim == 0:
        return f"{float(values):g}"
    return np.array2string(values, threshold=6, precision=4)


def range_text(lower: float | int, upper: float | int, lower_inclusive: bool = True,
               upper_inclusive: bool = True, zero_allowed: bool = False) -> str:
    """An allowed range in words, as errors print it ("finite and in [1, 1e+10]")."""
    lo = "[" if lower_inclusive else "("
    hi = "]" if upper_inclusive and math.isfinite(upper) else ")"
    zero = "0 (none) or " if zero_allowed and lower > 0 else ""
    return f"finite and {zero}in {lo}{lower:g}, {upper:g}{hi}"


def check_range(
    owner: str,
    field: str,
    value,
    *,
    lower: float | int = 0.0,
    upper: float | int = math.inf,
    lower_inclusive: bool = False,
    upper_inclusive: bool = True,
    zero_allowed: bool = False,
) -> None:
    """Raise `ValueError` unless every element of `value` is finite and inside the range (or
    exactly 0, where `zero_allowed`: 0 meaning "absent", as a chip without HBM)."""
    arr = concrete(value)
    if arr is None:
        return
    allowed = range_text(lower, upper, lower_inclusive, upper_inclusive, zero_allowed)
    # A bound given as a float64 (2e20) is stored as its nearest float32 (2.00000004e20) in a
    # float32 field: compare in the field's own precision, so that the bound itself is valid.
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        lower, upper = float(np.asarray(lower, dtype)), float(np.asarray(upper, dtype))
    bad = ~np.isfinite(arr)
    bad |= (arr < lower) if lower_inclusive else (arr <= lower)
    if math.isfinite(upper):
        bad |= (arr > upper) if upper_inclusive else (arr >= upper)
    if zero_allowed:
        bad &= arr != 0
    if np.any(bad):
        raise ValueError(f"{owner}.{field} must be {allowed}; got "
                         f"{_first_bad(arr, bad, getattr(value, 'dtype', None))} "
                         f"(value {format_value(arr)})")


def _first_bad(arr: np.ndarray, bad: np.ndarray | np.bool_, dtype=None) -> str:
    """The first offending element (as few digits as its precision needs: 1e+30 for a float32
    1e30, not 1.000000015e+30), and where it sits in a batch."""
    first = float(arr[bad].ravel()[0] if arr.ndim else arr)
    digits = 7 if dtype is not None and np.dtype(dtype) == np.float32 else 12
    where = "" if arr.ndim == 0 else f" at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
    return f"{first:.{digits}g}{where}"


def check_integer(owner: str, field: str, value, *, lower: float | int = 1.0,
                  upper: float | int = 2.0**24) -> None:
    """Raise `ValueError` unless every element of `value` is a whole number in [lower, upper].

    Counts (chips, parallel degrees, sequences, tokens) are stored as floats so that they vmap
    and relax; a fractional one is a mistake to refuse, never to truncate. The default upper
    bound, 2^24, is the largest range in which float32 holds every integer exactly.
    """
    arr = concrete(value)
    if arr is None:
        return
    bad = ~np.isfinite(arr) | (arr < lower) | (arr > upper)
    bad |= np.isfinite(arr) & (arr != np.round(arr))
    if np.any(bad):
        raise ValueError(f"{owner}.{field} must be a whole number in [{lower:.10g}, "
                         f"{upper:.10g}]; got "
                         f"{_first_bad(arr, bad, getattr(value, 'dtype', None))}")


def check_choice(owner: str, field: str, value, allowed) -> None:
    """Raise `ValueError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{owner}.{field} must be one of {sorted(allowed)}; got {value!r}")


class PresetMapping(Mapping):
    """A read-only name -> preset mapping whose KeyError lists the known names."""

    def __init__(self, kind: str, items: dict):
        self._kind = kind
        self._items = dict(items)

    def __getitem__(self, name):
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self._kind} preset {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __repr__(self):
        return f"{self._kind.upper()}S({', '.join(self._items)})"
