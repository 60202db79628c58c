"""Co-design sweep: GPT-3 175B on 1,024 chips, every chip design judged with its own best plan.

The seven chip knobs and ranges of `benchmarks/sweep_throughput.py` (DGX A100 base at 1,024
chips, global batch 1,536 sequences as in Narayanan et al. 2021, arXiv:2104.04473, Sec. 5.1).
Instead of one fixed plan, each design gets the fastest feasible plan of a pruned set
(`dse.plan_candidates`: plans that cannot fit the box's largest HBM are dropped exactly, then
plans never within 0.1% of the best, at any HBM capacity of the box, on a Sobol' sample),
evaluated per design inside the sweep kernel (`dse.models.best_of_plans`). The pruned choice is
checked against the exhaustive `best_plan` (all 26,280 plans) on independent random designs.

Prints the pruning (plans enumerated, memory-feasible, kept, seconds), the sweep (compile,
designs/s wall and per CPU second), the check, and last:
`designs=<n> designs_per_s=<d> plan_misses=<m> worst_gap=<g> compile_s=<c>`.

    python benchmarks/codesign_sweep.py [--designs N] [--check K] [--samples S]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import dse
from dse.hardware import SYSTEMS, Activity, area, power
from dse.models import TRANSFORMERS, best_of_plans

GPT3 = TRANSFORMERS["gpt3-175b"]
GLOBAL_BATCH = 1536
BASE = SYSTEMS["DGX-A100"].with_num_chips(1024)
# The ranges of benchmarks/sweep_throughput.py (chips of 2020-2025 bracketed by about 2x).
RANGES = {"sram_bytes": (16e6, 512e6), "hbm_bandwidth": (1e12, 16e12),
          "hbm_bytes": (16e9, 384e9), "link_count": (4, 36), "link_bandwidth": (12.5e9, 100e9),
          "mac_units": (32768, 1048576), "clock_hz": (0.8e9, 2.2e9)}
SPACE = dse.Space(BASE, [dse.Param.from_field(BASE, name, low=low, high=high)
                         for name, (low, high) in RANGES.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", type=float, default=1e6)
    ap.add_argument("--check", type=int, default=200, help="random designs checked exhaustively")
    ap.add_argument("--samples", type=int, default=2048, help="Sobol' designs for the pruning")
    ap.add_argument("--margin", type=float, default=0.001)
    ap.add_argument("--chunk", type=int, default=1 << 13)
    args = ap.parse_args()
    n = int(args.designs)

    cpu0 = time.process_time()
    cands = dse.plan_candidates(GPT3, SPACE, GLOBAL_BATCH, samples=args.samples,
                                margin=args.margin)
    prune_cpu = time.process_time() - cpu0
    print(f"plans: {cands.n_enumerated:,} enumerated, {cands.n_memory_feasible:,} fit "
          f"{cands.capacity_bytes[1] / 1e9:.0f} GB, {cands.n_kept} kept (within "
          f"{cands.margin:.1%} of the best on {cands.samples:,} Sobol' designs); "
          f"{cands.seconds:.1f} s wall, {prune_cpu:.1f} s CPU")

    def objective(system):
        _, report = best_of_plans(GPT3, cands.plans, system)
        chip = system.chip
        watts = power(chip, Activity(compute=jnp.clip(report.hfu, 0.0, 1.0))).total
        return {"step_time": report.step_time, "area": area(chip).total, "power": watts,
                "fits": report.fits.astype(report.step_time.dtype)}

    stamps = [(time.perf_counter(), time.process_time(), 0)]
    result = dse.sweep(objective, SPACE, n, chunk_size=args.chunk, keep="pareto",
                       progress=False, directions={"step_time": "min", "area": "min",
                                                   "power": "min"},
                       constraints={"fits": (">=", 1.0)},
                       callback=lambda chunks, points: stamps.append(
                           (time.perf_counter(), time.process_time(), points)))
    rate = n / result.run_s
    # CPU seconds of the run after the first chunk (compilation excluded): on a machine shared
    # with other jobs, designs per CPU second x cores is what the machine does unloaded.
    (_, c0, p0), (_, c1, p1) = stamps[1], stamps[-1]
    per_cpu_s = (p1 - p0) / (c1 - c0) if c1 > c0 else float("nan")
    print(f"sweep: {n:,} designs, compile {result.compile_s:.2f} s, run {result.run_s:.2f} s "
          f"wall = {rate:,.0f} designs/s; {per_cpu_s:,.0f} designs per CPU second "
          f"({len(jax.devices())} device(s)); front {len(result):,} rows")

    x = SPACE.sample(args.check, method="random", seed=12345)
    t0 = time.perf_counter()
    check = dse.plan_misses(GPT3, SPACE, GLOBAL_BATCH, cands, x)
    print(f"check: {args.check} random designs, exhaustive best_plan vs pruned: "
          f"{check['misses']} differ, worst step-time gap {check['worst_gap']:.2e} "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"designs={n} designs_per_s={rate:.4g} plan_misses={check['misses']} "
          f"worst_gap={check['worst_gap']:.3g} compile_s={result.compile_s:.3g}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
