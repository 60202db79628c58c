"""The best parallel plan: enumerate every valid plan as arrays, evaluate all in one call.

A chip is only as good as the software mapping that suits it, so design-space sweeps judge each
design with its best plan. Enumeration is numpy on the (concrete) model shape and chip count;
evaluation is one `train_step` over the plan axis (broadcast in `best_plan`, vmapped in
`evaluate_plans`), so the hardware may be traced (jit, vmap over designs, grad).
"""

from __future__ import annotations

import dataclasses
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from dse.hardware import Reason, System
from dse.hardware._once import compiled_when_concrete
from dse.hardware._validate import check_integer

from ._calibration import DEFAULT, Calibration
from ._rules import is_concrete
from ._training import TrainReport, train_step
from ._training_plan import (
    CP_A2A,
    CP_A2A_P2P,
    CP_P2P,
    CP_SCHEMES,
    TrainingPlan,
    flagging_invalid_plans,
)
from ._transformer import Transformer


def _divisors(n: int | np.integer) -> np.ndarray:
    n = int(n)
    return np.array([d for d in range(1, n + 1) if n % d == 0], dtype=np.int64)


def _concrete_int(x, what: str) -> int:
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"best_plan needs a concrete Transformer.{what} to enumerate plans; "
                         "trace the hardware, not the model shape")
    arr = np.asarray(x)
    if arr.ndim != 0:
        raise ValueError(f"best_plan takes one Transformer; got {what} of shape {arr.shape}")
    return int(round(float(arr)))


