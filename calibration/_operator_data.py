"""Fit the operator efficiency fields and the scale-up link efficiency of `Calibration`
(`dse.models.DEFAULT`: matrix_max, matrix_overhead_s, memory_max, memory_overhead_s,
link_efficiency) to measurements.

Data (all in data/, each row names its source):

- `inference_runs.csv`, rows `llmcompass_a100x4_gpt3_layer_prefill` and `..._decode`: measured
  latencies of every operator of one GPT-3 175B layer on an A100 80GB with tensor parallel 4,
  batch 8, prompt 2048 (prefill) and context 3072 (decode) (Zhang et al., LLMCompass, ISCA 2024,
  artifact ae/figure5/ijkl). We use the weight GEMMs (QKV, output projection, the two MLP
  matrices) and the element-wise ops (two LayerNorms, GeLU, softmax; see MIN_IDEAL_TIME_S); the
  unfused
  Q K^T / A V products and the all-reduces are not single-chip GEMM / element-wise ops of our
  operator set.
- `chips.csv`, A100 rows: peak FLOP/s, HBM bandwidth, on-chip SRAM; the A100 40GB
  `measured_max_matmul_bf16_tflops` (MAMF, stas00/ml-engineering) at the GEMM shape its notes
  give.

The model is `dse.models.gemm` / `elementwise` with the four operator fields free; the fit
minimizes the squared log-ratio of modelled to measured time (relative error, so a 50 us op weighs
as much as a 50 ms one). Run: `python -m dse.calibration._operator_data` prints the constants to
store.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import jax
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import Chip
from dse.models import DEFAULT, elementwise, gemm

# The operator-efficiency fields of `Calibration` that single-kernel timings constrain.
OPERATOR_FIELDS = ("matrix_max", "matrix_overhead_s", "memory_max", "memory_overhead_s")

# A100 FP32 (non-tensor) peak, 19.5 TFLOP/s: NVIDIA A100 Tensor Core GPU Architecture
# whitepaper, Table 1. Element-wise ops are memory-bound, so this does not enter the fit.
A100_VECTOR_FLOPS = 19.5e12

# Element-wise ops whose ideal HBM time is under 1 us (the decode-step LayerNorm, GeLU and
# softmax: 0.2-2.4 MB each) are left out: they measured 17-48 us whatever their size, which is
# the eager framework's per-call dispatch and timing floor, not the chip's memory system.
MIN_IDEAL_TIME_S = 1e-6


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _chip_from_row(row: dict, mamf_row: dict) -> Chip:
    clock = float(row["clock_ghz"]) * 1e9
    peak = float(row["peak_dense_bf16_tflops"]) * 1e12
    # The measured best-GEMM fraction (chips.csv MAMF of the A100 40GB; the 80GB part is the
    # same GA100 die, clock and power limit).
    fraction = float(mamf_row["measured_max_matmul_bf16_tflops"]) / float(
        mamf_row["peak_dense_bf16_tflops"])
    return Chip(mac_units=peak / (2.0 * clock), clock_hz=clock, vector_flops=A100_VECTOR_FLOPS,
                matmul_fraction=fraction,
                sram_bytes=float(row["onchip_sram_total_mb_derived"]) * 1e6,
                hbm_bandwidth=float(row["hbm_bw_gbps"]) * 1e9,
                hbm_bytes=float(row["hbm_capacity_gb"]) * 1e9,
                link_count=float(row["interconnect_links"]),
                link_bandwidth=float(row["interconnect_gbps_per_link_per_dir"]) * 1e9,
                node_nm=7.0, core_count=float(row["cores"]), name=row["name"])


def _per_op(notes: str) -> dict[str, float]:
    """'per-op: Q_K_V=13.7218ms; ...' -> {'Q_K_V': 0.0137218, ...} (seconds)."""
    return {k: float(v) * 1e-3 for k, v in re.findall(r"(\w+)=([\d.]+)ms", notes)}


def operator_rows(data_dir: Path | None = None):
    """The fit's data: a list of (label, chip, kind, shape, measured seconds).

    `kind` is "gemm" with shape (m, n, k) or "elementwise" with shape (elements,).
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    chips = {r["name"]: r for r in _rows(data_dir / "chips.csv")}
    a100_40_row = chips["NVIDIA A100 SXM4 40GB"]
    a100_80 = _chip_from_row(chips["NVIDIA A100 SXM4 80GB"] | {
        # The 80GB row leaves links and cores to the 40GB row (same GA100 die and NVLink 3).
        "interconnect_links": a100_40_row["interconnect_links"],
        "cores": a100_40_row["cores"]}, a100_40_row)
    a100_40 = _chip_from_row(a100_40_row, a100_40_row)
    runs = {r["run_id"]: r for r in _rows(data_dir / "inference_runs.csv")}
    points = []
    for phase, row_id in (("prefill", "llmcompass_a100x4_gpt3_layer_prefill"),
                          ("decode", "llmcompass_a100x4_gpt3_layer_decode")):
        row = runs[row_id]
        ops = _per_op(row["notes"])
        h, heads, tp, b = (float(row[c]) for c in ("hidden", "heads", "tp", "batch_size"))
        seq = float(row["input_len"]) if phase == "prefill" else float(row["context_len"])
        tokens = b * seq if phase == "prefill" else b
        gemms = {"Q_K_V": (tokens, 3 * h / tp, h), "Wo_proj": (tokens, h, h / tp),
                 "W1_proj": (tokens, 4 * h / tp, h), "W2_proj": (tokens, h, 4 * h / tp)}
        for name, shape in gemms.items():
            points.append((f"{phase}:{name}", a100_80, "gemm", shape, ops[name]))
        q_rows = seq if phase == "prefill" else 1.0
        elementwise_ops = {"LayerNorm_MHA": tokens * h, "LayerNorm_FFN": tokens * h,
                           "GeLU": tokens * 4 * h / tp,
                           "Softmax": b * heads / tp * q_rows * seq}
        for name, elements in elementwise_ops.items():
            if elements * 2 * 2 / a100_80.hbm_bandwidth < MIN_IDEAL_TIME_S:
                continue
            points.append((f"{phase}:{name}", a100_80, "elementwise", (elements,), ops[name]))
    mamf = chips["NVIDIA A100 SXM4 40GB"]
    m, n, k = (float(x) for x in re.search(r"shape (\d+)x(\d+)x(\d+)", mamf["notes"]).groups())
    mamf_time = 2.0 * m * n * k / (float(mamf["measured_max_matmul_bf16_tflops"]) * 1e12)
    points.append(("mamf:A100-40GB", a100_40, "gemm", (m, n, k), mamf_time))
    return points


