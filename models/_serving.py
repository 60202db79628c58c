"""Serving at scale: in-flight batching at full load, latency under load, disaggregated pools.

`serve` (in `_inference.py`) prices one static batch. A production server is continuous:
requests arrive, in-flight (continuous) batching keeps as many sequences in flight as the paged
KV cache, the batch limit and the per-iteration token budget allow, and every iteration runs one
decode token of each sequence together with a chunk of the prompts waiting to be prefilled
(Orca, Yu et al. OSDI 2022; chunked prefill, Agrawal et al., Sarathi-Serve, OSDI 2024).

**One iteration** (`_iteration`) is one pass (`_inference._pass`) over two segments: D decode
tokens, each attending over its context, and P prefill tokens in chunks of q, attending over the
prompt prefix. In steady state every finished request is replaced by a new one, so per iteration
r = D / E[O - 1] requests finish (the first output token comes from the prefill) and
P = r E[I] prompt tokens enter (I, O the input and output lengths of the `ServingWorkload`).
With pipeline parallelism, pp micro-batches of D / pp sequences keep every stage busy and each
passes all stages once per iteration.

**Full load.** D is the largest decode batch that the limits allow (`ServingPlan`): the KV cache
(the memory the weights and activations leave, times `kv_memory_fraction`, in blocks of
`block_tokens`; a sequence holds its prompt, its output so far and, under TensorRT-LLM's
GUARANTEED_NO_EVICT admission, the blocks reserved for the rest of its output), `max_batch`
sequences in flight and `max_tokens` tokens per iteration (D + P). Throughput is r E[O] / T per
replica, T the iteration time.

**Latency under load** is read off the load curve: the same iteration on a grid of decode
batches D_i from 1 to the full-load batch gives the arrival rate each batch sustains,
lambda_i = r_i / T_i (Little's law: D sequences in decode for (O - 1) iterations each). Then:

- TPOT of a request is the mean iteration time over its decode, T_dec + t_p X / (O - 1): the
  decode-only step plus the prefill work X that arrives during its life (the prefill
  interference of Sarathi-Serve), t_p the iteration time per prefill token. Arrivals are
  Poisson, so X is compound Poisson with mean lambda (O - 1) T E[I] and variance
  lambda (O - 1) T E[I^2]; its quantiles use the normal approximation.
- TTFT is the wait in the admission queue, the wait for the iteration in progress (a request
  joins the batch at an iteration boundary, Orca's iteration-level scheduling: T / 2 on
  average while the replica is busy) and the prefill. The admission queue: the deployment is
  an M/G/1 queue whose server admits requests at the full-load rate lambda_sat (DistServe
  models a prefill instance as M/D/1: Zhong et al., OSDI 2024, Sec. 3), so the mean wait is the
  Pollaczek-Khinchine formula W = rho E[S] (1 + c_s^2) / (2 (1 - rho)), rho = lambda /
  lambda_sat, E[S] = 1 / lambda_sat, c_s^2 the squared coefficient of variation of the requests'
  token counts (0 for fixed lengths: M/D/1). Its quantiles take the exponential tail of the wait
  (exact for M/M/1; Kingman's heavy-traffic approximation for M/G/1): P(W > t) = rho
  exp(-rho t / W), so the q-quantile is (W / rho) ln(rho / (1 - q)) where that is positive.
  The prefill of a prompt takes ceil(I / q) iterations that carry its chunk.

Every latency is increasing in the arrival rate, finite below lambda_sat and flagged
`Reason.SATURATED` at or above it (the queue grows without bound: TTFT is infinite).
"The most tokens/s with p99 TPOT under 50 ms" inverts the monotone curve (`ServingReport.goodput`).

**Disaggregated prefill and decode** (Splitwise, Patel et al. ISCA 2024; DistServe): a pool of
prefill replicas and a pool of decode replicas, each with its own plan and system (chip), and the
prompt's KV cache sent from one to the other over the scale-up or the scale-out links
(`serve_disaggregated`). Decode iterations carry no prefill (no interference: TPOT's tail is the
decode step), prefill replicas batch prompts up to their token budget, the transfer adds to TTFT
and its links bound the rate.

**CUDA graphs** (`ServingPlan.graph_batches`): a runtime that replays captured graphs pads a
decode-only batch with dummy sequences up to the next captured size; those rows cost in every
GEMM, element-wise op and collective.

**Speculative decoding** (`serve_continuous(..., speculation=Speculation(...))`,
`dse.models._speculative`): each decode sequence is verified over its drafted tokens after the
draft's passes, all in the iteration, and emits the acceptance length tau tokens per
iteration: a request decodes in E[O - 1] / tau iterations and TPOT is the iteration over tau.

Not modelled: prefix caching, KV eviction and swapping, the host time of passes run without a
graph, and the runtime's memory beyond weights, activations, KV cache and `runtime_bytes`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dse.hardware import Reason, System
from dse.hardware import units as u
from dse.hardware._once import evaluates_once
from dse.hardware._validate import as_float_array, check_choice, check_range

from ._calibration import DEFAULT, Calibration
from ._collectives import send_recv
from ._inference import InferencePlan, InferenceReport, _memory, _optional_float, _pass
from ._operators import _f, ratio
from ._rules import check_rules, reason_of
from ._speculative import Speculation, check_draft_plan, draft_plan_of, draft_weight_bytes
from ._transformer import Transformer

# Points of the load curve (decode batches from 1 to the full-load batch, log-spaced). A
# resolution choice: the curve is interpolated in log rate between them.
GRID = 32
# Temperature of the soft minimum of the batch limits (smooth=True): min over limits x_k of
# exp(-t logsumexp(-log x_k / t)); at most a factor 3^t = 1.06 below the hard minimum.
_SOFT_MIN_T = 0.05


@jax.custom_jvp
def _running_max(x: Float[Array, "*batch n"]) -> Float[Array, "*batch n"]:
    """Running maximum along the last axis (`lax.cummax`), whose derivative copies the tangent
    of the point each maximum comes from (the latest point that set it).

    `lax.cummax`'s own derivative is an associative scan whose levels XLA fuses with
    everything upstream of the curve: `serve_continuous`'s float32 value and gradient compiled
    in 6.0 s (an optimized program of 37,831 lines) against 1.3 s (12,779 lines)
    this way, here; the serving-plan search runs as fast as with `lax.cummax`."""
    return jax.lax.cummax(x, axis=x.ndim - 1)


@_running_max.defjvp
def _running_max_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jax.lax.cummax(x, axis=x.ndim - 1)
    position = jnp.arange(x.shape[-1], dtype=jnp.int32).reshape((1,) * (x.ndim - 1) + (-1,))
    # The points that set a new maximum (or tie it) mark their own position; the running
    # maximum of the marks is, for each point, where its maximum comes from.
    source = jax.lax.cummax(jnp.where(x >= y, position, -1), axis=x.ndim - 1)
    return y, jnp.take_along_axis(dx, source, axis=-1)


KvLink = Literal["scaleup", "scaleout"]

# The CUDA-graph batch sizes of TensorRT-LLM's performance-overview runs (`llm_options.yml`:
# `cuda_graph_config: enable_padding: true, batch_sizes: [1, 2, 4, ..., 8192]`;
# NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md, v1.0).
TRTLLM_GRAPH_BATCHES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 384.0, 512.0,
                        1024.0, 2048.0, 4096.0, 8192.0)


def graph_padding(plan: ServingPlan, sequences, tokens_per_sequence=1.0
                  ) -> Float[Array, "*batch"]:
    """Dummy sequences a decode-only pass of `sequences` runs with (`plan.graph_batches`): the
    smallest captured size >= `sequences` among those at most `max_batch` and whose tokens
    (`tokens_per_sequence` each: 1, or the verified tokens of speculative decoding) fit
    `max_tokens` (TensorRT-LLM's model engine drops the larger ones), minus `sequences`; 0 above
    the largest or without graphs. A step function of `sequences`, held constant under
    differentiation."""
    sequences = _f(sequences)
    if not plan.graph_batches:
        return jnp.zeros_like(sequences)
    limit = jnp.minimum(plan.max_batch, plan.max_tokens / tokens_per_sequence)
    shape = jnp.broadcast_shapes(sequences.shape, limit.shape)
    sequences = jnp.broadcast_to(sequences, shape)
    sizes = jnp.asarray(plan.graph_batches, dtype=sequences.dtype).reshape((1,) * len(shape)
                                                                             + (-1,))
    fits = (sizes <= jnp.broadcast_to(limit, shape)[..., None]) & (sizes >= sequences[..., None])
    padded = jnp.min(jnp.where(fits, sizes, jnp.inf), axis=-1)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(padded), padded - sequences, 0.0))

# Memory a TensorRT-LLM process holds on each GPU beside the weights, the activations and the
# KV cache, as NVIDIA's AIConfigurator observes it (ai-dynamo/aiconfigurator,
# src/aiconfigurator/systems/h20_sxm.yaml and h800_sxm.yaml, `misc`; NCCL 2.27.3): the CUDA
# context, cuBLAS and other workspaces, 551 MiB ("other_mem": "increase from 551MB to 3.5GB for
# safer deployment": the 551 is the observation, the 3.5 GB a margin not used here), and
# NCCL's buffers, 342 MiB on 2 GPUs and 392 MiB on 4 or 8 ("nccl_mem"). TensorRT-LLM sizes the
# KV cache from the memory free after all of them.
RUNTIME_CONTEXT_BYTES = 551 * u.MiB
NCCL_BUFFER_BYTES_2 = 342 * u.MiB
NCCL_BUFFER_BYTES_4 = 392 * u.MiB


def runtime_memory(chips_per_replica) -> Float[Array, "*batch"]:
    """Bytes a serving runtime holds per chip beside weights, activations and KV cache (the
    `ServingPlan.runtime_bytes` default on a chip with HBM): the CUDA context and workspaces,
    plus NCCL's buffers when a replica spans 2 chips (342 MiB) or more (392 MiB).
    AIConfigurator keys the buffers on the TP size; here on the replica's chips, since pipeline
    and expert-parallel ranks hold communicators too."""
    chips = as_float_array(chips_per_replica)
    nccl = jnp.where(chips > 2.0, NCCL_BUFFER_BYTES_4,
                     jnp.where(chips > 1.0, NCCL_BUFFER_BYTES_2, 0.0))
    return RUNTIME_CONTEXT_BYTES + nccl


def _runtime_bytes(plan, chip) -> Float[Array, "*batch"]:
    """`plan.runtime_bytes`, or its default: `runtime_memory` of the replica's chips on a chip
    with HBM (the observations are GPUs'; a chip without HBM runs its runtime off chip)."""
    if plan.runtime_bytes is not None:
        return plan.runtime_bytes
    return jnp.where(chip.hbm_bytes > 0.0, runtime_memory(plan.inference.chips), 0.0)


def _mean(w, x):
    w, x = jnp.broadcast_arrays(w, x)
    return jnp.sum(w * x, axis=-1) / jnp.sum(w, axis=-1)


class ServingWorkload(eqx.Module):
    """The requests a deployment serves: input and output lengths, fixed or a distribution.

    A distribution is a set of points on the last axis with probabilities `weight` (a histogram
    of a trace, or quantiles); scalars are one fixed length, as the synthetic datasets of
    trtllm-bench (`--input-stdev=0 --output-stdev=0`). Use `jax.vmap` for many workloads.

    **Fields:**

    - `input_len`: prompt tokens of each point (>= 1).
    - `output_len`: generated tokens of each point (>= 2: the first comes from the prefill, the
      rest from decode steps).
    - `weight`: probability of each point (normalized here; default equal).
    """

    input_len: Float[Array, "*points"] = eqx.field(converter=as_float_array)
    output_len: Float[Array, "*points"] = eqx.field(converter=as_float_array)
    weight: Float[Array, "*points"] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        check_range("ServingWorkload", "input_len", self.input_len, lower=1.0,
                    lower_inclusive=True)
        check_range("ServingWorkload", "output_len", self.output_len, lower=2.0,
                    lower_inclusive=True)
        check_range("ServingWorkload", "weight", self.weight, lower=0.0, lower_inclusive=True)

    def _w(self):
        return jnp.broadcast_arrays(self.weight, self.input_len, self.output_len)

    def mean(self, x) -> Float[Array, "..."]:
        """The probability-weighted mean of `x` (an array over the points)."""
        w, i, _ = self._w()
        return _mean(jnp.atleast_1d(w), jnp.atleast_1d(jnp.broadcast_to(x, i.shape)))

    @property
    def mean_input(self) -> Float[Array, "..."]:
        """E[I], tokens."""
        return self.mean(self.input_len)

    @property
    def mean_output(self) -> Float[Array, "..."]:
        """E[O], tokens."""
        return self.mean(self.output_len)


class ServingPlan(eqx.Module):
    """How a model is served: the layout of one replica and the scheduler's limits.

    Defaults are TensorRT-LLM's (LLM API, `tensorrt_llm/llmapi/llm_args.py`): `max_batch_size`
    2048, `max_num_tokens` 8192, `KvCacheConfig.tokens_per_block` 32 and
    `free_gpu_memory_fraction` 0.9, capacity scheduler GUARANTEED_NO_EVICT (a request is
    admitted only with the blocks of its whole output reserved). vLLM's are block 16 and
    on-demand blocks (`reserve_output=0`), `max_num_seqs` 1024 and `max_num_batched_tokens` 8192
    for its API server on an H100-class device (`vllm/engine/arg_utils.py`).

    **Fields:**

    - `inference`: the `InferencePlan` of one replica (tp, pp, number formats, layout,
      fusion); its `batch` is ignored (the scheduler sets it).
    - `replicas`: independent copies of the model; the load is split evenly over them.
    - `max_batch`: sequences in flight per replica (prefilling or decoding).
    - `max_tokens`: token budget of one iteration, decode tokens plus prefill chunk: the
      chunked-prefill chunk size (Sarathi-Serve's token budget, vLLM's
      `max_num_batched_tokens`, TensorRT-LLM's `max_num_tokens`).
    - `block_tokens`: tokens per KV-cache block (paged attention, Kwon et al. SOSP 2023).
    - `kv_memory_fraction`: share of the memory left after weights, activations and the
      runtime (`runtime_bytes`) that holds KV cache.
    - `reserve_output`: share of a request's not yet generated output whose KV blocks are held
      from admission (1: GUARANTEED_NO_EVICT; 0: blocks allocated as tokens are generated).
    - `runtime_bytes`: memory per chip the serving process holds before the KV cache is sized
      (CUDA context, library workspaces, communication buffers), bytes; default (None)
      `runtime_memory` of the replica's chips on a chip with HBM (TensorRT-LLM's, as
      AIConfigurator observes it on GPUs; no other runtime's figure is in the sources used),
      0 on one without.
    - `chunked_prefill` (static): prompts are split into chunks that fit the token budget left
      by the decode tokens (True), or prefilled whole in one iteration (False: `max_tokens`
      must hold a prompt).
    - `graph_batches` (static): the batch sizes the runtime captured CUDA graphs for, ascending
      (empty: none, the default). A decode-only iteration of a micro-batch of D sequences runs
      the graph of the smallest captured size >= D that is at most `max_batch` and
      `max_tokens`, the other rows dummy sequences of one token (TensorRT-LLM's PyTorch
      backend with `cuda_graph_config.enable_padding`, `_round_up_batch_size`; vLLM pads to
      its capture sizes alike); above the largest it runs unpadded. An iteration that carries
      a prompt's chunk runs without a graph. `TRTLLM_GRAPH_BATCHES` is the list of
      TensorRT-LLM's performance-overview runs.
    """

    inference: InferencePlan = InferencePlan()
    replicas: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    max_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=2048.0)
    max_tokens: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=8192.0)
    block_tokens: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=32.0)
    kv_memory_fraction: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                           default=0.9)
    reserve_output: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    # None: the default, taken where the plan meets its chip (`_runtime_bytes`), so that it
    # follows the replica's chips however the plan is changed.
    runtime_bytes: Float[Array, "*batch"] | None = eqx.field(converter=_optional_float,
                                                              default=None)
    chunked_prefill: bool = eqx.field(static=True, default=True)
    graph_batches: tuple[float, ...] = eqx.field(static=True, default=(),
                                                 converter=lambda x: tuple(map(float, x)))

    def __check_init__(self):
        if not isinstance(self.inference, InferencePlan):
            raise ValueError(f"ServingPlan.inference must be an InferencePlan; got "
                             f"{type(self.inference).__name__}")
        for field in ("replicas", "max_batch", "max_tokens", "block_tokens"):
            check_range("ServingPlan", field, getattr(self, field), lower=1.0,
                        lower_inclusive=True)
        check_range("ServingPlan", "kv_memory_fraction", self.kv_memory_fraction, lower=0.0,
                    upper=1.0)
        check_range("ServingPlan", "reserve_output", self.reserve_output, lower=0.0,
                    upper=1.0, lower_inclusive=True)
        if self.runtime_bytes is not None:
            check_range("ServingPlan", "runtime_bytes", self.runtime_bytes, lower=0.0,
                        lower_inclusive=True)
        sizes = self.graph_batches
        if (any(not (1.0 <= b < float("inf") and b == int(b)) for b in sizes)
                or list(sizes) != sorted(set(sizes))):
            raise ValueError(f"ServingPlan.graph_batches must be whole batch sizes >= 1 in "
                             f"ascending order without repeats; got {sizes}")

    @property
    def chips_per_replica(self) -> Float[Array, "*batch"]:
        """Chips of one replica (the inference plan's)."""
        return self.inference.chips

    @property
    def chips(self) -> Float[Array, "*batch"]:
        """Chips of the deployment, replicas x chips per replica."""
        return self.replicas * self.inference.chips

    def replace(self, **changes) -> ServingPlan:
        """A copy with some fields changed (validated like a new plan)."""
        return dataclasses.replace(self, **changes)


