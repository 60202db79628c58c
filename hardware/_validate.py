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
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy error text is enough
        raise ValueError(f"expected a number or array, got {x!r}") from e
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"expected a number or array of numbers, got {x!r}")
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _concrete(x):
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x, dtype=np.float64)
    except Exception:  # pragma: no cover
        return None


def _fmt(values: np.ndarray) -> str:
    if values.ndim == 0:
        return f"{float(values):g}"
    return np.array2string(values, threshold=6, precision=4)


def check_range(
    owner: str,
    field: str,
    value,
    *,
    lower: float = 0.0,
    upper: float = math.inf,
    lower_inclusive: bool = False,
    upper_inclusive: bool = True,
) -> None:
    """Raise `ValueError` unless every element of `value` is finite and inside the range."""
    arr = _concrete(value)
    if arr is None:
        return
    lo = "[" if lower_inclusive else "("
    hi = "]" if upper_inclusive and math.isfinite(upper) else ")"
    allowed = f"finite and in {lo}{lower:g}, {upper:g}{hi}"
    bad = ~np.isfinite(arr)
    bad |= (arr < lower) if lower_inclusive else (arr <= lower)
    if math.isfinite(upper):
        bad |= (arr > upper) if upper_inclusive else (arr >= upper)
    if np.any(bad):
        first = arr[bad].ravel()[0] if arr.ndim else arr
        where = "" if arr.ndim == 0 else f" at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
        raise ValueError(
            f"{owner}.{field} must be {allowed}; got {float(first):g}{where} "
            f"(value {_fmt(arr)})"
        )


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
