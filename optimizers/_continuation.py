"""Tracing a two-objective Pareto front by continuation: one sequential quadratic programming step
per front point, warm-started from the previous one.

Many independent searches spend most of their evaluations converging from far away. A front is
a connected curve (where it is convex), so after one search has converged, its neighbour on the
front is a small step away: change the preference weight a little and take one SQP step. This is
the predictor-corrector idea of Pareto continuation (Hillermeier, "Nonlinear Multiobjective
Optimization: A Generalized Homotopy Approach", 2001, ch. 4; Schütze et al., "Pareto Tracer",
Eng. Optim. 2019), carried out here with

- the weighted-sum scalarization S_w = w f_1 + (1 - w) f_2, w moving from 0 (the minimizer of
  f_2) to 1 (the minimizer of f_1), its increment adapted so that consecutive points are about
  `spacing` apart in objective space (it therefore traces the convex part of a front; a
  non-convex stretch is crossed in one jump);
- one Jacobian of every objective and constraint per point (forward mode: `dim` tangents), so
  a separate damped-BFGS Hessian model of every output (Powell 1978; Nocedal & Wright, Numerical
  Optimization, 2nd ed., 2006, Proc. 18.2; first scaled as their eq. 6.20) carries curvature
  from one weight to the next: the model of S_w is w B_1 + (1 - w) B_2, exact in w, and a
  budget's curvature (power grows faster than its linearization) is in its model too;
- a trust-region step inside the unit box on those quadratic models (constraints in elastic
  form, so the subproblem is always feasible; l1 merit function; Nocedal & Wright ch. 18.5),
  accepted by the ratio of actual to predicted merit decrease;
- integer coordinates snapped after each step, so every evaluated point is a design the caller
  can use as it is (the step's predicted decrease is that of the snapped step).

The work is sequential and tiny (a `dim`-variable QP per step, on the host); the cost is the
Jacobian evaluations, which is what this method saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

# Powell's damping threshold for BFGS updates (Nocedal & Wright 2006, Proc. 18.2: 0.2).
BFGS_DAMPING = 0.2
# Trust-region ratio thresholds and factors (Nocedal & Wright 2006, Alg. 4.1: shrink below 1/4,
# expand above 3/4 with a step at the radius; the factors 1/4 and 2 are theirs).
SHRINK_BELOW, EXPAND_ABOVE = 0.25, 0.75
# Merit changes below this fraction of the merit are rounding (float32 carries ~7 digits and
# the model's sums lose a few), not signal: a step predicted and found that small is accepted.
NOISE = 1e-5
# Constraint violations up to this (in the caller's normalized units) are rounding of a budget
# that sits exactly on its bound (a float32 difference of two ~1e10 numbers is a few ulps off);
# the merit ignores them, so that they neither block steps nor inflate the penalty. Callers
# that need exact feasibility tighten their budgets by more than this (`dse.optimize` by 1e-3).
FEASIBILITY_TOLERANCE = 1e-5
# Smallest trust region (unit-box units), and how many rejected steps there end the search at the
# current weight.
MIN_RADIUS = 1e-3
STALL_REJECTIONS = 3


@dataclasses.dataclass(frozen=True)
class TraceResult:
    """Every point `trace_front` evaluated, in order.

    **Fields:**

    - `u`: `[n, dim]` points in the unit box (integer coordinates snapped).
    - `values`: `[n, 2 + k]` what `fn` returned: the two objectives, then the constraints
      (g <= 0 where met).
    - `weight`: `[n]` weight w of f_1 in the scalarization the step that proposed the point
      was solving.
    - `accepted`: `[n]` whether the step was accepted (a rejected point is still a design).
    - `aux`: what `fn` returned beside values and Jacobian, per point.
    - `n_jacobians`: evaluations of `fn` (one Jacobian each).
    - `converged`: whether the trace reached w = 1 and its last step was below `tolerance`.
    - `message`: how it ended.
    """

    u: np.ndarray
    values: np.ndarray
    weight: np.ndarray
    accepted: np.ndarray
    aux: list
    n_jacobians: int
    converged: bool
    message: str


def _damped_bfgs(b: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    bs = b @ s
    sbs = float(s @ bs)
    if sbs <= 1e-16:
        return b
    sy = float(s @ y)
    theta = 1.0 if sy >= BFGS_DAMPING * sbs else (1 - BFGS_DAMPING) * sbs / (sbs - sy)
    r = theta * y + (1.0 - theta) * bs
    return b + np.outer(r, r) / float(s @ r) - np.outer(bs, bs) / sbs


def _subproblem_step(models, weight, lower, upper, penalty):
    """The step s minimizing the model merit inside the trust region.

    `models` holds one quadratic model (value, gradient, Hessian) per output: the objectives
    first, then the constraints. Minimizes w m_1(s) + (1 - w) m_2(s) + penalty * sum(t) subject to
    m_{2+j}(s) <= t_j, t >= 0, lower <= s <= upper (elastic form: always feasible). A tiny
    smooth problem in dim + k variables, solved with scipy's SLSQP; no model evaluations.
    """
    (v1, g1, h1), (v2, g2, h2) = models[:2]
    cons_models = models[2:]
    d, k = g1.size, len(cons_models)
    grad = weight * g1 + (1 - weight) * g2
    hess = weight * h1 + (1 - weight) * h2

    def fun(z):
        s, t = z[:d], z[d:]
        return float(grad @ s + 0.5 * s @ hess @ s + penalty * t.sum())

    def jac(z):
        return np.concatenate([grad + hess @ z[:d], np.full(k, penalty)])

    def cons_fun(z):
        s, t = z[:d], z[d:]
        return t - np.array([v + g @ s + 0.5 * s @ h @ s for v, g, h in cons_models])

    def cons_jac(z):
        s = z[:d]
        return np.concatenate([-np.array([g + h @ s for _, g, h in cons_models]), np.eye(k)],
                              axis=1)

    cons = [{"type": "ineq", "fun": cons_fun, "jac": cons_jac}] if k else []
    t0 = np.maximum(np.array([v for v, _, _ in cons_models]), 0.0)
    bounds = list(zip(lower, upper, strict=True)) + [(0.0, None)] * k
    import scipy.optimize  # deferred: import time of `import dse`

    res = scipy.optimize.minimize(fun, np.concatenate([np.zeros(d), t0]), jac=jac,
                                  bounds=bounds, constraints=cons, method="SLSQP",
                                  options={"maxiter": 200, "ftol": 1e-12})
    s = np.clip(res.x[:d], lower, upper)
    return s if np.all(np.isfinite(s)) else np.zeros(d)


def _model_value(models, weight, penalty, s):
    """The model merit at step s (objectives' quadratic models, constraint violations)."""
    q = [v + g @ s + 0.5 * s @ h @ s for v, g, h in models]
    return (weight * q[0] + (1 - weight) * q[1]
            + penalty * np.maximum(np.array(q[2:]) - FEASIBILITY_TOLERANCE, 0.0).sum())


def trace_front(
    fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, Any]],
    u0: np.ndarray,
    *,
    snap: Callable[[np.ndarray], np.ndarray] | None = None,
    spacing: float = 0.05,
    radius: float = 0.2,
    start_steps: int = 8,
    end_steps: int = 8,
    max_steps: int = 200,
    penalty: float = 10.0,
    tolerance: float = 1e-4,
    initial_weight_step: float = 0.02,
    callback: Callable[[int, float, np.ndarray], None] | None = None,
) -> TraceResult:
    """Trace the front of two objectives in the unit box, from the minimizer of f_2 to that of f_1.

    **Arguments:**

    - `fn`: `u [dim] -> (values [2 + k], jacobian [2 + k, dim], aux)`: objectives f_1, f_2
      (minimized, normalized to O(1)), then constraints g_j <= 0 (normalized likewise), their
      Jacobian in u, and anything to keep (e.g. the metrics).
    - `u0`: start in [0, 1]^dim (a good point for f_2, e.g. the best of a pilot sample).
    - `snap`: maps a unit point to the nearest allowed one (integer coordinates); default none.
    - `spacing`: target distance between consecutive front points in objective space.
    - `radius`: initial trust-region radius (infinity norm, unit-box units).
    - `start_steps`, `end_steps`: at most this many steps converging at w = 0 and at w = 1.
    - `max_steps`: at most this many evaluations of `fn` in all.
    - `penalty`: weight of constraint violation in the l1 merit (above the multipliers); it is
      doubled (up to 1e4) while accepted points violate a constraint.
    - `tolerance`: a step shorter than this (infinity norm) counts as converged.
    - `initial_weight_step`: first increment of w; later ones adapt to `spacing`.
    - `callback`: called as `callback(step, w, values)` after each evaluation.

    **Returns:** a `TraceResult`.
    """
    if spacing <= 0 or radius <= 0 or max_steps < 1 or tolerance <= 0:
        raise ValueError(f"trace_front needs spacing, radius, tolerance > 0 and max_steps >= 1; "
                         f"got {spacing}, {radius}, {tolerance}, {max_steps}")
    snap = (lambda u: u) if snap is None else snap
    u = snap(np.clip(np.asarray(u0, dtype=np.float64), 0.0, 1.0))
    dim = u.size
    us, vals, weights, accepted, auxes = [], [], [], [], []

    def evaluate(point, w, ok):
        v, jac, aux = fn(point)
        v = np.asarray(v, dtype=np.float64)
        jac = np.asarray(jac, dtype=np.float64).reshape(v.size, dim)
        us.append(point.copy())
        vals.append(v)
        weights.append(w)
        accepted.append(ok)
        auxes.append(aux)
        if callback is not None:
            callback(len(us), w, v)
        return v, jac

    v, jac = evaluate(u, 0.0, True)
    if v.size < 2:
        raise ValueError(f"trace_front needs two objectives; fn returned {v.size} values")
    # Hessian models: identity for the objectives, zero (linear) for the constraints, until the
    # first curvature pair rescales them (Nocedal & Wright eq. 6.20).
    hessians = [np.eye(dim), np.eye(dim)] + [np.zeros((dim, dim))] * (v.size - 2)
    scaled = [False] * v.size
    w, dw = 0.0, float(initial_weight_step)
    phase, phase_steps, rejections, initial_radius = "start", 0, 0, radius
    converged, message = False, f"stopped after max_steps={max_steps} evaluations"

    def merit(values, weight):
        return (weight * values[0] + (1 - weight) * values[1]
                + penalty * np.maximum(values[2:] - FEASIBILITY_TOLERANCE, 0.0).sum())

    while len(us) < max_steps:
        w_new = min(1.0, w + dw) if phase == "trace" else w
        models = [(v[i], jac[i], hessians[i]) for i in range(v.size)]
        lower = np.maximum(0.0, u - radius) - u
        upper = np.minimum(1.0, u + radius) - u
        s = _subproblem_step(models, w_new, lower, upper, penalty)
        u_new = snap(np.clip(u + s, 0.0, 1.0))
        s = u_new - u
        step = float(np.max(np.abs(s)))
        # Converged: a short step that the trust region did not cut short.
        if step < tolerance and radius > 10 * tolerance and phase != "trace":
            if phase == "end":
                converged, message = True, "reached w = 1 and converged"
                break
            phase, phase_steps = "trace", 0
            continue
        if not np.any(s):  # snapping undid the step: nothing new to evaluate
            if phase == "trace":
                w = w_new
                if w >= 1.0:
                    phase, phase_steps = "end", 0
            else:
                radius = min(2.0 * radius, 0.5)
                phase_steps += 1
                if phase_steps >= (start_steps if phase == "start" else end_steps):
                    if phase == "end":
                        message = f"reached w = 1; not converged within end_steps={end_steps}"
                        break
                    phase, phase_steps = "trace", 0
            continue
        predicted = merit(v, w_new) - _model_value(models, w_new, penalty, s)
        v_new, jac_new = evaluate(u_new, w_new, False)
        actual = merit(v, w_new) - merit(v_new, w_new)
        noise = NOISE * (1.0 + abs(merit(v, w_new)))
        if predicted <= noise and abs(actual) <= noise:
            ratio = 1.0  # converged at this weight to within rounding: move on
        else:
            ratio = actual / max(predicted, noise)
        for i in range(v.size):
            y = jac_new[i] - jac[i]
            if not scaled[i] and s @ y > 1e-16:
                hessians[i] = float(y @ y / (s @ y)) * np.eye(dim)
                scaled[i] = True
            hessians[i] = _damped_bfgs(hessians[i], s, y)
        if ratio > 0.0 and np.all(np.isfinite(v_new)):
            accepted[-1] = True
            moved = float(np.linalg.norm(v_new[:2] - v[:2]))
            u, v, jac, w = u_new, v_new, jac_new, w_new
            if phase == "trace" and moved > 0:
                dw = float(np.clip(dw * spacing / moved, dw / 4, min(2 * dw, 0.1)))
            if ratio > EXPAND_ABOVE:
                radius = min(2.0 * radius, 0.5)
            if np.any(v[2:] > FEASIBILITY_TOLERANCE):
                penalty = min(2.0 * penalty, 1e4)
        if ratio < SHRINK_BELOW:
            radius = max(0.5 * min(radius, step), MIN_RADIUS)
        rejections = 0 if accepted[-1] else rejections + 1
        phase_steps += 1
        if rejections >= STALL_REJECTIONS and radius <= 2 * MIN_RADIUS:
            # No progress at this weight even at the smallest radius: rounding, a kink or a
            # snapped integer knob. Take the current point as this weight's answer.
            rejections, radius = 0, initial_radius
            if phase == "trace":
                w = w_new
            elif phase == "start":
                phase_steps = start_steps
            else:
                message = "reached w = 1; stalled at the smallest trust region"
                break
        if phase == "trace" and w >= 1.0:
            phase, phase_steps = "end", 0
        elif phase == "start" and phase_steps >= start_steps:
            phase, phase_steps = "trace", 0
        elif phase == "end" and phase_steps >= end_steps:
            message = f"reached w = 1; not converged within end_steps={end_steps}"
            break

    return TraceResult(
        u=np.array(us), values=np.array(vals), weight=np.array(weights),
        accepted=np.array(accepted), aux=auxes, n_jacobians=len(us), converged=converged,
        message=message,
    )