def enumerate_plans(model: Transformer, num_chips: int | float, global_batch: int | float, *,
                    recompute=(0, 1, 2), zero_stages=(0, 1, 2, 3),
                    sequence_parallel=(0, 1), dp_overlap: int = 1,
                    max_microbatch: int | None = None,
                    context_parallel: tuple[int, ...] | str = (1,),
                    cp_comm: tuple[float, ...] = (CP_P2P,),
                    precision: str = "bf16",
                    activation_offload: tuple[float, ...] = (0.0,),
                    tp_overlap: int = 0, ep_hierarchical: int = 0,
                    ep_overlap: int = 0) -> TrainingPlan:
    """Every valid plan for `model` on exactly `num_chips` chips, as one batched `TrainingPlan`.

    Valid: TP divides the heads, PP divides the layers, CP splits each sequence into 2 * CP
    equal chunks (Megatron-Core's load-balanced causal split), DP = num_chips / (TP * CP * PP)
    divides the global batch, EP divides both the experts and DP, the micro-batch divides the
    per-replica batch, the interleave (virtual stages) divides the layers per stage and, as
    Megatron-LM requires, the micro-batch count is a multiple of PP when interleaving; sequence
    parallelism only with TP > 1.

    **Arguments:**

    - `model`: the `Transformer` (concrete shape).
    - `num_chips`: chips to use (all of them).
    - `global_batch`: sequences per step.
    - `recompute`, `zero_stages`, `sequence_parallel`: the values of those knobs to include.
    - `dp_overlap`: the data-parallel overlap setting of every plan.
    - `max_microbatch`: largest micro-batch size considered (default: no limit).
    - `context_parallel`: the CP degrees to include, or "all" for every valid one (default
      (1,): no context parallelism, the plan space of short-sequence training).
    - `cp_comm`: the context-parallel schemes of the plans with CP > 1
      (`TrainingPlan.cp_comm`: `CP_P2P`, `CP_ALL_GATHER`, `CP_A2A`, `CP_A2A_P2P`; default the
      ring only); all-to-all only where the TP rank's query and KV heads split cp ways; the
      hierarchical scheme once for every all-to-all group size `cp_a2a` strictly between 1
      and cp that divides cp and splits those heads (1 and cp are the ring and Ulysses, so a
      CP degree of 2 has no hierarchical plan).
    - `precision`: the training recipe of every plan (`TrainingPlan.precision`).
    - `activation_offload`: the offloaded shares of the layers to include (default (0.0,): no
      offloading; for example (0.0, 0.25, 0.5) on a system with a host link).
    - `tp_overlap`: the TP comm-GEMM overlap setting of every plan (0 or 1).
    - `ep_hierarchical`: the MoE dispatch of every plan (0: plain all-to-all; 1: DeepEP-style,
      once per destination node over the scale-out network; `TrainingPlan.ep_hierarchical`).
    - `ep_overlap`: 1 to run the plans without full recomputation with Megatron-Core's combined
      1F1B schedule (`TrainingPlan.ep_overlap`); the full-recomputation plans keep 0, as
      Megatron-Core refuses the pair.

    **Returns:** a `TrainingPlan` whose leaves have one leading axis (the plans).
    """
    layers = _concrete_int(model.layers, "layers")
    heads = _concrete_int(model.heads, "heads")
    experts = _concrete_int(model.experts, "experts")
    seq_len = _concrete_int(model.seq_len, "seq_len")
    for name, value in (("num_chips", num_chips), ("global_batch", global_batch)):
        if isinstance(value, (bool, np.bool_)) or isinstance(value, jax.core.Tracer):
            raise ValueError(f"enumerate_plans: {name} must be a concrete whole number; got "
                             f"{value!r}")
        check_integer("enumerate_plans", name, value)
    num_chips, global_batch = int(num_chips), int(global_batch)
    if isinstance(context_parallel, str):
        if context_parallel != "all":
            raise ValueError(f"context_parallel must be a tuple of degrees or 'all'; "
                             f"got {context_parallel!r}")
        cps = _divisors(num_chips)
    else:
        cps = np.asarray(context_parallel, dtype=np.int64)
    cps = [int(c) for c in cps if c == 1 or seq_len % (2 * int(c)) == 0]
    rows = []
    for tp, pp, cp in itertools.product(_divisors(heads), _divisors(layers), cps):
        if num_chips % (tp * pp * cp):
            continue
        dp = num_chips // (tp * pp * cp)
        if global_batch % dp:
            continue
        per_replica = global_batch // dp
        for ep in _divisors(experts):
            if dp % ep:
                continue
            for b in _divisors(per_replica):
                if max_microbatch is not None and b > max_microbatch:
                    continue
                m = per_replica // b
                for v in _divisors(layers // pp):
                    if v > 1 and (pp == 1 or m % pp):
                        continue
                    rows.append((tp, pp, dp, ep, b, v, cp))
    if not rows:
        raise ValueError(f"no valid plan for {num_chips} chips and global batch {global_batch} "
                         f"(layers {layers}, heads {heads})")
    base = np.array(rows, dtype=np.float64)
    offloads = tuple(float(a) for a in activation_offload)
    if not offloads or any(not 0.0 <= a <= 1.0 for a in offloads):
        raise ValueError(f"enumerate_plans: activation_offload must be shares in [0, 1]; got "
                         f"{activation_offload!r}")
    knobs = np.array([(sp, rc, z, a) for sp in sequence_parallel for rc in recompute
                      for z in zero_stages for a in offloads], dtype=np.float64)
    full = np.concatenate([np.repeat(base, len(knobs), axis=0),
                           np.tile(knobs, (len(base), 1))], axis=1)
    full = full[(full[:, 7] == 0) | (full[:, 0] > 1)]  # SP needs TP > 1
    col = {name: full[:, i] for i, name in enumerate(
        ("tp", "pp", "dp", "ep", "microbatch_size", "interleave", "cp", "sequence_parallel",
         "recompute", "zero_stage", "activation_offload"))}
    schemes = tuple(dict.fromkeys(float(c) for c in cp_comm))
    if not schemes or any(c not in CP_SCHEMES for c in schemes):
        raise ValueError(f"enumerate_plans: cp_comm must hold CP_P2P (0), CP_ALL_GATHER (1), "
                         f"CP_A2A (2) or CP_A2A_P2P (3); got {cp_comm!r}")
    # (scheme, all-to-all group size) pairs: the hierarchical scheme once per candidate size.
    sizes = sorted({int(d) for c in np.unique(col["cp"]) for d in _divisors(int(c))} - {1}) \
        if CP_A2A_P2P in schemes else []
    variants = [(c, 1.0) for c in schemes if c != CP_A2A_P2P] + [
        (CP_A2A_P2P, float(u)) for u in sizes]
    # Each plan with CP > 1 once per variant (in place, so the plans keep their order).
    with_cp = col["cp"] > 1
    # `kv_heads_per_rank` in NumPy (this may run inside a trace, on concrete columns).
    kv_rank = (heads / col["tp"] if model.latent_attention
               else np.maximum(_concrete_int(model.kv_heads, "kv_heads") / col["tp"], 1.0))

    def splits(u):
        return (heads / col["tp"] % u == 0) & (kv_rank % u == 0)

    def valid(c, u):
        if c == CP_A2A:
            return splits(col["cp"])
        if c == CP_A2A_P2P:
            return (col["cp"] % u == 0) & (u < col["cp"]) & splits(u)
        return np.ones(len(col["cp"]), bool)

    keep = np.stack([with_cp & valid(c, u) for c, u in variants], axis=1) if variants \
        else np.zeros((len(with_cp), 1), bool)
    keep[:, 0] |= ~with_cp
    row, which = np.nonzero(keep)
    col = {name: v[row] for name, v in col.items()}
    chosen = np.asarray(variants or [(CP_P2P, 1.0)])[which]
    col["cp_comm"] = np.where(with_cp[row], chosen[:, 0], CP_P2P)
    col["cp_a2a"] = np.where(with_cp[row], chosen[:, 1], 1.0)
    n = len(row)
    if not n:
        raise ValueError(f"no valid plan for {num_chips} chips and global batch {global_batch} "
                         f"with cp_comm {cp_comm!r} (Ulysses needs the query and KV heads per "
                         f"TP rank to split cp ways, the hierarchical scheme cp_a2a ways for "
                         f"some cp_a2a strictly between 1 and cp)")
    return TrainingPlan(global_batch=np.full(n, float(global_batch)),
                        dp_overlap=np.full(n, float(dp_overlap)), dp_hierarchical=np.ones(n),
                        tp_overlap=np.full(n, float(tp_overlap)),
                        ep_hierarchical=np.full(n, float(ep_hierarchical)),
                        ep_overlap=np.where(col["recompute"] > 1.5, 0.0, float(ep_overlap)),
                        zero3_regather=np.zeros(n), precision=precision, **col)


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _pick(x, i):
    """x[i]; a concrete column that holds one value throughout (the global batch, the DP
    settings of every enumerated plan) is that value, without a gather for XLA to compile."""
    if not isinstance(x, jax.core.Tracer) and eqx.is_array_like(x):
        col = np.asarray(x)
        if col.ndim == 1 and col.size and np.all(col == col[0]):
            return jnp.asarray(x)[0]
    return x[i]


def evaluate_plans(model: Transformer, plans: TrainingPlan, system: System, *,
                   calibration: Calibration = DEFAULT, smooth: bool = False,
                   flash_attention: bool = True) -> TrainReport:
    """`train_step` of every plan of a batched `TrainingPlan` (one vmapped call).

    **Arguments:** as `train_step`, with `plans` batched along a leading axis (the
    `calibration` is shared by every plan).

    **Returns:** a `TrainReport` with the plans' leading axis; a plan that breaks a rule is
    flagged in it (never raised).

    Called by hand (nothing traced), the plans broadcast through one `train_step`
    (`_broadcast_step`): op by op, a vmap dispatches every primitive through its batching rule.
    A published FP8 / BF16 pair's prediction (six candidate batches: `calibration/
    _precision_data.py`) ran in 1.4-1.7 s instead of 5.6-6.9 s here, with the same values.
    """
    if is_concrete(model, plans, system, calibration):
        with flagging_invalid_plans():
            return _broadcast_step(model, plans, system, calibration, smooth, flash_attention)
    return jax.vmap(lambda p: train_step(model, p, system, calibration=calibration,
                                         smooth=smooth, flash_attention=flash_attention))(plans)


def _broadcast_step(model, plans, system, calibration, smooth, flash_attention):
    """One `train_step` that the plans broadcast through (it is elementwise in every plan
    field); fields no plan field reaches are broadcast to the plans' shape."""
    report = train_step(model, plans, system, calibration=calibration, smooth=smooth,
                        flash_attention=flash_attention)
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in jax.tree.leaves(plans)))
    return jax.tree.map(lambda x: jnp.broadcast_to(x, shape), report)