class Slo(eqx.Module):
    """A latency objective: TTFT and TPOT at a quantile of the requests.

    **Fields:** `ttft`, `tpot` (s; inf for no limit), `quantile` (in (0, 1), default 0.99).
    """

    ttft: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=float("inf"))
    tpot: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=float("inf"))
    quantile: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.99)

    def __check_init__(self):
        for field in ("ttft", "tpot"):
            value = getattr(self, field)
            if not isinstance(value, jax.core.Tracer):
                check_range("Slo", field, jnp.where(jnp.isinf(value), 1.0, value))
        check_range("Slo", "quantile", self.quantile, lower=0.0, upper=1.0,
                    upper_inclusive=False)


class LatencyReport(eqx.Module):
    """Latency of a deployment at one arrival rate (SI units).

    - `rate`: arrival rate, requests/s; `utilization`: rate / capacity.
    - `ttft`, `tpot`: time to first token and time per output token at the quantile, s.
    - `ttft_mean`, `tpot_mean`: their means over the requests, s.
    - `batch`: decode sequences per replica at that load.
    - `fits`, `reason`: feasibility (`Reason.SATURATED` at or above capacity, with TTFT inf).
    """

    rate: Float[Array, "*batch"]
    utilization: Float[Array, "*batch"]
    ttft: Float[Array, "*batch"]
    tpot: Float[Array, "*batch"]
    ttft_mean: Float[Array, "*batch"]
    tpot_mean: Float[Array, "*batch"]
    batch: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]


