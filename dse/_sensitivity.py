"""`sensitivity`: elasticities of metrics to every continuous field of a design, and what binds.

The elasticity of a metric f to a parameter p is d log f / d log p = (p / f) df/dp: the percent
change of f per percent change of p, comparable across parameters of any unit. It is computed by
forward-mode differentiation (`jax.jacfwd`) with respect to one multiplicative scale per field
(p_i -> s_i p_i at s = 1), which gives p_i df/dp_i directly and is well defined at p_i = 0 (the
elasticity there is 0). One jitted call evaluates every metric and every elasticity, vmapped over
a batch of designs.

The binding resource is read from the elasticities: the hardware resource (compute, HBM
bandwidth, SRAM, links, ...) whose field moves the metric most. For a roofline this is exactly
the roof that binds: a compute-bound GEMM has elasticity ~ -1 to the MAC count and ~ 0 to the HBM
bandwidth, a memory-bound one the reverse. Optional `limits` (competing terms, e.g. compute and
memory time) and `budgets` (metric <= bound) name the binding term and the binding budget too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._format import REASON_METRIC
from .hardware import FIELDS

# Which way a metric is better. Public arguments take a plain str (checked at run time, so a
# wrong value gets the named ValueError rather than a type-checker error).
Direction = Literal["min", "max"]

# Which hardware resource each design field provides (by the field's last name), from the one
# field table. Fields without one (process node, redundancy, model or plan fields) get
# elasticities but are not resources.
RESOURCES: Mapping[str, str] = {name: f.resource for name, f in FIELDS.items() if f.resource}


@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Metrics, their elasticities and what binds, for one design or a batch.

    **Fields:**

    - `fields`: dotted names of the design fields differentiated (`"chip.hbm_bandwidth"`).
    - `metrics`: metric names; `directions`: metric -> "min" / "max" (which way is better).
    - `values`: metric -> `[*batch]` value at the design.
    - `elasticity`: metric -> `[*batch, n_fields]`, d log(metric) / d log(field) (NaN where the
      metric is 0 or not finite).
    - `field_values`: `[*batch, n_fields]`, the fields' values at the design.
    - `binding`: metric -> `[*batch]` name of the resource (see `RESOURCES`) with the largest
      |elasticity|: the one that limits the metric.
    - `limits`: term name -> `[*batch]` values of the competing terms (`limits` argument);
      `limiting`: `[*batch]` name of the largest term ("" without `limits`).
    - `budgets`: metric -> bound; `utilization`: metric -> `[*batch]` value / bound;
      `binding_budget`: `[*batch]` name of the budget closest to (or furthest past) its bound.
    - `batch_shape`: `()` for one design, `(n,)` for a batch.
    """

    fields: tuple[str, ...]
    metrics: tuple[str, ...]
    directions: dict[str, str]
    values: dict[str, np.ndarray]
    elasticity: dict[str, np.ndarray]
    field_values: np.ndarray
    binding: dict[str, np.ndarray]
    limits: dict[str, np.ndarray]
    limiting: np.ndarray
    budgets: dict[str, float]
    utilization: dict[str, np.ndarray]
    binding_budget: np.ndarray
    batch_shape: tuple[int, ...]

    def _row(self, array: np.ndarray, index: int | None) -> np.ndarray:
        if self.batch_shape == ():
            return array
        if index is None:
            raise ValueError(f"this result holds a batch of {self.batch_shape[0]} designs; "
                             "pass index= to pick one")
        return array[index]

    def table(self, metric: str | None = None, index: int | None = None, *,
              per: str | None = None, step: float = 0.10):
        """The ranked "what to improve next" table of one design (a pandas DataFrame).

        **Arguments:**

        - `metric`: the metric to improve (default: the first).
        - `index`: the design of a batch.
        - `per`: another metric that measures the price of a change (e.g. `"area"`): adds the
          columns `price` (% of it per 1% of the field, moved the helpful way) and
          `gain_per_price`. The rows stay ranked by the size of the effect.
        - `step`: the relative improvement of each field the `change` column reports (0.10 =
          +10%, or -10% for a field whose decrease helps).

        **Returns:** one row per field: `field`, `resource`, `value`, `elasticity`, `direction`
        ("increase" / "decrease": which way helps; "none" for a field with no effect), `change`
        (relative change of the metric for a `step` change of the field,
        `(1 +- step) ** elasticity - 1`), `gain` (improvement of
        the metric per 1% of the field, in %, positive = better), and with `per`, `price` and
        `gain_per_price`. Ranked by the size of the effect, |elasticity|, largest first (fields
        with no effect last): a field whose effect is negligible never ranks above one that
        moves the metric, whatever either costs.
        """
        import pandas as pd

        metric = self.metrics[0] if metric is None else metric
        if metric not in self.elasticity:
            raise ValueError(f"unknown metric {metric!r}; metrics are {list(self.metrics)}")
        sign = 1.0 if self.directions[metric] == "min" else -1.0
        e = np.asarray(self._row(self.elasticity[metric], index), np.float64)
        values = np.asarray(self._row(self.field_values, index), np.float64)
        # Helps to increase the field when the metric moves the right way with it.
        helps_up = -sign * e >= 0
        moves = np.isfinite(e) & (e != 0)
        direction = np.where(moves, np.where(helps_up, "increase", "decrease"), "none")
        factor = np.where(helps_up, 1.0 + step, 1.0 - step)
        change = factor ** np.nan_to_num(e) - 1.0
        gain = np.abs(e)
        df = pd.DataFrame({
            "field": list(self.fields),
            "resource": [RESOURCES.get(f.rsplit(".", 1)[-1], "") for f in self.fields],
            "value": values, "elasticity": e, "direction": direction, "change": change,
            "gain": gain})
        key = np.nan_to_num(gain, nan=-1.0)
        if per is not None:
            if per not in self.elasticity:
                raise ValueError(f"unknown metric {per!r} for per=; metrics are "
                                 f"{list(self.metrics)}")
            # Price of the helpful move of each field, in % of `per` per 1% of the field.
            e_per = np.asarray(self._row(self.elasticity[per], index), np.float64)
            price = np.where(helps_up, e_per, -e_per)
            df["price"] = price
            priced = price > 1e-9
            df["gain_per_price"] = np.where(priced, gain / np.where(priced, price, 1.0), np.inf)
        order = np.argsort(-key, kind="stable")
        return df.iloc[order].reset_index(drop=True)

    def to_dataframe(self):
        """Long table: one row per (design, metric, field) with value and elasticity."""
        import pandas as pd

        n = int(np.prod(self.batch_shape)) if self.batch_shape else 1
        rows = []
        for m in self.metrics:
            e = np.asarray(self.elasticity[m]).reshape(n, len(self.fields))
            v = np.asarray(self.values[m]).reshape(n)
            fv = np.asarray(self.field_values).reshape(n, len(self.fields))
            b = np.asarray(self.binding[m]).reshape(n)
            for i in range(n):
                for j, f in enumerate(self.fields):
                    rows.append({"design": i, "metric": m, "metric_value": v[i], "field": f,
                                 "field_value": fv[i, j], "elasticity": e[i, j],
                                 "binding": b[i]})
        return pd.DataFrame(rows)


