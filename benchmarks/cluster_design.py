"""Cluster design sweep: 100,000 clusters for one training job, dollars per token and megawatts.

The job: a 1T-parameter GPT (`gpt-1t`, Narayanan et al. 2021's 1T configuration) trained on
20 trillion tokens on ~100,000 GB200-class chips (tensor 8, pipeline 16, data 780: 99,840 chips),
with a fixed plan. Every design is a whole `dse.hardware.Cluster`; the knobs are the chip's HBM
bandwidth and MAC units, the scale-up domain size, the scale-out network's tiers and
oversubscription, and the checkpoint storage bandwidth. Each point runs the training step, the
goodput model (failures, Daly checkpoints, restarts), the network's switch/optics count, cost and
power, and the capital and energy cost (`dse.models.train_cluster`).

Prints the compile time, the steady-state points per second of `dse.sweep` (kernel and host
merge), the best feasible design under a 300 MW facility budget, and as its last line
`points=<n> points_per_s=<p> compile_s=<c>`.

    python benchmarks/cluster_design.py [--points N] [--chunk C]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import dse
from dse.hardware import NETWORKS, SYSTEMS, Cluster
from dse.models import RECOMPUTE_SELECTIVE, TRANSFORMERS, TrainingPlan, train_cluster

MODEL = TRANSFORMERS["gpt-1t"]
TOKENS = 20e12
PLAN = TrainingPlan(tp=8, pp=16, dp=780, microbatch_size=1, global_batch=780 * 16,
                    interleave=2, sequence_parallel=1, recompute=RECOMPUTE_SELECTIVE,
                    zero_stage=1, dp_overlap=1)
# GB200 chips in NVL72-style racks (4 per host), a rail-optimized fat-tree of radix 128 (a
# 51.2 Tb/s switch at 400G).
BASE = Cluster(SYSTEMS["GB200-NVL72"].replace(
    network=NETWORKS["dgx-superpod"].replace(radix=128.0, host_chips=4.0, rack_chips=72.0)
).with_num_chips(100_000))
RANGES = {"hbm_bandwidth": (4e12, 16e12), "mac_units": (262144, 1048576),
          "scaleup_size": (8, 576), "tiers": (2, 4), "oversubscription": (1.0, 8.0),
          "checkpoint_bandwidth": (0.2e12, 20e12)}
SPACE = dse.Space(BASE, [dse.Param.from_field(BASE, name, low=lo, high=hi)
                         for name, (lo, hi) in RANGES.items()])
BUDGET_MW = 300.0


def objective(cluster):
    """Dollars per token, time to train, megawatts, goodput, fits (`ClusterReport.metrics`)."""
    return train_cluster(MODEL, PLAN, cluster, TOKENS).metrics()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=float, default=100_000)
    ap.add_argument("--chunk", type=int, default=1 << 14)
    args = ap.parse_args()
    n = int(args.points)
    stamps: list[tuple[float, int]] = []
    result = dse.sweep(
        objective, SPACE, n, chunk_size=args.chunk, keep="all", progress=False,
        constraints={"fits": (">=", 1.0), "megawatts": ("<=", BUDGET_MW)},
        callback=lambda chunks, points: stamps.append((time.perf_counter(), points)))
    # Steady state: from the end of the first chunk to the end (the first one compiles).
    if len(stamps) > 1:
        (t0, p0), (t1, p1) = stamps[0], stamps[-1]
        steady = (p1 - p0) / (t1 - t0)
    else:
        steady = result.points_per_s
    feasible = result.feasible
    print(f"device: {jax.devices()[0].platform} x{len(jax.devices())}, jax {jax.__version__}")
    print(f"points: {n:,} in chunks of {args.chunk:,}; feasible under {BUDGET_MW:g} MW and "
          f"the network's capacity: {int(feasible.sum()):,}")
    if feasible.any():
        cost = np.where(feasible, result["cost_per_token"], np.inf)
        i = int(np.argmin(cost))
        knobs = ", ".join(f"{k}={result[k][i]:.4g}" for k in SPACE.names)
        print(f"cheapest feasible: ${result['cost_per_token'][i] * 1e6:.3f} per million "
              f"tokens, {result['time_to_train'][i] / 86400:.1f} days, "
              f"{result['megawatts'][i]:.0f} MW, goodput {result['goodput'][i]:.3f} ({knobs})")
    print(f"compile: {result.compile_s:.2f} s; run: {result.run_s:.2f} s "
          f"({n / result.run_s:,.0f} points/s mean, {steady:,.0f} steady)")
    print(f"points={n} points_per_s={steady:.4g} compile_s={result.compile_s:.3g}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