class SloGoodputReport(eqx.Module):
    """The most a deployment serves within a latency objective (SI units).

    - `rate`: requests/s; `tokens_per_s`: output tokens/s of the deployment;
      `tokens_per_s_per_chip`.
    - `ttft`, `tpot`: latencies at that rate at the objective's quantile, s.
    - `fits`, `reason`: feasibility (`Reason.SLO` when no load meets the objective).
    """

    rate: Float[Array, "*batch"]
    tokens_per_s: Float[Array, "*batch"]
    tokens_per_s_per_chip: Float[Array, "*batch"]
    ttft: Float[Array, "*batch"]
    tpot: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]


_interp = jnp.vectorize(jnp.interp, signature="(),(n),(n)->()")


def _log(x):
    """log of a positive value; a safe value where it is not (double-where)."""
    ok = x > 0
    return jnp.where(ok, jnp.log(jnp.where(ok, x, 1.0)), -1e30)


class ServingReport(eqx.Module):
    """A serving deployment at full load, and its load curve (SI units).

    **Full load** (the offline max-throughput benchmark: every request queued at once):

    - `tokens_per_s`: output tokens/s of the deployment; `tokens_per_s_per_chip`;
      `requests_per_s` (the capacity, lambda_sat); `chips`.
    - `energy_per_token`: J per output token; `chip_power`: W per chip (mean over the pools).
    - `batch`: decode sequences per replica; `iteration_time`: TPOT at full load, s (with
      speculation, the iteration: TPOT times the acceptance length).
    - `kv_capacity_tokens`: KV-cache tokens one (decode) replica holds;
      `kv_tokens_per_sequence`: tokens held per sequence in flight (blocks, reservation).
    - `memory_per_chip`: weights + activations + the KV cache in use + the runtime's
      (`ServingPlan.runtime_bytes`), bytes.
    - `fits`, `reason`: feasibility (`Reason.MEMORY`: not one sequence fits).
    - `iteration`: the `InferenceReport` of one full-load iteration of a (decode) replica: the
      breakdown of where its time goes.

    **Load curve** (last axis, `GRID` points of rising load):

    - `rate`: arrival rate of the deployment, requests/s; `curve_batch`: decode sequences
      per replica.
    - `tpot_mean`, `tpot_sd`: a request's TPOT, mean and standard deviation (prefill
      interference), s.
    - `prefill_time`: TTFT without the admission queue: the wait for the iteration in
      progress, the prefill's iterations (and the KV transfer), s.
    - `queue_capacity`: requests/s at which the admission queue's server saturates;
      `queue_scv`: squared coefficient of variation of the service time.

    Methods: `latency(rate, quantile)`, `max_rate(slo)`, `goodput(slo)`.
    """

    tokens_per_s: Float[Array, "*batch"]
    tokens_per_s_per_chip: Float[Array, "*batch"]
    requests_per_s: Float[Array, "*batch"]
    chips: Float[Array, "*batch"]
    energy_per_token: Float[Array, "*batch"]
    chip_power: Float[Array, "*batch"]
    batch: Float[Array, "*batch"]
    iteration_time: Float[Array, "*batch"]
    kv_capacity_tokens: Float[Array, "*batch"]
    kv_tokens_per_sequence: Float[Array, "*batch"]
    memory_per_chip: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]
    iteration: InferenceReport
    rate: Float[Array, "*batch grid"]
    curve_batch: Float[Array, "*batch grid"]
    tpot_mean: Float[Array, "*batch grid"]
    tpot_sd: Float[Array, "*batch grid"]
    prefill_time: Float[Array, "*batch grid"]
    queue_capacity: Float[Array, "*batch"]
    queue_scv: Float[Array, "*batch"]

    @property
    def tokens_per_joule(self) -> Float[Array, "*batch"]:
        """Output tokens per joule at full load."""
        return 1.0 / self.energy_per_token

    def _queue_wait(self, rate, quantile=None, along_curve=False):
        """The admission wait at `rate`: its mean (`quantile` None) or its q-quantile; inf at or
        past capacity. `along_curve`: `rate` (and `quantile`) carry the curve's last axis."""
        capacity, scv = self.queue_capacity, self.queue_scv
        if along_curve:
            capacity, scv = capacity[..., None], scv[..., None]
        rho = rate / capacity
        ok = rho < 1.0
        r = jnp.where(ok, rho, 0.5)
        # W / rho of Pollaczek-Khinchine: E[S] (1 + c^2) / (2 (1 - rho)).
        scale = (1.0 + scv) / (2.0 * capacity * (1.0 - r))
        if quantile is None:
            wait = r * scale
        else:
            wait = scale * jnp.maximum(_log(r) - jnp.log1p(-quantile), 0.0)
        return jnp.where(ok, wait, jnp.inf)

    def latency(self, rate: ArrayLike, quantile: ArrayLike = 0.99) -> LatencyReport:
        """TTFT and TPOT at an arrival rate.

        **Arguments:**

        - `rate`: requests/s arriving at the deployment (Poisson).
        - `quantile`: of the requests' latencies (0.5 the median, 0.99 the p99).

        **Returns:** `LatencyReport`; at or past capacity `Reason.SATURATED`, TTFT inf and
        TPOT the full-load iteration's.
        """
        rate = _f(rate)
        quantile = _f(quantile)
        z = ndtri(quantile)
        x = _log(rate)
        xp = _log(self.rate)
        tpot_mean = _interp(x, xp, self.tpot_mean)
        tpot = tpot_mean + z * _interp(x, xp, self.tpot_sd)
        prefill = _interp(x, xp, self.prefill_time)
        batch = _interp(x, xp, self.curve_batch)
        saturated = rate >= self.requests_per_s
        ttft = jnp.where(saturated, jnp.inf, prefill + self._queue_wait(rate, quantile))
        ttft_mean = jnp.where(saturated, jnp.inf, prefill + self._queue_wait(rate))
        reason = self.reason | jnp.where(saturated, int(Reason.SATURATED), 0).astype(jnp.int32)
        return LatencyReport(rate=rate, utilization=rate / self.requests_per_s, ttft=ttft,
                             tpot=tpot, ttft_mean=ttft_mean, tpot_mean=tpot_mean, batch=batch,
                             fits=reason == 0, reason=reason)

    def max_rate(self, slo: Slo) -> Float[Array, "*batch"]:
        """The highest arrival rate at which both latencies meet `slo`, requests/s (0 if none).

        Each latency rises with the rate along the curve, so the limit is where its curve
        crosses the objective (interpolated in log rate), capped just below capacity.
        """
        batch_shape = jnp.broadcast_shapes(self.rate.shape[:-1], slo.quantile.shape)
        quantile = jnp.broadcast_to(slo.quantile, batch_shape)[..., None]
        z = ndtri(quantile)
        xp = _log(self.rate)
        tpot = _running_max(self.tpot_mean + z * self.tpot_sd)
        # TTFT along the curve, the saturated last point left out (its wait is infinite).
        rate_in = self.rate[..., :-1]
        ttft = self.prefill_time[..., :-1] + self._queue_wait(rate_in, quantile, True)
        ttft = _running_max(ttft)
        x_tpot = _interp(jnp.minimum(slo.tpot, 1e30), tpot, xp)
        # No TTFT limit: up to capacity (the last point, whose wait is infinite).
        x_ttft = jnp.where(jnp.isinf(slo.ttft), xp[..., -1],
                           _interp(jnp.minimum(slo.ttft, 1e30), ttft, xp[..., :-1]))
        rate = jnp.exp(jnp.minimum(x_tpot, x_ttft))
        met = (slo.tpot >= tpot[..., 0]) & (slo.ttft >= ttft[..., 0])
        return jnp.where(met, jnp.minimum(rate, self.requests_per_s), 0.0)

    def goodput(self, slo: Slo) -> SloGoodputReport:
        """The most output tokens/s the deployment serves within `slo` (a differentiable
        function of the hardware: "the most tokens/s with p99 TPOT under 50 ms").

        **Returns:** `SloGoodputReport` (`Reason.SLO` when even the lightest load misses it).
        """
        rate = self.max_rate(slo)
        at = self.latency(jnp.maximum(rate, 1e-30), slo.quantile)
        missed = rate <= 0.0
        reason = self.reason | jnp.where(missed, int(Reason.SLO), 0).astype(jnp.int32)
        tokens = rate * self.tokens_per_s / self.requests_per_s
        return SloGoodputReport(rate=rate, tokens_per_s=tokens,
                             tokens_per_s_per_chip=tokens / self.chips,
                             ttft=jnp.where(missed, jnp.inf, at.ttft), tpot=at.tpot,
                             fits=reason == 0, reason=reason)