@eqx.filter_jit
def _evaluate_broadcast(model, plans, system, calibration, smooth, flash_attention):
    """`evaluate_plans` as one `train_step` that the plans broadcast through (it is
    elementwise in every plan field), for `best_plan`.

    The same values as the vmapped step (every report field: `tests/test_plans.py`) with
    fewer primitives to batch: `best_plan` for GPT-3 on 1,024 chips traced in 0.41 s instead
    of 0.55-0.62 and compiled in 2.18-2.31 s instead of 2.41-2.45 (this machine, back to back,
    two runs each). Vmapped over designs it ran 10% slower (16 designs, 261 vs 237 ms), and
    inside the co-design kernel 22% slower, so `evaluate_plans` (which that kernel calls) keeps
    the vmap. Jitted so that the plans are traced values: a concrete invalid plan would make
    `train_step` raise instead of flagging it. Fields no plan field reaches are broadcast to
    the plans' shape.
    """
    return _broadcast_step(model, plans, system, calibration, smooth, flash_attention)


def select_plan(plans: TrainingPlan, reports: TrainReport, *, smooth: bool = False,
                temperature: float = 0.05) -> tuple[TrainingPlan, TrainReport]:
    """The fastest feasible plan of an evaluated batch (and a soft-min report if `smooth`).

    With `smooth=True` the report's `step_time` is the soft minimum
    exp(-temperature * logsumexp(-log(t_i) / temperature)) over the feasible plans: never above
    the minimum, at most a factor n_plans^temperature below it, and its gradient with respect to
    the hardware is the softmax-weighted blend of the nearly-best plans' d log t (so it is
    monotone wherever every plan's time is). Its other fields are the softmax-weighted means
    of the plans' reports.

    Where no plan is feasible, no infeasible plan is passed off as the answer: the plan that
    comes closest is returned, flagged (`fits` False, its `reason`, and its
    `memory_shortfall`), and it is chosen by how far it misses, not by its (meaningless) step
    time: the fewest failed checks of other kinds than memory, then the smallest memory
    shortfall relative to capacity.
    """
    feasible = reports.fits
    any_feasible = jnp.any(feasible)
    t = reports.step_time
    safe_t = jnp.where(jnp.isfinite(t) & (t > 0), t, jnp.finfo(t.dtype).max)
    best_feasible = jnp.argmin(jnp.where(feasible, safe_t, jnp.inf))
    best = jnp.where(any_feasible, best_feasible, _closest_miss(reports))
    plan = jax.tree.map(lambda x: _pick(x, best), plans)
    report = _index(reports, best)
    if smooth:
        logt = jnp.log(safe_t)
        mask = jnp.where(any_feasible, feasible, jnp.arange(t.shape[0]) == best)
        score = jnp.where(mask, -(logt - logt[best]) / temperature, -jnp.inf)
        w = jax.nn.softmax(score)

        def blend(x, chosen):
            if not eqx.is_inexact_array(x):
                return chosen
            wx = jnp.where(mask, w, 0.0)
            return jnp.sum(wx * jnp.where(mask, x, 0.0))

        report = jax.tree.map(blend, reports, report)
        soft_log = -temperature * jax.nn.logsumexp(score) + logt[best]
        report = dataclasses.replace(report, step_time=jnp.exp(soft_log))
    return plan, report


