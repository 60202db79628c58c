"""dse.optimizers: bijections, augmented Lagrangian, multi-start multi-objective search, baselines.

Problems with known answers: a constrained convex quadratic (optimum and multiplier by KKT), the
two-objective front f1 = x^2, f2 = (x - 2)^2 (Pareto set x in [0, 2], front
f2 = (2 - sqrt f1)^2, Chebyshev minimizer x*(w) = 2 sqrt(w2) / (sqrt(w1) + sqrt(w2))).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dse import optimizers as O

# ---------------------------------------------------------------- bijections


def test_box_roundtrip_bounds_and_gradient():
    box = O.Box([1e6, -2.0, 1.0], [1e9, 3.0, 16.0], log=[True, False, False],
                integer=[False, False, True])
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(scale=4.0, size=(64, 3)))
    x = box.from_unconstrained(z)
    assert np.all(np.asarray(x) >= np.asarray(box.lower))
    assert np.all(np.asarray(x) <= np.asarray(box.upper))
    np.testing.assert_allclose(box.to_unconstrained(x), z, rtol=2e-3, atol=2e-3)
    # log parameter: the unit coordinate is the log-position (geometric midpoint at z = 0).
    np.testing.assert_allclose(box.from_unconstrained(jnp.zeros(3))[0], np.sqrt(1e6 * 1e9),
                               rtol=1e-5)
    grads = jax.vmap(jax.grad(lambda zz: jnp.sum(jnp.log(jnp.abs(box.from_unconstrained(zz))
                                                         + 1.0))))(z)
    assert np.all(np.isfinite(np.asarray(grads)))


def test_box_snap_and_integer_neighbours():
    box = O.Box([0.0, 1.0, 2.0], [1.0, 8.0, 9.0], integer=[False, True, True])
    x = jnp.asarray([0.3, 3.6, 8.7])
    np.testing.assert_allclose(box.snap(x), [0.3, 4.0, 9.0])
    neigh = np.asarray(box.integer_neighbours(x))
    assert neigh.shape == (4, 3)
    assert {tuple(r[1:]) for r in neigh} == {(3.0, 8.0), (3.0, 9.0), (4.0, 8.0), (4.0, 9.0)}
    np.testing.assert_allclose(neigh[:, 0], 0.3)


@pytest.mark.parametrize("lower, upper, log, match", [
    ([1.0], [1.0], None, "lower < upper"),
    ([2.0], [1.0], None, "lower < upper"),
    ([0.0], [1.0], [True], "log-scaled"),
    ([1.0, 2.0], [3.0], None, "same non-zero length"),
])
def test_box_rejects_bad_bounds(lower, upper, log, match):
    with pytest.raises(ValueError, match=match):
        O.Box(lower, upper, log=log)


# ---------------------------------------------------------------- constraints


def test_augmented_lagrangian_formula_and_update():
    state = O.init_lagrangian(2, penalty=4.0)
    g = jnp.asarray([0.5, -1.0])
    # [max(0, 0 + 4*0.5)^2 - 0] / 8 + [max(0, -4)^2 - 0] / 8 = 0.5
    np.testing.assert_allclose(O.augmented_lagrangian(1.0, g, state), 1.5)
    new = O.update_lagrangian(g, state)
    np.testing.assert_allclose(new.multipliers, [2.0, 0.0])  # max(0, lambda + rho g)
    np.testing.assert_allclose(new.violation, 0.5)
    # The violation did not halve (inf -> 0.5 did): rho unchanged; then a stall doubles it.
    np.testing.assert_allclose(new.penalty, 4.0)
    stalled = O.update_lagrangian(g, new)
    np.testing.assert_allclose(stalled.penalty, 8.0)
    np.testing.assert_allclose(O.constraint_violation(jnp.asarray([-1.0, -2.0])), 0.0)
    np.testing.assert_allclose(O.quadratic_penalty(1.0, g, 2.0), 1.25)


def test_convex_constrained_optimum():
    """min (x-3)^2 + (y-1)^2 s.t. x + y <= 2: KKT gives (2, 0), f = 2, multiplier 2."""
    box = O.Box([-5.0, -5.0], [5.0, 5.0])

    def fun(z):
        x, y = box.from_unconstrained(z)
        return jnp.stack([(x - 3) ** 2 + (y - 1) ** 2]), jnp.stack([x + y - 2])

    z0 = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)))
    res = O.multistart_minimize(fun, z0, np.ones((6, 1)), optimizer=optax.adam(0.1),
                                outer_steps=10, inner_steps=50)
    xy = np.asarray(box.from_unconstrained(res.z_best))
    assert np.all(np.asarray(res.feasible))
    np.testing.assert_allclose(xy, np.tile([2.0, 0.0], (6, 1)), atol=2e-3)
    assert np.all(xy.sum(axis=1) <= 2.0 + 1e-6)  # best iterate is kept only when feasible
    np.testing.assert_allclose(res.objectives[:, 0], 2.0, atol=1e-2)
    assert res.history_violation.shape == (10, 6)
    assert res.n_gradients == 6 * 10 * 50


def _two_objective(box):
    def fun(z):
        x = box.from_unconstrained(z)[0]
        return jnp.stack([x**2, (x - 2.0) ** 2]), jnp.zeros((0,))
    return fun


def test_two_objective_front_is_analytic():
    box = O.Box([-5.0], [5.0])
    fun = _two_objective(box)
    n = 11
    w = O.preference_vectors(n, 2)
    z0 = jnp.asarray(np.linspace(-3.0, 3.0, 2 * n).reshape(2 * n, 1))
    weights = np.concatenate([w, w])
    cheb = np.repeat([True, False], n)
    res = O.multistart_minimize(fun, z0, weights, use_chebyshev=cheb,
                                optimizer=optax.adam(0.1), outer_steps=4, inner_steps=100)
    x = np.asarray(box.from_unconstrained(res.z_best))[:, 0]
    w1, w2 = w[:, 0], w[:, 1]
    # Chebyshev kink w1 x^2 = w2 (x-2)^2 (ends: the augmentation term moves x by ~2e-3).
    x_cheb = 2 * np.sqrt(w2) / (np.sqrt(w1) + np.sqrt(w2))
    np.testing.assert_allclose(x[:n], x_cheb, atol=5e-3)
    # Weighted sum: d/dx [w1 x^2 + w2 (x-2)^2] = 0 -> x = 2 w2.
    np.testing.assert_allclose(x[n:], 2 * w2, atol=5e-3)
    f = np.asarray(res.objectives)
    np.testing.assert_allclose(f[:, 1], (2 - np.sqrt(f[:, 0])) ** 2, atol=1e-4)
    assert np.all(O.pareto_mask(f))


def test_multistart_is_deterministic():
    box = O.Box([-5.0], [5.0])
    fun = _two_objective(box)
    z0 = jnp.asarray(np.random.default_rng(3).normal(size=(5, 1)))
    w = O.preference_vectors(5, 2)
    opt = optax.adam(0.1)
    a = O.multistart_minimize(fun, z0, w, optimizer=opt, outer_steps=2, inner_steps=10)
    b = O.multistart_minimize(fun, z0, w, optimizer=opt, outer_steps=2, inner_steps=10)
    np.testing.assert_array_equal(a.z_best, b.z_best)
    np.testing.assert_array_equal(a.history_objectives, b.history_objectives)


def test_jitted_step_does_not_recompile():
    box = O.Box([-5.0], [5.0])
    traces = []

    def fun(z):
        traces.append(1)  # runs only when JAX traces fun, never on a cached call
        x = box.from_unconstrained(z)[0]
        return jnp.stack([x**2, (x - 2.0) ** 2]), jnp.stack([x - 1.0])

    z0 = jnp.zeros((4, 1))
    w = O.preference_vectors(4, 2)
    opt = optax.adam(0.1)
    O.multistart_minimize(fun, z0, w, optimizer=opt, outer_steps=3, inner_steps=5)
    # One trace to size the problem (eval_shape), one for the jitted step called 3 times.
    assert len(traces) == 2
    O.multistart_minimize(fun, z0 + 1.0, w, optimizer=opt, outer_steps=4, inner_steps=5)
    # Second call, same function, optimizer and shapes: nothing is traced again.
    assert len(traces) == 2
    O.multistart_minimize(fun, jnp.zeros((6, 1)), O.preference_vectors(6, 2), optimizer=opt,
                          outer_steps=1, inner_steps=5)
    # A new batch shape is a new program (one more trace; the per-point probe stays cached):
    # the counter does see retraces.
    assert len(traces) == 3


# ---------------------------------------------------------------- multi-objective utilities


def test_preference_vectors_on_simplex():
    for m, n in [(2, 9), (3, 12), (4, 3)]:
        w = O.preference_vectors(n, m)
        assert w.shape == (n, m)
        assert np.all(w >= 0)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
    w2 = O.preference_vectors(5, 2)
    np.testing.assert_allclose(w2[:, 0], [0, 0.25, 0.5, 0.75, 1.0])


def test_pareto_mask_and_hypervolume_by_hand():
    f = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0], [0.5, np.nan]])
    np.testing.assert_array_equal(O.pareto_mask(f), [True, True, True, False, False])
    np.testing.assert_array_equal(
        O.pareto_mask(f, feasible=[False, True, True, True, True]),
        [False, True, True, False, False])
    # Staircase against (4, 4): 3*1 + 2*1 + 1*1 = 6.
    assert O.hypervolume(f, [4.0, 4.0]) == pytest.approx(6.0)
    assert O.hypervolume(f, [4.0, 4.0], feasible=[False, True, True, True, True]) == \
        pytest.approx(2 * 2 + 1 * 1)
    assert O.hypervolume(f, [0.0, 0.0]) == 0.0
    np.testing.assert_array_equal(O.pareto_indices(f[[2, 0, 1, 3]]), [1, 2, 0])


# ---------------------------------------------------------------- baselines


def _cube_problem(u):
    """x = 4u - 1 in [-1, 3]; f = (x^2, (x-2)^2); constraint x <= 1.5."""
    x = 4.0 * u[:, 0] - 1.0
    return np.stack([x**2, (x - 2.0) ** 2], axis=1), (x - 1.5)[:, None]


def _analytic_hv(reference):
    x = np.linspace(0.0, 1.5, 200001)
    return O.hypervolume(np.stack([x**2, (x - 2) ** 2], axis=1), reference)


def test_random_search_sobol_deterministic_and_counts():
    a = O.random_search(_cube_problem, 1, 300, seed=4, batch_size=128)
    b = O.random_search(_cube_problem, 1, 300, seed=4, batch_size=128)
    c = O.random_search(_cube_problem, 1, 300, method="uniform", seed=4)
    assert a.u.shape == (300, 1) and a.objectives.shape == (300, 2)
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.generation[[0, 127, 128, 299]], [0, 0, 1, 2])
    np.testing.assert_array_equal(a.feasible, 4 * a.u[:, 0] - 1 <= 1.5)
    ref = np.array([10.0, 10.0])
    for r in (a, c):
        hv = O.hypervolume(r.objectives, ref, feasible=r.feasible)
        assert 0.98 * _analytic_hv(ref) < hv <= _analytic_hv(ref) * (1 + 1e-9)
    with pytest.raises(ValueError, match="method"):
        O.random_search(_cube_problem, 1, 10, method="grid")


def test_nsga2_reaches_constrained_front():
    res = O.nsga2(_cube_problem, 1, pop_size=20, n_generations=15, seed=1)
    assert res.u.shape[0] == 1 + 20 * 15  # probe + one population per generation
    ref = np.array([10.0, 10.0])
    hv = O.hypervolume(res.objectives, ref, feasible=res.feasible)
    assert hv > 0.97 * _analytic_hv(ref)
    again = O.nsga2(_cube_problem, 1, pop_size=20, n_generations=15, seed=1)
    np.testing.assert_array_equal(res.u, again.u)


def test_trace_front_constrained_segment():
    """f1 = |u - a|^2, f2 = |u - b|^2 in the unit square: the Pareto set is the segment a-b.
    With the budget u_0 <= 0.6 it is the part of the segment with u_0 <= 0.6 (up to (0.6, 0.65)),
    then the budget's edge u_0 = 0.6 up to the constrained minimizer of f1, (0.6, 0.8). The trace
    follows it, from b to that end."""
    a, b = np.array([0.9, 0.8]), np.array([0.1, 0.4])

    def fn(u):
        values = np.array([np.sum((u - a) ** 2), np.sum((u - b) ** 2), u[0] - 0.6])
        jac = np.stack([2 * (u - a), 2 * (u - b), np.array([1.0, 0.0])])
        return values, jac, None

    res = O.trace_front(fn, np.array([0.5, 0.5]), spacing=0.05)
    assert res.converged, res.message
    u = res.u[res.accepted]
    assert np.all(u[:, 0] <= 0.6 + 1e-5)  # the budget holds at every accepted point
    # After the first few steps, every accepted point is on that set (distance < 1e-3).
    d = b - a
    t = np.clip((u - a) @ d / (d @ d), 0.375, 1.0)  # t = 0.375 is (0.6, 0.65)
    to_segment = np.linalg.norm(a + t[:, None] * d - u, axis=1)
    to_edge = np.hypot(u[:, 0] - 0.6, u[:, 1] - np.clip(u[:, 1], 0.65, 0.8))
    dist = np.minimum(to_segment, to_edge)
    assert np.all(dist[3:] < 1e-3), dist
    np.testing.assert_allclose(u[-1], [0.6, 0.8], atol=1e-3)  # the constrained end
    assert np.linalg.norm(u[1:4] - b, axis=1).min() < 1e-3  # the f2 end
    assert res.n_jacobians < 60
    # Snapping: every evaluated point is on the grid the snap defines.
    snapped = O.trace_front(fn, np.array([0.5, 0.5]), spacing=0.05,
                              snap=lambda v: np.round(v * 20) / 20)
    np.testing.assert_allclose(snapped.u * 20, np.round(snapped.u * 20), atol=1e-9)
    with pytest.raises(ValueError, match="spacing"):
        O.trace_front(fn, np.array([0.5, 0.5]), spacing=0.0)