def _soft_min(values, smooth: bool):
    """The minimum of positive limits, or their soft minimum on logs (smooth=True)."""
    stacked = jnp.stack(jnp.broadcast_arrays(*values))
    if not smooth:
        return jnp.min(stacked, axis=0)
    logs = _log(jnp.maximum(stacked, 1e-30))
    return jnp.exp(-_SOFT_MIN_T * jax.nn.logsumexp(-logs / _SOFT_MIN_T, axis=0))


class _Shape(eqx.Module):
    """The workload's moments that the iteration and the queue read (tokens)."""

    input: Float[Array, "..."]          # E[I]
    output: Float[Array, "..."]         # E[O]
    decode_steps: Float[Array, "..."]   # E[O - 1]
    prompt: Float[Array, "..."]         # E[I^2] / E[I]: the token-weighted prompt length
    input_sq: Float[Array, "..."]       # E[I^2]
    decode_context: Float[Array, "..."]  # mean context of a decode step
    scv: Float[Array, "..."]            # squared coefficient of variation of I + O


def _shape(workload: ServingWorkload) -> _Shape:
    i, o = workload.input_len, workload.output_len
    mean = workload.mean
    steps = mean(o - 1.0)
    total = mean(i + o)
    # A decode step of a request at step j attends over I + j tokens; requests weigh by their
    # O - 1 steps.
    context = mean((o - 1.0) * (i + 0.5 * o)) / steps
    return _Shape(input=mean(i), output=mean(o), decode_steps=steps,
                  prompt=mean(i * i) / mean(i), input_sq=mean(i * i), decode_context=context,
                  scv=mean((i + o) ** 2) / total ** 2 - 1.0)


