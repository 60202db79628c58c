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
CALIBRATION_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "matrix_max": _FRACTION,
    "matrix_overhead_s": (0.0, 1e-2, True),
    "memory_max": _FRACTION,
    "memory_overhead_s": (0.0, 1e-2, True),
    "attention_scale": _FRACTION,
    "kernel_fraction": _FRACTION,
    "link_efficiency": _FRACTION,
    "latency_scale": (0.0, 1e3, True),
    "dp_overlap_fraction": (0.0, 1.0, True),
    "scaleout_efficiency": _FRACTION,
}


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


def _per_fabric(x):
    """A per-fabric table: a mapping with every fabric of `FABRICS`, or one value for all."""
    if isinstance(x, Mapping):
        keys = set(x)
        if keys != set(FABRICS):
            raise ValueError(f"a per-fabric calibration needs exactly the fabrics {list(FABRICS)}"
                             f"; got {sorted(keys)}")
        return {k: _param(x[k]) for k in FABRICS}
    return {k: _param(x) for k in FABRICS}


class Calibration(eqx.Module):
    """The fitted and calibratable factors of the workload models (dimensionless unless stated).

    An op with ideal time s (FLOP / peak FLOP/s, or bytes / HBM bandwidth) takes
    (s + overhead) / max_fraction: smooth and increasing in op size.

    **Fields:**

    - `matrix_max`: sustained fraction of peak matrix FLOP/s on large GEMMs.
    - `matrix_overhead_s`: start-up time of a matrix op, s.
    - `memory_max`: sustained fraction of peak HBM bandwidth on large transfers.
    - `memory_overhead_s`: start-up time of a memory-bound op, s.
    - `attention_scale`: fraction of the GEMM efficiency that fused (FlashAttention-style)
      attention sustains (FlashAttention-2 reaches 50-73% of the A100's peak against ~87% for
      large GEMMs: Dao 2023, arXiv 2307.08691, Sec. 4.1; chips.csv A100 MAMF 271.2 / 312).
    - `kernel_fraction`: sustained fraction of the isolated-operator speed that on-chip work
      reaches inside an end-to-end training step (kernel gaps, framework overhead, the clock a
      chip holds under training power). Applies to `train_step`; inference runtimes are modelled
      by the `fused` switch of their plan instead.
    - `link_efficiency`: per scale-up fabric (`dse.hardware.FABRICS`; a factor fitted on
      NVSwitch says nothing about TPU ICI: held out, Pope et al. went 24.4% -> 12.6% with its own
      pair in the calibration benchmark), fraction of the links' bandwidth a
      collective sustains (NCCL bus bandwidth / link bandwidth).
    - `latency_scale`: per scale-up fabric, factor on the system's stated per-step scale-up
      latency (the alpha of the alpha-beta collective model).
    - `dp_overlap_fraction`: fraction of the overlap window under which data-parallel
      communication hides, for plans that overlap it.
    - `scaleout_efficiency`: fraction of a scale-out NIC's line rate a collective sustains
      (systems with a `dse.hardware.Network`; the two-tier model takes the stated bandwidth).
    - `provenance` (static): (field, where its value came from) pairs.
    """

    matrix_max: Scalar = eqx.field(converter=_param)
    matrix_overhead_s: Scalar = eqx.field(converter=_param)
    memory_max: Scalar = eqx.field(converter=_param)
    memory_overhead_s: Scalar = eqx.field(converter=_param)
    attention_scale: Scalar = eqx.field(converter=_param, default=1.0)
    kernel_fraction: Scalar = eqx.field(converter=_param, default=1.0)
    link_efficiency: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=1.0)
    latency_scale: dict[str, Scalar] = eqx.field(converter=_per_fabric, default=1.0)
    dp_overlap_fraction: Scalar = eqx.field(converter=_param, default=1.0)
    scaleout_efficiency: Scalar = eqx.field(converter=_param, default=1.0)
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
              "measured max-achievable matmul (data/chips.csv)")

# The defaults. Each value is the output of the fit its provenance names; the tests re-run the
# fits and compare.
DEFAULT = Calibration(
    matrix_max=0.8897,
    matrix_overhead_s=8.575e-06,
    memory_max=0.6878,
    memory_overhead_s=1.013e-05,
    attention_scale=1.0,
    kernel_fraction=0.853,
    link_efficiency=0.6964,
    latency_scale=1.0,
    dp_overlap_fraction=1.0,
    scaleout_efficiency=0.96,
    provenance=(
        ("matrix_max", _OPERATORS),
        ("matrix_overhead_s", _OPERATORS),
        ("memory_max", _OPERATORS),
        ("memory_overhead_s", _OPERATORS),
        ("attention_scale", "1: fused attention at the GEMM efficiency (no fused-attention "
                            "timing in data/ has been fitted)"),
        ("kernel_fraction", "fitted by dse.calibration.fit_kernel_fraction to the training rows "
                            "of data/training_runs.csv it names (Korthikanti Table 5 held out)"),
        ("link_efficiency", "fitted by dse.calibration.fit_link_efficiency to the LLMCompass A100 "
                            "tensor-parallel all-reduce (403 MB over 4 GPUs in 2.89 ms); the "
                            "same value for every fabric"),
        ("latency_scale", "1: the systems' stated latencies"),
        ("dp_overlap_fraction", "1: the whole window (no row of data/ depends on it)"),
        ("scaleout_efficiency", "0.96: NVIDIA's stated NCCL ring rate per NIC, 24 GB/s per "
                                "200 Gb/s (S. Jeaugey, nccl-tests issue 119) and 48 GB/s per "
                                "400 Gb/s (nccl-tests issue 319); read only with a Network"),
    ),
)
