"""Recommendation models (the DLRM family): embedding tables, their sharding, and a training step
or an inference batch on a system.

A DLRM (Naumov et al. 2019, arXiv:1906.00091; the DCNv2 variant of MLPerf Training,
Wang et al. 2021, arXiv:2008.13535) has sparse features looked up in embedding tables and pooled
(a multi-hot feature sums `lookups` rows of its table per sample), dense features through a
bottom MLP, an interaction of the pooled embeddings with the bottom MLP's output (pairwise dot
products, or DCNv2 low-rank cross layers), and a top MLP. It leans on other resources than an
LLM does:

- **Embedding capacity**: the tables (100+ GB for the MLPerf model) are sharded over the chips,
  table-wise (whole tables per chip), row-wise or column-wise (every table split over all
  chips); what a chip holds (rows plus the optimizer state) must fit its HBM, or the design is
  flagged `Reason.MEMORY` with the shortfall.
- **Embedding bandwidth**: each lookup reads one row (D elements) at random from HBM; training
  reads it again and writes it back in the fused backward + optimizer (FBGEMM's table-batched
  embedding with the optimizer applied in the backward pass, as TorchRec runs it), with its
  optimizer state. A share of the row accesses can be served from an on-chip SRAM cache of hot
  rows (`RecPlan.cache_hit_rate`, a measured or assumed hit rate: the model does not derive it
  from the SRAM size).
- **The pooled-embedding all-to-all**: model-parallel tables and data-parallel MLPs meet in an
  all-to-all of the pooled embeddings (forward) and of their gradients (backward), after an
  all-to-all of the sparse ids (TorchRec's input distribution); row-wise sharding replaces the
  pooled all-to-all by a reduce-scatter of partial sums (forward) and an all-gather of their
  gradients (backward). All run over the scale-up and scale-out tiers (`dse.models.all_to_all`).
- **Dense MLPs** at the chip's matrix rate (`dse.models.gemm`), data parallel, with an
  all-reduce of their gradients per step (`dse.models.all_reduce`).

The phases run one after another (no overlap is credited: TorchRec's pipeline overlaps the
input-id distribution and host-to-device copies with compute, which this model leaves out of
the step).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from dse.hardware import Reason, System
from dse.hardware._validate import (
    PresetMapping,
    as_float_array,
    check_choice,
    check_range,
    concrete,
)

from ._calibration import DEFAULT, Calibration
from ._collectives import all_gather, all_reduce, all_to_all, reduce_scatter
from ._operators import OpCost, elementwise, gemm, ratio
from ._rules import Rule, check_rules, divides, memory_reason, reason_of, shortfall

INTERACTIONS = ("dot", "dcn")
SHARDINGS = ("table", "row", "column")
EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")

# Optimizer state per embedding row, in units of the row's own elements (fp32 state): SGD keeps
# none; Adagrad one accumulator per element (FBGEMM EXACT_ADAGRAD, which TorchRec's DLRM uses:
# facebookresearch/dlrm torchrec_dlrm/dlrm_main.py); row-wise Adagrad one per row (FBGEMM
# EXACT_ROWWISE_ADAGRAD).
_STATE_BYTES = {"sgd": lambda d: 0.0 * d, "adagrad": lambda d: 4.0 * d,
                "rowwise_adagrad": lambda d: 4.0 + 0.0 * d}

# Shapes are bounded where float32 holds whole numbers exactly (2^24) except table rows, which
# reach 4e7 in the MLPerf tables (and 1e10 covers the trillion-parameter tables of Mudigere et
# al. 2022); lookups per sample per table are pooling factors (MLPerf DCNv2: 1 to 100).
_LIMIT = 2.0**24


class DLRM(eqx.Module):
    """A deep-learning recommendation model (DLRM / DLRM-DCNv2).

    **Fields:**

    - `table_rows`: rows of each embedding table (one entry per sparse feature), shape
      (..., tables).
    - `lookups`: rows pooled per sample from each table (1 = one-hot; the MLPerf DCNv2
      multi-hot sizes up to 100), shape like `table_rows`.
    - `embedding_dim`: width D of every table's rows (= the bottom MLP's output width).
    - `bottom_mlp` (static): widths of the bottom (dense-feature) MLP, from the dense inputs
      (13 for Criteo) to D.
    - `top_mlp` (static): widths of the top (over) MLP after the interaction, to its output (1).
    - `interaction` (static): "dot" (pairwise dot products of the F = tables + 1 vectors,
      concatenated with the bottom output: D + F (F - 1) / 2 features) or "dcn" (DCNv2 cross
      layers on the F D concatenation).
    - `cross_layers` (static): DCNv2 cross layers (0 for "dot").
    - `cross_rank`: low rank r of each cross layer's W = U V (0 = full rank).
    - `name` (static): label.
    """

    table_rows: Float[Array, "*batch tables"] = eqx.field(converter=as_float_array)
    lookups: Float[Array, "*batch tables"] = eqx.field(converter=as_float_array)
    embedding_dim: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    bottom_mlp: tuple[int, ...] = eqx.field(static=True)
    top_mlp: tuple[int, ...] = eqx.field(static=True)
    # Any str: `__check_init__` rejects one outside INTERACTIONS with a ValueError.
    interaction: str = eqx.field(static=True, default="dot")
    cross_layers: int = eqx.field(static=True, default=0)
    cross_rank: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        check_choice("DLRM", "interaction", self.interaction, INTERACTIONS)
        check_range("DLRM", "table_rows", self.table_rows, lower=1.0, upper=1e10,
                    lower_inclusive=True)
        check_range("DLRM", "lookups", self.lookups, lower=0.0, upper=_LIMIT,
                    lower_inclusive=True)
        check_range("DLRM", "embedding_dim", self.embedding_dim, lower=1.0, upper=_LIMIT,
                    lower_inclusive=True)
        check_range("DLRM", "cross_rank", self.cross_rank, lower=0.0, upper=_LIMIT,
                    lower_inclusive=True)
        if jnp.shape(self.table_rows)[-1:] != jnp.shape(self.lookups)[-1:] \
                or jnp.ndim(self.table_rows) == 0:
            raise ValueError(f"DLRM.lookups must have one entry per table (the last axis of "
                             f"table_rows, shape {jnp.shape(self.table_rows)}); got shape "
                             f"{jnp.shape(self.lookups)}")
        for field in ("bottom_mlp", "top_mlp"):
            widths = getattr(self, field)
            if (len(widths) < 2 and field == "bottom_mlp") or len(widths) < 1 \
                    or any(int(w) != w or w < 1 for w in widths):
                raise ValueError(f"DLRM.{field} must be a tuple of whole widths >= 1 (the "
                                 f"bottom MLP at least input and output); got {widths!r}")
        if not isinstance(self.cross_layers, int) or self.cross_layers < 0 \
                or (self.interaction == "dcn") != (self.cross_layers > 0):
            raise ValueError(f"DLRM.cross_layers must be a whole number >= 1 for the 'dcn' "
                             f"interaction and 0 for 'dot'; got {self.cross_layers!r} with "
                             f"interaction {self.interaction!r}")
        d = concrete(self.embedding_dim)
        if d is not None and np.any(d != self.bottom_mlp[-1]):
            raise ValueError(f"DLRM.embedding_dim must equal the bottom MLP's output width "
                             f"{self.bottom_mlp[-1]} (the interaction stacks them); got "
                             f"{format(float(np.ravel(d)[0]), 'g')}")

    # ----- shapes ---------------------------------------------------------------------------
    @property
    def tables(self) -> int:
        """Number of embedding tables (sparse features)."""
        return int(jnp.shape(self.table_rows)[-1])

    @property
    def lookups_per_sample(self) -> Float[Array, "*batch"]:
        """Embedding rows read per sample, summed over the tables."""
        return jnp.sum(self.lookups, axis=-1)

    @property
    def interaction_width(self) -> Float[Array, "*batch"]:
        """Width of the top MLP's input: D + F (F - 1) / 2 (dot) or F D (DCNv2), F = tables + 1."""
        f = self.tables + 1.0
        if self.interaction == "dot":
            return self.embedding_dim + 0.5 * f * (f - 1.0)
        return f * self.embedding_dim

    def dense_layers(self) -> list[tuple]:
        """(inputs, outputs) of every MLP layer, bottom then top."""
        bottom = list(zip(self.bottom_mlp[:-1], self.bottom_mlp[1:], strict=True))
        top_in = [self.interaction_width, *self.top_mlp[:-1]]
        return [(float(a), float(b)) for a, b in bottom] + list(zip(top_in, self.top_mlp,
                                                                    strict=True))

    # ----- parameters -----------------------------------------------------------------------
    @property
    def embedding_params(self) -> Float[Array, "*batch"]:
        """Embedding-table parameters, sum(rows) x D."""
        return jnp.sum(self.table_rows, axis=-1) * self.embedding_dim

    @property
    def cross_params(self) -> Float[Array, "*batch"]:
        """DCNv2 cross-layer parameters: per layer U, V (low rank) or W (full) and a bias."""
        n = self.interaction_width
        w = jnp.where(self.cross_rank > 0.0, 2.0 * n * self.cross_rank, n * n)
        return self.cross_layers * (w + n)

    @property
    def dense_params(self) -> Float[Array, "*batch"]:
        """MLP weights and biases plus the cross layers."""
        mlp = sum(a * b + b for a, b in self.dense_layers())
        return mlp + self.cross_params

    @property
    def params(self) -> Float[Array, "*batch"]:
        """All parameters."""
        return self.embedding_params + self.dense_params

    def dense_flops_per_sample(self) -> Float[Array, "*batch"]:
        """Forward FLOPs of the MLPs and the interaction per sample (2 per multiply-add)."""
        mlp = sum(2.0 * a * b for a, b in self.dense_layers())
        f = self.tables + 1.0
        if self.interaction == "dot":
            inter = 2.0 * f * f * self.embedding_dim  # the F x F Gram matrix of the vectors
        else:
            n = self.interaction_width
            w = jnp.where(self.cross_rank > 0.0, 2.0 * n * self.cross_rank, n * n)
            inter = self.cross_layers * 2.0 * w
        return mlp + inter

    def replace(self, **changes) -> DLRM:
        """A copy with some fields changed (validated like a new DLRM)."""
        return dataclasses.replace(self, **changes)