def _kv_per_sequence(workload: ServingWorkload, plan: ServingPlan):
    """Time-mean KV tokens a sequence in flight holds, its blocks' rounding included.

    A request at decode step j holds I + max(j, r O) tokens (r the reserved share of its
    output); over j uniform in [0, O] that is I + O (1 + r^2) / 2, weighed by its O - 1 steps.
    The last block is half empty on average: (block - 1) / 2 tokens.
    """
    i, o = workload.input_len, workload.output_len
    r = plan.reserve_output
    held = workload.mean((o - 1.0) * (i + 0.5 * o * (1.0 + r * r))) / workload.mean(o - 1.0)
    return held + 0.5 * (plan.block_tokens - 1.0)


def _kv_bytes_per_token(model: Transformer, plan: InferencePlan):
    """KV-cache bytes of one token on one chip, and the sequences' sharing factor.

    Each chip holds layers / pp layers and max(kv_heads / tp, 1) KV heads; with fewer KV heads
    than chips, `sharers` chips split the sequences of a head (`_inference._kv_sharding`). With
    expert parallelism each of the ep groups holds 1 / ep of the sequences, so a replica's
    token costs 1 / ep of that per chip on average.
    """
    kv_heads = jnp.maximum(model.kv_heads / plan.tp, 1.0)
    sharers = jnp.maximum(plan.tp / model.kv_heads, 1.0)
    per_token = 2.0 * model.layers / plan.pp * kv_heads * model.head_dim * plan.kv_bytes
    return per_token / (sharers * plan.ep)


def _iteration(model, plan: ServingPlan, system, shape: _Shape, decode, prefill_seqs, chunk,
               finishing, memory, smooth, calibration, speculation=None) -> InferenceReport:
    """One pass of a micro-batch of a replica: `decode` decode sequences of the replica (each
    of its pp micro-batches holds 1 / pp of them) and `prefill_seqs` prompt chunks of `chunk`
    tokens in this micro-batch; `finishing` prompts of the replica end their prefill (and get
    logits). Its time is the iteration time (every micro-batch passes every stage once).

    With CUDA graphs (`ServingPlan.graph_batches`) the passes that carry no prompt chunk, a
    1 - min(prefill_seqs, 1) share of them (a chunk fills the token budget), run padded with
    dummy sequences of one token that cost in every GEMM, element-wise op and collective.

    With `speculation` (a `Speculation`) each decode sequence is verified over its
    `verify_tokens` (the drafts and the root; logits for each) after the draft's `draft_passes`
    passes of `draft_width` tokens, which add to the iteration (on the replica's tensor-parallel
    chips, unpipelined: `draft_plan_of`); a graph's dummy sequences carry as many tokens, in the
    draft's passes too.
    """
    inf = plan.inference
    pp = inf.pp
    q = jnp.maximum(chunk, 1.0)
    verify = 1.0
    if speculation is not None:
        _, passes, width, verify = speculation.effective()
    # Chunks of q tokens of a prompt of length L end on average at (L + q) / 2 tokens; the
    # verified tokens of a sequence sit after its context.
    segments = ((decode / pp, verify, shape.decode_context + verify - 1.0),
                (prefill_seqs, q, 0.5 * (shape.prompt + q)))
    logit_rows = (decode * verify + finishing) / pp
    dummies = 0.0
    if plan.graph_batches:
        dummies = (graph_padding(plan, decode / pp, verify)
                   * (1.0 - jnp.minimum(prefill_seqs, 1.0)))
        segments = segments + ((dummies, verify, verify),)
        logit_rows = logit_rows + dummies * verify
    report = _pass(model, inf, system, segments, logit_rows, memory, smooth, calibration,
                   in_flight=pp)
    if speculation is None:
        return report
    # Pass k of a step attends about k tokens past the context, (passes + 1) / 2 on average;
    # the draft's layers all sit on one stage, each micro-batch passing it in turn.
    sequences = decode / pp + dummies
    draft = _pass(speculation.draft, draft_plan_of(inf), system,
                  ((sequences, width, shape.decode_context + 0.5 * (passes + 1.0)),),
                  sequences * width, memory, smooth, calibration)
    return _with_draft(report, draft, passes)


