"""Workload-mix sweep: 1,000,000 chip designs judged on a three-workload training portfolio.

The portfolio (`dse.WorkloadMix`, weights = share of the reference fleet's time, the issue's
example split): 50% dense training, 30% MoE training, 20% long-context training. Each workload
runs on its own chip count of the swept system (same chip and network, resized):

- dense: GPT-3 175B, Korthikanti et al. 2022 (arXiv:2205.05198) Table 5 layout (TP 8, PP 8,
  interleave 3, micro-batch 1, sequence parallel, selective recomputation), DP 16 on 1024 chips
  with Narayanan et al. 2021 Sec. 5.1's global batch of 1536 (as benchmarks/sweep_throughput.py);
- MoE: Mixtral 8x7B at sequence 4096, the Megatron-LM MoE README (@0b981f9c) reference layout on
  64 H100s: TP 1, EP 8, PP 4, VP 8, micro-batch 1, global batch 256 (DP 16);
- long context: Llama 3 8B at 131,072 tokens with the NeMo long-sequence table's layout for
  128K on 128 GPUs (NeMo docs performance_long_sequence.md @19fadb67, Llama2-7B row: TP 4,
  PP 1, DP 8, CP 4, global batch 32), full recomputation.

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
from dse.models import RECOMPUTE_FULL, RECOMPUTE_SELECTIVE, TRANSFORMERS, TrainingPlan

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
    dse.training_workload(
        "moe", 0.3, TRANSFORMERS["mixtral-8x7b"].replace(seq_len=4096.0),
        TrainingPlan(tp=1, pp=4, dp=16, ep=8, microbatch_size=1, global_batch=256,
                     interleave=8, zero_stage=1), 64),
    dse.training_workload(
        "long", 0.2, TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0),
        TrainingPlan(tp=4, cp=4, dp=8, microbatch_size=1, global_batch=32,
                     sequence_parallel=1, recompute=RECOMPUTE_FULL, zero_stage=1), 128),
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
    print("reference (DGX A100) s/token: "
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
