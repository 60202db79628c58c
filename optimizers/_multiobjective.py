"""Multi-objective gradient search: scalarizations x random starts, vmapped in one jitted loop.

A Pareto front is traced by many single-objective problems solved at once. Each start s has a
preference vector w_s and a scalarization (weighted Chebyshev or weighted sum); its loss is the
augmented Lagrangian of that scalarization under the inequality constraints. All starts are one
batch: one `jax.vmap` of `jax.value_and_grad`, one optax update on the `[starts, dim]` array
(optax's elementwise rules keep the starts independent), `inner_steps` of them in a `lax.scan`,
then a multiplier update, all inside one jitted outer step that is called `outer_steps` times.

Objectives are minimized and should be normalized to O(1) (the caller knows the scales);
constraints are g_j <= 0, normalized likewise.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float

from ._constraints import (
    LagrangianState,
    augmented_lagrangian,
    constraint_violation,
    init_lagrangian,
    update_lagrangian,
)

# Weight of the linear term of the augmented Chebyshev scalarization, which makes every
# minimizer properly (not only weakly) Pareto-optimal (Steuer & Choo 1983; Miettinen,
# Nonlinear Multiobjective Optimization, 1999, sec. 3.4.5, who suggests a small positive value).
CHEBYSHEV_AUGMENTATION = 1e-3


def preference_vectors(n: int, n_objectives: int, seed: int = 0) -> Float[np.ndarray, "n m"]:
    """`n` preference vectors on the simplex (non-negative, summing to 1).

    Two objectives: evenly spaced with both ends, w_1 = i / (n - 1), so the searches reach the
    ends of the front (the augmentation term of `chebyshev` keeps a zero weight proper). More:
    the m corners first, then a scrambled Sobol sample mapped to the simplex by normalized
    exponential spacings (uniform on the simplex).

    **Arguments:**

    - `n`: number of vectors (>= 1).
    - `n_objectives`: number of objectives m (>= 1).
    - `seed`: scrambling seed (m >= 3 only).

    **Returns:** array `[n, m]`.
    """
    if n < 1 or n_objectives < 1:
        raise ValueError(f"preference_vectors needs n >= 1 and n_objectives >= 1; got {n}, "
                         f"{n_objectives}")
    if n_objectives == 1:
        return np.ones((n, 1))
    if n_objectives == 2:
        w1 = np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
        return np.stack([w1, 1.0 - w1], axis=1)
    corners = np.eye(n_objectives)[:n]
    u = sobol_unit(n - corners.shape[0], n_objectives, seed=seed)
    e = -np.log(np.clip(u, 1e-12, 1.0 - 1e-12))
    return np.concatenate([corners, e / e.sum(axis=1, keepdims=True)])


def sobol_unit(n: int, dim: int, seed: int = 0) -> Float[np.ndarray, "n dim"]:
    """The first `n` points of a scrambled Sobol sequence in [0, 1)^dim (a balanced 2^k prefix)."""
    from scipy.stats import qmc

    m = max(int(np.ceil(np.log2(max(n, 1)))), 0)
    return qmc.Sobol(d=dim, scramble=True, seed=seed).random_base2(m)[:n]


def chebyshev(
    objectives: Float[ArrayLike, "*batch m"],
    weights: Float[ArrayLike, "*batch m"],
    ideal: Float[ArrayLike, "*batch m"] | float = 0.0,
    augmentation: float = CHEBYSHEV_AUGMENTATION,
) -> Float[Array, "*batch"]:
    """Augmented weighted Chebyshev: max_i w_i (f_i - z_i) + a sum_i (f_i - z_i).

    Every properly Pareto-optimal point (convex front or not) minimizes it for some w; the
    unweighted augmentation keeps the minimizer proper when a weight is zero.
    """
    d = jnp.asarray(objectives) - jnp.asarray(ideal)
    return jnp.max(jnp.asarray(weights) * d, axis=-1) + augmentation * jnp.sum(d, axis=-1)


def weighted_sum(
    objectives: Float[ArrayLike, "*batch m"], weights: Float[ArrayLike, "*batch m"]
) -> Float[Array, "*batch"]:
    """sum_i w_i f_i: smooth, but reaches only the convex part of a front."""
    return jnp.sum(jnp.asarray(weights) * jnp.asarray(objectives), axis=-1)


class MultiStartResult(eqx.Module):
    """Outcome of `multistart_minimize` for S starts, m objectives, k constraints.

    **Fields:**

    - `z`: last iterate of every start, `[S, dim]` (unconstrained coordinates).
    - `z_best`: best iterate seen by each start, `[S, dim]`: the lowest scalarized objective
      among iterates with constraint violation <= `tolerance`, or the least violating iterate
      when none was feasible.
    - `objectives`, `constraints`: f and g at `z_best`, `[S, m]` and `[S, k]`.
    - `feasible`: violation at `z_best` <= `tolerance`, `[S]` (for the model as given to the
      optimizer, e.g. with relaxed integers; the caller re-checks the exact model).
    - `history_objectives`: f at the start of the last inner step of each outer step,
      `[T, S, m]`; `history_z`: the iterate after each outer step, `[T, S, dim]`;
      `history_violation`, `history_penalty`: `[T, S]`.
    - `n_gradients`: gradient evaluations done (starts x outer x inner steps).
    """

    z: Float[Array, "S dim"]
    z_best: Float[Array, "S dim"]
    objectives: Float[Array, "S m"]
    constraints: Float[Array, "S k"]
    feasible: Bool[Array, " S"]
    history_objectives: Float[Array, "T S m"]
    history_z: Float[Array, "T S dim"]
    history_violation: Float[Array, "T S"]
    history_penalty: Float[Array, "T S"]
    n_gradients: int = eqx.field(static=True)


class _Carry(eqx.Module):
    z: Array
    opt_state: optax.OptState
    lagrangian: LagrangianState
    z_best: Array
    best_violation: Array
    best_score: Array
    best_f: Array
    best_g: Array
    ideal: Array


def _per_start_loss(fun, z, weights, use_chebyshev, ideal, multipliers, penalty):
    # `ideal` is the Chebyshev reference point, already lowered by the margin.
    f, g = fun(z)
    score = jnp.where(use_chebyshev, chebyshev(f, weights, ideal), weighted_sum(f, weights))
    state = LagrangianState(multipliers=multipliers, penalty=penalty, violation=penalty)
    return augmented_lagrangian(score, g, state), (score, f, g)


@eqx.filter_jit
def _outer_step(fun, optimizer, inner_steps, tolerance, adaptive, margin, carry, weights,
                use_chebyshev):
    """`inner_steps` optax steps of every start on its augmented Lagrangian, then one multiplier
    update. Jitted once per (fun, optimizer, shapes); every later outer step reuses it."""
    grad_fn = jax.vmap(
        jax.value_and_grad(lambda *a: _per_start_loss(fun, *a), has_aux=True),
        in_axes=(0, 0, 0, None, 0, 0),
    )

    def step(c: _Carry, _):
        (_, (score, f, g)), grads = grad_fn(
            c.z, weights, use_chebyshev, c.ideal - margin, c.lagrangian.multipliers,
            c.lagrangian.penalty,
        )
        f_seen = jnp.min(jnp.where(jnp.isfinite(f), f, jnp.inf), axis=0)
        ideal = jnp.where(adaptive, jnp.minimum(c.ideal, f_seen), c.ideal)
        # One start whose model returned NaN must not poison the others (or itself forever).
        grads = jnp.where(jnp.isfinite(grads), grads, 0.0)
        violation = constraint_violation(g)
        violation = jnp.where(jnp.isfinite(violation), violation, jnp.inf)
        score_ok = jnp.where(jnp.isfinite(score), score, jnp.inf)
        v_key = jnp.where(violation <= tolerance, 0.0, violation)
        better = (v_key < c.best_violation) | ((v_key == c.best_violation)
                                              & (score_ok < c.best_score))
        sel = better[:, None]
        updates, opt_state = optimizer.update(grads, c.opt_state, c.z)
        z = optax.apply_updates(c.z, updates)
        new = _Carry(
            z=z,
            opt_state=opt_state,
            lagrangian=c.lagrangian,
            z_best=jnp.where(sel, c.z, c.z_best),
            best_violation=jnp.where(better, v_key, c.best_violation),
            best_score=jnp.where(better, score_ok, c.best_score),
            best_f=jnp.where(sel, f, c.best_f),
            best_g=jnp.where(sel, g, c.best_g),
            ideal=ideal,
        )
        return new, (f, g)

    carry, (fs, gs) = jax.lax.scan(step, carry, None, length=inner_steps)
    g_last = gs[-1]
    lagrangian = update_lagrangian(g_last, carry.lagrangian)
    carry = eqx.tree_at(lambda c: c.lagrangian, carry, lagrangian)
    return carry, fs[-1], constraint_violation(g_last), lagrangian.penalty


def multistart_minimize(
    fun: Callable[[Float[Array, " dim"]], tuple[Float[Array, " m"], Float[Array, " k"]]],
    z0: Float[ArrayLike, "S dim"],
    weights: Float[ArrayLike, "S m"],
    *,
    use_chebyshev: Bool[ArrayLike, " S"] | bool = True,
    ideal: Float[ArrayLike, " m"] | float = 0.0,
    adaptive_ideal: bool = False,
    ideal_margin: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    outer_steps: int = 10,
    inner_steps: int = 20,
    penalty: float = 10.0,
    tolerance: float = 0.0,
    callback: Callable[[int, Float[Array, "S m"], Float[Array, " S"]], None] | None = None,
) -> MultiStartResult:
    """Minimize S scalarized, constrained problems at once from S starts.

    Start s minimizes the augmented Lagrangian of `chebyshev(f(z), w_s, ideal)` (or
    `weighted_sum(f(z), w_s)` where `use_chebyshev[s]` is False) under g(z) <= 0.

    **Arguments:**

    - `fun`: `z [dim] -> (f [m], g [k])`, pure JAX, differentiable; f minimized, g <= 0 feasible.
      Keep the same function object across calls to reuse the compiled step.
    - `z0`: starting points `[S, dim]` (unconstrained coordinates).
    - `weights`: preference vectors `[S, m]`.
    - `use_chebyshev`: per-start choice of scalarization.
    - `ideal`: reference point z of the Chebyshev scalarization; the scalarization uses
      `z - ideal_margin`.
    - `adaptive_ideal`: lower z to the best value of each objective seen by any start, at every
      step (as MOEA/D does: Zhang & Li, IEEE TEVC 11(6), 2007). With a margin > 0 every
      f_i - z_i stays positive, which a weighted Chebyshev with a zero or tiny weight needs to
      reach the ends of the front when the true ideal point is unknown.
    - `optimizer`: an optax transformation applied to the whole `[S, dim]` batch; use an
      elementwise one (adam, sgd, ...) so that the starts stay independent. Default
      `optax.adam(0.05)`.
    - `outer_steps`, `inner_steps`: multiplier updates, and optax steps between them.
    - `penalty`: initial augmented-Lagrangian weight rho.
    - `tolerance`: largest violation max_j g_j counted as feasible when keeping the best iterate.
    - `callback`: called after every outer step with (step, f [S, m], violation [S]).

    **Returns:** a `MultiStartResult`.
    """
    if outer_steps < 1 or inner_steps < 1:
        raise ValueError(f"outer_steps and inner_steps must be >= 1; got {outer_steps}, "
                         f"{inner_steps}")
    z0 = jnp.asarray(z0, dtype=jnp.result_type(float))
    if z0.ndim != 2:
        raise ValueError(f"z0 must have shape [starts, dim]; got {z0.shape}")
    n_starts = z0.shape[0]
    weights = jnp.asarray(weights, dtype=z0.dtype)
    if weights.ndim != 2 or weights.shape[0] != n_starts:
        raise ValueError(f"weights must have shape [{n_starts}, m]; got {weights.shape}")
    use_chebyshev = jnp.broadcast_to(jnp.asarray(use_chebyshev, dtype=bool), (n_starts,))
    ideal = jnp.broadcast_to(jnp.asarray(ideal, dtype=z0.dtype), (weights.shape[1],))
    if optimizer is None:
        optimizer = optax.adam(0.05)

    f0, g0 = jax.eval_shape(fun, z0[0])
    k = g0.shape[0] if g0.ndim else 1
    carry = _Carry(
        z=z0,
        opt_state=optimizer.init(z0),
        lagrangian=init_lagrangian(k, penalty, (n_starts,)),
        z_best=z0,
        best_violation=jnp.full((n_starts,), jnp.inf, z0.dtype),
        best_score=jnp.full((n_starts,), jnp.inf, z0.dtype),
        best_f=jnp.full((n_starts, *f0.shape), jnp.nan, z0.dtype),
        best_g=jnp.full((n_starts, k), jnp.nan, z0.dtype),
        ideal=ideal,
    )
    hist_f, hist_z, hist_v, hist_p = [], [], [], []
    for t in range(outer_steps):
        carry, f, violation, rho = _outer_step(
            fun, optimizer, int(inner_steps), float(tolerance), bool(adaptive_ideal),
            float(ideal_margin), carry, weights, use_chebyshev,
        )
        hist_f.append(f)
        hist_z.append(carry.z)
        hist_v.append(violation)
        hist_p.append(rho)
        if callback is not None:
            callback(t, f, violation)
    return MultiStartResult(
        z=carry.z,
        z_best=carry.z_best,
        objectives=carry.best_f,
        constraints=carry.best_g,
        feasible=carry.best_violation <= tolerance,
        history_objectives=jnp.stack(hist_f),
        history_z=jnp.stack(hist_z),
        history_violation=jnp.stack(hist_v),
        history_penalty=jnp.stack(hist_p),
        n_gradients=int(n_starts * outer_steps * inner_steps),
    )

