"""`Space`: named, bounded parameters bound to fields of a base design, and how to sample them.

A `Space` maps a point `x` (one value per parameter, in the parameter's own SI units) to a design
(`build`), to the unit cube (`to_unit` / `from_unit`, log-spaced for log parameters) and to
unconstrained reals (`to_unconstrained` / `from_unconstrained`, log + logit), the coordinates the
gradient optimizers work in. Those maps, the uniform draw of a sample and the snapping of integer
knobs are one `dse.optimizers.Box` (`space.box`), the same one `dse.optimize` searches in. The
same integer sample streams are produced on the host (`sample`) and inside the jitted sweep kernel
(`dse.sweep`), so point `i` of a sweep is point `i` of `space.sample(n)`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import FIELDS
from dse.optimizers import Box

Scale = Literal["linear", "log", "integer"]

# Unit-cube coordinates carry 24 bits: exactly representable in float32, in [0, 1 - 2**-24],
# so the float32 kernel and the float64 host agree on the same integer draw.
_UNIT_BITS = 24
_UNIT_SHIFT = np.uint32(32 - _UNIT_BITS)
_UNIT_SCALE = 2.0**-_UNIT_BITS
# 32-bit Sobol' integers (scipy `bits=32`): at most 2**32 points per stream.
_SOBOL_BITS = 32
MAX_POINTS = 2**31 - 1  # index arithmetic in the kernel is int32


@dataclasses.dataclass(frozen=True)
class Param:
    """One named, bounded parameter bound to a field of the base design.

    **Fields:**

    - `name`: column name in sweep tables.
    - `field`: dotted path of an array field in the base design (`"sram_bytes"` on a `Chip`,
      `"chip.sram_bytes"` on a `System`).
    - `low`, `high`: bounds in the field's units, `low < high` (inclusive).
    - `scale`: `"linear"` (uniform), `"log"` (log-uniform, bounds > 0) or `"integer"` (uniform
      over the integers `low..high`; relaxed to a continuum by `from_unit` /
      `from_unconstrained`, rounded back by `Space.snap`).
    """

    name: str
    field: str
    low: float | int
    high: float | int
    scale: str = "linear"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Param.name must be a non-empty string; got {self.name!r}")
        if not isinstance(self.field, str) or not self.field:
            raise ValueError(f"Param {self.name!r}: field must be a dotted path string; got "
                             f"{self.field!r}")
        if self.scale not in get_args(Scale):
            raise ValueError(f"Param {self.name!r}: scale must be one of {list(get_args(Scale))}; "
                             f"got {self.scale!r}")
        for which in ("low", "high"):
            value = getattr(self, which)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"Param {self.name!r}: {which} must be a number; got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"Param {self.name!r}: {which} must be finite; got {value!r}")
            object.__setattr__(self, which, float(value))
        if self.low == self.high:
            raise ValueError(f"Param {self.name!r}: empty bounds, low == high == {self.low:g}; "
                             "use a constant in the base design instead")
        if self.low > self.high:
            raise ValueError(f"Param {self.name!r}: inverted bounds, low={self.low:g} > "
                             f"high={self.high:g}")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"Param {self.name!r}: log scale needs low > 0; got low="
                             f"{self.low:g} (high={self.high:g})")
        if self.scale == "integer" and (self.low != round(self.low)
                                        or self.high != round(self.high)):
            raise ValueError(f"Param {self.name!r}: integer scale needs integer bounds; got "
                             f"[{self.low:g}, {self.high:g}]")

    @classmethod
    def from_field(cls, base: Any, name: str, **changes) -> Param:
        """A parameter over hardware field `name` of `base`, with the table's default range.

        **Arguments:**

        - `base`: the design the space is over (a `Chip`, or a `System`: then a chip field is
          `chip.<name>`).
        - `name`: a field of `dse.hardware.FIELDS` (also the parameter's name).
        - `changes`: `low`, `high`, `scale` or `name` to use instead of the table's.

        **Returns:** the `Param`.
        """
        if name not in FIELDS:
            raise ValueError(f"Param.from_field: {name!r} is not in dse.hardware.FIELDS; fields "
                             f"are {list(FIELDS)}")
        f = FIELDS[name]
        return cls(**{"name": name, "field": f.path(base), "low": f.low, "high": f.high,
                      "scale": f.scale, **changes})


def _field_path(base: Any, path: str, pname: str) -> list[str]:
    """Check that `path` names a non-static array field of `base`; return its parts."""
    parts = path.split(".")
    obj = base
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or type(base).__name__
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise ValueError(f"Param {pname!r}: field {path!r}: {where} is a "
                             f"{type(obj).__name__}, not a design Module with fields")
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            raise ValueError(f"Param {pname!r}: unknown field {path!r}: {type(obj).__name__} has "
                             f"no field {part!r}; fields are {sorted(fields)}")
        if fields[part].metadata.get("static", False):
            raise ValueError(f"Param {pname!r}: field {path!r} is static (it changes the shape "
                             "of the computation) and cannot be swept; sweep it in a Python loop")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise ValueError(f"Param {pname!r}: field {path!r} is a {type(obj).__name__}, not an "
                         "array; name one of its fields")
    if not isinstance(obj, (jax.Array, np.ndarray, float, int, np.number)):
        raise ValueError(f"Param {pname!r}: field {path!r} holds {type(obj).__name__}, not a "
                         "number or array")
    if np.ndim(obj) != 0:
        raise ValueError(f"Param {pname!r}: field {path!r} has shape {np.shape(obj)}; the base "
                         "design must be a single design (scalar fields)")
    return parts


def _get(obj: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        obj = getattr(obj, part)
    return obj


def _replace_validated(obj: Any, parts: Sequence[str], value: Any) -> Any:
    """`dataclasses.replace` down the path, so every level's `__check_init__` runs."""
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    child = _replace_validated(getattr(obj, parts[0]), parts[1:], value)
    return dataclasses.replace(obj, **{parts[0]: child})


def _as_params(params) -> list[Param]:
    if isinstance(params, Mapping):
        out = []
        for name, spec in params.items():
            if isinstance(spec, Param):
                out.append(spec)
                continue
            if not isinstance(spec, (tuple, list)) or len(spec) not in (3, 4):
                raise ValueError(f"Space param {name!r}: expected (scale, low, high) or (field, "
                                 f"scale, low, high); got {spec!r}")
            field, rest = (name, spec) if len(spec) == 3 else (spec[0], spec[1:])
            out.append(Param(name=name, field=field, low=rest[1], high=rest[2], scale=rest[0]))
        return out
    params = list(params)
    for p in params:
        if not isinstance(p, Param):
            raise ValueError(f"Space params must be Param objects; got {p!r}")
    return params


class Space:
    """A box of named parameters over fields of a base design (frozen, validated).

    **Arguments:**

    - `base`: the design every point starts from (`Chip`, `System`, a plan: any equinox Module);
      it must be a single design (scalar fields).
    - `params`: a list of `Param`, or a dict `name -> (scale, low, high)` (the field is the name)
      or `name -> (field, scale, low, high)`.

    Raises `ValueError` naming the parameter for an unknown or static field, a duplicate name or
    field, empty or inverted bounds, a log bound <= 0, and for bounds the base design's own
    validation rejects (e.g. `sram_bytes` low = 0).

    **Attributes:** `base`, `params`, `names`, `fields`, `dim`, `box` (the `dse.optimizers.Box`
    of the bounds, log and integer flags: every map below is its), `lower`, `upper` (float64
    arrays [dim]), `is_integer`, `is_log` (bool arrays [dim]).

    The maps (`to_unit`, `from_unit`, `snap`) take jax or numpy arrays and return the same kind
    (numpy: computed in float64 on the host); the unconstrained maps take and return jax arrays.
    """

    __slots__ = ("base", "params", "names", "fields", "dim", "box", "lower", "upper",
                 "is_integer", "is_log", "_paths")

    def __init__(self, base: Any, params: Sequence[Param] | Mapping[str, Any]):
        if not isinstance(base, eqx.Module):
            raise ValueError(f"Space.base must be an equinox Module design (Chip, System, ...); "
                             f"got {type(base).__name__}")
        plist = _as_params(params)
        if not plist:
            raise ValueError("Space needs at least one parameter; got none")
        names = [p.name for p in plist]
        fields = [p.field for p in plist]
        for label, seq in (("name", names), ("field", fields)):
            dup = sorted({s for s in seq if seq.count(s) > 1})
            if dup:
                raise ValueError(f"Space: duplicate parameter {label}(s) {dup}")
        paths = tuple(tuple(_field_path(base, p.field, p.name)) for p in plist)
        for p, path in zip(plist, paths, strict=True):
            for bound in (p.low, p.high):
                try:
                    _replace_validated(base, path, bound)
                except ValueError as e:
                    raise ValueError(f"Param {p.name!r}: bound {bound:g} is not a valid value of "
                                     f"field {p.field!r}: {e}") from None
        put = object.__setattr__
        put(self, "base", base)
        put(self, "params", tuple(plist))
        put(self, "names", tuple(names))
        put(self, "fields", tuple(fields))
        put(self, "dim", len(plist))
        box = Box([p.low for p in plist], [p.high for p in plist],
                  log=[p.scale == "log" for p in plist],
                  integer=[p.scale == "integer" for p in plist])
        put(self, "box", box)
        put(self, "lower", np.array(box.lower, dtype=np.float64))
        put(self, "upper", np.array(box.upper, dtype=np.float64))
        put(self, "is_integer", np.array(box.integer))
        put(self, "is_log", np.array(box.log))
        put(self, "_paths", paths)
        for arr in (self.lower, self.upper, self.is_integer, self.is_log):
            arr.setflags(write=False)

    def __setattr__(self, name, value):
        raise AttributeError("Space is frozen")

    def __repr__(self) -> str:
        inner = ", ".join(f"{p.name}={p.field}:{p.scale}[{p.low:g}, {p.high:g}]"
                          for p in self.params)
        return f"Space({type(self.base).__name__}; {inner})"

    def describe(self) -> dict:
        """A JSON-able description (used to check that a resumed sweep is the same sweep)."""
        return {"base": type(self.base).__name__,
                "params": [dataclasses.asdict(p) for p in self.params]}

    # --- the maps: one Box ----------------------------------------------------------------
    def from_unit(
        self, u: Float[ArrayLike, "*batch dim"]
    ) -> Float[Array | np.ndarray, "*batch dim"]:
        """Unit cube -> parameter units (log-spaced for log params; integers left relaxed).

        **Arguments:** `u`: [..., dim] in [0, 1]. **Returns:** x: [..., dim].
        """
        return self.box.from_unit(self._checked(u))

    def to_unit(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array | np.ndarray, "*batch dim"]:
        """Parameter units -> unit cube (inverse of `from_unit`).

        **Arguments:** `x`: [..., dim] inside the bounds. **Returns:** u: [..., dim] in [0, 1].
        """
        return self.box.to_unit(self._checked(x))

    def from_unconstrained(self, z: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Unconstrained reals -> the open box: `from_unit(sigmoid(z))`; smooth, jnp, vmappable.

        **Arguments:** `z`: [..., dim], any real. **Returns:** x: [..., dim] strictly inside.
        """
        return self.box.from_unconstrained(self._checked(z))

    def to_unconstrained(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array, "*batch dim"]:
        """Box -> unconstrained reals: `logit(to_unit(x))`, the unit coordinate kept 1e-6 inside
        (0, 1) so that a design on a bound maps to a finite z (+-13.8).

        **Arguments:** `x`: [..., dim]. **Returns:** z: [..., dim].
        """
        return self.box.to_unconstrained(self._checked(x))

    def snap(self, x: Float[ArrayLike, "*batch dim"]) -> Float[Array | np.ndarray, "*batch dim"]:
        """Round integer parameters to the nearest integer inside their bounds; others unchanged.

        **Arguments:** `x`: [..., dim]. **Returns:** [..., dim].
        """
        return self.box.snap(self._checked(x))

    def build(self, x: Float[ArrayLike, "*batch dim"], *, base: Any = None) -> Any:
        """The base design with each parameter's field replaced by `x[..., i]`.

        Pure and traceable (no validation: the bounds were validated at construction), so it jits
        and vmaps; a batch `x` [n, dim] gives a design whose swept fields have shape [n].

        **Arguments:** `x`: [..., dim] in parameter units; `base`: the design to start from, of the
        same structure as `self.base` (default `self.base`; a traced copy lets one compiled
        program serve several base designs). **Returns:** the design.
        """
        x = jnp.asarray(self._checked(x))
        dtype = jnp.result_type(float)
        values = [x[..., j].astype(dtype) for j in range(self.dim)]
        paths = self._paths
        return eqx.tree_at(lambda d: [_get(d, path) for path in paths],
                           self.base if base is None else base, values)

    def _checked(self, x):
        """`x` itself, once its last axis is known to hold one value per parameter."""
        shape = np.shape(x)
        if len(shape) == 0 or shape[-1] != self.dim:
            raise ValueError(f"Space with {self.dim} params {list(self.names)} needs a last axis "
                             f"of size {self.dim}; got shape {shape}")
        return x

    # --- sampling -------------------------------------------------------------------------
    def sample(self, n: int, method: str = "sobol", seed: int = 0) -> Float[np.ndarray, "n dim"]:
        """`n` points of the box, float64 [n, dim] in parameter units (integers exact).

        **Arguments:**

        - `n`: number of points.
        - `method`: `"sobol"` (scrambled Sobol', scipy's LMS + digital shift, seeded), `"lhs"`
          (Latin hypercube, seeded), `"grid"` (`k` evenly spaced values per axis, bounds
          included, `n = k**dim`, last axis fastest) or `"random"` (counter-based uniform).
        - `seed`: seeds the scrambling / permutation / stream.

        **Returns:** x: [n, dim], float64. Point `i` equals point `i` of `dse.sweep` with the same
        method and seed (up to float32 rounding in the kernel), except for `"lhs"`, which the
        sweep stratifies per chunk.
        """
        n = _check_n(n)
        if method == "lhs":
            from scipy.stats import qmc
            u = qmc.LatinHypercube(self.dim, seed=np.random.default_rng(seed)).random(n)
        else:
            u = unit_draws(self, method, seed, np.arange(n), n)
        return self.box.draw(u)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n > MAX_POINTS:
        raise ValueError(f"number of points must be an integer in [1, {MAX_POINTS}]; got {n!r}")
    return int(n)


def grid_size(dim: int, n: int) -> int:
    """Points per axis of a full grid of `n = k**dim` points; `ValueError` otherwise."""
    k = max(1, round(n ** (1.0 / dim)))
    for cand in (k - 1, k, k + 1):
        if cand >= 1 and cand**dim == n:
            return cand
    lo = max(1, int(math.floor(n ** (1.0 / dim))))
    raise ValueError(f"grid sampling of {dim} params needs n = k**{dim}; got n={n} "
                     f"(nearest: {lo**dim} or {(lo + 1)**dim})")


# --- integer sample streams, shared by host (numpy) and kernel (jax.numpy) ---------------------

def sobol_directions(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scrambled Sobol' direction integers [32, dim] and digital shift [dim] (uint32).

    scipy scrambles with a linear matrix scramble of the direction numbers plus a digital shift,
    so its point `i` is `shift ^ XOR_k bit_k(gray(i)) * V[k]`, `gray(i) = i ^ (i >> 1)`; with V
    known, any index is computed in isolation (counter-based), which the sweep kernel needs.
    V and the shift are read from the seeded scipy engine and then checked against the first
    1024 points scipy itself generates; without those attributes (another scipy) they are
    recovered through the public API (`fast_forward`, slower: O(2**31) steps).
    """
    from scipy.stats import qmc

    def engine():
        return qmc.Sobol(dim, scramble=True, bits=_SOBOL_BITS, seed=np.random.default_rng(seed))

    eng = engine()
    sv, shift = getattr(eng, "_sv", None), getattr(eng, "_shift", None)
    if sv is not None and shift is not None and np.shape(sv) == (dim, _SOBOL_BITS):
        directions = np.ascontiguousarray(np.asarray(sv, np.uint64).T).astype(np.uint32)
        shift = np.asarray(shift, np.uint64).astype(np.uint32)
    else:
        directions, shift = _sobol_directions_public(engine(), dim)
    i = np.arange(1024, dtype=np.uint32)
    mine = sobol_xor(directions, i ^ (i >> 1), np) ^ shift[:, None]
    ref = np.round(eng.random(1024) * 2.0**_SOBOL_BITS).astype(np.uint64).astype(np.uint32)
    if not np.array_equal(mine.T, ref):
        directions, shift = _sobol_directions_public(engine(), dim)
    return directions, shift


def _sobol_directions_public(engine, dim: int) -> tuple[np.ndarray, np.ndarray]:
    def point(i: int) -> np.ndarray:
        engine.reset()
        if i:
            engine.fast_forward(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "balance properties" note for n=1
            x = engine.random(1)[0]
        return np.round(x * 2.0**_SOBOL_BITS).astype(np.uint64).astype(np.uint32)

    shift = point(0)
    directions = np.zeros((_SOBOL_BITS, dim), np.uint32)
    prev = np.zeros(dim, np.uint32)
    for k in range(_SOBOL_BITS):
        # gray(2**k) has bits k and k-1 set: point(2**k) ^ shift = V[k] ^ V[k-1].
        directions[k] = point(1 << k) ^ shift ^ prev
        prev = directions[k]
    return directions, shift


def sobol_xor(directions: np.ndarray, gray, xp, bits: int = _SOBOL_BITS):
    """XOR of the direction integers selected by the bits of `gray` ([m] -> [dim, m] uint32)."""
    out = xp.zeros((directions.shape[1],) + gray.shape, dtype=xp.uint32)
    for k in range(bits):
        sel = ((gray >> k) & 1).astype(bool)
        out = out ^ xp.where(sel[None, :], xp.asarray(directions[k])[:, None], xp.uint32(0))
    return out


def _hash32(x, xp):
    """murmur3's 32-bit finalizer (fmix32): a bijective avalanche mixer on uint32."""
    x = x ^ (x >> 16)
    x = x * xp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * xp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def random_bits(index, dim: int, seed: int, xp):
    """Counter-based uniform uint32 [dim, m] for point indices [m] (uint32)."""
    key = np.uint32((seed * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)
    cols = []
    for j in range(dim):
        salt = np.uint32(((j + 1) * 0x632BE5AB) & 0xFFFFFFFF)
        cols.append(_hash32(_hash32(index ^ key, xp) ^ salt, xp))
    return xp.stack(cols, 0)


def to_unit_float(bits, xp, dtype):
    """uint32 -> [0, 1) with 24 exact bits (so float32 and float64 agree)."""
    return (bits >> _UNIT_SHIFT).astype(dtype) * xp.asarray(_UNIT_SCALE, dtype=dtype)


def grid_unit(index, dim: int, k: int, xp, dtype):
    """Grid point indices [m] -> unit coordinates [dim, m] (bounds included, last axis fastest)."""
    cols = []
    rest = index
    for _ in range(dim):
        digit = rest % k
        rest = rest // k
        cols.append(digit.astype(dtype) / xp.asarray(k - 1, dtype=dtype) if k > 1
                    else xp.full(index.shape, 0.5, dtype=dtype))
    return xp.stack(cols[::-1], 0)


def unit_draws(space: Space, method: str, seed: int, index: np.ndarray, n: int) -> np.ndarray:
    """Host unit draws [len(index), dim] (float64) for the given point indices of an n-point run."""
    if method not in ("sobol", "grid", "random"):
        raise ValueError(f"sampling method must be one of ['sobol', 'lhs', 'grid', 'random']; "
                         f"got {method!r}")
    index = np.asarray(index, dtype=np.uint64)
    if method == "sobol":
        directions, shift = sobol_directions(space.dim, seed)
        gray = (index ^ (index >> np.uint64(1))).astype(np.uint32)
        bits = sobol_xor(directions, gray, np) ^ shift[:, None]
        return to_unit_float(bits, np, np.float64).T
    if method == "random":
        return to_unit_float(random_bits(index.astype(np.uint32), space.dim, seed, np), np,
                             np.float64).T
    return grid_unit(index.astype(np.int64), space.dim, grid_size(space.dim, n), np,
                     np.float64).T
