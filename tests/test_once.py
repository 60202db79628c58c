"""`once_per_evaluation`: a derived quantity computed once per model evaluation (by object
identity and plain argument values), never outside one, and never carried from one trace into
another."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dse.hardware._once import (
    compiled_when_concrete,
    evaluated_once,
    evaluates_once,
    once_per_evaluation,
)

CALLS = []


class Shape(eqx.Module):
    width: jax.Array

    @property
    @once_per_evaluation
    def doubled(self):
        CALLS.append(("doubled", id(self)))
        return 2.0 * self.width

    @once_per_evaluation
    def scaled(self, factor):
        CALLS.append(("scaled", factor))
        return factor * self.width


@evaluates_once
def evaluate(shape):
    return shape.doubled + shape.doubled + shape.scaled(3.0) + shape.scaled(3.0)


def test_computed_once_per_object_and_plain_argument_inside_an_evaluation():
    CALLS.clear()
    a, b = Shape(jnp.asarray(1.5)), Shape(jnp.asarray(1.5))
    assert float(evaluate(a)) == 2 * 3.0 + 2 * 4.5
    assert CALLS == [("doubled", id(a)), ("scaled", 3.0)]
    CALLS.clear()
    with evaluated_once():
        a.doubled, b.doubled, a.doubled  # noqa: B018
        a.scaled(2), a.scaled(2.0), a.scaled(2.0)  # an int and a float key apart
        a.scaled(np.float64(2.0)), a.scaled(np.float64(2.0))  # not a plain argument: each time
        with evaluated_once():  # a nested block shares the outer one
            a.doubled  # noqa: B018
    assert CALLS == [("doubled", id(a)), ("doubled", id(b)), ("scaled", 2), ("scaled", 2.0),
                     ("scaled", 2.0), ("scaled", 2.0)]
    CALLS.clear()
    a.doubled, a.doubled  # noqa: B018  (outside a block: every time)
    evaluate(a)  # the block ended: nothing kept from the last one
    assert [c[0] for c in CALLS] == ["doubled", "doubled", "doubled", "scaled"]


def test_nothing_crosses_from_one_trace_into_another():
    # The same closed-over object in three traced programs: each trace computes its own value
    # (a tracer of an earlier one would escape into the next and raise).
    CALLS.clear()
    shape = Shape(jnp.asarray(0.5))
    first = jax.jit(lambda x: evaluate(shape) * x)(2.0)
    second = jax.jit(jax.grad(lambda x: evaluate(shape) * x * x))(1.0)
    third = jax.jit(jax.vmap(lambda x: evaluate(shape) + x))(jnp.arange(3.0))
    assert float(first) == 2 * (2 * 1.0 + 2 * 1.5)
    assert float(second) == 2 * (2 * 1.0 + 2 * 1.5)
    np.testing.assert_array_equal(np.asarray(third), 5.0 + np.arange(3.0))
    assert [c[0] for c in CALLS] == ["doubled", "scaled"] * 3


TRACES = []


@compiled_when_concrete
def _poly(x, power):
    TRACES.append(power)
    return x**power + jnp.sin(x)


def test_compiled_when_concrete_compiles_by_hand_and_runs_inline_when_traced():
    x = jnp.linspace(0.0, 1.0, 7)
    expected = np.asarray(x) ** 3 + np.sin(np.asarray(x))
    np.testing.assert_allclose(np.asarray(_poly(x, 3)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(_poly(x + 0.0, 3)), expected, rtol=1e-6)
    assert TRACES == [3]  # by hand: traced once, the second call reuses the program
    # Inside a caller's trace it is the caller's operations: no nested program.
    jaxpr = jax.make_jaxpr(lambda v: _poly(v, 3))(x)
    assert "pjit" not in {e.primitive.name for e in jaxpr.eqns}
    assert "jit" not in {e.primitive.name for e in jaxpr.eqns}
    grad = jax.grad(lambda v: _poly(v, 3).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), 3 * np.asarray(x) ** 2 + np.cos(np.asarray(x)),
                               rtol=1e-5)