class RecPlan(eqx.Module):
    """How a DLRM runs on a system: batch, sharding, precisions, cache.

    **Fields:**

    - `global_batch`: samples per step over all chips (a whole multiple of the chip count).
    - `sharding` (static): "table" (whole tables on chips, greedily balanced: the busiest chip
      holds at least the largest table and the mean), "row" or "column" (every table split
      over all chips).
    - `embedding_optimizer` (static): "sgd", "adagrad" or "rowwise_adagrad" (state per row).
    - `embedding_bytes`: bytes per embedding element (4 fp32, 2 fp16).
    - `dense_bytes`: bytes per activation / weight element of the MLPs and of the pooled
      embeddings sent between chips (2 for 16-bit mixed precision, 4 for fp32).
    - `matrix_rate`: the MLPs' matrix rate as a fraction of the chip's 16-bit peak (1 for 16-bit
      mixed precision; 0.5 for TF32 on A100 and H100, whose TF32 tensor-core peaks are half
      their FP16 peaks: NVIDIA A100 whitepaper 156 vs 312 TFLOP/s, H100 whitepaper 494.7 vs
      989.4; 19.5 / 312 for IEEE fp32 on A100's CUDA cores, PyTorch's default since 1.12).
    - `cache_hit_rate`: share of embedding row accesses served from an on-chip SRAM cache of
      hot rows, in [0, 1) (0 = no cache). A measured or assumed figure for the chip's SRAM:
      the model does not derive it from the SRAM size.
    - `index_bytes`: bytes per sparse id sent in the input distribution (8: int64 ids, the
      TorchRec KeyedJaggedTensor default).
    - `fused` (static): the step runs as one captured graph (HugeCTR's `use_cuda_graph=True`,
      NVIDIA-Merlin/HugeCTR samples/dlrm/train.py), so kernels issue back to back without the
      per-op start-up times fitted on eager PyTorch (`Calibration.with_fused_runtime`).
    """

    global_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    # Any str: `__check_init__` rejects one outside SHARDINGS / EMBEDDING_OPTIMIZERS.
    sharding: str = eqx.field(static=True, default="table")
    embedding_optimizer: str = eqx.field(static=True, default="adagrad")
    embedding_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=4.0)
    dense_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=2.0)
    matrix_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    cache_hit_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    index_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=8.0)
    fused: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_choice("RecPlan", "sharding", self.sharding, SHARDINGS)
        check_choice("RecPlan", "embedding_optimizer", self.embedding_optimizer,
                     EMBEDDING_OPTIMIZERS)
        check_range("RecPlan", "global_batch", self.global_batch, lower=1.0, upper=2.0**31,
                    lower_inclusive=True)
        for field in ("embedding_bytes", "dense_bytes", "index_bytes"):
            check_range("RecPlan", field, getattr(self, field), lower=0.5, upper=8.0,
                        lower_inclusive=True)
        check_range("RecPlan", "matrix_rate", self.matrix_rate, lower=0.0, upper=1.0)
        check_range("RecPlan", "cache_hit_rate", self.cache_hit_rate, lower=0.0, upper=1.0,
                    lower_inclusive=True, upper_inclusive=False)

    def replace(self, **changes) -> RecPlan:
        """A copy with some fields changed (validated like a new RecPlan)."""
        return dataclasses.replace(self, **changes)


