"""Fit the fused-attention fields of `Calibration` to published FlashAttention throughputs.

Data: data/attention_kernels.csv, one row per bar of the FlashAttention-2 (Dao 2023, arXiv
2307.08691, Figs. 4-7), FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608) and
FlashAttention-4 (Dao et al. 2026, arXiv 2603.05451) benchmark figures: TFLOP/s by kernel, GPU,
head dimension, sequence length, causal mask and direction, each row naming its figure. The fit
uses the FlashAttention kernel of each chip's own generation (`NATIVE_KERNELS`: -2 on A100, -3
on H100, -4 on B200) in 16-bit precision: the kernels a framework of that chip's time runs.
Other kernels (FlashAttention v1, Triton, xformers, cuDNN, the FP8 rows) stay in the file as
reference; `attention_kernel_ratios` reports how far each runs from the fitted model.

Model: `dse.models.attention` / `attention_backward` on the chip presets, so the fitted
constants are the ones those operators read (`ATTENTION_FIELDS`). Residuals are log-ratios of
modelled to measured time, so a 100 TFLOP/s bar weighs as much as a 1500 TFLOP/s one.

Benchmark convention (flash-attention `benchmarks/benchmark_flash_attention.py`, quoted in the
file's source column): FLOPs = 4 batch seqlen^2 heads head_dim, halved when causal; the backward
is credited 2.5x and forward + backward 3.5x the forward FLOPs; heads = 2048 / head_dim. The
modelled FLOPs count a causal mask the same way (the mean attended keys, (s + 1) / 2), so
measured time = counted FLOPs / TFLOP/s is compared with the modelled time. Every term of the
model is proportional to batch x heads, so the batch (16k tokens / seqlen; not stated for
FlashAttention-4) does not enter the throughput.

Run: `python -m dse.calibration._attention_data` prints the fitted constants and the residuals.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS
from dse.models import DEFAULT, Calibration, attention, attention_backward

# The Calibration fields this fit sets, in order.
ATTENTION_FIELDS = ("attention_scale", "attention_backward_scale", "attention_softmax_dim",
                    "attention_forward_io", "attention_backward_io")
# GPU names of the figures -> chip presets (A100 80GB SXM4 and H100 80GB SXM5 are the GPUs the
# FlashAttention-2/-3 papers benchmark; B200 is FlashAttention-4's).
GPU_PRESET = {"A100 80GB SXM4": "A100-80GB", "H100 80GB SXM5": "H100-SXM", "B200": "B200"}
NATIVE_KERNELS = {"A100 80GB SXM4": "FlashAttention-2", "H100 80GB SXM5": "FlashAttention-3",
                  "B200": "FlashAttention-4"}
SIXTEEN_BIT = ("fp16", "bf16", "fp16/bf16")
# The benchmark's model width (flash-attention benchmark_flash_attention.py: dim = 2048).
BENCH_HIDDEN = 2048.0
BENCH_TOKENS = 16384.0


def attention_rows(data_dir: Path | None = None, kernels=None) -> list[dict]:
    """Rows of attention_kernels.csv with a throughput, as dicts with numeric fields.

    **Arguments:**

    - `data_dir`: the data folder (default: the repository's data/).
    - `kernels`: None for each GPU's native kernel (`NATIVE_KERNELS`, 16-bit), or a
      predicate `(row) -> bool` choosing rows.
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "attention_kernels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        if not r["tflops"] or r["gpu"] not in GPU_PRESET:
            continue
        native = NATIVE_KERNELS[r["gpu"]] == r["kernel"] and r["dtype"] in SIXTEEN_BIT
        if (native if kernels is None else kernels(r)):
            out.append(dict(r, head_dim=float(r["head_dim"]), seq_len=float(r["seq_len"]),
                            causal=r["causal"] == "yes", tflops=float(r["tflops"])))
    return out


def _counted_flops(row) -> float:
    """The benchmark's FLOP count of one row (its convention, per the module docstring)."""
    s, d = row["seq_len"], row["head_dim"]
    heads = BENCH_HIDDEN / d
    batch = BENCH_TOKENS / s
    fwd = 4.0 * batch * s * s * heads * d / (2.0 if row["causal"] else 1.0)
    return fwd * {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[row["direction"]]


def modelled_seconds(calibration: Calibration, rows) -> np.ndarray:
    """Modelled kernel time of each row (forward, backward or both), s."""
    out = np.empty(len(rows))
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["gpu"], r["causal"]), []).append(i)
    for (gpu, causal), idx in groups.items():
        chip = CHIPS[GPU_PRESET[gpu]]
        d = np.array([rows[i]["head_dim"] for i in idx])
        s = np.array([rows[i]["seq_len"] for i in idx])
        shape = (BENCH_TOKENS / s, BENCH_HIDDEN / d, BENCH_HIDDEN / d, s, s, d)
        kw = dict(causal=causal, calibration=calibration)
        fwd = np.asarray(attention(chip, *shape, **kw).time)
        bwd = np.asarray(attention_backward(chip, *shape, **kw).time)
        for j, i in enumerate(idx):
            out[i] = {"fwd": fwd[j], "bwd": bwd[j], "fwd+bwd": fwd[j] + bwd[j]}[
                rows[i]["direction"]]
    return out