def _with_draft(report: InferenceReport, draft: InferenceReport, passes) -> InferenceReport:
    """`report` with `passes` draft passes added to its times, FLOP, traffic and energy (the
    breakdown still sums to the time; the MFU is the combined work's)."""
    fields = ("time", "matmul_time", "attention_time", "elementwise_time", "tp_comm_time",
              "pp_comm_time", "flops", "hbm_bytes", "energy")
    added = [getattr(report, f) + passes * getattr(draft, f) for f in fields]
    # MFU is FLOP over time x chips x peak: scale it by the new FLOP and the new time.
    mfu = report.mfu * ratio(added[6], report.flops) * ratio(report.time, added[0])
    return eqx.tree_at(lambda r: [getattr(r, f) for f in fields] + [r.mfu], report,
                       added + [mfu])


def _replica_limits(model, plan: ServingPlan, system, workload, shape, speculation=None):
    """Memory of a replica and the limits of its decode batch: (memory tuple, kv capacity in
    tokens, KV tokens per sequence, [batch limits], free bytes). A draft model
    (`speculation`) holds its weights and its KV cache beside the target's, and each decode
    sequence takes its verified tokens out of the token budget."""
    inf = plan.inference
    chip = system.chip
    kv_token = _kv_bytes_per_token(model, inf)
    # Weights and the activations of a full token budget, per chip (no KV cache: context 0).
    # Memory is HBM plus SRAM, as for `prefill` (a chip without HBM holds everything on chip).
    plan_full = dataclasses.replace(inf, batch=plan.max_tokens)
    weights, _, acts, _, _, _ = _memory(model, plan_full, system, 1.0, 0.0)
    verify = 1.0
    if speculation is not None:
        verify = speculation.effective()[3]
        draft_plan = draft_plan_of(inf)
        kv_token = kv_token + _kv_bytes_per_token(speculation.draft, draft_plan)
        weights = weights + draft_weight_bytes(speculation, model, draft_plan)
    free = chip.hbm_bytes + chip.sram_bytes - weights - acts - _runtime_bytes(plan, chip)
    capacity = plan.kv_memory_fraction * jnp.maximum(free, 0.0) / kv_token
    per_seq = _kv_per_sequence(workload, plan)
    # Sequences in flight per decode sequence: the decoding ones and the prompts prefilling.
    in_flight = 1.0 + 1.0 / shape.decode_steps
    limits = (capacity / (per_seq * in_flight), plan.max_batch / in_flight,
              plan.max_tokens / (verify + shape.input / shape.decode_steps))
    return weights, acts, kv_token, capacity, per_seq, limits, free


def _speculative_view(speculation, inf: InferencePlan, system, shape: _Shape):
    """What decoding with `speculation` (or None) changes for a replica of layout `inf`:
    (shape with E[O - 1] / tau decode iterations per request, tau, verified tokens per sequence,
    `Reason` flags: a field out of range or a draft that does not fit the layout). By hand, a
    field out of range is a `ValueError` naming it; traced, the values are held in range
    (`Speculation.effective`) and flagged."""
    if speculation is None:
        return shape, 1.0, 1.0, 0
    rules = speculation.rules()
    check_rules(rules)
    reason = reason_of(rules) | check_draft_plan(speculation, draft_plan_of(inf), system)
    accepted, _, _, verify = speculation.effective()
    shape = eqx.tree_at(lambda s: s.decode_steps, shape, shape.decode_steps / accepted)
    return shape, accepted, verify, reason


def _grid(batch_max):
    """GRID decode batches from 1 to `batch_max`, log-spaced (`batch_max` >= 1), on axis 0."""
    log_max = jnp.log(batch_max)
    t = jnp.linspace(0.0, 1.0, GRID).reshape((GRID,) + (1,) * log_max.ndim)
    return jnp.exp(t * log_max[None])


def _last(x):
    return jnp.moveaxis(x, 0, -1)