def _closest_miss(reports: TrainReport):
    """Index of the infeasible plan that misses least: fewest non-memory flags, then the
    smallest memory shortfall as a fraction of capacity."""
    memory_flags = int(Reason.MEMORY | Reason.SRAM)
    other = jnp.bitwise_and(reports.reason, ~memory_flags) != 0
    relative = reports.memory_shortfall / jnp.maximum(reports.memory_capacity, 1.0)
    return jnp.argmin(jnp.where(other, jnp.inf, relative))


def best_plan(model: Transformer, system: System, global_batch: int | float, *,
              calibration: Calibration = DEFAULT, smooth: bool = False,
              temperature: float = 0.05, flash_attention: bool = True,
              **enumerate_kwargs) -> tuple[TrainingPlan, TrainReport]:
    """The fastest feasible training plan of `model` on all chips of `system`.

    Enumerates every valid plan (`enumerate_plans`), evaluates all with one `train_step`
    that the plans broadcast through, masks the infeasible ones and returns the fastest. When
    none is feasible (a model far larger than memory), the plan that misses least comes back
    flagged: `fits` False, its `reason` and `memory_shortfall` (see `select_plan`); never an
    infeasible time as if it were the answer.

    **Arguments:**

    - `model`: the `Transformer` (concrete shape).
    - `system`: the `System` (may be traced: jit / grad over the hardware work).
    - `global_batch`: sequences per step (a whole number: 1536.5 is an error).
    - `smooth`: return a soft-min report (see `select_plan`) whose step time has a smooth
      gradient with respect to the hardware.
    - `temperature`: soft-min temperature on log step time.
    - `calibration`: the models' fitted factors, shared by every plan (as in `train_step`).
    - `flash_attention`: as in `train_step`.
    - `enumerate_kwargs`: passed to `enumerate_plans` (restrict recompute, ZeRO stages, ...).

    **Returns:** `(plan, report)`: the chosen `TrainingPlan` and its `TrainReport`.
    """
    plans = enumerate_plans(model, system.num_chips, global_batch, **enumerate_kwargs)
    # Compiled, not run op by op: the step over every plan is thousands of small ops (18 CPU-s
    # eagerly for GPT-3 on 1,024 chips when this was measured, against 2-4 s to compile,
    # benchmarks/compile_times.py, and 0.05-0.1 s per call; the persistent cache keeps it).
    # Inside an outer jit / grad this inlines. Inputs were validated when they were built.
    reports = _evaluate_broadcast(model, plans, system, calibration, smooth, flash_attention)
    return select_plan(plans, reports, smooth=smooth, temperature=temperature)


