"""`Calibration`: every fitted or calibratable factor the workload models read, in one Module.

The physics (operators, collectives, training, inference) is written in terms of a few
dimensionless factors that no datasheet states: how much of peak a large GEMM sustains, the
start-up time of a kernel, the fraction of link bandwidth a collective reaches, and so on. They
live here, together, so that every entry point takes one `calibration=` argument, `dse.calibration`
fits any subset of them (an equinox filter picks the fields), and a saved calibration says which
fields it set. `DEFAULT` records where each default value came from (`Calibration.provenance`).

Leaves are JAX arrays. A number given as a Python scalar becomes a weakly typed scalar array, so it
takes the dtype of the computation it enters (float32 chips stay float32, float64 ones stay
float64), as the Python constants it replaces did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dse.hardware import FABRICS
from dse.hardware._validate import check_range

Scalar = Float[Array, ""]

# Allowed range of every scalar field: (lower, upper, lower_inclusive). Fractions of a peak are
# in (0, 1]; start-up times are non-negative and below 10 ms (a kernel launch is ~5-10 us; a
# fused runtime hides it, 0); latency factors are non-negative and at most 1000x the stated
# latency. These are the physically meaningful domains, not fitted values.
_FRACTION = (0.0, 1.0, False)
# A rate relative to the chip's measured best GEMM (`Chip.matmul_fraction`) may exceed 1 a little
# (that measurement searched a non-exhaustive set of shapes), never by more than 1 / fraction.
_RELATIVE = (0.0, 1.5, False)
CALIBRATION_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "matrix_max": _RELATIVE,
    "matrix_overhead_s": (0.0, 1e-2, True),
    "memory_max": _FRACTION,
    "memory_overhead_s": (0.0, 1e-2, True),
    "attention_scale": _RELATIVE,
    "attention_backward_scale": _RELATIVE,
    # Non-matrix work per attention score in head-dim units, and exposed I/O per block in units
    # of the block's own HBM traffic: non-negative, bounded far above any fitted value.
    "attention_softmax_dim": (0.0, 1e3, True),
    "attention_forward_io": (0.0, 1e2, True),
    "attention_backward_io": (0.0, 1e2, True),
    "attention_previous_scale": _FRACTION,
    "kernel_fraction": _FRACTION,
    "link_efficiency": _FRACTION,
    "scaleout_efficiency": _FRACTION,
    "latency_scale": (0.0, 1e3, True),
    "collective_latency": (0.0, 1e-3, True),
    "pipeline_overhead_bytes": (0.0, 1e12, True),
    "dp_overlap_fraction": (0.0, 1.0, True),
    "overlap_slowdown": (0.0, 1.0, True),
    "framework_scale": (0.0, 1.5, False),
}

# Training frameworks with their own sustained-speed factor (`Calibration.framework_scale`):
# Megatron-LM of 2020-22 (its fused kernels, its schedule), Megatron-Core / NeMo (2024-),
# DeepSpeed (ZeRO, its pipeline engine), MosaicML Composer (PyTorch FSDP), plain PyTorch
# (DDP, FSDP2 / torchtitan).
FRAMEWORKS: tuple[str, ...] = ("megatron-lm", "megatron-core", "deepspeed", "composer",
                               "pytorch")


def _param(x):
    """A calibration leaf: JAX arrays and tracers as they are; a Python or numpy scalar as a
    weakly typed scalar array; other arrays in the default float dtype."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"expected a number, got the boolean {x!r}")
    if np.ndim(x) == 0:
        return jnp.asarray(float(x))
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _per_key(names: tuple[str, ...], what: str):
    """A converter to a table over `names`: a mapping with every name, or one value for all."""
    def convert(x):
        if isinstance(x, Mapping):
            keys = set(x)
            if keys != set(names):
                raise ValueError(f"a per-{what} calibration needs exactly the {what}s "
                                 f"{list(names)}; got {sorted(keys)}")
            return {k: _param(x[k]) for k in names}
        return {k: _param(x) for k in names}
    return convert


_per_fabric = _per_key(FABRICS, "fabric")
_per_framework = _per_key(FRAMEWORKS, "framework")