def continuous_fields(design: Any) -> tuple[str, ...]:
    """Dotted names of every floating-point array field of a design (nested Modules walked).

    **Arguments:** `design`: an equinox Module (`Chip`, `System`, a plan...).

    **Returns:** names such as `("chip.mac_units", ..., "scaleup_latency")`.
    """
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(design)[0]:
        if not eqx.is_inexact_array(leaf):
            continue
        names = [getattr(k, "name", None) for k in path]
        if any(n is None for n in names):
            continue  # a leaf inside a list or dict: not a named field
        out.append(".".join(names))
    return tuple(out)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _as_metrics(out: Any) -> dict[str, Array]:
    """A metric function's output as name -> scalar."""
    if isinstance(out, Mapping):
        return {str(k): jnp.asarray(v) for k, v in out.items()}
    if isinstance(out, eqx.Module):
        return {f.name: jnp.asarray(getattr(out, f.name)) for f in dataclasses.fields(out)
                if eqx.is_inexact_array(getattr(out, f.name))
                and jnp.ndim(getattr(out, f.name)) == 0}
    return {"value": jnp.asarray(out)}


def _kernel(metric_fn, fields, limits_fn, design):
    """Values, p df/dp (one forward-mode pass per field, all at once) and limiting terms."""
    leaves = [_get(design, f) for f in fields]
    dtype = jnp.result_type(*leaves) if leaves else jnp.result_type(float)

    def scaled(s):
        new = [leaf * s[i].astype(jnp.result_type(leaf)) for i, leaf in enumerate(leaves)]
        d = eqx.tree_at(lambda t: [_get(t, f) for f in fields], design, new)
        return _as_metrics(metric_fn(d))

    def scaled_twice(s):
        out = scaled(s)
        return out, out

    # The values ride along as jacfwd's aux output: the metric function is traced once (a
    # separate `scaled(ones)` traced and compiled the whole model a second time).
    ones = jnp.ones(len(fields), dtype)
    jac, values = jax.jacfwd(scaled_twice, has_aux=True)(ones)  # jac: p_i df/dp_i per metric
    lim = {} if limits_fn is None else {str(k): jnp.asarray(v)
                                        for k, v in limits_fn(design).items()}
    return values, jac, jnp.stack([jnp.asarray(x, dtype) for x in leaves]), lim


