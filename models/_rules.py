"""Rules a plan must obey on a model and a system, written once for both uses.

A rule is a boolean array ("tp divides the heads") with the `Reason` flag it sets when it fails.
Given by hand, with concrete values, a failing rule is a `ValueError` naming the field, the value
and what is allowed (`check_rules`); inside jit / vmap (a plan search, a sweep), where the values
are traced, it is a flag in the report's `reason` (`reason_of`), so one bad point never stops a
sweep of a million and is never presented as a result either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from dse.hardware import Reason
from dse.hardware._validate import concrete, format_value


class Rule(NamedTuple):
    """One check: `ok` (bool array), the `Reason` it sets, and how to say what went wrong.

    **Fields:** `flag` (a `Reason`), `field` ("TrainingPlan.tp"), `value` (the offending
    quantity, an array like `ok`), `ok`, and `allowed`, a function giving the allowed values in
    words (called only to raise, on concrete values).
    """

    flag: Reason
    field: str
    value: Array
    ok: Bool[Array, "*batch"]
    allowed: Callable[[], str]


def divides(divisor, n) -> Bool[Array, "*batch"]:
    """True where the whole number `divisor` divides the whole number `n` (floats, exactly:
    IEEE fmod of integers is exact)."""
    return jnp.fmod(n, divisor) == 0


def whole(x) -> Bool[Array, "*batch"]:
    """True where `x` is a whole number."""
    return x == jnp.round(x)


def reason_of(rules: Sequence[Rule]) -> Int[Array, "*batch"]:
    """The OR of the flags of every rule that fails (0 where all hold), int32."""
    code = jnp.asarray(0, jnp.int32)
    for rule in rules:
        code = code | jnp.where(rule.ok, 0, int(rule.flag)).astype(jnp.int32)
    return code


def is_concrete(*values) -> bool:
    """True when no value is traced (the call was made by hand, not inside jit / vmap)."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(values))


def all_concretely(value, test) -> bool:
    """True when `value` is concrete (not traced) and `test` holds for all its elements: a
    branch the model can skip, with fewer operations to trace, where it cannot matter."""
    known = concrete(value)
    return known is not None and bool(np.all(test(known)))


def check_rules(rules: Sequence[Rule]) -> None:
    """Raise `ValueError` for the first rule that fails, where its values are concrete."""
    for rule in rules:
        ok = concrete(rule.ok)
        if ok is None or np.all(ok):
            continue
        value = np.broadcast_to(concrete(rule.value), ok.shape)
        bad = ~ok.astype(bool)
        where = "" if bad.ndim == 0 else \
            f" at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
        first = value[bad].ravel()[0] if bad.ndim else value
        raise ValueError(f"{rule.field} must be {rule.allowed()}; got {float(first):g}{where}"
                         + ("" if bad.ndim == 0 else f" (value {format_value(value)})"))


def memory_reason(chip, memory, capacity) -> Int[Array, "*batch"]:
    """`Reason.MEMORY` (a chip with HBM) or `Reason.SRAM` (one without) where `memory` exceeds
    `capacity`, else 0."""
    flag = jnp.where(chip.has_hbm, int(Reason.MEMORY), int(Reason.SRAM))
    return jnp.where(memory > capacity, flag, 0).astype(jnp.int32)


def shortfall(memory, capacity):
    """How far `memory` misses `capacity`, bytes (0 where it fits)."""
    return jnp.maximum(memory - capacity, 0.0)