class RecReport(eqx.Module):
    """What one DLRM training step (or inference batch) costs on a system (SI units).

    `step_time == embedding_time + embedding_comm_time + dense_time + dp_comm_time
    + optimizer_time`; `memory_per_chip == embedding_bytes_per_chip + dense_bytes_per_chip`
    against `memory_capacity` (`memory_shortfall` how far it misses); `fits` is False with
    `reason` (`dse.hardware.Reason`) when the design is infeasible, times still computed.
    `embedding_hbm_bytes` is the busiest chip's lookup traffic; `model_flops` the MLP and
    interaction FLOPs of the step (3x forward when training; lookups are not FLOPs), `mfu` that
    over the system's peak x step time.
    """

    step_time: Float[Array, "*batch"]
    samples_per_s: Float[Array, "*batch"]
    embedding_time: Float[Array, "*batch"]
    embedding_comm_time: Float[Array, "*batch"]
    dense_time: Float[Array, "*batch"]
    dp_comm_time: Float[Array, "*batch"]
    optimizer_time: Float[Array, "*batch"]
    embedding_hbm_bytes: Float[Array, "*batch"]
    memory_per_chip: Float[Array, "*batch"]
    embedding_bytes_per_chip: Float[Array, "*batch"]
    dense_bytes_per_chip: Float[Array, "*batch"]
    memory_capacity: Float[Array, "*#batch"]
    memory_shortfall: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]
    model_flops: Float[Array, "*batch"]
    mfu: Float[Array, "*batch"]

    @property
    def breakdown(self) -> dict[str, Float[Array, "*batch"]]:
        """The step time by where it went (sums to `step_time`)."""
        return {"embedding": self.embedding_time, "embedding_comm": self.embedding_comm_time,
                "dense": self.dense_time, "dp_comm": self.dp_comm_time,
                "optimizer": self.optimizer_time}


