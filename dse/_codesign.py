"""Co-design at sweep speed: a pruned set of training plans that holds every design's best plan.

`best_plan` judges one chip with all of its ~26,000 valid plans (GPT-3 175B on 1,024 chips); a
sweep of a million chips cannot afford that per design. `plan_candidates` cuts the plan set for
one design `Space` in two steps:

1. **Memory (exact).** A plan's memory per chip depends on the model and the plan only, never on
   the hardware (`dse.models.plan_memory`). A plan that needs more than the largest HBM capacity
   in the box fits no design of it; when some plan fits the smallest capacity, every design has
   a feasible plan, so an infeasible one is never chosen and dropping it changes nothing.
2. **Sampled winners (measured).** Every remaining plan is evaluated on a Sobol' sample of the
   box. Step time does not depend on the HBM capacity (only feasibility does), so at each
   sample every capacity of the box is covered exactly: a plan is kept when it is within
   `margin` of the fastest plan that fits wherever it fits. Step time is continuous in the
   other knobs, so a plan never near the best on a dense sample can only win in small pockets,
   and there by little.

The second step is a bound measured, not proven: `plan_misses` compares the pruned choice with
the exhaustive one on independent random designs (the rule of three: no miss in k designs
bounds the miss rate below 3/k at 95% confidence) and gives the worst step-time gap.
`dse.models.best_of_plans` then evaluates the survivors per design in one vmapped call fused
with the minimum, inside the sweep's kernel.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import models
from ._space import Space

_PLAN_FIELDS = ("tp", "pp", "dp", "ep", "microbatch_size", "interleave", "sequence_parallel",
                "recompute", "zero_stage")


@dataclasses.dataclass(frozen=True)
class PlanCandidates:
    """A pruned plan set for one design space (`plan_candidates`).

    **Fields:** `plans` (the kept `TrainingPlan`, leading plan axis, in enumeration order),
    `n_enumerated` (every valid plan), `n_memory_feasible` (those that fit the box's largest HBM
    capacity; all when no plan fits its smallest), `capacity_bytes` (the box's (smallest,
    largest) HBM capacity), `samples` (designs evaluated exhaustively), `margin` (relative
    step-time margin of a kept plan), `seconds` (wall time of the pruning).
    """

    plans: models.TrainingPlan
    n_enumerated: int
    n_memory_feasible: int
    capacity_bytes: tuple[float, float]
    samples: int
    margin: float
    seconds: float

    @property
    def n_kept(self) -> int:
        """Plans kept."""
        return int(np.shape(self.plans.tp)[0])


def _chip(design):
    return design.chip if hasattr(design, "chip") else design


def capacity_range(space: Space) -> tuple[float, float]:
    """(smallest, largest) HBM capacity per chip over the corners of the box, bytes.

    Exact when the capacity is monotone in each parameter (a parameter on `hbm_bytes` itself,
    or none: then it is the base design's).
    """
    corners = np.array(list(itertools.product(*zip(space.lower, space.upper, strict=True))))
    cap = np.asarray(_chip(space.build(jnp.asarray(corners))).hbm_bytes, np.float64)
    return float(cap.min()), float(cap.max())


def _exhaustive_index(model, plans, space, calibration, batch):
    """jitted x [n, dim] -> index of `select_plan`'s choice among `plans` per design."""
    def one(x):
        system = space.build(x)
        reports = models.evaluate_plans(model, plans, system, calibration=calibration)
        feasible = reports.fits
        t = reports.step_time
        safe = jnp.where(jnp.isfinite(t) & (t > 0), t, jnp.finfo(t.dtype).max)
        key = jnp.where(feasible | ~jnp.any(feasible), safe, jnp.inf)
        return jnp.argmin(key), key, safe

    return jax.jit(lambda x: jax.lax.map(one, x, batch_size=batch))


def plan_candidates(model: models.Transformer, space: Space, global_batch: int, *,
                    samples: int = 2048, margin: float = 0.001, seed: int = 0,
                    calibration: models.Calibration = models.DEFAULT, batch: int = 8,
                    **enumerate_kwargs) -> PlanCandidates:
    """The plans that can be best for some design of `space` (see the module docstring).

    **Arguments:**

    - `model`: the `Transformer` (concrete shape).
    - `space`: a `Space` over a `System` (its `num_chips` is the plans' chip count).
    - `global_batch`: sequences per step.
    - `samples`: Sobol' designs on which every memory-feasible plan is evaluated.
    - `margin`: keep a plan within this relative step time of a sample's best (>= 0).
    - `seed`: seeds the Sobol' sample.
    - `calibration`: the models' fitted factors.
    - `batch`: designs evaluated at once (memory: batch x plans reports).
    - `enumerate_kwargs`: passed to `dse.models.enumerate_plans`.

    **Returns:** `PlanCandidates`.
    """
    if not isinstance(space, Space) or not hasattr(space.base, "num_chips"):
        raise ValueError("plan_candidates needs a dse.Space over a System (with num_chips); got "
                         f"{type(getattr(space, 'base', space)).__name__}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1; got {samples!r}")
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ValueError(f"margin must be in [0, 1); got {margin!r}")
    t0 = time.perf_counter()
    plans = models.enumerate_plans(model, int(np.asarray(space.base.num_chips)), global_batch,
                                   **enumerate_kwargs)
    n_all = int(plans.tp.shape[0])
    memory = models.plan_memory(model, plans)
    low, high = capacity_range(space)
    fits_max = memory <= high
    if (memory <= low).any():
        plans = jax.tree.map(lambda x: x[fits_max], plans)
    n_fit = int(plans.tp.shape[0])

    index = _exhaustive_index(model, plans, space, calibration, batch)
    memory = memory[fits_max] if (memory <= low).any() else memory
    # Step time does not depend on the HBM capacity (only feasibility does): at each sample,
    # a plan is kept when it is within `margin` of the best plan that fits wherever it fits,
    # i.e. of the fastest plan needing no more memory than max(its own, the box's smallest
    # capacity); every capacity of the box is covered, not only the sample's.
    order = np.argsort(memory, kind="stable")
    sorted_memory = memory[order]
    reach = np.searchsorted(sorted_memory, np.maximum(memory, low), side="right") - 1
    kept = np.zeros(n_fit, bool)
    x = space.sample(samples, method="sobol", seed=seed)
    step = 256
    for lo in range(0, samples, step):
        _, _, t = index(jnp.asarray(x[lo:lo + step]))
        t = np.asarray(t, np.float64)
        prefix_min = np.minimum.accumulate(t[:, order], axis=1)
        floor = prefix_min[:, reach]
        kept |= (t <= floor * (1.0 + margin)).any(axis=0)
    plans = jax.tree.map(lambda a: a[kept], plans)
    return PlanCandidates(plans=plans, n_enumerated=n_all, n_memory_feasible=n_fit,
                          capacity_bytes=(low, high), samples=samples, margin=float(margin),
                          seconds=time.perf_counter() - t0)


def plan_misses(model: models.Transformer, space: Space, global_batch: int,
                candidates: PlanCandidates, x, *,
                calibration: models.Calibration = models.DEFAULT, batch: int = 8,
                **enumerate_kwargs) -> dict[str, np.ndarray | int | float]:
    """The pruned choice against the exhaustive `best_plan` at designs `x` [n, dim].

    **Returns:** `{"misses": designs whose pruned plan differs from the exhaustive one,
    "worst_gap": max over designs of pruned / exhaustive step time - 1 (0 when equal),
    "gap": [n] per design, "differs": bool [n]}`.
    """
    x = jnp.asarray(x)
    plans = models.enumerate_plans(model, int(np.asarray(space.base.num_chips)), global_batch,
                                   **enumerate_kwargs)
    full_i, full_key, _ = _exhaustive_index(model, plans, space, calibration, batch)(x)
    full_i = np.asarray(full_i)
    t_full = np.asarray(full_key)[np.arange(len(full_i)), full_i]

    def pruned(xi):
        system = space.build(xi)
        plan, report = models.best_of_plans(model, candidates.plans, system,
                                            calibration=calibration)
        return plan, report.step_time

    plan, t_pruned = jax.jit(lambda x: jax.lax.map(pruned, x, batch_size=64))(x)
    chosen = np.stack([np.asarray(getattr(plan, f)) for f in _PLAN_FIELDS], axis=1)
    exhaustive = np.stack([np.asarray(getattr(plans, f))[full_i] for f in _PLAN_FIELDS], axis=1)
    differs = (chosen != exhaustive).any(axis=1)
    gap = np.asarray(t_pruned, np.float64) / t_full - 1.0
    return {"misses": int(differs.sum()), "worst_gap": float(max(gap.max(), 0.0)), "gap": gap,
            "differs": differs}
