"""Workload-mix sweep: 1,000,000 chip designs judged on a three-workload portfolio.

The portfolio (`dse.WorkloadMix`, weights = share of the reference fleet's time, the issue's
example split): 50% dense training, 30% MoE serving, 20% recommendation (DLRM) training. Each
workload runs on its own chip count of the swept system (same chip and network, resized):

- dense training: GPT-3 175B, Korthikanti et al. 2022 (arXiv:2205.05198) Table 5 layout (TP 8,
  PP 8, interleave 3, micro-batch 1, sequence parallel, selective recomputation), DP 16 on 1024
  chips with Narayanan et al. 2021 Sec. 5.1's global batch of 1536 (as
  benchmarks/sweep_throughput.py); seconds per trained token;
- MoE serving: Mixtral 8x7B in 16 bits, TP 2 (its 93 GB of weights need two 80 GB chips), four
  replicas on 8 chips, batches of 64 requests of 500 prompt and 2000 generated tokens (an
  input / output pair of the TensorRT-LLM perf-overview tables; the batch is this benchmark's
  choice); seconds per generated token (`dse.serving_workload`);
- DLRM training: the MLPerf DLRM-DCNv2 (`DLRMS["dlrm-dcnv2"]`) on 64 chips with the MLPerf v4.0
  8 x 8 layout's global batch of 135,168, balanced (column-wise) sharding, Adagrad, fp32 tables,
  a captured-graph runtime as HugeCTR runs it; seconds per sample (`dse.recsys_workload`).

The reference system is the DGX A100 preset; the space is the seven chip knobs of
benchmarks/sweep_throughput.py. Prints the compile time, the steady-state points/s, the best
feasible designs for the mix and for each workload alone, and as its last line
`points=<n> points_per_s=<p> compile_s=<c>`.

    python benchmarks/workload_mix.py [--points N] [--chunk C]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import dse
from dse.hardware import SYSTEMS, area
from dse.models import (
    DLRMS,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    InferencePlan,
    RecPlan,
    TrainingPlan,
)

BASE = SYSTEMS["DGX-A100"].with_num_chips(1024)
# Ranges as benchmarks/sweep_throughput.py: the chips of 2020-2025 (A100 ... B200) by about 2x
# on each side.
RANGES = {"sram_bytes": (16e6, 512e6), "hbm_bandwidth": (1e12, 16e12),
          "hbm_bytes": (16e9, 384e9), "link_count": (4, 36), "link_bandwidth": (12.5e9, 100e9),
          "mac_units": (32768, 1048576), "clock_hz": (0.8e9, 2.2e9)}
SPACE = dse.Space(BASE, [dse.Param.from_field(BASE, name, low=low, high=high)
                         for name, (low, high) in RANGES.items()])

MIX = dse.WorkloadMix([
    dse.training_workload(
        "dense", 0.5, TRANSFORMERS["gpt3-175b"],
        TrainingPlan(tp=8, pp=8, dp=16, microbatch_size=1, global_batch=1536, interleave=3,
                     sequence_parallel=1, recompute=RECOMPUTE_SELECTIVE, zero_stage=1), 1024),
    dse.serving_workload(
        "moe_serving", 0.3, TRANSFORMERS["mixtral-8x7b"], InferencePlan(tp=2), 8, batch=64.0,
        input_len=500.0, output_len=2000.0),
    dse.recsys_workload(
        "dlrm", 0.2, DLRMS["dlrm-dcnv2"],
        RecPlan(global_batch=135168, sharding="column", fused=True), 64),
], BASE)


def objective(system):
    """The mix's metrics and the die area (mm^2)."""
    return dict(MIX(system), area=area(system.chip).total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=float, default=1e6)
    ap.add_argument("--chunk", type=int, default=1 << 15)
    args = ap.parse_args()
    n = int(args.points)
    stamps: list[tuple[float, int]] = []
    result = dse.sweep(objective, SPACE, n, chunk_size=args.chunk, keep="all", progress=False,
                       constraints={"fits": (">=", 1.0)},
                       callback=lambda chunks, points: stamps.append((time.perf_counter(),
                                                                      points)))
    k = max(1, len(stamps) // 10)
    (t0, p0), (t1, p1) = stamps[k - 1], stamps[-1]
    steady = (p1 - p0) / (t1 - t0) if t1 > t0 else n / result.run_s
    feasible = np.asarray(result.feasible)
    print(f"device: {jax.devices()[0].platform} x{len(jax.devices())}, jax {jax.__version__}")
    print(f"points: {n:,}, feasible for every workload: {int(feasible.sum()):,}")
    print(f"weights: {MIX.weights}")
    print("reference (DGX A100) s per unit of work (token, generated token, sample): "
          + ", ".join(f"{k} {v:.3e}" for k, v in MIX.reference_times.items()))
    area_mm2 = np.asarray(result["area"])
    cheap = feasible & (area_mm2 <= 826.0)  # the A100 die, 826 mm^2 (NVIDIA A100 whitepaper)
    for metric in ["mix_time"] + [f"relative_{w}" for w in MIX.weights]:
        vals = np.where(cheap, np.asarray(result[metric]), np.inf)
        i = int(np.argmin(vals))
        knobs = ", ".join(f"{p}={float(np.asarray(result[p])[i]):.3g}" for p in RANGES)
        mix = float(np.asarray(result["mix_time"])[i])
        print(f"best {metric} at <= 826 mm^2: {vals[i]:.3f} (mix {mix:.3f}) {knobs}")
    print(f"compile: {result.compile_s:.2f} s, run: {result.run_s:.2f} s")
    print(f"points={n} points_per_s={steady:.4g} compile_s={result.compile_s:.3g}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