def _rules(plan: RecPlan, system: System) -> list[Rule]:
    n = float(system.num_chips)
    return [Rule(Reason.BATCH, "RecPlan.global_batch", plan.global_batch,
                 divides(n, plan.global_batch) & (plan.global_batch >= n),
                 lambda: f"a whole multiple of the system's {system.num_chips} chips")]


def check_rec_plan(plan: RecPlan, system: System) -> Int[Array, "*batch"]:
    """The `Reason` flags of a plan on a system; raises `ValueError` on concrete bad values."""
    rules = _rules(plan, system)
    check_rules(rules)
    return reason_of(rules)


def _embedding_shard(model: DLRM, plan: RecPlan, n: float):
    """Per chip (busiest): (table bytes held, row accesses per sample of the global batch,
    width of a row access in elements)."""
    d = model.embedding_dim
    table_bytes = model.table_rows * jnp.expand_dims(d * plan.embedding_bytes, -1)
    total = jnp.sum(table_bytes, axis=-1)
    lookups = model.lookups_per_sample
    if plan.sharding == "table":
        # Greedy packing cannot beat the mean nor split the largest table.
        held = jnp.maximum(total / n, jnp.max(table_bytes, axis=-1))
        rows = jnp.maximum(lookups / n, jnp.max(model.lookups, axis=-1))
        return held, rows, d
    if plan.sharding == "row":
        return total / n, lookups / n, d
    # Column-wise: every lookup touches a D / n slice on every chip.
    return total / n, lookups, d / n