# Module-level jit with the functions and field names static: a second call with the same
# metric function (and design structure) reuses the compiled kernel.
_jit_kernel = eqx.filter_jit(_kernel)


@eqx.filter_jit
def _batched_kernel(metric_fn, fields, limits_fn, design, axes):
    return eqx.filter_vmap(lambda d: _kernel(metric_fn, fields, limits_fn, d),
                           in_axes=(axes,))(design)


def _batch_axes(design, fields):
    """in_axes of the design (0 for batched leaves, None for shared ones) and the batch shape."""
    leaves = jax.tree_util.tree_leaves(design)
    shapes = {jnp.shape(x) for x in leaves if eqx.is_array(x) and jnp.ndim(x) > 0}
    if not shapes:
        return None, ()
    sizes = {s[0] for s in shapes}
    if len(sizes) != 1 or any(len(s) != 1 for s in shapes):
        raise ValueError(f"sensitivity takes one design or a batch along one leading axis; got "
                         f"leaf shapes {sorted(shapes)}")
    axes = jax.tree.map(lambda x: 0 if eqx.is_array(x) and jnp.ndim(x) == 1 else None, design)
    return axes, (sizes.pop(),)


def sensitivity(
    metric_fn: Callable[[Any], Any],
    design: Any,
    *,
    fields: Sequence[str] | None = None,
    directions: Mapping[str, str] | str = "min",
    limits: Callable[[Any], Mapping[str, Float[Array, ""]]] | None = None,
    budgets: Mapping[str, float] | None = None,
) -> SensitivityResult:
    """Elasticities d log(metric) / d log(field) for every continuous field, and what binds.

    **Arguments:**

    - `metric_fn`: `design -> metrics`, pure JAX: a scalar (named "value"), a dict of scalars,
      or a report Module (every scalar float field becomes a metric).
    - `design`: an equinox Module (`Chip`, `System`, ...): one design, or a batch with one
      leading axis on its array fields (evaluated with one vmapped call).
    - `fields`: dotted field names to differentiate (default: every float field,
      `continuous_fields(design)`).
    - `directions`: `"min"` / `"max"` per metric (or one for all): which way is better; sets
      the sign of "what to improve next".
    - `limits`: optional `design -> {term: value}` of competing terms in one unit (e.g.
      `{"compute": op.compute_time, "memory": op.memory_time}`); the largest is the limiting one.
    - `budgets`: optional `{metric: upper bound}`; the metric nearest its bound (largest
      value / bound) is the binding budget.

    **Returns:** a `SensitivityResult` (numpy arrays; `.table()` ranks what to improve next).

    Rounded counts inside the models (a GEMM's tiles and waves over the chip's cores) enter
    with their trend, the derivative of the count before rounding
    (`dse.models._operators.ceil_straight_through`): the elasticity wrt `core_count` says what
    more cores buy on average, not the zero slope between two wave jumps.
    """
    if not isinstance(design, eqx.Module):
        raise ValueError(f"design must be an equinox Module (Chip, System, ...); got "
                         f"{type(design).__name__}")
    all_fields = continuous_fields(design)
    fields = all_fields if fields is None else tuple(fields)
    unknown = [f for f in fields if f not in all_fields]
    if unknown:
        raise ValueError(f"unknown or non-float fields {unknown}; continuous fields of "
                         f"{type(design).__name__} are {list(all_fields)}")
    if not fields:
        raise ValueError(f"{type(design).__name__} has no continuous fields to differentiate")
    budgets = {str(k): float(v) for k, v in dict(budgets or {}).items()}
    for k, v in budgets.items():
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"budget {k!r} must be a finite bound > 0; got {v}")

    axes, batch_shape = _batch_axes(design, fields)
    if batch_shape:
        values, jac, fvals, lim = _batched_kernel(metric_fn, fields, limits, design, axes)
    else:
        values, jac, fvals, lim = _jit_kernel(metric_fn, fields, limits, design)
    # A study's reason flags are a verdict, not a quantity: nothing to differentiate.
    metrics = tuple(m for m in values if m != REASON_METRIC)
    if isinstance(directions, str):
        directions = {m: directions for m in metrics}
    directions = {m: directions.get(m, "min") for m in metrics}
    for m, d in directions.items():
        if d not in ("min", "max"):
            raise ValueError(f"direction of {m!r} must be 'min' or 'max'; got {d!r}")
    for k in budgets:
        if k not in values:
            raise ValueError(f"budget on unknown metric {k!r}; metrics are {list(metrics)}")

    vals = {m: np.asarray(values[m], np.float64) for m in metrics}
    elast = {}
    for m in metrics:
        v = vals[m][..., None]
        ok = np.isfinite(v) & (v != 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            elast[m] = np.where(ok, np.asarray(jac[m], np.float64) / np.where(ok, v, 1.0),
                                np.nan)
    fvals = np.asarray(fvals, np.float64)

    resources = [RESOURCES.get(f.rsplit(".", 1)[-1]) for f in fields]
    considered = [j for j, r in enumerate(resources) if r is not None] or list(range(len(fields)))
    binding = {}
    for m in metrics:
        mag = np.nan_to_num(np.abs(elast[m][..., considered]), nan=-1.0)
        best = np.argmax(mag, axis=-1)
        names = np.array([resources[j] or fields[j] for j in considered], dtype=object)
        binding[m] = np.where(np.max(mag, axis=-1) > 0, names[best], "none").astype(str)

    limits_np = {k: np.asarray(v, np.float64) for k, v in lim.items()}
    if limits_np:
        names = np.array(list(limits_np))
        limiting = names[np.argmax(np.stack(list(limits_np.values()), axis=-1), axis=-1)]
    else:
        limiting = np.full(batch_shape, "", dtype="<U1")
    utilization = {k: np.asarray(vals[k] / b) for k, b in budgets.items()}
    if utilization:
        names = np.array(list(utilization))
        binding_budget = names[np.argmax(np.stack(list(utilization.values()), axis=-1),
                                         axis=-1)]
    else:
        binding_budget = np.full(batch_shape, "", dtype="<U1")
    return SensitivityResult(
        fields=fields, metrics=metrics, directions=directions, values=vals, elasticity=elast,
        field_values=fvals, binding=binding, limits=limits_np, limiting=np.asarray(limiting),
        budgets=budgets, utilization=utilization, binding_budget=np.asarray(binding_budget),
        batch_shape=tuple(batch_shape))
