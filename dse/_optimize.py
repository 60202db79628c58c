"""`optimize`: gradient search for Pareto-optimal designs of a `Space` under budgets.

This binds the generic `dse.optimizers` (functions of unconstrained arrays) to a `Space`:
parameters are searched in the space's unconstrained coordinates (log + logit bijection), integer
knobs are relaxed to reals during the search, and at the end every candidate is snapped,
re-evaluated with the exact model, locally repaired (every floor/ceil combination of its integer
knobs is tried) and checked against every budget. A design is reported feasible only when the
exact, snapped evaluation meets every budget; nothing is assumed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float
from tqdm.auto import tqdm

from dse import optimizers as opt
from dse.hardware import describe_reason

from ._format import REASON_METRIC

# A gradient is counted as this many model evaluations when comparing with derivative-free
# search: reverse-mode AD costs a small constant multiple of the function (Griewank & Walther,
# Evaluating Derivatives, 2nd ed., 2008, sec. 4.6: at most ~4, typically 2-3); the project counts 3.
EVALUATIONS_PER_GRADIENT = 3

# A Jacobian of every metric with respect to every knob (forward mode, one tangent per knob, as
# `method="trace"` computes it) is counted as this many model evaluations. Forward mode costs at
# most about 1 + 1.5 p function evaluations for p tangents (Griewank & Walther 2008, ch. 4, the
# vector forward mode); on the 7-knob `benchmarks/pareto_race.py` problem (vmapped, CPU) it cost
# 4.05x a value, which the benchmark re-measures on its device and prints. Counted as 2
# gradients, above that measurement; a space with many more knobs costs more, and the
# benchmark's timed figure is the one to trust there.
EVALUATIONS_PER_JACOBIAN = 2 * EVALUATIONS_PER_GRADIENT

# Chebyshev reference point = best normalized value seen so far minus this margin (objectives are
# scaled to [0, 1] over the pilot sample). Any margin > 0 keeps w_i (f_i - z_i) > 0, which the
# starts with a zero weight need to reach the ends of the front; 0.1 of the pilot range is a
# choice of ours, not a fitted or published constant.
IDEAL_MARGIN = 0.1

Direction = Literal["min", "max"]
Bound = float | tuple[float | None, float | None]


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """What `optimize` found: every exactly evaluated design, the feasible front, the history.

    **Fields:**

    - `names`: parameter names of the space; `objectives`: objective names and directions.
    - `budgets`: `(metric, low, high)` per budget (`None` for an open side).
    - `x`: every design evaluated with the exact model, snapped, `[n, dim]` (parameter units).
    - `metrics`: every metric the objective returned, name -> `[n]`.
    - `margins`: per budget, slack in the metric's units, name -> `[n]` (>= 0 where met).
    - `feasible`: `[n]`, True where every metric is finite, every margin >= 0 and the
      objective's `"reason"` metric (when it returns one: the `dse.hardware.Reason` flags of
      its reports) is 0.
    - `reason`: `[n]` strings: "" for a feasible design, else what makes it infeasible (the
      model's reason, with the memory shortfall, and the budgets it breaks).
    - `source`: `[n]`: "pilot" (normalization sample), "snapped" (a search result, or with
      `keep_iterates` an intermediate iterate, rounded to the nearest integers), "repair"
      (another floor/ceil combination of a search result's integer knobs) or "trace" (a point
      of `method="trace"`, in the order evaluated).
    - `front`: indices of the non-dominated feasible designs, sorted by the first objective.
    - `history`: `method="multistart"`: per outer step, "objectives" `[T, S, m]` and
      "violation" `[T, S]` of the relaxed iterates (violation in normalized units), "penalty"
      `[T, S]`, "n_evaluations" `[T]` (cumulative, gradients counted as
      `EVALUATIONS_PER_GRADIENT`). `method="trace"`: per evaluated design (rows of `x`, pilot
      first), "n_evaluations" `[n]` (cumulative, Jacobians counted as
      `EVALUATIONS_PER_JACOBIAN`), and per traced point "weight" and "accepted".
    - `n_evaluations`: model evaluations in all (pilot + gradients x 3 or Jacobians x 6 + final
      checks); `n_gradients`: gradient (or Jacobian) evaluations; `seconds`: wall time.
    - `status`: "ok", or "infeasible" when no design met every budget; `message` says why.
    - `space`: the `Space` searched (`result.design(i)` builds design i).
    """

    names: tuple[str, ...]
    objectives: tuple[tuple[str, Direction], ...]
    budgets: tuple[tuple[str, float | None, float | None], ...]
    x: np.ndarray
    metrics: dict[str, np.ndarray]
    margins: dict[str, np.ndarray]
    feasible: np.ndarray
    reason: np.ndarray
    source: np.ndarray
    front: np.ndarray
    history: dict[str, np.ndarray]
    n_evaluations: int
    n_gradients: int
    seconds: float
    status: str
    message: str
    space: Any = dataclasses.field(repr=False)

    @property
    def front_x(self) -> np.ndarray:
        """Parameters of the front designs, `[p, dim]`."""
        return self.x[self.front]

    @property
    def front_metrics(self) -> dict[str, np.ndarray]:
        """Metrics of the front designs, name -> `[p]`."""
        return {k: v[self.front] for k, v in self.metrics.items()}

    @property
    def front_margins(self) -> dict[str, np.ndarray]:
        """Budget margins of the front designs, name -> `[p]`."""
        return {k: v[self.front] for k, v in self.margins.items()}

    def design(self, i: int | np.integer):
        """The design (e.g. a `Chip`) of evaluated point `i`."""
        return self.space.build(jnp.asarray(self.x[i]))

    def hypervolume(self, reference: Float[np.ndarray, " m"]) -> float:
        """Exact hypervolume of the feasible designs (`dse.hypervolume`): `reference` [m] in
        the objectives' own units and signs, worse than the front in each of them."""
        f = np.stack([self.metrics[n] for n, _ in self.objectives], axis=1)
        return opt.hypervolume(f, reference, [d for _, d in self.objectives], self.feasible)

    def to_dataframe(self, front_only: bool = True):
        """A pandas table: parameters, metrics, margins (`margin_<name>`), feasibility, source."""
        import pandas as pd

        idx = self.front if front_only else np.arange(self.x.shape[0])
        cols: dict[str, Any] = {n: self.x[idx, i] for i, n in enumerate(self.names)}
        cols.update({k: v[idx] for k, v in self.metrics.items()})
        cols.update({f"margin_{k}": v[idx] for k, v in self.margins.items()})
        cols.update(feasible=self.feasible[idx], reason=self.reason[idx],
                    source=self.source[idx])
        return pd.DataFrame(cols)


def _parse_objectives(objectives) -> tuple[tuple[str, Direction], ...]:
    if isinstance(objectives, str):
        objectives = [objectives]
    items = list(objectives.items()) if isinstance(objectives, Mapping) else [
        (name, "min") for name in objectives]
    if not items:
        raise ValueError("optimize needs at least one objective")
    for name, direction in items:
        if direction not in ("min", "max"):
            raise ValueError(f"objective {name!r} direction must be 'min' or 'max'; "
                             f"got {direction!r}")
    return tuple((str(n), d) for n, d in items)


def _parse_budgets(budgets) -> tuple[tuple[str, float | None, float | None], ...]:
    out = []
    for name, bound in dict(budgets or {}).items():
        if isinstance(bound, tuple | list):
            if len(bound) != 2:
                raise ValueError(f"budget {name!r} must be a number (upper bound) or a "
                                 f"(low, high) pair; got {bound!r}")
            low, high = bound
        else:
            low, high = None, bound
        low = None if low is None else float(low)
        high = None if high is None else float(high)
        if low is None and high is None:
            raise ValueError(f"budget {name!r} has neither a low nor a high bound")
        for v in (low, high):
            if v is not None and not np.isfinite(v):
                raise ValueError(f"budget {name!r} bound must be finite; got {v}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"budget {name!r} has low {low} > high {high}")
        out.append((str(name), low, high))
    return tuple(out)


def _margins(metrics, budgets) -> dict[str, np.ndarray]:
    """Slack of every budget in the metric's own units (negative where broken)."""
    out = {}
    for name, low, high in budgets:
        v = np.asarray(metrics[name], dtype=np.float64)
        m = np.full(v.shape, np.inf)
        if high is not None:
            m = np.minimum(m, high - v)
        if low is not None:
            m = np.minimum(m, v - low)
        out[name] = np.where(np.isfinite(v), m, -np.inf)
    return out


def _normalized_constraints(metrics, budgets, scales, xp) -> list:
    """g_j <= 0 where met: (value - high) / scale and (low - value) / scale per budget side."""
    gs = []
    for (name, low, high), scale in zip(budgets, scales, strict=True):
        v = xp.asarray(metrics[name])
        if high is not None:
            gs.append((v - high) / scale)
        if low is not None:
            gs.append((low - v) / scale)
    return gs


def _describe(name, low, high) -> str:
    if low is None:
        return f"{name} <= {high:g}"
    if high is None:
        return f"{name} >= {low:g}"
    return f"{low:g} <= {name} <= {high:g}"


def optimize(
    objective: Callable[[Any], Mapping[str, Float[Array, ""]]],
    space,
    *,
    objectives: str | Sequence[str] | Mapping[str, str],
    budgets: Mapping[str, Bound] | None = None,
    n_preferences: int = 16,
    n_starts: int = 2,
    scalarizations: Sequence[str] = ("chebyshev",),
    outer_steps: int = 8,
    inner_steps: int = 25,
    learning_rate: float = 0.05,
    optimizer: optax.GradientTransformation | None = None,
    log_objectives: bool = False,
    n_pilot: int = 64,
    starts: str = "pilot",
    keep_iterates: bool = False,
    budget_margin: float = 1e-3,
    penalty: float = 10.0,
    seed: int = 0,
    progress: bool = True,
    method: str = "multistart",
    spacing: float = 0.05,
    max_steps: int = 200,
) -> OptimizeResult:
    """Pareto-optimal designs of `space` for `objectives` under `budgets`, by gradients.

    A pilot Sobol sample sets the scales (objectives to [0, 1] over the pilot, budgets relative to
    their bound); then `n_preferences` preference vectors x `scalarizations` x `n_starts` starts
    are optimized at once (`dse.optimizers.multistart_minimize`: augmented Lagrangian,
    optax, all vmapped in one jitted step), integer knobs relaxed. The relaxed results are
    snapped, repaired over the floor/ceil combinations of their integer knobs, and re-evaluated
    with the exact model; the front is the non-dominated set of the designs that meet every
    budget exactly.

    **Arguments:**

    - `objective`: `design -> {metric name: scalar}`, pure JAX and differentiable in the design.
    - `space`: a `dse.Space` (bounds, scales, integer flags, `build`).
    - `objectives`: metric names to minimize, or `{name: "min" | "max"}`.
    - `budgets`: `{metric: high}` for metric <= high, or `{metric: (low, high)}` with `None` for
      an open side (e.g. `{"power": 1000.0, "reticle_margin": (0.0, None)}`).
    - `n_preferences`, `n_starts`, `scalarizations`: the batch of searches
      (`len(scalarizations) * n_preferences * n_starts` starts).
    - `outer_steps`, `inner_steps`: multiplier updates, and optax steps between them.
    - `learning_rate`: Adam step in unconstrained coordinates (ignored if `optimizer` given).
    - `log_objectives`: optimize log(objective) (positive objectives spanning decades).
    - `n_pilot`: Sobol points evaluated first to set the scales (they join the candidates).
    - `starts`: "pilot" starts each search from the pilot design that is best under its own
      scalarization (feasible ones first; the `n_starts` best, one per start), "random" from an
      independent Sobol sample.
    - `keep_iterates`: also snap and evaluate exactly the iterate after every outer step
      (`outer_steps - 1` more candidates per start; they count as evaluations).
    - `budget_margin`: the search aims this far inside every budget (relative to the bound, or
      to the pilot spread for a bound of 0); the final check uses the exact budgets.
    - `penalty`: initial augmented-Lagrangian weight; `seed`: seed of samples and starts.
    - `progress`: show a tqdm bar over outer steps (or traced points).
    - `method`: "multistart" (the batch of searches above; any number of objectives, non-convex
      fronts) or "trace" (two objectives: `dse.optimizers.trace_front` walks the front from
      the best pilot design for the second objective to the first, one SQP step per point on a
      forward-mode Jacobian of every metric; weighted-sum continuation, so the convex part of
      the front; far fewer evaluations). `n_preferences`, `n_starts`, `scalarizations`,
      `outer_steps`, `inner_steps`, `learning_rate`, `optimizer`, `starts`, `keep_iterates`
      and `penalty` belong to "multistart"; `spacing` (target distance of consecutive points,
      in objectives normalized to the pilot's range) and `max_steps` (Jacobians at most) to
      "trace". Every traced point is a snapped design, exactly evaluated by the forward pass
      of its Jacobian.

    **Returns:** an `OptimizeResult`. If no design meets every budget, `status` is
    "infeasible", `front` is empty and `message` names the budgets that were broken.
    """
    t_start = time.perf_counter()
    obj_spec, budget_spec, scalarizations = _check_options(
        objectives, budgets, n_preferences=n_preferences, n_starts=n_starts, n_pilot=n_pilot,
        scalarizations=scalarizations, starts=starts, method=method)
    metrics_of, evaluate = _exact_evaluator(
        objective, space, [n for n, _ in obj_spec] + [b[0] for b in budget_spec])
    # Pilot: scales for objectives and budgets, from designs that are themselves candidates.
    x_pilot = space.snap(space.sample(n_pilot, method="sobol", seed=seed))
    m_pilot = evaluate(x_pilot)
    scales = _Scales.from_pilot(m_pilot, obj_spec, budget_spec, log_objectives, budget_margin)
    if method == "trace":
        return _optimize_trace(space, metrics_of, scales, x_pilot, m_pilot, spacing=spacing,
                               max_steps=max_steps, progress=progress, t_start=t_start)

    weights, use_cheb, rank = _start_batch(n_preferences, n_starts, scalarizations,
                                           len(obj_spec), seed)
    z0 = _starting_points(space, scales, x_pilot, m_pilot, weights, use_cheb, rank,
                          starts=starts, seed=seed)
    run, cumulative = _run_multistart(
        lambda z: scales.normalized(metrics_of(space.from_unconstrained(z))), z0, weights,
        use_cheb, optimizer=optax.adam(learning_rate) if optimizer is None else optimizer,
        outer_steps=outer_steps, inner_steps=inner_steps, penalty=penalty, progress=progress,
        n_pilot=len(x_pilot))
    x_round, x_repair = _snap_and_repair(space, run, keep_iterates)
    x_final = np.concatenate([x_round, x_repair])
    history = {
        "objectives": scales.in_units(np.asarray(run.history_objectives, dtype=np.float64)),
        "violation": np.asarray(run.history_violation, dtype=np.float64),
        "penalty": np.asarray(run.history_penalty, dtype=np.float64),
        "n_evaluations": cumulative,
    }
    return _result(
        space, scales, x_pilot, m_pilot, x_final, evaluate(x_final),
        ["snapped"] * len(x_round) + ["repair"] * len(x_repair), history=history,
        n_evaluations=(len(x_pilot) + EVALUATIONS_PER_GRADIENT * run.n_gradients
                       + x_final.shape[0]),
        n_gradients=run.n_gradients, t_start=t_start)


def _check_options(objectives, budgets, *, n_preferences, n_starts, n_pilot, scalarizations,
                   starts, method):
    """`optimize`'s options checked, before any evaluation: a bad one raises `ValueError`.

    **Returns:** the objectives as `((name, direction), ...)`, the budgets as
    `((name, low, high), ...)` and the scalarizations as a tuple.
    """
    obj_spec = _parse_objectives(objectives)
    budget_spec = _parse_budgets(budgets)
    if n_preferences < 1 or n_starts < 1 or n_pilot < 2:
        raise ValueError(f"n_preferences and n_starts must be >= 1 and n_pilot >= 2; got "
                         f"{n_preferences}, {n_starts}, {n_pilot}")
    scalarizations = tuple(scalarizations)
    for s in scalarizations:
        if s not in ("chebyshev", "weighted_sum"):
            raise ValueError(f"scalarizations must be 'chebyshev' or 'weighted_sum'; got {s!r}")
    if starts not in ("pilot", "random"):
        raise ValueError(f"starts must be 'pilot' or 'random'; got {starts!r}")
    if not scalarizations:
        raise ValueError("scalarizations must name at least one scalarization")
    if method not in ("multistart", "trace"):
        raise ValueError(f"method must be 'multistart' or 'trace'; got {method!r}")
    if method == "trace" and len(obj_spec) != 2:
        raise ValueError(f"method='trace' traces a front of exactly two objectives; got "
                         f"{len(obj_spec)}: {[n for n, _ in obj_spec]}")
    return obj_spec, budget_spec, scalarizations


def _exact_evaluator(objective, space, required: list[str]):
    """The model seen from the search: one design as a traceable function, many as numbers.

    Checks (by shape evaluation, without running the model) that `objective` returns every
    metric named in `required`.

    **Returns:** `metrics_of(x [dim]) -> {name: scalar}` (traceable, for gradients), and
    `evaluate(x [n, dim]) -> {name: float64 [n]}` (exact metrics of many designs, jitted and
    vmapped, in chunks padded to a power of two so that few sizes compile; the metrics in the
    order the objective returns them).
    """
    # Jitted: the shape probe below traces the objective once, and the batched evaluation and
    # the gradients transform that traced program instead of tracing the Python again (the
    # demo's GPT-3 objective: 1.4 s a trace here). XLA inlines the call.
    @jax.jit
    def metrics_of(x):
        return objective(space.build(x))

    probe = jax.eval_shape(metrics_of, jnp.asarray(np.asarray(space.lower, dtype=np.float64),
                                                   dtype=jnp.result_type(float)))
    missing = [n for n in required if n not in probe]
    if missing:
        raise ValueError(f"objective returned no metric named {missing}; it returned "
                         f"{sorted(probe)}")
    batch_eval = jax.jit(jax.vmap(metrics_of))

    def evaluate(x: np.ndarray, chunk: int = 4096) -> dict[str, np.ndarray]:
        parts = []
        for i in range(0, x.shape[0], chunk):
            part = x[i:i + chunk]
            size = min(chunk, 1 << max(4, int(np.ceil(np.log2(len(part))))))
            padded = np.concatenate([part, np.repeat(part[:1], size - len(part), axis=0)])
            out = batch_eval(jnp.asarray(padded, dtype=jnp.result_type(float)))
            parts.append({k: np.asarray(v, dtype=np.float64).reshape(-1)[:len(part)]
                          for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in probe}

    return metrics_of, evaluate


@dataclasses.dataclass(frozen=True)
class _Scales:
    """How the search sees the metrics, scaled by the pilot sample.

    An objective is minimized as `sign * value` (or `sign * log(value)` with `log_objectives`),
    shifted by the pilot's best (`ideal`) and divided by the pilot's range (`obj_scale`), so
    that the pilot spans [0, 1]. A budget becomes `g <= 0` where met: its excess over the bound
    divided by `|bound|` (by the pilot's spread of the metric for a bound of 0).
    """

    obj_spec: tuple[tuple[str, Direction], ...]
    budget_spec: tuple[tuple[str, float | None, float | None], ...]
    log_objectives: bool
    budget_margin: float
    signs: np.ndarray  # [m], +1 to minimize, -1 to maximize
    ideal: np.ndarray  # [m], the pilot's best transformed objective
    obj_scale: np.ndarray  # [m], the pilot's range of each transformed objective
    con_scale: np.ndarray  # [k], one per budget

    @classmethod
    def from_pilot(cls, m_pilot, obj_spec, budget_spec, log_objectives, budget_margin):
        """The scales of the pilot's metrics `m_pilot` (name -> [n])."""
        obj_names = [n for n, _ in obj_spec]
        h_pilot = np.stack([m_pilot[n] for n in obj_names], axis=1)
        if log_objectives and np.any(h_pilot <= 0):
            raise ValueError("log_objectives needs positive objectives; the pilot sample has "
                             f"non-positive values of {obj_names}")
        signs = opt.direction_signs([d for _, d in obj_spec], len(obj_spec))
        h_pilot = _transform(h_pilot, signs, log_objectives, np)
        finite = np.isfinite(h_pilot)
        ideal = np.array([np.min(h_pilot[finite[:, i], i]) if finite[:, i].any() else 0.0
                          for i in range(len(obj_names))])
        nadir = np.array([np.max(h_pilot[finite[:, i], i]) if finite[:, i].any() else 1.0
                          for i in range(len(obj_names))])
        obj_scale = np.where(nadir > ideal, nadir - ideal, 1.0)
        con_scale = []
        for name, low, high in budget_spec:
            bound = high if high is not None else low
            spread = np.nanstd(np.where(np.isfinite(m_pilot[name]), m_pilot[name], np.nan))
            con_scale.append(abs(bound) if bound != 0 else (spread if spread > 0 else 1.0))
        return cls(obj_spec, budget_spec, log_objectives, budget_margin, signs, ideal,
                   obj_scale, np.asarray(con_scale, dtype=np.float64))

    def objectives(self, metrics) -> np.ndarray:
        """Scaled objectives of evaluated designs (name -> [n]), `[n, m]` (numpy)."""
        h = np.stack([metrics[n] for n, _ in self.obj_spec], axis=1)
        return (_transform(h, self.signs, self.log_objectives, np) - self.ideal) / self.obj_scale

    def violation(self, metrics, n: int) -> np.ndarray:
        """Largest scaled budget excess of each of `n` evaluated designs, `[n]`, 0 where met."""
        g = np.stack(_normalized_constraints(metrics, self.budget_spec, self.con_scale, np),
                     axis=1) if self.budget_spec else np.zeros((n, 0))
        return np.max(np.maximum(g, 0.0), axis=1, initial=0.0)

    def normalized(self, m):
        """Metrics of one design -> (scaled objectives `[m]`, budgets as g <= 0 tightened `[k]`);
        traceable."""
        ideal = jnp.asarray(self.ideal, dtype=jnp.result_type(float))
        obj_scale = jnp.asarray(self.obj_scale, dtype=jnp.result_type(float))
        f = jnp.stack([jnp.asarray(m[n]) for n, _ in self.obj_spec])
        f = (_transform(f, self.signs, self.log_objectives, jnp) - ideal) / obj_scale
        gs = _normalized_constraints(m, self.budget_spec, self.con_scale, jnp)
        # Searched against budgets tightened by `budget_margin`: an augmented Lagrangian
        # approaches an active constraint from outside, to within O(1/rho); the margin puts
        # its answer just inside, where the exact check accepts it.
        g = jnp.stack(gs) + self.budget_margin if gs else jnp.zeros((0,), f.dtype)
        return f, g

    def in_units(self, f: np.ndarray) -> np.ndarray:
        """Scaled objectives (any leading shape, `m` last) back in the objectives' units."""
        f = self.signs * (f * self.obj_scale + self.ideal)
        return np.exp(f) if self.log_objectives else f


def _transform(values, signs, log_objectives: bool, xp):
    """Objective values -> minimized coordinates: sign * value, or sign * log(value)."""
    return xp.asarray(signs) * (xp.log(values) if log_objectives else values)


def _start_batch(n_preferences: int, n_starts: int, scalarizations: tuple[str, ...], m: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch of searches: preference vectors x scalarizations x `n_starts` starts.

    **Returns:** per start, its weights `[S, m]`, whether it is a Chebyshev scalarization
    `[S]`, and its rank among the starts of the same preference and scalarization `[S]`.
    """
    w = opt.preference_vectors(n_preferences, m, seed=seed)
    weights = np.concatenate([np.repeat(w, n_starts, axis=0)] * len(scalarizations))
    use_cheb = np.concatenate([np.full(n_preferences * n_starts, s == "chebyshev")
                               for s in scalarizations])
    rank = np.tile(np.arange(n_starts), n_preferences * len(scalarizations))
    return weights, use_cheb, rank


def _starting_points(space, scales: _Scales, x_pilot, m_pilot, weights, use_cheb, rank, *,
                     starts, seed):
    """Where each search starts, in unconstrained coordinates `[S, dim]`.

    `starts="pilot"`: the rank-th best pilot design under the start's own scalarized loss,
    designs that break a budget penalized; `"random"`: a second Sobol stream, independent of
    the pilot.
    """
    n_total = weights.shape[0]
    if starts == "random":
        u0 = opt.sobol_unit(n_total, int(space.dim), seed=seed + 1)
    else:
        f_p = scales.objectives(m_pilot)
        viol = scales.violation(m_pilot, len(x_pilot))
        d = f_p + IDEAL_MARGIN
        cheb = np.max(weights[:, None, :] * d[None], axis=2) + (
            opt.CHEBYSHEV_AUGMENTATION * d.sum(axis=1)[None])
        wsum = np.sum(weights[:, None, :] * f_p[None], axis=2)
        score = np.where(use_cheb[:, None], cheb, wsum) + 1e3 * viol[None]
        score = np.where(np.isfinite(score), score, np.inf)
        order = np.argsort(score, axis=1, kind="stable")
        u0 = np.asarray(space.to_unit(jnp.asarray(x_pilot[order[np.arange(n_total), rank]])))
    # from_unconstrained(z) = from_unit(sigmoid(z)), so a unit point u starts at z = logit(u).
    u0 = np.clip(u0, 1e-4, 1.0 - 1e-4)
    return jnp.asarray(np.log(u0) - np.log1p(-u0), dtype=jnp.result_type(float))


def _run_multistart(relaxed, z0, weights, use_cheb, *, optimizer, outer_steps, inner_steps,
                    penalty, progress, n_pilot):
    """Every start searched at once (`dse.optimizers.multistart_minimize`), with a progress bar.

    **Returns:** the `MultiStartResult` and the cumulative model evaluations after each outer
    step (the pilot's `n_pilot`, then `EVALUATIONS_PER_GRADIENT` per gradient), int64 `[T]`.
    """
    grads_per_outer = weights.shape[0] * inner_steps
    bar = tqdm(total=outer_steps, desc="optimize", disable=not progress, leave=False)
    cumulative = []

    def callback(t, f, violation):
        cumulative.append(n_pilot + EVALUATIONS_PER_GRADIENT * grads_per_outer * (t + 1))
        bar.update(1)
        bar.set_postfix(feasible=f"{float(jnp.mean(violation <= 0)):.0%}")

    try:
        run = opt.multistart_minimize(
            relaxed, z0, weights, use_chebyshev=use_cheb, ideal=0.0, adaptive_ideal=True,
            ideal_margin=IDEAL_MARGIN, optimizer=optimizer,
            outer_steps=outer_steps, inner_steps=inner_steps, penalty=penalty, tolerance=0.0,
            callback=callback,
        )
    finally:
        bar.close()
    return run, np.asarray(cumulative, dtype=np.int64)


def _snap_and_repair(space, run, keep_iterates: bool) -> tuple[np.ndarray, np.ndarray]:
    """The designs to check exactly after the search, in parameter units.

    The best feasible iterate and the last one of every start, rounded to the nearest
    integers (and, with `keep_iterates`, the iterate after every outer step: points along the
    paths also fill in the front); then every other floor/ceil combination of the best and last
    iterates' integer knobs, so that a rounding that breaks a budget has a neighbour that may not.

    **Returns:** the distinct rounded designs `[r, dim]` and the other combinations `[q, dim]`.
    """
    dim = int(space.dim)
    x_relaxed = np.asarray(space.from_unconstrained(jnp.concatenate([run.z_best, run.z])),
                           dtype=np.float64)
    x_round = space.snap(x_relaxed)
    if keep_iterates:
        x_path = np.asarray(space.from_unconstrained(run.history_z[:-1]), dtype=np.float64)
        x_round = np.concatenate([x_round, space.snap(x_path.reshape(-1, dim))])
    neigh = np.concatenate([space.box.integer_neighbours(xi) for xi in x_relaxed])
    x_round_u = np.unique(x_round, axis=0)
    is_round = {tuple(r) for r in x_round_u}
    x_repair = np.array([r for r in np.unique(neigh, axis=0) if tuple(r) not in is_round])
    return x_round_u, x_repair.reshape(-1, dim)


def _result(space, scales: _Scales, x_pilot, m_pilot, x_new, m_new, sources: list[str], *,
            history, n_evaluations, n_gradients, t_start, note: str = "") -> OptimizeResult:
    """The `OptimizeResult` of the pilot and the designs the search added (`x_new`, their exact
    metrics `m_new` and where each came from, `sources`), every one checked against the budgets;
    `note` is appended to the message."""
    obj_spec, budget_spec = scales.obj_spec, scales.budget_spec
    metrics = {k: np.concatenate([m_pilot[k], m_new[k]]) for k in m_pilot}
    margins, feasible, reason, front, status, message = _check(metrics, obj_spec, budget_spec)
    return OptimizeResult(
        names=tuple(space.names), objectives=obj_spec, budgets=budget_spec,
        x=np.concatenate([x_pilot, x_new]), metrics=metrics, margins=margins, feasible=feasible,
        reason=reason, source=np.array(["pilot"] * len(x_pilot) + sources), front=front,
        history=history, n_evaluations=int(n_evaluations), n_gradients=n_gradients,
        seconds=time.perf_counter() - t_start, status=status, message=message + note,
        space=space,
    )


def _check(metrics, obj_spec, budget_spec):
    """Exact budget check of evaluated designs: margins, feasibility, reasons, front, status."""
    margins = _margins(metrics, budget_spec)
    f_all = np.stack([metrics[n] for n, _ in obj_spec], axis=1)
    feasible = np.all(np.isfinite(f_all), axis=1)
    reasons = [[] if ok else ["non-finite objective"] for ok in feasible]
    if REASON_METRIC in metrics:
        # The models' own verdict (out of memory, a die that cannot be made...): infeasible
        # whatever the budgets say.
        code = np.asarray(metrics[REASON_METRIC]).astype(np.int64)
        short = metrics.get("memory_shortfall")
        feasible &= code == 0
        for i in np.flatnonzero(code):
            text = describe_reason(code[i])
            if short is not None and short[i] > 0:
                text += f" (short by {short[i] / 2**30:.3g} GiB per chip)"
            reasons[i].append(text)
    for (name, low, high) in budget_spec:
        broken = ~(margins[name] >= 0)
        feasible &= ~broken
        for i in np.flatnonzero(broken):
            reasons[i].append(f"{_describe(name, low, high)} ({metrics[name][i]:.4g})")
    reason = np.array(["; ".join(r) for r in reasons], dtype=object)
    # The front of the feasible designs only: with none feasible it is empty, not the least
    # bad ones ("feasible first" would show those).
    front = opt.pareto_indices(f_all, [d for _, d in obj_spec], feasible)
    front = front[feasible[front]]

    if feasible.any():
        status, message = "ok", (f"{len(front)} non-dominated feasible designs out of "
                                 f"{int(feasible.sum())} feasible of {len(feasible)} evaluated")
    else:
        parts = []
        if REASON_METRIC in metrics:
            flagged = np.asarray(metrics[REASON_METRIC]) != 0
            if flagged.any():
                common = np.bitwise_or.reduce(
                    np.asarray(metrics[REASON_METRIC])[flagged].astype(np.int64))
                parts.append(f"{int(flagged.sum())} of {len(flagged)} designs infeasible in the "
                             f"model ({describe_reason(common)})")
        for name, low, high in budget_spec:
            broken = ~(margins[name] >= 0)
            if broken.any():
                best = float(np.nanmax(np.where(np.isfinite(margins[name]), margins[name],
                                                np.nan))) if np.isfinite(
                    margins[name]).any() else float("nan")
                parts.append(f"{_describe(name, low, high)} broken by {int(broken.sum())} of "
                             f"{len(broken)} designs (best margin {best:.4g})")
        status = "infeasible"
        message = "no design met every budget: " + ("; ".join(parts) if parts else
                                                    "every objective was non-finite")
    return margins, feasible, reason, front, status, message


def _optimize_trace(space, metrics_of, scales: _Scales, x_pilot, m_pilot, *, spacing,
                    max_steps, progress, t_start) -> OptimizeResult:
    """`optimize(method="trace")`: the pilot's best design for the second objective, then
    `dse.optimizers.trace_front` in the unit box, every point exactly checked."""
    fn, snap = _trace_functions(space, metrics_of, scales)
    # Start: the pilot design best for the second objective, infeasible ones last.
    f_pilot = scales.objectives(m_pilot)
    viol = scales.violation(m_pilot, len(x_pilot))
    score = np.where(np.isfinite(f_pilot[:, 1]), f_pilot[:, 1] + 1e3 * viol, np.inf)
    u0 = np.asarray(space.to_unit(jnp.asarray(x_pilot[int(np.argmin(score))])), np.float64)

    bar = tqdm(total=max_steps, desc="trace", disable=not progress, leave=False)
    try:
        trace = opt.trace_front(fn, u0, snap=snap, spacing=spacing, max_steps=max_steps,
                                callback=lambda i, w, v: (bar.update(1),
                                                          bar.set_postfix(w=f"{w:.2f}")))
    finally:
        bar.close()

    x_trace = space.snap(np.asarray(space.from_unit(jnp.asarray(trace.u)), np.float64))
    m_trace = {k: np.array([a[k] for a in trace.aux]) for k in m_pilot}
    n_pilot = len(x_pilot)
    cumulative = np.concatenate([np.arange(1, n_pilot + 1),
                                 n_pilot + EVALUATIONS_PER_JACOBIAN
                                 * np.arange(1, trace.n_jacobians + 1)])
    history = {"n_evaluations": cumulative.astype(np.int64), "weight": trace.weight,
               "accepted": trace.accepted}
    return _result(space, scales, x_pilot, m_pilot, x_trace.reshape(-1, int(space.dim)),
                   m_trace, ["trace"] * len(x_trace), history=history,
                   n_evaluations=n_pilot + EVALUATIONS_PER_JACOBIAN * trace.n_jacobians,
                   n_gradients=trace.n_jacobians, t_start=t_start,
                   note=f"; trace: {trace.message}")


def _trace_functions(space, metrics_of, scales: _Scales):
    """What `trace_front` calls, in the unit box of `space`.

    **Returns:** `fn(u) -> (v, J, metrics)`: the scaled objectives and budgets `v` of design
    `u`, their forward-mode Jacobian `J` (jitted) and the design's exact metrics; and
    `snap(u)`: `u` with its integer knobs rounded (in parameter units).
    """
    is_int = np.asarray(space.is_integer, dtype=bool)

    def vector(u):
        m = metrics_of(space.from_unit(u))
        f, g = scales.normalized(m)
        v = jnp.concatenate([f, g])
        return v, (v, m)

    jacobian = jax.jit(jax.jacfwd(vector, has_aux=True))

    def fn(u):
        jac, (v, m) = jacobian(jnp.asarray(u, dtype=jnp.result_type(float)))
        return np.asarray(v), np.asarray(jac), {k: float(val) for k, val in m.items()}

    def snap(u):
        if not is_int.any():
            return u
        x = space.snap(np.asarray(space.from_unit(jnp.asarray(u)), dtype=np.float64))
        return np.where(is_int, np.asarray(space.to_unit(jnp.asarray(x)), dtype=np.float64), u)

    return fn, snap