def _dense_cost(model: DLRM, plan: RecPlan, system: System, local_batch, training: bool,
                smooth: bool, calibration: Calibration) -> OpCost:
    """The MLPs, the interaction and their activations on one chip for `local_batch` samples."""
    chip = eqx.tree_at(lambda c: c.mac_units, system.chip, system.chip.mac_units
                       * plan.matrix_rate)
    kw = dict(bytes_per_element=plan.dense_bytes, smooth=smooth, calibration=calibration)
    ops = []

    def layer(m, n, k):
        ops.append(gemm(chip, m, n, k, **kw))
        if training:
            ops.extend([gemm(chip, m, k, n, **kw), gemm(chip, k, n, m, **kw)])
        # Bias + ReLU (the backward mask multiply when training) on the output.
        ops.append(elementwise(chip, m * n, flops_per_element=2.0,
                               reads=2.0 if training else 1.0, **kw))

    for a, b in model.dense_layers():
        layer(local_batch, b, a)
    f = model.tables + 1.0
    if model.interaction == "dot":
        # Batched Gram matrices: b of (F x D) (D x F), modelled as one GEMM stacked along M.
        layer(local_batch * f, f, model.embedding_dim)
    else:
        n = model.interaction_width
        r = jnp.where(model.cross_rank > 0.0, model.cross_rank, n)
        for _ in range(model.cross_layers):
            layer(local_batch, r, n)  # V x
            layer(local_batch, n, r)  # U (V x)
            # x0 * (. + b) + x: three element-wise passes of the n-wide stream.
            ops.append(elementwise(chip, local_batch * n, flops_per_element=3.0, reads=3.0,
                                   **kw))
    cost = ops[0]
    for op in ops[1:]:
        cost = cost + op
    return cost