@evaluates_once
def serve_continuous(model: Transformer, plan: ServingPlan, system: System,
                     workload: ServingWorkload, *, calibration: Calibration = DEFAULT,
                     smooth: bool = False, speculation: Speculation | None = None
                     ) -> ServingReport:
    """A deployment that serves requests with in-flight batching: full load and load curve.

    **Arguments:**

    - `model`: the `Transformer` (dense or MoE; MHA, GQA or MQA).
    - `plan`: the `ServingPlan` (replica layout, replicas, scheduler limits).
    - `system`: the `System` whose chips serve (its chip, scale-up and scale-out tiers).
    - `workload`: the `ServingWorkload` (input and output lengths).
    - `calibration`: the models' fitted factors (as `prefill`).
    - `smooth`: smooth rooflines and a soft minimum of the batch limits (gradient search).
    - `speculation`: a `Speculation` to decode speculatively (None: one token per iteration).
      A decode sequence then emits `acceptance_length` tokens per iteration, whose time
      includes the draft passes and the verification of its drafted tokens (`_iteration`);
      TPOT is the iteration over the tokens it emits, and the draft's weights and KV cache
      share the memory.

    **Returns:** `ServingReport` (call `.latency(rate)` or `.goodput(slo)` on it).
    """
    inf = plan.inference
    shape = _shape(workload)
    shape, accepted, verify, spec_reason = _speculative_view(speculation, inf, system, shape)
    weights, acts, kv_token, capacity, per_seq, limits, free = _replica_limits(
        model, plan, system, workload, shape, speculation)
    runtime = _runtime_bytes(plan, system.chip)
    batch_max = _soft_min(limits, smooth)
    fits = (batch_max >= 1.0) & (free > 0.0)
    if not plan.chunked_prefill:
        # A whole prompt must fit in one iteration's budget.
        fits = fits & (plan.max_tokens >= shape.prompt)
    safe_max = jnp.where(fits, batch_max, 1.0)
    grid = _grid(safe_max)

    pp = inf.pp

    def point(decode, kind):
        """kind 0: the steady-state iteration (its share of every prompt); 1: decode only;
        2: decode with one prompt's chunk (an iteration that carries a given prompt)."""
        budget = plan.max_tokens - decode * verify
        chunk = (jnp.minimum(shape.prompt, jnp.maximum(budget, 1.0)) if plan.chunked_prefill
                 else shape.prompt)
        r = decode / shape.decode_steps
        tokens = r * shape.input
        prefill_seqs = jnp.where(kind == 0, tokens / (pp * chunk), jnp.where(kind == 2, 1.0, 0.0))
        finishing = jnp.where(kind == 0, r, jnp.where(kind == 2, 1.0, 0.0))
        kv = decode * (1.0 + 1.0 / shape.decode_steps) * per_seq * kv_token
        memory = (weights, kv, acts, weights + kv + acts + runtime, fits,
                  jnp.where(fits, 0, int(Reason.MEMORY)).astype(jnp.int32))
        report = _iteration(model, plan, system, shape, decode, prefill_seqs, chunk, finishing,
                            memory, smooth, calibration, speculation)
        return report, tokens, chunk

    # The grid three times in one vmap (one compile): steady state, decode only, one chunk.
    kinds = jnp.repeat(jnp.arange(3.0), GRID).reshape((3 * GRID,) + (1,) * (grid.ndim - 1))
    everything, tokens, chunk = jax.vmap(point)(
        jnp.concatenate([grid, grid, grid]), jnp.broadcast_to(kinds, (3 * GRID,) + grid.shape[1:]))
    mixed = jax.tree.map(lambda x: x[:GRID], everything)
    t_mix = _last(mixed.time)
    t_dec = _last(everything.time[GRID:2 * GRID])
    t_chunk = _last(everything.time[2 * GRID:])
    tokens, chunk, batches = _last(tokens[:GRID]), _last(chunk[:GRID]), _last(grid)
    batch_shape = t_mix.shape[:-1]

    def col(x):
        """A per-deployment value as a column against the curve's last axis."""
        return jnp.broadcast_to(x, batch_shape)[..., None]

    r = batches / col(shape.decode_steps)
    replica_rate = _running_max(r / t_mix)
    # Iteration time per prefill token, from an iteration that carries one chunk; a request's
    # micro-batch sees 1 / pp of the replica's arrivals.
    per_prefill_token = jnp.maximum(t_chunk - t_dec, 0.0) / chunk
    interference_sd = per_prefill_token * jnp.sqrt(replica_rate / col(pp) * t_mix
                                     * col(shape.input_sq) / col(shape.decode_steps))
    # The iterations that carry a prompt's chunks: ceil(L / q), each with its chunk.
    carrying = jnp.maximum(1.0, col(shape.prompt) / chunk)
    # A request joins the batch at the next iteration boundary (iteration-level scheduling:
    # Orca, Yu et al. OSDI 2022; TensorRT-LLM's executor fetches new requests
    # between iterations), so it first waits out the iteration in progress: its mean residual
    # T / 2 (renewal theory, an iteration of fixed length T), when the replica is busy. The
    # sequences in flight are Poisson (M/G/inf occupancy) with mean D, so it is busy with
    # probability 1 - exp(-D).
    busy = -jnp.expm1(-batches)
    prefill_time = _running_max(carrying * t_chunk + 0.5 * busy * t_mix)

    full = jax.tree.map(lambda x: x[-1], mixed)
    capacity_rate = replica_rate[..., -1] * plan.replicas
    tokens_per_s = capacity_rate * shape.output
    chips = plan.chips
    chip_power = full.energy / (full.time * inf.chips)
    # A traced speculation out of range is flagged (and costed at the nearest valid values).
    reason = jnp.where(fits, 0, int(Reason.MEMORY)).astype(jnp.int32) | spec_reason

    def b(x):
        """Every per-deployment figure with the deployments' shape."""
        return jnp.broadcast_to(x, batch_shape)

    # An infeasible plan keeps the finite figures of a one-sequence batch, flagged.
    return ServingReport(
        tokens_per_s=b(tokens_per_s), tokens_per_s_per_chip=b(tokens_per_s / chips),
        requests_per_s=b(capacity_rate), chips=b(chips),
        energy_per_token=b(full.energy / (r[..., -1] * shape.output)),
        chip_power=b(chip_power), batch=b(safe_max), iteration_time=b(full.time),
        kv_capacity_tokens=b(capacity), kv_tokens_per_sequence=b(per_seq),
        memory_per_chip=b(full.memory_per_chip), fits=b(reason == 0), reason=b(reason),
        iteration=full,
        rate=replica_rate * col(plan.replicas), curve_batch=batches,
        tpot_mean=t_mix / col(accepted), tpot_sd=interference_sd / col(accepted),
        prefill_time=prefill_time, queue_capacity=b(capacity_rate),
        queue_scv=b(jnp.maximum(shape.scv, 0.0)))


class PoolReport(eqx.Module):
    """The pools of a disaggregated deployment (SI units).

    - `prefill_rate`, `decode_rate`, `transfer_rate`: requests/s each stage sustains (the
      prefill pool, the decode pool at its largest batch, the KV transfers over their links).
    - `prefill_time`: one prompt's prefill on a prefill replica, s; `transfer_time`: its KV cache
      from a prefill replica to a decode replica, s.
    - `prefill_chips`, `decode_chips`: chips of each pool.
    - `bottleneck`: 0 prefill, 1 decode, 2 transfer (the stage that sets the capacity).
    """

    prefill_rate: Float[Array, "*batch"]
    decode_rate: Float[Array, "*batch"]
    transfer_rate: Float[Array, "*batch"]
    prefill_time: Float[Array, "*batch"]
    transfer_time: Float[Array, "*batch"]
    prefill_chips: Float[Array, "*batch"]
    decode_chips: Float[Array, "*batch"]
    bottleneck: Int[Array, "*batch"]