def plan_step_time(model: Transformer, system: System, global_batch: int,
                   **kwargs) -> Float[Array, ""]:
    """Step time of the best plan, s (soft-min by default, so that it differentiates).

    `kwargs` go to `best_plan` (`calibration=` for calibrated factors; `smooth=False` for the
    hard minimum).
    """
    kwargs.setdefault("smooth", True)
    return best_plan(model, system, global_batch, **kwargs)[1].step_time


def plan_memory(model: Transformer, plans: TrainingPlan, *,
                flash_attention: bool = True) -> np.ndarray:
    """Memory per chip of every plan of a batch, bytes (float64 numpy [n_plans]).

    `train_step`'s memory depends on the model and the plan only, never on the hardware, so a
    plan that needs more than the largest HBM capacity of a design space fits no design of it.
    """
    from ._memory import training_memory

    return np.asarray(jax.jit(jax.vmap(lambda p: training_memory(
        model, p, flash_attention=flash_attention).total))(plans), dtype=np.float64)


def fastest_plan_index(model: Transformer, plans: TrainingPlan, system: System, *,
                       calibration: Calibration = DEFAULT,
                       flash_attention: bool = True) -> Int[Array, ""]:
    """Index of the plan `select_plan` picks: the first fastest feasible plan, or, when none is
    feasible, the one that misses least (`select_plan`'s rule: no flag but memory, then the
    smallest memory shortfall relative to capacity). Non-finite or non-positive times rank last.

    Only the step time and feasibility of each plan are computed (XLA drops the rest of the
    reports), in one vmapped call fused with the minimum: under `vmap` over designs this is
    the design x plan kernel of a co-design sweep. (A `lax.scan` over the plans would keep less
    in memory but compiled 3.5x slower and ran 1.5x slower, measured on GPT-3 with 367 plans.)
    """
    reports = evaluate_plans(model, plans, system, calibration=calibration,
                             flash_attention=flash_attention)
    t = reports.step_time
    safe = jnp.where(jnp.isfinite(t) & (t > 0), t, jnp.finfo(t.dtype).max)
    fastest = jnp.argmin(jnp.where(reports.fits, safe, jnp.inf))
    return jnp.where(jnp.any(reports.fits), fastest,
                     _closest_miss(reports)).astype(jnp.int32)


# Compiled as one program when called by hand (run op by op it took 9.7 s for 64 plans of a
# small model, tests/test_codesign.py): its candidates are evaluated under vmap, where no check
# of a concrete value runs anyway.
@compiled_when_concrete
def best_of_plans(model: Transformer, plans: TrainingPlan, system: System, *,
                  calibration: Calibration = DEFAULT,
                  flash_attention: bool = True) -> tuple[TrainingPlan, TrainReport]:
    """The fastest feasible plan of a given batch and its report (hard minimum).

    Equal to `select_plan(plans, evaluate_plans(model, plans, system))`, computed with
    `fastest_plan_index` and one more
    `train_step` of the chosen plan (so only two fields per plan are computed). Meant for a small
    candidate set (`dse.plan_candidates`) evaluated per design inside a sweep.
    """
    i = fastest_plan_index(model, plans, system, calibration=calibration,
                           flash_attention=flash_attention)
    plan = _index(plans, i)
    return plan, train_step(model, plan, system, calibration=calibration,
                            flash_attention=flash_attention)