class Calibration(eqx.Module):
    """The fitted and calibratable factors of the workload models (dimensionless unless stated).

    An op with ideal time s (FLOP / peak FLOP/s, or bytes / HBM bandwidth) takes
    (s + overhead) / max_fraction: smooth and increasing in op size.

    **Fields:**

    - `matrix_max`: sustained fraction, on the large GEMMs of a workload, of the chip's
      measured best-GEMM rate (`Chip.matmul_fraction` x peak; the chip says how much of its
      peak its clock and pipeline sustain, this factor how close a framework's GEMMs get).
    - `matrix_overhead_s`: start-up time of a matrix op, s.
    - `memory_max`: sustained fraction of peak HBM bandwidth on large transfers.
    - `memory_overhead_s`: start-up time of a memory-bound op, s.
    - `attention_scale`: matrix rate of a fused (FlashAttention-style) attention forward kernel
      of the chip's generation (FlashAttention-2 on A100, -3 on H100, -4 on B200) relative to
      the chip's best-GEMM rate, before the softmax and I/O terms below.
    - `attention_backward_scale`: the backward kernel's matrix rate relative to the forward's.
    - `attention_softmax_dim`: non-matrix work per attention score (exp, max, rescale), in
      units of head dimension: the matrix products cost 4 d FLOP per score, so the kernel takes
      (1 + attention_softmax_dim / d) times its matrix time (why d = 64 runs slower than 128).
    - `attention_forward_io`, `attention_backward_io`: HBM time of each query block's Q read and
      O write (forward) and each key block's K, V read and dK, dV write (backward) left exposed
      next to the block's matrix products, in units of that traffic's time at the HBM
      bandwidth (why short sequences run slower, more so on chips with more FLOP per byte).
    - `attention_previous_scale`: rate of a fused attention kernel one generation older than
      the chip (FlashAttention v1, its Triton port or xformers on A100; FlashAttention-2 on
      H100) relative to the chip-generation kernel; `with_previous_generation_attention`
      applies it.
    - `kernel_fraction`: sustained fraction of the isolated-operator speed that on-chip work
      reaches inside an end-to-end training step (kernel gaps, framework overhead, the clock a
      chip holds under training power). Applies to `train_step`; inference runtimes are modelled
      by the `fused` switch of their plan instead.
    - `link_efficiency`: per scale-up fabric (`dse.hardware.FABRICS`; a factor fitted on
      NVSwitch says nothing about TPU ICI: held out, Pope et al. went 24.4% -> 12.6% with its own
      pair in the calibration benchmark), fraction of the links' bandwidth a
      collective sustains (NCCL bus bandwidth / link bandwidth).
    - `scaleout_efficiency`: fraction of a scale-out NIC's line rate a collective sustains
      (NCCL over InfiniBand / RoCE), in the two-tier model and on a `dse.hardware.Network`.
    - `latency_scale`: per scale-up fabric, factor on the system's stated per-step scale-up
      latency (the alpha of the alpha-beta collective model).
    - `collective_latency`: per scale-up fabric, fixed start-up of one collective, s (the
      library's kernel launch and protocol set-up, paid once whatever the group or message:
      NCCL's 5-10 us on one H100 / A100 node), on top of the per-step latency.
    - `pipeline_overhead_bytes`: per scale-up fabric, B: the cost a pipelined collective pays
      per chunk it cuts its message into, as the bytes its links would carry meanwhile. n bytes
      at bandwidth w, cut into the best number of chunks (each chunk's fill against the
      per-chunk cost), take (n + 2 sqrt(pipeline_overhead_bytes n)) / w (the optimal
      segmentation of a pipelined transfer, Johnsson & Ho 1989): the ramp of NCCL's bus
      bandwidth from mid-size messages (a fifth to a quarter of its plateau at 1 MB) to its
      plateau. 0: every message at the full bandwidth.
    - `dp_overlap_fraction`: fraction of the overlap window under which data-parallel
      communication hides, for plans that overlap it.
    - `overlap_slowdown`: fraction by which compute kernels slow while hidden data-parallel
      communication runs beside them (its kernels hold SMs and HBM bandwidth): each hidden
      second adds slowdown / (1 + slowdown) s to the step; 0 makes hidden communication free.
    - `framework_scale`: per training framework (`FRAMEWORKS`), factor on `kernel_fraction`
      for the steps that framework runs (its kernels, its gaps between them);
      `for_framework` applies it. Fitted with a prior that pulls it to 1, so a framework the
      data barely see keeps the common fraction.
    - `provenance` (static): (field, where its value came from) pairs.
    """

    matrix_max: Scalar = eqx.field(converter=_param)
    matrix_overhead_s: Scalar = eqx.field(converter=_param)
    memory_max: Scalar = eqx.field(converter=_param)
    memory_overhead_s: Scalar = eqx.field(converter=_param)
    attention_scale: Scalar = eqx.field(converter=_param, default=1.0)
    attention_backward_scale: Scalar = eqx.field(converter=_param, default=1.0)
    attention_softmax_dim: Scalar = eqx.field(converter=_param, default=0.0)
    attention_forward_io: Scalar = eqx.field(converter=_param, default=0.0)
    attention_backward_io: Scalar = eqx.field(converter=_param, default=0.0)
    attention_previous_scale: Scalar = eqx.field(converter=_param, default=1.0)
    kernel_fraction: Scalar = eqx.field(converter=_param, default=1.0)
    link_efficiency: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=1.0)
    scaleout_efficiency: Scalar = eqx.field(converter=_param, default=1.0)
    latency_scale: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=1.0)
    collective_latency: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=0.0)
    pipeline_overhead_bytes: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=0.0)
    dp_overlap_fraction: Scalar = eqx.field(converter=_param, default=1.0)
    overlap_slowdown: Scalar = eqx.field(converter=_param, default=0.0)
    framework_scale: dict[str, Scalar] = eqx.field(converter=_per_framework, default=1.0)
    provenance: tuple[tuple[str, str], ...] = eqx.field(static=True, default=())

    def __check_init__(self):
        for name, (lo, hi, lo_inc) in CALIBRATION_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                for fabric, v in value.items():
                    check_range("Calibration", f"{name}[{fabric!r}]", v, lower=lo, upper=hi,
                                lower_inclusive=lo_inc)
            else:
                check_range("Calibration", name, value, lower=lo, upper=hi,
                            lower_inclusive=lo_inc)
        known = {f.name for f in dataclasses.fields(self)}
        for name, _ in self.provenance:
            if name not in known:
                raise ValueError(f"Calibration.provenance names an unknown field {name!r}; "
                                 f"fields: {sorted(known - {'provenance'})}")

    def replace(self, **changes) -> Calibration:
        """A copy with some fields changed (validated like a new Calibration).

        A changed field's provenance is dropped unless `provenance` is given too.
        """
        if "provenance" not in changes:
            changes["provenance"] = tuple((k, v) for k, v in self.provenance
                                          if k not in changes)
        return dataclasses.replace(self, **changes)

    def source(self, name: str) -> str:
        """Where the value of field `name` came from ("not recorded" if nothing says)."""
        return dict(self.provenance).get(name, "not recorded")

    def for_framework(self, framework: str) -> Calibration:
        """The factors for a step run by `framework` (one of `FRAMEWORKS`): `kernel_fraction`
        times its `framework_scale`, at most 1."""
        if framework not in FRAMEWORKS:
            raise ValueError(f"Calibration.for_framework: framework must be one of "
                             f"{list(FRAMEWORKS)}; got {framework!r}")
        fraction = jnp.minimum(self.kernel_fraction * self.framework_scale[framework], 1.0)
        return eqx.tree_at(lambda c: c.kernel_fraction, self, fraction)

    def with_previous_generation_attention(self, generations: int = 1) -> Calibration:
        """The same factors for a framework whose fused attention kernel is `generations`
        generations older than the chip (one: FlashAttention v1 on A100, FlashAttention-2 on
        H100; two: FlashAttention v1 or its Triton port on H100, FlashAttention-2 on B200):
        its matrix rate is `attention_previous_scale ** generations` of the chip-generation
        kernel's (each generation's kernel reaches the same share of the next one's rate on
        the next chip; the two-generation rows of data/attention_kernels.csv check it)."""
        if generations not in (1, 2):
            raise ValueError(f"Calibration.with_previous_generation_attention: generations "
                             f"must be 1 or 2; got {generations!r}")
        return eqx.tree_at(lambda c: c.attention_scale, self,
                           self.attention_scale * self.attention_previous_scale ** generations)

    def with_fused_runtime(self) -> Calibration:
        """The same factors without per-op start-up times.

        The fitted start-up time (~10 us per op) comes from ops timed one by one in eager
        PyTorch, where each call's dispatch is exposed. A fused, compiled runtime (XLA,
        TensorRT-LLM, FasterTransformer's C++ loop) issues kernels back to back, so the next
        launch hides behind the running kernel; only the sustained fraction of peak remains.
        """
        return eqx.tree_at(lambda c: (c.matrix_overhead_s, c.memory_overhead_s), self,
                           (0.0 * self.matrix_overhead_s, 0.0 * self.memory_overhead_s))