def _rec_step(model: DLRM, plan: RecPlan, system: System, training: bool,
              calibration: Calibration, smooth: bool) -> RecReport:
    plan_reason = check_rec_plan(plan, system)
    if plan.fused:
        calibration = calibration.with_fused_runtime()
    chip = system.chip
    n = float(system.num_chips)
    b_global = plan.global_batch
    b_local = b_global / n
    eta = calibration.kernel_fraction
    link = dict(calibration=calibration)

    # Embedding lookups (and the fused backward + optimizer update when training).
    held, rows_per_sample, width = _embedding_shard(model, plan, n)
    accesses = b_global * rows_per_sample
    state = _STATE_BYTES[plan.embedding_optimizer](width)
    miss = 1.0 - plan.cache_hit_rate
    row_bytes = width * plan.embedding_bytes
    # Forward reads the row; backward reads row + state and writes both back. Vector work: one
    # add per pooled element forward, a few more for the gradient and the update (memory-bound
    # on every chip in chips.csv either way).
    passes = 1.0 + (2.0 * (1.0 + state / row_bytes) if training else 0.0)
    lookup = elementwise(chip, accesses * width, flops_per_element=4.0 if training else 1.0,
                         bytes_per_element=plan.embedding_bytes, reads=miss * passes,
                         writes=0.0, smooth=smooth, calibration=calibration)
    embedding_time = lookup.time / eta

    # Input distribution (ids), pooled-embedding exchange, forward and (training) backward.
    tables = model.tables
    ids = all_to_all(system, b_local * model.lookups_per_sample * plan.index_bytes, n, **link)
    pooled_local = b_local * tables * model.embedding_dim * plan.dense_bytes
    if plan.sharding == "row":
        # Each chip holds partial sums of every table for the global batch.
        fwd = reduce_scatter(system, n * pooled_local, n, **link).time
        bwd = all_gather(system, n * pooled_local, n, **link).time
    else:
        fwd = bwd = all_to_all(system, pooled_local, n, **link).time
    embedding_comm = ids.time + fwd + (bwd if training else 0.0)

    dense = _dense_cost(model, plan, system, b_local, training, smooth, calibration)
    dense_time = dense.time / eta
    grad_bytes = 4.0  # fp32 gradients of the dense weights (the master copy)
    dp_comm = all_reduce(system, grad_bytes * model.dense_params, n, **link).time \
        if training else 0.0 * dense_time
    # Dense Adagrad: read weight, accumulator and gradient, write weight and accumulator.
    opt = elementwise(chip, model.dense_params, flops_per_element=6.0, bytes_per_element=4.0,
                      reads=3.0, writes=2.0, smooth=smooth, calibration=calibration)
    optimizer_time = opt.time / eta if training else 0.0 * dense_time
    step_time = embedding_time + embedding_comm + dense_time + dp_comm + optimizer_time

    # Memory per chip: the table shard and its optimizer state; the dense weights replicated
    # (fp32 master, gradient, accumulator when training), the activations of the local batch.
    emb_state = held * state / row_bytes if training else 0.0 * held
    emb_bytes = held + emb_state
    widths = sum(b for _, b in model.dense_layers()) + model.interaction_width \
        * (1.0 + model.cross_layers)
    activations = b_local * (widths + tables * model.embedding_dim) * plan.dense_bytes
    dense_copies = 3.0 if training else 1.0
    dense_bytes = dense_copies * 4.0 * model.dense_params + activations
    memory = emb_bytes + dense_bytes
    capacity = chip.memory_capacity
    reason = plan_reason | memory_reason(chip, memory, capacity)

    model_flops = b_global * model.dense_flops_per_sample() * (3.0 if training else 1.0)
    mfu = ratio(ratio(model_flops, n * chip.peak_flops), step_time)
    return RecReport(
        step_time=step_time, samples_per_s=b_global / step_time, embedding_time=embedding_time,
        embedding_comm_time=embedding_comm, dense_time=dense_time, dp_comm_time=dp_comm,
        optimizer_time=optimizer_time, embedding_hbm_bytes=lookup.hbm_bytes,
        memory_per_chip=memory, embedding_bytes_per_chip=emb_bytes,
        dense_bytes_per_chip=dense_bytes, memory_capacity=capacity,
        memory_shortfall=shortfall(memory, capacity), fits=reason == 0, reason=reason,
        model_flops=model_flops, mfu=mfu)


def rec_train_step(model: DLRM, plan: RecPlan, system: System, *,
                   calibration: Calibration = DEFAULT, smooth: bool = False) -> RecReport:
    """Cost of one training step of a DLRM on `system` (all its chips).

    **Arguments:**

    - `model`: the `DLRM`.
    - `plan`: the `RecPlan` (global batch, sharding, precisions, cache hit rate).
    - `system`: the `System`; tables shard over all its chips, the MLPs are data parallel.
    - `calibration`: the fitted factors (`kernel_fraction` scales on-chip work, as in
      `train_step`; link and HBM efficiencies as everywhere).
    - `smooth`: smooth maxima in the rooflines (for gradients).

    A global batch that is not a whole multiple of the chips is a `ValueError` given by hand,
    `Reason.BATCH` when traced; tables that do not fit are `Reason.MEMORY` (`Reason.SRAM` on a
    chip without HBM).

    **Returns:** a `RecReport` (seconds, samples/s, bytes).
    """
    return _rec_step(model, plan, system, True, calibration, smooth)


def rec_inference(model: DLRM, plan: RecPlan, system: System, *,
                  calibration: Calibration = DEFAULT, smooth: bool = False) -> RecReport:
    """Cost of scoring one batch of `plan.global_batch` samples on `system` (forward only:
    lookups, the id and pooled-embedding exchange, the MLPs; no optimizer state held).

    **Arguments:** as `rec_train_step`.

    **Returns:** a `RecReport` (the batch's latency as `step_time`; dp and optimizer 0).
    """
    return _rec_step(model, plan, system, False, calibration, smooth)