def measured_seconds(rows) -> np.ndarray:
    """Measured kernel time of each row: counted FLOPs / TFLOP/s, s."""
    return np.array([_counted_flops(r) / (r["tflops"] * 1e12) for r in rows])


def fit_attention_efficiency(data_dir: Path | None = None) -> dict[str, float]:
    """Least-squares fit of `ATTENTION_FIELDS` (log-ratio residuals) to the native-kernel rows.

    **Returns:** {field: value}, each rounded to 4 significant digits as stored in `DEFAULT`.
    """
    rows = attention_rows(data_dir)
    measured = measured_seconds(rows)

    def residuals(x):
        cal = DEFAULT.replace(**dict(zip(ATTENTION_FIELDS, x, strict=True)))
        return np.log(modelled_seconds(cal, rows) / measured)

    start = [1.0, 0.9, 30.0, 1.0, 1.5]  # the fit's starting point, inside the bounds
    lo = [0.05, 0.05, 0.0, 0.0, 0.0]
    hi = [1.5, 1.5, 1e3, 1e2, 1e2]
    start = np.clip(start, np.array(lo) + 1e-3, np.array(hi) - 1e-3)
    # Finite-difference steps of 1e-3 (relative): the models run in float32 by default, where
    # scipy's default 1e-8 steps move nothing.
    from scipy.optimize import least_squares  # deferred: import time of `import dse`

    sol = least_squares(residuals, start, bounds=(lo, hi), diff_step=1e-3, xtol=1e-8,
                        ftol=1e-10)
    return {f: float(f"{v:.4g}") for f, v in zip(ATTENTION_FIELDS, sol.x, strict=True)}


# Fused kernels one generation older than the GPU they ran on: on A100 the first generation
# (FlashAttention v1, its Triton port, xformers' cutlass kernel; FlashAttention-2 paper Figs.
# 4-6), on H100 FlashAttention-2 (no Hopper tensor-memory or warp-group instructions;
# FlashAttention-3 paper figures).
PREVIOUS_GENERATION = {"A100 80GB SXM4": ("FlashAttention (v1)", "FlashAttention Triton",
                                          "xformers (cutlass)"),
                       "H100 80GB SXM5": ("FlashAttention-2",)}


def fit_previous_generation_scale(calibration: Calibration = DEFAULT,
                               data_dir: Path | None = None) -> float:
    """`Calibration.attention_previous_scale`: the geometric-mean throughput of the
    previous-generation kernels' rows (`PREVIOUS_GENERATION`) over the model of the
    chip-generation kernel (`calibration`'s attention fields).

    **Returns:** the factor, rounded to 3 significant digits as stored."""
    rows = attention_rows(data_dir, kernels=lambda r: r["kernel"] in PREVIOUS_GENERATION.get(
        r["gpu"], ()) and r["dtype"] in SIXTEEN_BIT)
    log_ratio = np.log(modelled_seconds(calibration, rows) / measured_seconds(rows))
    return float(f"{np.exp(np.mean(log_ratio)):.3g}")


def attention_kernel_ratios(calibration: Calibration = DEFAULT,
                            data_dir: Path | None = None) -> dict[tuple[str, str], tuple]:
    """Measured / modelled throughput of every 16-bit kernel family on every GPU.

    **Returns:** {(kernel, gpu): (rows, geometric-mean ratio, std of the log ratio)}; the
    native kernels' ratio is the fit's bias (about 1).
    """
    rows = attention_rows(data_dir, kernels=lambda r: r["dtype"] in SIXTEEN_BIT)
    ratio = modelled_seconds(calibration, rows) / measured_seconds(rows)
    out = {}
    for key in dict.fromkeys((r["kernel"], r["gpu"]) for r in rows):
        m = np.array([np.log(x) for x, r in zip(ratio, rows, strict=True)
                      if (r["kernel"], r["gpu"]) == key])
        out[key] = (len(m), float(np.exp(np.mean(m))), float(np.std(m)))
    return out


if __name__ == "__main__":
    fitted = fit_attention_efficiency()
    print("fitted:", fitted)
    cal = DEFAULT.replace(**fitted)
    print("attention_previous_scale:", fit_previous_generation_scale(cal))
    rows = attention_rows()
    err = modelled_seconds(cal, rows) / measured_seconds(rows) - 1.0
    print(f"native rows {len(rows)}: mean |time error| {100 * np.mean(np.abs(err)):.1f}%, "
          f"max {100 * np.max(np.abs(err)):.1f}%")
    for (kernel, gpu), (n, r, sd) in attention_kernel_ratios(cal).items():
        print(f"  {kernel:24s} {gpu:16s} n={n:3d} measured/modelled throughput "
              f"{r:5.2f} (log std {sd:.2f})")
