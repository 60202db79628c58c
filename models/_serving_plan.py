"""The best serving plan: every layout, scheduler limit and precision recipe in one vmapped call.

The inference twin of `best_plan`. A serving plan is a replica layout (TP x PP x EP chips), the
replicas that fill the system, the scheduler's batch limit and token budget (the chunked-prefill
chunk), and a precision recipe (bytes of the layers' weights and of the KV cache, and the matrix
peak of that format relative to the chip's 16-bit peak; the embedding and LM head stay 16-bit,
`InferencePlan.head_weights`). Enumeration is numpy on the concrete model shape and chip
count; evaluation is one `jax.vmap` of `serve_continuous` and its SLO goodput over the plan axis,
so the hardware may be traced (jit, vmap over designs, grad). The objective is the most output
tokens/s that meet the latency objective (`ServingReport.goodput`); infeasible plans (memory, a
missed SLO) are masked and keep their reasons; `smooth=True` gives a soft maximum whose gradient
blends the nearly-best plans.

Expert parallelism (`InferencePlan.ep`, MoE models only: EP divides the experts) is a dimension
of the layout; a dense model has EP = 1 only. Caution: the only published MoE serving rows run
with EP (TensorRT-LLM v1.0, Qwen3-235B-A22B on 8 GPUs, EP size not stated) come out +85% to
+120% under the EP = 8 reading and +15% to +20% under the expert-TP one
(`benchmarks/validate_moe_serving.py`), so the search's preference for EP layouts of MoE models
is not validated. Not enumerated: replicas that leave chips idle, unchunked prefill, and
TensorRT-LLM's hybrid (EP inside the TP group with attention tensor parallel).
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from dse.hardware import Reason, System
from dse.hardware._once import compiled_when_concrete

from ._calibration import DEFAULT, Calibration
from ._inference import InferencePlan
from ._plan_search import _concrete_int, _divisors
from ._serving import (
    ServingPlan,
    ServingReport,
    ServingWorkload,
    Slo,
    SloGoodputReport,
    serve_continuous,
)
from ._speculative import Speculation
from ._transformer import Transformer

# Precision recipes: (weight bytes, KV bytes, matrix peak / 16-bit peak). BF16 only by default:
# the low-precision peak is the chip's datasheet figure (data/chips.csv `peak_dense_fp8_tflops`
# over `peak_dense_bf16_tflops`), which a caller passes (`benchmarks/serving_plan.py` does).
BF16 = {"bf16": (2.0, 2.0, 1.0)}
# Scheduler limits searched: powers of two around the defaults of TensorRT-LLM (max_batch_size
# 2048, max_num_tokens 8192) and vLLM (max_num_seqs 256-1024, max_num_batched_tokens 2048-8192).
MAX_BATCHES = (64, 128, 256, 512, 1024, 2048)
MAX_TOKENS = (512, 1024, 2048, 4096, 8192, 16384)


class ServingPlans(eqx.Module):
    """A batch of serving plans (leading axis) and each one's precision recipe.

    - `plan`: a batched `ServingPlan`.
    - `precision`: index of each plan's recipe in `names`.
    - `matmul_speedup`: each plan's matrix peak relative to the chip's 16-bit peak.
    - `names` (static): the recipes' names.
    """

    plan: ServingPlan
    precision: Int[Array, " plans"]
    matmul_speedup: Float[Array, " plans"]
    names: tuple = eqx.field(static=True)

    def __len__(self) -> int:
        return int(self.precision.shape[0])


def enumerate_serving_plans(model: Transformer, num_chips: int, *,
                            precisions: dict = BF16, max_batches=MAX_BATCHES,
                            max_tokens=MAX_TOKENS, max_tp: int | None = None,
                            sequence_parallel: bool = False) -> ServingPlans:
    """Every serving plan of `model` on exactly `num_chips` chips, as one batch.

    Valid: TP divides the attention heads (at most `max_tp`), PP divides the layers, EP divides
    the experts (1 for a dense model), TP x PP x EP divides the chips (the rest are replicas);
    every batch limit and token budget; every
    precision recipe (`{name: (weight_bytes, kv_bytes, matmul_speedup)}`: the layers' weight
    width; the embedding and LM head keep `InferencePlan.head_weights`' 16 bits).

    **Returns:** `ServingPlans` (the plans along a leading axis).
    """
    layers = _concrete_int(model.layers, "layers")
    heads = _concrete_int(model.heads, "heads")
    experts = _concrete_int(model.experts, "experts")
    num_chips = int(num_chips)
    if num_chips < 1:
        raise ValueError(f"enumerate_serving_plans: num_chips must be >= 1; got {num_chips}")
    if not precisions:
        raise ValueError("enumerate_serving_plans: precisions must name at least one recipe")
    names = tuple(precisions)
    rows = []
    for tp, pp, ep in itertools.product(_divisors(heads), _divisors(layers), _divisors(experts)):
        if num_chips % (tp * pp * ep) or (max_tp is not None and tp > max_tp):
            continue
        for b, t, k in itertools.product(max_batches, max_tokens, range(len(names))):
            rows.append((tp, pp, num_chips // (tp * pp * ep), b, t, k, ep))
    if not rows:
        raise ValueError(f"no serving plan for {num_chips} chips (layers {layers}, heads "
                         f"{heads}, max_tp {max_tp})")
    a = np.array(rows, dtype=np.float64)
    k = a[:, 5].astype(np.int64)
    recipe = np.array([precisions[n] for n in names], dtype=np.float64)[k]
    inference = InferencePlan(tp=a[:, 0], pp=a[:, 1], ep=a[:, 6], weight_bytes=recipe[:, 0],
                              kv_bytes=recipe[:, 1], sequence_parallel=sequence_parallel,
                              fused=True)
    n = len(a)
    plan = ServingPlan(inference=inference, replicas=a[:, 2], max_batch=a[:, 3],
                       max_tokens=a[:, 4], block_tokens=np.full(n, 32.0),
                       kv_memory_fraction=np.full(n, 0.9), reserve_output=np.full(n, 1.0))
    # Every leaf along the plan axis (the defaults too), so that one vmap maps them all.
    plan = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape[1:]), plan)
    return ServingPlans(plan=plan, precision=jnp.asarray(k, dtype=jnp.int32),
                        matmul_speedup=jnp.asarray(recipe[:, 2]), names=names)


# Compiled as one program when called by hand: run op by op, the vmapped `serve_continuous`
# of a plan search compiled some 600 small programs (a two-chip Llama search: 8.8 s, 1.7 s
# compiled whole; tests/test_speculative.py).
@compiled_when_concrete
def evaluate_serving_plans(model: Transformer, plans: ServingPlans, system: System,
                           workload: ServingWorkload, slo: Slo, *,
                           calibration: Calibration = DEFAULT, smooth: bool = False,
                           speculation: Speculation | None = None
                           ) -> tuple[ServingReport, SloGoodputReport]:
    """`serve_continuous` and its goodput within `slo` of every plan (one vmapped call).

    Each plan's replicas run on `system`'s chips and links (a replica's collectives span its
    TP x PP x EP chips), the chip's matrix peak times the plan's recipe speedup. With
    `speculation` every plan decodes speculatively (`serve_continuous`).
    """
    def one(plan, speedup):
        chip = system.chip.replace(mac_units=system.chip.mac_units * speedup)
        report = serve_continuous(model, plan, system.replace(chip=chip), workload,
                                  calibration=calibration, smooth=smooth,
                                  speculation=speculation)
        return report, report.goodput(slo)

    return jax.vmap(one)(plans.plan, plans.matmul_speedup)


class ServingChoice(eqx.Module):
    """The best serving plan of a batch, and what the search saw.

    - `plan`: the chosen `ServingPlan`; `precision`: its recipe's index in `names`.
    - `goodput`: its `SloGoodputReport` (soft-max blend of the nearly-best with `smooth`).
    - `report`: its `ServingReport`.
    - `plans`, `feasible`: plans evaluated and plans that met the objective.
    - `reason`: `Reason` bits of the chosen plan (0 when it meets everything).
    """

    plan: ServingPlan
    precision: Int[Array, ""]
    goodput: SloGoodputReport
    report: ServingReport
    plans: int = eqx.field(static=True)
    feasible: Int[Array, ""]
    reason: Int[Array, ""]
    names: tuple = eqx.field(static=True)

    @property
    def tokens_per_s(self) -> Float[Array, ""]:
        """Output tokens/s of the deployment within the objective."""
        return self.goodput.tokens_per_s


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def select_serving_plan(plans: ServingPlans, reports: ServingReport,
                        goodputs: SloGoodputReport, *,
                        smooth: bool = False, temperature: float = 0.05) -> ServingChoice:
    """The feasible plan with the most tokens/s within the objective.

    Where no plan meets it, the plan with the most full-load tokens/s among those that fit in
    memory (or among all) is returned, flagged with its reasons. `smooth=True`: the goodput's
    tokens/s is the soft maximum exp(temperature * logsumexp(log g_i / temperature)) over the
    feasible plans, its other figures the softmax-weighted means.
    """
    feasible = goodputs.fits & (goodputs.tokens_per_s > 0.0)
    any_feasible = jnp.any(feasible)
    fits = reports.fits
    any_fits = jnp.any(fits)
    fallback_mask = jnp.where(any_fits, fits, jnp.ones_like(fits))
    mask = jnp.where(any_feasible, feasible, fallback_mask)
    value = jnp.where(any_feasible, goodputs.tokens_per_s, reports.tokens_per_s)
    safe = jnp.where(mask & jnp.isfinite(value) & (value > 0.0), value, 1e-30)
    logv = jnp.log(safe)
    best = jnp.argmax(jnp.where(mask, logv, -jnp.inf))
    goodput = _index(goodputs, best)
    report = _index(reports, best)
    if smooth:
        score = jnp.where(mask, (logv - logv[best]) / temperature, -jnp.inf)
        w = jax.nn.softmax(score)

        def blend(x, chosen):
            if not eqx.is_inexact_array(x) or x.ndim == 0:
                return chosen
            wx = jnp.where(mask, w, 0.0).reshape((-1,) + (1,) * (x.ndim - 1))
            finite = jnp.where(mask.reshape(wx.shape) & jnp.isfinite(x), x, 0.0)
            return jnp.sum(wx * finite, axis=0)

        goodput = jax.tree.map(blend, goodputs, goodput)
        soft = jnp.exp(temperature * jax.nn.logsumexp(score) + logv[best])
        soft = jnp.where(any_feasible, soft, 0.0)
        goodput = eqx.tree_at(lambda g: g.tokens_per_s, goodput, soft)
    reason = goodput.reason | jnp.where(any_feasible, 0, int(Reason.SLO)).astype(jnp.int32)
    return ServingChoice(plan=_index(plans.plan, best), precision=plans.precision[best],
                         goodput=goodput, report=report, plans=len(plans),
                         feasible=jnp.sum(feasible).astype(jnp.int32), reason=reason,
                         names=plans.names)


def best_serving_plan(model: Transformer, system: System, workload: ServingWorkload, slo: Slo,
                      *, calibration: Calibration = DEFAULT, smooth: bool = False,
                      temperature: float = 0.05, speculation: Speculation | None = None,
                      **enumerate_kwargs) -> ServingChoice:
    """The serving plan with the most output tokens/s within a latency objective.

    Enumerates every plan on all chips of `system` (`enumerate_serving_plans`: TP, PP, EP,
    replicas, batch limit, chunk size, precision recipe), evaluates all with one vmapped
    `serve_continuous` and its goodput, masks the infeasible ones (reasons kept) and returns the
    best (`select_serving_plan`).

    **Arguments:**

    - `model`: the `Transformer` (concrete shape); `system`: its chips (may be traced).
    - `workload`: the `ServingWorkload`; `slo`: the `Slo` (TTFT, TPOT at a quantile).
    - `smooth`: soft maximum over plans and smooth rooflines (gradients with respect to the
      hardware); `temperature`: on log tokens/s.
    - `speculation`: a `Speculation` every plan decodes with (None: one token per step).
    - `enumerate_kwargs`: to `enumerate_serving_plans` (`precisions`, `max_batches`,
      `max_tokens`, `max_tp`).

    **Returns:** `ServingChoice`.
    """
    plans = enumerate_serving_plans(model, int(system.num_chips), **enumerate_kwargs)
    reports, goodputs = evaluate_serving_plans(model, plans, system, workload, slo,
                                               calibration=calibration, smooth=smooth,
                                               speculation=speculation)
    return select_serving_plan(plans, reports, goodputs, smooth=smooth, temperature=temperature)


def serving_goodput(model: Transformer, system: System, workload: ServingWorkload, slo: Slo,
                    **kwargs) -> Float[Array, ""]:
    """Output tokens/s per chip of the best serving plan within `slo` (soft maximum by default,
    so that it differentiates): a figure of merit for `sweep` and `optimize`."""
    kwargs.setdefault("smooth", True)
    choice = best_serving_plan(model, system, workload, slo, **kwargs)
    return choice.goodput.tokens_per_s / system.num_chips
