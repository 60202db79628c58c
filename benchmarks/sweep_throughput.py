"""Sweep throughput: GPT-3 175B training step on 1024 chips, seven chip knobs, area and power.

Prints the compile time, the steady-state points/s of `dse.sweep` (kernel, host merge and all),
the peak resident memory, the rate of a fused reference kernel of the same input and output
width (`reference_rate`: draws the same points from the same counter stream, computes four
metrics and a margin by one multiply-add each, writes the same columns and copies them to the
host: what this machine streams when the model costs nothing), and as its last line
`points_per_s=<x> compile_s=<y> limit_fraction=<sweep / reference>`.

    python benchmarks/sweep_throughput.py [--points N] [--chunk C] [--keep pareto|all]

The plan is fixed: Korthikanti et al. 2022 (arXiv:2205.05198) Table 5, GPT-3 175B: tensor 8,
pipeline 8, interleave 3, micro-batch 1, sequence parallel, selective recomputation;
data-parallel 16 to fill 1024 chips with Narayanan et al. 2021 (arXiv:2104.04473) Sec. 5.1's
global batch of 1536 sequences. The base system is the DGX A100 preset at 1024 chips.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import dse
from dse.hardware import SYSTEMS, Activity, area, power
from dse.models import RECOMPUTE_SELECTIVE, TRANSFORMERS, TrainingPlan, train_step

GPT3 = TRANSFORMERS["gpt3-175b"]
PLAN = TrainingPlan(tp=8, pp=8, dp=16, microbatch_size=1, global_batch=1536, interleave=3,
                    sequence_parallel=1, recompute=RECOMPUTE_SELECTIVE, zero_stage=1)
BASE = SYSTEMS["DGX-A100"].with_num_chips(1024)

# Ranges bracket the chips of 2020-2025 (A100 ... B200) by about 2x on each side (paths and
# scales from dse.hardware.FIELDS).
RANGES = {"sram_bytes": (16e6, 512e6), "hbm_bandwidth": (1e12, 16e12),
          "hbm_bytes": (16e9, 384e9), "link_count": (4, 36), "link_bandwidth": (12.5e9, 100e9),
          "mac_units": (32768, 1048576), "clock_hz": (0.8e9, 2.2e9)}
SPACE = dse.Space(BASE, [dse.Param.from_field(BASE, name, low=low, high=high)
                         for name, (low, high) in RANGES.items()])


def step_metrics(system, report):
    """Step time (s), die area (mm^2) and power (W) at the step's compute utilization."""
    chip = system.chip
    watts = power(chip, Activity(compute=jnp.clip(report.hfu, 0.0, 1.0))).total
    return {"step_time": report.step_time, "area": area(chip).total, "power": watts,
            "fits": report.fits.astype(report.step_time.dtype)}


def objective(system):
    """`step_metrics` of the fixed plan."""
    return step_metrics(system, train_step(GPT3, PLAN, system))


def reference_rate(n: int, chunk: int) -> float:
    """Points/s of a fused kernel as wide as the sweep's (see the module docstring)."""
    from dse._space import random_bits, to_unit_float

    dim = SPACE.dim

    @jax.jit
    def kernel(start):
        index = start + jax.lax.iota(jnp.int32, chunk)
        u = to_unit_float(random_bits(index.astype(jnp.uint32), dim, 0, jnp), jnp, jnp.float32)
        x = SPACE.box.draw(u.T)  # [chunk, dim]
        m = jnp.stack([x[:, j] * 1.5 + x[:, j + 1] for j in range(4)])
        g = (x[:, 0] - 0.5)[None]
        feasible = g[0] >= 0
        return x.T, m, g, feasible, feasible | (m[0] > m[1])

    kernel(np.int32(0))
    chunks = max(1, n // chunk)
    t0 = time.perf_counter()
    for c in range(chunks):
        outs = kernel(np.int32(c * chunk))
        _ = [np.asarray(o) for o in outs]
    return chunks * chunk / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=float, default=2**25)
    ap.add_argument("--chunk", type=int, default=1 << 16)
    ap.add_argument("--keep", choices=["pareto", "all"], default="pareto")
    ap.add_argument("--hlo", help="write the compiled chunk kernel's HLO text here")
    args = ap.parse_args()
    n = int(args.points)

    stamps: list[tuple[float, int]] = []
    result = dse.sweep(
        objective, SPACE, n, chunk_size=args.chunk, keep=args.keep, progress=False,
        directions={"step_time": "min", "area": "min", "power": "min"},
        constraints={"fits": (">=", 1.0)},
        callback=lambda chunks, points: stamps.append((time.perf_counter(), points)))
    # Steady state: from the end of the first tenth of the chunks to the end.
    k = max(1, len(stamps) // 10)
    (t0, p0), (t1, p1) = stamps[k - 1], stamps[-1]
    steady = (p1 - p0) / (t1 - t0) if t1 > t0 else float("nan")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    if args.hlo:
        # What XLA emits for the chunk kernel: fusions and the ops inside them.
        from dse import _distributed
        from dse._sweep import _make_kernel, _metric_names

        directions = {"step_time": "min", "area": "min", "power": "min"}
        metrics = _metric_names(objective, SPACE, jnp.float32)
        kernel, aux_for, base_arrays = _make_kernel(
            objective, SPACE, "sobol", 0, args.chunk, 1, 0, metrics, {"fits": (">=", 1.0)},
            directions, args.keep, 254, _distributed.point_mesh(), jnp.float32)
        front = dse.ParetoFront(list(directions.values()))
        front.update(np.ones((1, 3)))
        text = kernel.lower(np.int32(0), aux_for(0),
                            *front.dominance_table(254), base_arrays).compile().as_text()
        with open(args.hlo, "w") as f:
            f.write(text)
        print(f"HLO: {text.count(' fusion(')} fusions, {len(text.splitlines())} lines -> "
              f"{args.hlo}")
    print(f"device: {jax.devices()[0].platform} x{len(jax.devices())}, jax {jax.__version__}")
    print(f"points: {n:,} in chunks of {args.chunk:,}, keep={args.keep}, "
          f"rows kept: {len(result):,}, feasible kept: {int(result.feasible.sum()):,}")
    print(f"compile: {result.compile_s:.2f} s")
    print(f"run: {result.run_s:.2f} s, mean {n / result.run_s:,.0f} points/s, "
          f"steady state {steady:,.0f} points/s")
    print(f"peak RSS: {rss_gb:.2f} GB")
    if result.nan_count:
        print(f"NaN points: {result.nan_count}")
    reference = reference_rate(min(n, 64 * args.chunk), args.chunk)
    print(f"reference kernel (same input/output width, no model): {reference:,.0f} points/s")
    print(f"points_per_s={steady:.4g} compile_s={result.compile_s:.3g} "
          f"limit_fraction={steady / reference:.3g}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