# ----- presets ---------------------------------------------------------------------------------
# Criteo 1TB table rows with every table capped at 40,000,000 rows (MLPerf Training DLRM v1 and
# DLRM-DCNv2; facebookresearch/dlrm torchrec_dlrm/README.MD @090956ee and mlcommons/training
# recommendation_v2/torchrec_dlrm @aa344c7f, as quoted in /work/notes/workload_sources.md 4b).
_MLPERF_ROWS = (40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956,
                405282, 10, 2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152,
                12973, 108, 36)
# MLPerf DCNv2 multi-hot sizes (same sources).
_MLPERF_HOTS = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1,
                1)
# Criteo Kaggle rows and the Criteo Terabyte rows capped at 10,000,000 (sub-sampled 0.875):
# facebookresearch/dlrm tools/visualize.py @40826566 ("1. Criteo Kaggle ...", "2. Criteo
# Terabyte (see ./bench/dlrm_s_criteo_terabyte.sh ... --max-in-range=10000000)").
_KAGGLE_ROWS = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
                3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
                142572)
_TERABYTE_ROWS = (9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352,
                  313829, 10, 2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421,
                  12420, 101, 36)
_ONE_HOT = (1,) * 26

_DLRMS: dict[str, DLRM] = {
    # MLPerf Training v3.0+ DLRM-DCNv2: D 128, dense arch 512-256-128, over arch
    # 1024-1024-512-256-1, 3 low-rank (512) cross layers (sources as _MLPERF_ROWS).
    "dlrm-dcnv2": DLRM(table_rows=_MLPERF_ROWS, lookups=_MLPERF_HOTS, embedding_dim=128,
                       bottom_mlp=(13, 512, 256, 128), top_mlp=(1024, 1024, 512, 256, 1),
                       interaction="dcn", cross_layers=3, cross_rank=512, name="dlrm-dcnv2"),
    # The TorchRec DLRM of the torchrec_dlrm README's 1-hot runs with the dot interaction
    # (same tables and MLPs; README "Preliminary Training Results").
    "dlrm-torchrec-dot": DLRM(table_rows=_MLPERF_ROWS, lookups=_ONE_HOT, embedding_dim=128,
                              bottom_mlp=(13, 512, 256, 128),
                              top_mlp=(1024, 1024, 512, 256, 1), name="dlrm-torchrec-dot"),
    "dlrm-torchrec-dcn": DLRM(table_rows=_MLPERF_ROWS, lookups=_ONE_HOT, embedding_dim=128,
                              bottom_mlp=(13, 512, 256, 128),
                              top_mlp=(1024, 1024, 512, 256, 1), interaction="dcn",
                              cross_layers=3, cross_rank=512, name="dlrm-torchrec-dcn"),
    # facebookresearch/dlrm bench/dlrm_s_criteo_kaggle.sh: D 16, bottom 13-512-256-64-16, top
    # 512-256-1 (its input, 367, is the interaction width), dot interaction.
    "dlrm-criteo-kaggle": DLRM(table_rows=_KAGGLE_ROWS, lookups=_ONE_HOT, embedding_dim=16,
                               bottom_mlp=(13, 512, 256, 64, 16), top_mlp=(512, 256, 1),
                               name="dlrm-criteo-kaggle"),
    # bench/dlrm_s_criteo_terabyte.sh: D 64, bottom 13-512-256-64, top 512-512-256-1 (input 415).
    "dlrm-criteo-terabyte": DLRM(table_rows=_TERABYTE_ROWS, lookups=_ONE_HOT, embedding_dim=64,
                                 bottom_mlp=(13, 512, 256, 64), top_mlp=(512, 512, 256, 1),
                                 name="dlrm-criteo-terabyte"),
}

DLRMS = PresetMapping("dlrm", _DLRMS)

# Published sizes the presets are checked against: the torchrec_dlrm README's 104.54 GB of fp32
# DCNv2 tables (decimal GB); the top-MLP input widths the DLRM code lists (tools/visualize.py:
# ln_top 367 Kaggle, 415 Terabyte, 479 MLPerf v1).
PUBLISHED_EMBEDDING_BYTES_FP32 = {"dlrm-dcnv2": 104.54e9}
PUBLISHED_TOP_INPUT = {"dlrm-criteo-kaggle": 367, "dlrm-criteo-terabyte": 415,
                       "dlrm-torchrec-dot": 479}

