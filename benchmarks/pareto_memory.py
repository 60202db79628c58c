"""A 100,000,000-point sweep that keeps only the Pareto front, in bounded memory.

The objective and space are those of `benchmarks/sweep_throughput.py` (GPT-3 175B training step
on 1024 chips with a fixed plan; step time, area, power; the memory-fit constraint). Prints the
front size, the time, the peak resident memory, and as its last line
`points=<n> front=<k> peak_rss_gb=<x> under_2gb=<bool>`.

With `--best-plan`, the objective instead picks the best parallel plan per design
(`dse.models.best_plan`, hundreds of candidate plans vmapped inside each point) over fewer
points (default 10,000,000): not fast, but memory stays bounded by the chunk.

    python benchmarks/pareto_memory.py [--points N] [--chunk C] [--best-plan]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sweep_throughput import GPT3, SPACE, objective, step_metrics  # noqa: E402

import dse  # noqa: E402
from dse.models import best_plan  # noqa: E402

# Narayanan et al. 2021 (arXiv:2104.04473) Sec. 5.1: GPT-3 175B at a global batch of 1536.
GLOBAL_BATCH = 1536


def best_plan_objective(system):
    """Step time of the fastest feasible plan per design, with area and power."""
    _, report = best_plan(GPT3, system, GLOBAL_BATCH, recompute=(1,), zero_stages=(1,),
                          sequence_parallel=(1,))
    return step_metrics(system, report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=float, default=None)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--best-plan", action="store_true")
    args = ap.parse_args()
    if args.best_plan:
        n, chunk, fn = int(args.points or 1e7), args.chunk or 1 << 10, best_plan_objective
    else:
        n, chunk, fn = int(args.points or 1e8), args.chunk or 1 << 16, objective

    t0 = time.perf_counter()
    result = dse.sweep(fn, SPACE, n, chunk_size=chunk, keep="pareto", progress=True,
                       directions={"step_time": "min", "area": "min", "power": "min"},
                       constraints={"fits": (">=", 1.0)})
    wall = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"objective: {'best_plan' if args.best_plan else 'fixed plan'}; points: {n:,} in "
          f"chunks of {chunk:,}")
    print(f"front: {len(result):,} designs ({int(result.feasible.sum()):,} feasible); "
          f"NaN points: {result.nan_count}")
    print(f"compile {result.compile_s:.1f} s, run {result.run_s:.1f} s "
          f"({n / result.run_s:,.0f} points/s), wall {wall:.1f} s")
    print(f"peak RSS: {rss_gb:.2f} GB")
    print(f"points={n} front={len(result)} peak_rss_gb={rss_gb:.3g} under_2gb={rss_gb < 2.0}")


if __name__ == "__main__":
    main()
