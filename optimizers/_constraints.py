"""Inequality constraints g(x) <= 0 as an augmented Lagrangian (Powell-Hestenes-Rockafellar).

For constraints g_j(x) <= 0, multipliers lambda_j >= 0 and a penalty weight rho > 0 the
augmented Lagrangian is

    L(x) = f(x) + sum_j [max(0, lambda_j + rho g_j(x))^2 - lambda_j^2] / (2 rho)

(Nocedal & Wright, Numerical Optimization, 2nd ed., eq. 17.65). Minimizing L over x for fixed
(lambda, rho), then setting lambda_j <- max(0, lambda_j + rho g_j(x)) (eq. 17.66) and raising rho
while the violation does not fall, converges to a KKT point without driving rho to infinity, as a
plain quadratic penalty must. Constraints should be normalized (a relative margin such as
power / budget - 1) so that one rho suits all of them.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


class LagrangianState(eqx.Module):
    """Multipliers and penalty weight of an augmented Lagrangian (a batch of them under vmap).

    **Fields:**

    - `multipliers`: lambda_j >= 0, shape `[*batch, n_constraints]`.
    - `penalty`: rho > 0, shape `[*batch]`.
    - `violation`: max_j max(0, g_j) at the last update, shape `[*batch]` (inf before the first).
    """

    multipliers: Float[Array, "*batch k"]
    penalty: Float[Array, "*batch"]
    violation: Float[Array, "*batch"]


def init_lagrangian(
    n_constraints: int, penalty: float = 10.0, batch_shape: tuple[int, ...] = ()
) -> LagrangianState:
    """Zero multipliers and an initial penalty weight rho.

    **Arguments:**

    - `n_constraints`: number of inequality constraints.
    - `penalty`: initial rho (for constraints normalized to O(1), 1 to 100 works).
    - `batch_shape`: leading shape for a batch of independent problems.

    **Returns:** a `LagrangianState`.
    """
    if n_constraints < 0:
        raise ValueError(f"n_constraints must be >= 0; got {n_constraints}")
    if not penalty > 0:
        raise ValueError(f"penalty must be > 0; got {penalty}")
    dtype = jnp.result_type(float)
    return LagrangianState(
        multipliers=jnp.zeros((*batch_shape, n_constraints), dtype),
        penalty=jnp.full(batch_shape, penalty, dtype),
        violation=jnp.full(batch_shape, jnp.inf, dtype),
    )


def constraint_violation(g: Float[ArrayLike, "*batch k"]) -> Float[Array, "*batch"]:
    """max_j max(0, g_j): zero exactly when every constraint g_j <= 0 holds."""
    g = jnp.asarray(g)
    if g.shape[-1] == 0:
        return jnp.zeros(g.shape[:-1], g.dtype)
    return jnp.maximum(jnp.max(g, axis=-1), 0.0)


def augmented_lagrangian(
    objective: Float[ArrayLike, "*batch"],
    g: Float[ArrayLike, "*batch k"],
    state: LagrangianState,
) -> Float[Array, "*batch"]:
    """f + sum_j [max(0, lambda_j + rho g_j)^2 - lambda_j^2] / (2 rho) (see module docstring).

    **Arguments:**

    - `objective`: f(x), the scalarized objective.
    - `g`: constraint values, feasible where g_j <= 0.
    - `state`: multipliers and penalty weight.

    **Returns:** the augmented Lagrangian, differentiable in `objective` and `g`.
    """
    g = jnp.asarray(g)
    lam = state.multipliers
    rho = state.penalty[..., None]
    shifted = jnp.maximum(lam + rho * g, 0.0)
    term = jnp.sum((shifted**2 - lam**2) / (2.0 * rho), axis=-1)
    return jnp.asarray(objective) + term


def update_lagrangian(
    g: Float[ArrayLike, "*batch k"],
    state: LagrangianState,
    *,
    growth: float = 2.0,
    max_penalty: float = 1e4,
    required_decrease: float = 0.5,
) -> LagrangianState:
    """One outer step: lambda <- max(0, lambda + rho g); rho grows if the violation stalled.

    **Arguments:**

    - `g`: constraint values at the current inner minimizer.
    - `state`: the current multipliers and penalty.
    - `growth`: factor applied to rho when the violation did not fall below
      `required_decrease` times its previous value (Nocedal & Wright, Framework 17.3).
    - `max_penalty`: cap on rho, which keeps the inner problem well conditioned.

    **Returns:** the updated `LagrangianState`.
    """
    g = jnp.asarray(g)
    violation = constraint_violation(g)
    multipliers = jnp.maximum(state.multipliers + state.penalty[..., None] * g, 0.0)
    stalled = violation > required_decrease * state.violation
    stalled = stalled & (violation > 0)
    penalty = jnp.where(stalled, jnp.minimum(state.penalty * growth, max_penalty), state.penalty)
    return LagrangianState(multipliers=multipliers, penalty=penalty, violation=violation)


def quadratic_penalty(
    objective: Float[ArrayLike, "*batch"], g: Float[ArrayLike, "*batch k"], weight: float
) -> Float[Array, "*batch"]:
    """f + (weight / 2) sum_j max(0, g_j)^2: the plain penalty, for comparison and warm-up."""
    g = jnp.asarray(g)
    return jnp.asarray(objective) + 0.5 * weight * jnp.sum(jnp.maximum(g, 0.0) ** 2, axis=-1)