def model_times(params, points) -> np.ndarray:
    """Modelled seconds of every point for `params` = (matrix_max, matrix_overhead_s,
    memory_max, memory_overhead_s)."""
    cal = DEFAULT.replace(**dict(zip(OPERATOR_FIELDS, params, strict=True)))
    out = []
    for _, chip, kind, shape, _ in points:
        cost = gemm(chip, *shape, calibration=cal) if kind == "gemm" else \
            elementwise(chip, shape[0], calibration=cal)
        out.append(float(cost.time))
    return np.asarray(out)


def fit_operator_efficiency(data_dir: Path | None = None) -> dict[str, float]:
    """Least-squares fit of the four operator fields of `Calibration` (log-time residuals).

    **Returns:** dict of the constants, rounded to 4 significant digits as stored.
    """
    points = operator_rows(data_dir)
    measured = np.array([p[-1] for p in points])

    def values_of(z):
        # matrix_max (relative to the chip's measured best GEMM) and start-up times through
        # exp, the memory fraction through a logistic: an unconstrained search.
        return (np.exp(z[0]), np.exp(z[1]), 1 / (1 + np.exp(-z[2])), np.exp(z[3]))

    def residual(z):
        return np.log(model_times(values_of(z), points) / measured)

    from scipy.optimize import least_squares  # deferred: import time of `import dse`

    with jax.enable_x64(True):
        # Relative finite-difference steps of 1e-4: the chips' leaves are float32, where
        # smaller steps resolve nothing (and a relative step needs a start away from 0).
        sol = least_squares(residual, x0=np.array([0.05, np.log(5e-6), 1.0, np.log(1e-5)]),
                            method="trf", xtol=1e-12, ftol=1e-12, diff_step=1e-4)
    values = values_of(sol.x)
    return {name: float(f"{v:.4g}") for name, v in zip(OPERATOR_FIELDS, values, strict=True)}


def fit_link_efficiency(data_dir: Path | None = None, *,
                        pipeline_overhead_bytes: float | None = None,
                        rounded: bool = True) -> float:
    """Scale-up link efficiency (`Calibration.link_efficiency`, NVLink) from one measurement.

    The LLMCompass A100 prefill layer's tensor-parallel all-reduce (AllReduce_MHA: one
    batch x prompt x hidden fp16 activation over tp = 4 GPUs of an NVSwitch DGX A100) moves
    n = 2 (p-1)/p x the buffer per GPU over its 12 NVLink 3 links (bandwidth W). At 403 MB the
    latency term (NCCL's start-up and steps) is under 0.5% of the time and is left out; the
    measured time is the pipelined (n + 2 sqrt(D n)) / (efficiency W)
    (`Calibration.pipeline_overhead_bytes` D), so efficiency = (n + 2 sqrt(D n)) / (W x
    measured).

    **Arguments:** `pipeline_overhead_bytes`: D, B (default:
    `DEFAULT.pipeline_overhead_bytes["nvlink"]`); `rounded`: round to 4 significant digits, as
    stored.

    **Returns:** the efficiency.
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    chunk = float(DEFAULT.pipeline_overhead_bytes["nvlink"] if pipeline_overhead_bytes is None
                  else pipeline_overhead_bytes)
    chips = {r["name"]: r for r in _rows(data_dir / "chips.csv")}
    a100 = chips["NVIDIA A100 SXM4 40GB"]  # NVLink 3 link count / rate (same on the 80GB part)
    link_bw = float(a100["interconnect_links"]) * float(
        a100["interconnect_gbps_per_link_per_dir"]) * 1e9
    row = {r["run_id"]: r for r in _rows(data_dir / "inference_runs.csv")}[
        "llmcompass_a100x4_gpt3_layer_prefill"]
    p = float(row["tp"])
    n = 2.0 * (p - 1.0) / p * float(row["batch_size"]) * float(row["input_len"]) * float(
        row["hidden"]) * 2.0
    measured = _per_op(row["notes"])["AllReduce_MHA"]
    efficiency = (n + 2.0 * np.sqrt(chunk * n)) / (link_bw * measured)
    return float(f"{efficiency:.4g}") if rounded else float(efficiency)


def report(data_dir: Path | None = None) -> None:
    """Print the fitted constants and the per-point fit quality."""
    print("link_efficiency =", fit_link_efficiency(data_dir))
    constants = fit_operator_efficiency(data_dir)
    points = operator_rows(data_dir)
    with jax.enable_x64(True):
        predicted = model_times(tuple(constants.values()), points)
    print("operator fields =", constants)
    for (label, *_, measured), p in zip(points, predicted, strict=True):
        print(f"{label:24s} measured {measured * 1e3:9.4f} ms  model {p * 1e3:9.4f} ms  "
              f"error {100 * (p / measured - 1):+6.1f}%")


if __name__ == "__main__":
    report()