@evaluates_once
def serve_disaggregated(model: Transformer, prefill_plan: ServingPlan, prefill_system: System,
                        decode_plan: ServingPlan, decode_system: System,
                        workload: ServingWorkload, *, kv_link: str = "scaleup",
                        calibration: Calibration = DEFAULT, smooth: bool = False,
                        speculation: Speculation | None = None
                        ) -> tuple[ServingReport, PoolReport]:
    """Disaggregated prefill and decode (Splitwise, Patel et al. ISCA 2024; DistServe, Zhong et
    al. OSDI 2024): two pools, each with its plan (replicas, layout, limits) and chip, and each
    prompt's KV cache sent from a prefill replica to a decode replica.

    - The **prefill pool** runs iterations of `max_tokens` prompt tokens (in chunks of up to
      `max_tokens`; a longer prompt takes ceil(I / max_tokens) iterations) and no decode: it
      serves replicas x max_tokens / (T_prefill E[I]) requests/s.
    - The **decode pool** runs decode-only iterations (no prefill interference: a request's TPOT
      is the decode step at the pool's batch, its tail equal to its mean); its batch is bounded
      as in `serve_continuous` (KV cache with the prompt, batch limit) and its load curve gives
      TPOT by arrival rate.
    - The **transfer** of a request's KV cache (I tokens, every layer and KV head, at the decode
      plan's KV bytes) goes from the prefill replica's chips, each sending its share, over the
      scale-up links (`kv_link="scaleup"`: pools in one NVLink domain) or the scale-out network
      (`"scaleout"`), as `send_recv` prices it on the prefill system; transfers overlap compute
      (DistServe, Sec. 4.3), so they bound the rate and add to TTFT.

    The capacity is the slowest stage's rate; TTFT is the admission wait (M/G/1 at that
    capacity, as `serve_continuous`), the prefill and the transfer.

    With `speculation` the decode pool decodes speculatively, as in `serve_continuous` (the
    draft's own KV cache of the prompt is rebuilt on the decode pool, not sent: a one-layer
    draft's share, not modelled).

    **Returns:** `(ServingReport, PoolReport)`: the deployment (its `latency` and `goodput`
    work as for `serve_continuous`; `chips` counts both pools) and its pools.
    """
    check_choice("serve_disaggregated", "kv_link", kv_link, get_args(KvLink))
    shape = _shape(workload)
    # The decode pool's view: with speculation a request decodes in E[O - 1] / tau iterations
    # of `verify_tokens` tokens each.
    d_shape, accepted, verify, spec_reason = _speculative_view(
        speculation, decode_plan.inference, decode_system, shape)

    # Prefill pool: an iteration of max_tokens prompt tokens, no decode.
    p_inf = prefill_plan.inference
    p_weights, p_acts, _, _, _, _, p_free = _replica_limits(model, prefill_plan, prefill_system,
                                                            workload, shape)
    p_fits = p_free > 0.0
    q = jnp.minimum(shape.prompt, prefill_plan.max_tokens)
    per_iteration = jnp.maximum(prefill_plan.max_tokens, q)
    p_memory = (p_weights, 0.0 * p_weights, p_acts,
                p_weights + p_acts + _runtime_bytes(prefill_plan, prefill_system.chip), p_fits,
                jnp.where(p_fits, 0, int(Reason.MEMORY)).astype(jnp.int32))
    p_iter = _pass(model, p_inf, prefill_system,
                   ((per_iteration / (p_inf.pp * q), q, 0.5 * (shape.prompt + q)),),
                   per_iteration / shape.prompt / p_inf.pp, p_memory, smooth, calibration,
                   in_flight=p_inf.pp)
    prefill_rate = prefill_plan.replicas * per_iteration / (p_iter.time * shape.input)
    # A prompt passes ceil(I / q) iterations (each carrying its chunk among others').
    prefill_time = jnp.maximum(1.0, shape.prompt / q) * p_iter.time

    # Transfer: a request's KV cache, every layer and KV head, shared by the prefill chips.
    kv_request = 2.0 * model.layers * model.kv_heads * model.head_dim \
        * decode_plan.inference.kv_bytes * shape.input
    stride = 1.0 if kv_link == "scaleup" else prefill_system.scaleup_size
    transfer = send_recv(prefill_system, kv_request / p_inf.chips, 2.0, stride=stride,
                         calibration=calibration)
    transfer_time = transfer.time
    transfer_rate = prefill_plan.replicas / jnp.maximum(transfer_time, 1e-30)

    # Decode pool: decode-only iterations over a grid of batches, as serve_continuous.
    d_weights, d_acts, kv_token, capacity, per_seq, limits, d_free = _replica_limits(
        model, decode_plan, decode_system, workload, d_shape, speculation)
    d_runtime = _runtime_bytes(decode_plan, decode_system.chip)
    # No prompts prefill here: the in-flight sequences are the decoding ones; no token budget
    # for prompts.
    limits = (capacity / per_seq, decode_plan.max_batch,
              decode_plan.max_tokens / verify + 0.0 * capacity)
    batch_max = _soft_min(limits, smooth)
    d_fits = (batch_max >= 1.0) & (d_free > 0.0)
    safe_max = jnp.where(d_fits, batch_max, 1.0)
    grid = _grid(safe_max)

    def point(decode):
        kv = decode * per_seq * kv_token
        memory = (d_weights, kv, d_acts, d_weights + kv + d_acts + d_runtime, d_fits,
                  jnp.where(d_fits, 0, int(Reason.MEMORY)).astype(jnp.int32))
        return _iteration(model, decode_plan, decode_system, d_shape, decode, 0.0 * decode,
                          shape.prompt, 0.0 * decode, memory, smooth, calibration, speculation)

    curve = jax.vmap(point)(grid)
    t_dec = _last(curve.time)
    batches = _last(grid)
    batch_shape = jnp.broadcast_shapes(t_dec.shape[:-1], prefill_rate.shape,
                                       transfer_rate.shape)

    def b(x):
        return jnp.broadcast_to(x, batch_shape)

    def col(x):
        return b(x)[..., None]

    t_dec = jnp.broadcast_to(t_dec, batch_shape + t_dec.shape[-1:])
    batches = jnp.broadcast_to(batches, t_dec.shape)
    decode_curve = _running_max(col(decode_plan.replicas) * batches
                                / (col(d_shape.decode_steps) * t_dec))
    decode_rate = decode_curve[..., -1]
    rates = jnp.stack([b(prefill_rate), b(decode_rate), b(transfer_rate)])
    capacity_rate = jnp.min(rates, axis=0)
    if smooth:
        capacity_rate = _soft_min(list(rates), True)
    bottleneck = jnp.argmin(rates, axis=0).astype(jnp.int32)
    # The load curve up to the capacity (the decode pool's batches that it needs).
    rate_curve = jnp.minimum(decode_curve, col(capacity_rate))
    reason = b(jnp.where(p_fits & d_fits, 0, int(Reason.MEMORY)).astype(jnp.int32)
               | spec_reason)
    fits = reason == 0
    full = jax.tree.map(lambda x: x[-1], curve)
    chips = prefill_plan.chips + decode_plan.chips
    output = shape.output
    # Energy per output token: each pool's pass energy per request served, per output token.
    energy = (p_iter.energy * shape.input / per_iteration
              + full.energy * d_shape.decode_steps / batches[..., -1]) / output
    power = (p_iter.energy / p_iter.time * prefill_plan.replicas
             + full.energy / full.time * decode_plan.replicas) / chips
    report = ServingReport(
        tokens_per_s=b(capacity_rate * output), tokens_per_s_per_chip=b(capacity_rate * output
                                                                        / chips),
        requests_per_s=b(capacity_rate), chips=b(chips), energy_per_token=b(energy),
        chip_power=b(power), batch=b(safe_max), iteration_time=b(full.time),
        kv_capacity_tokens=b(capacity), kv_tokens_per_sequence=b(per_seq),
        memory_per_chip=b(full.memory_per_chip), fits=fits, reason=reason, iteration=full,
        rate=rate_curve, curve_batch=batches, tpot_mean=t_dec / accepted,
        tpot_sd=jnp.zeros_like(t_dec),
        prefill_time=jnp.broadcast_to(col(prefill_time + transfer_time), t_dec.shape),
        queue_capacity=b(capacity_rate), queue_scv=b(jnp.maximum(shape.scv, 0.0)))
    pools = PoolReport(prefill_rate=b(prefill_rate), decode_rate=b(decode_rate),
                       transfer_rate=b(transfer_rate), prefill_time=b(prefill_time),
                       transfer_time=b(transfer_time), prefill_chips=b(prefill_plan.chips),
                       decode_chips=b(decode_plan.chips), bottleneck=bottleneck)
    return report, pools
