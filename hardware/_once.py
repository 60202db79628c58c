"""Derived quantities computed once per model evaluation, however often the model asks.

JAX stages every `jnp` operation of a traced function into its program, including the shape
arithmetic of a `Transformer` or a `TrainingPlan` that the model's parts ask for again and
again: one GPT-3 `train_step` traced 3,614 operations, 1,494 of them exact repeats of earlier
ones (`head_dim` alone about 50 times). XLA removes the repeats when it compiles, but tracing
and lowering pay for each (that step: 2,686 operations and 0.46 s instead of 0.66 s to trace
and lower here). Inside `evaluated_once()`, a function marked `once_per_evaluation` returns
its first result again for the same object and arguments; outside, it computes every time.
The models' entry points (`train_step`, `prefill`, `decode`, `serve`, ...) open the block, so
a value never outlives the evaluation (or the trace) that computed it; a block opened around
two traced programs would hand the first one's tracers to the second, which is why it stays
private to the models. It sits beneath every layer so that a chip's derived quantities are
shared too. `compiled_when_concrete`, beside it, runs a function called by hand as one compiled
program instead of operation by operation.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import equinox as eqx
import jax

_RESULTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "dse_evaluated_once", default=None)

# Arguments that key a result by value; immutable objects (equinox modules, JAX arrays and
# tracers) key it by identity; anything else (a list, a NumPy array) computes afresh.
_PLAIN = (type(None), bool, int, float, str)
_IMMUTABLE = (eqx.Module, jax.Array)


def _key_of(value):
    if type(value) in _PLAIN:
        return type(value), value
    if isinstance(value, _IMMUTABLE):
        return id(value)
    raise TypeError


@contextlib.contextmanager
def evaluated_once():
    """Share `once_per_evaluation` results inside this block (nested blocks share the outer)."""
    if _RESULTS.get() is not None:
        yield
        return
    token = _RESULTS.set({})
    try:
        yield
    finally:
        _RESULTS.reset(token)


def once_per_evaluation(fn):
    """`fn(*args, **kwargs)` computed once per `evaluated_once()` block for the same arguments:
    plain ones (None, bool, int, float, str) by type and value, equinox modules and JAX arrays
    by identity; with any other argument it computes afresh. The arguments are held until the
    block ends, so an id is never reused for another object within it."""
    name = fn.__qualname__

    @functools.wraps(fn)
    def shared(*args, **kwargs):
        results = _RESULTS.get()
        if results is None:
            return fn(*args, **kwargs)
        try:
            key = (name, *map(_key_of, args),
                   *sorted((k, _key_of(v)) for k, v in kwargs.items()))
        except TypeError:
            return fn(*args, **kwargs)
        hit = results.get(key)
        if hit is None:
            hit = results[key] = (args, kwargs, fn(*args, **kwargs))
        return hit[2]

    return shared


def evaluates_once(fn):
    """`fn` with its body inside `evaluated_once()`: an entry point of the models."""

    @functools.wraps(fn)
    def entry(*args, **kwargs):
        with evaluated_once():
            return fn(*args, **kwargs)

    return entry


def compiled_when_concrete(fn):
    """`fn` run as one compiled program (`eqx.filter_jit`) when none of its arguments is traced,
    and inline when one is (inside a caller's `jit`, `vmap` or `grad`).

    JAX runs an unjitted function one operation at a time and compiles each operation for
    every new shape it meets (an eager vmap also batches each one): `technology`'s curves, its
    first user, took `tests/test_hardware.py` from 58 to 42 s. Only for functions whose checks
    of concrete values all happen before (at construction of their arguments): traced, a
    check sees tracers and is skipped. Array arguments are traced; any other (a string, a
    Python float) is a static part of the program, which compiles again for each new value:
    not for `area` / `power` / `cost`, whose chips carry their preset's `name` as a static
    field (one program per preset; measured, no faster than the curves alone)."""
    jitted = eqx.filter_jit(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)
        return jitted(*args, **kwargs)

    return run