_OPERATORS = ("fitted by dse.calibration.fit_operator_efficiency to the LLMCompass A100 "
              "per-operator latencies (data/inference_runs.csv, llmcompass_fig5 rows) and the A100 "
              "measured max-achievable matmul (data/chips.csv), on the A100's measured "
              "best-GEMM fraction (Chip.matmul_fraction)")

# The defaults. Each value is the output of the fit its provenance names; the tests re-run the
# fits and compare.
_ATTENTION = ("fitted by dse.calibration.fit_attention_efficiency to the FlashAttention-2 (A100), "
              "-3 (H100) and -4 (B200) 16-bit throughputs of data/attention_kernels.csv (143 "
              "bars of the FlashAttention-2/3/4 papers' figures)")

_TRAINING = ("fitted by dse.calibration.fit_kernel_fraction to every modelled row of "
             "data/training_runs.csv, the scale of each framework with a row under a N(0, 0.1^2) "
             "prior on its log, so that `kernel_fraction` is the fraction of a framework the "
             "data do not speak for (benchmarks/validate.py refits them "
             "without each source to predict that source)")

DEFAULT = Calibration(
    matrix_max=1.027,
    matrix_overhead_s=5.389e-06,
    memory_max=0.6878,
    memory_overhead_s=1.013e-05,
    attention_scale=1.126,
    attention_backward_scale=0.9025,
    attention_softmax_dim=40.24,
    attention_forward_io=1.349,
    attention_backward_io=3.267,
    attention_previous_scale=0.538,
    kernel_fraction=0.806,
    link_efficiency=0.7719,
    scaleout_efficiency=0.96,
    latency_scale={"nvlink": 0.882, "ici": 1.0, "xgmi": 1.0, "ethernet": 1.0},
    collective_latency=6.499e-06,
    pipeline_overhead_bytes=1.773e06,
    dp_overlap_fraction=1.0,
    overlap_slowdown=0.189,
    framework_scale={"megatron-lm": 1.09, "megatron-core": 1.03, "deepspeed": 0.84,
                     "composer": 1.06, "pytorch": 1.0},
    provenance=(
        ("matrix_max", _OPERATORS),
        ("matrix_overhead_s", _OPERATORS),
        ("memory_max", _OPERATORS),
        ("memory_overhead_s", _OPERATORS),
        ("attention_scale", _ATTENTION),
        ("attention_backward_scale", _ATTENTION),
        ("attention_softmax_dim", _ATTENTION),
        ("attention_forward_io", _ATTENTION),
        ("attention_backward_io", _ATTENTION),
        ("attention_previous_scale", "fitted by dse.calibration.fit_previous_generation_scale to "
                                     "the A100 FlashAttention v1, Triton and xformers rows and "
                                     "the H100 FlashAttention-2 rows of "
                                     "data/attention_kernels.csv"),
        ("kernel_fraction", _TRAINING),
        ("framework_scale", _TRAINING + "; 1 for PyTorch (no modelled row ran on it: not "
                                        "fitted)"),
        ("link_efficiency", "fitted by dse.calibration.fit_link_efficiency to the LLMCompass A100 "
                            "tensor-parallel all-reduce (403 MB over 4 GPUs in 2.89 ms) at the "
                            "fitted pipeline_overhead_bytes "
                            "(dse.calibration.fit_collective_latency fits both together); the "
                            "same value for every fabric"),
        ("latency_scale", "nvlink: fitted by dse.calibration.fit_collective_latency to the "
                          "NCCL rows of data/collective_sweeps.csv, 512 B-512 MB (one H100 and "
                          "one A100 node, 2-8 GPUs, NVIDIA aiconfigurator; NVLink SHARP's "
                          "all-reduce on eight H100s left out); other fabrics 1: their "
                          "systems' stated latencies (no data)"),
        ("collective_latency", "fitted with latency_scale.nvlink by "
                               "dse.calibration.fit_collective_latency (NCCL on NVLink); the "
                               "same value for every fabric (a collective library's launch and "
                               "set-up; no data for the others)"),
        ("pipeline_overhead_bytes", "fitted with latency_scale.nvlink by "
                                    "dse.calibration.fit_collective_latency (NCCL on NVLink); "
                                    "the same value for every fabric (no data for the others)"),
        ("dp_overlap_fraction", "1: the whole window (no row of data/ depends on it)"),
        ("overlap_slowdown", "0.189: the average slowdown of computation overlapped with "
                             "communication measured by Lee et al. 2025, arXiv 2507.03114, "
                             "abstract (A100, H100, MI250, MI210; at most 0.40)"),
        ("scaleout_efficiency", "0.96: NVIDIA's stated NCCL ring rate per NIC, 24 GB/s per "
                                "200 Gb/s (S. Jeaugey, nccl-tests issue 119) and 48 GB/s per "
                                "400 Gb/s (nccl-tests issue 319); both collective models read it"),
    ),
)
