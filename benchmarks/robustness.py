"""Robustness at scale: random designs over every continuous field, no silent wrong answer.

Draws designs over the whole valid range of every continuous field of `Chip` and `System` (the
bounds of `dse.hardware.SPAN_FIELDS`, through `dse.hardware.span_systems`): log-uniform between
the lower and upper bound, a tenth of the values exactly on a bound (the far corners), one chip in
eight without scale-up links. Chips with HBM and chips without it (operands in SRAM) are drawn
separately, since a chip is one or the other. Every design is built as a concrete batched
`System`, so the Modules' own validation checks that each one is a valid input.

Each design is evaluated by the objectives a `dse` study sweeps and optimizes
(`StudyObjective`): training (GPT-3 175B, a fixed Megatron plan on 1024 chips) and inference
(Llama 3 70B served on 8 chips at TP 8), in float32 and float64. Counted:

- `nonfinite_values`: designs with a metric that is NaN or infinite;
- `nonfinite_grads`: designs with a non-finite derivative of any metric with respect to any
  continuous field, in forward mode (as `dse.sensitivity` and the front tracing differentiate)
  and in reverse mode (as the gradient search does), with smooth rooflines;
- `unflagged`: designs reported feasible (`reason == 0`) whose numbers are nonsense: a time,
  area, cost or energy that is not positive, an MFU above 1, memory that does not fit, a die
  larger than a wafer; or a breakdown that does not sum to its total (step time, area, power,
  cost), flagged or not.

The last line is `points=<n> nonfinite_values=<a> nonfinite_grads=<b> unflagged=<c>`.

Run: `python benchmarks/robustness.py [--points N]` (N per dtype, workload and chip kind;
default 12,800, so 102,400 designs in all).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from dse import hardware as hw
from dse import models
from dse._study import make_objective
from dse.hardware import SPAN_FIELDS, Reason
from dse.hardware._technology import WAFER_AREA_MM2

CHUNK = 3200
# A tenth of the values sit exactly on a bound: the far corners of the space.
CORNER_FRACTION = 0.1
# One chip in eight has no scale-up links (link_count 0, as Groq and WSE-2 presets).
NO_LINKS_FRACTION = 0.125
# Relative tolerance of a breakdown's sum against its total: a few float32 roundings of a sum
# of up to seven terms.
SUM_RTOL = 1e-5


def random_systems(base: hw.System, n: int, seed: int, *, with_hbm: bool) -> hw.System:
    """n valid systems over the whole range of every field (`dse.hardware.span_systems`), a
    tenth of the coordinates on a bound and some chips without links."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, len(SPAN_FIELDS)))
    corner = rng.random(u.shape) < CORNER_FRACTION
    u[corner] = rng.integers(0, 2, corner.sum())
    no_links = rng.random(n) < NO_LINKS_FRACTION
    with_links = hw.span_systems(base, u[~no_links], with_hbm=with_hbm)
    without = hw.span_systems(base, u[no_links], with_hbm=with_hbm, with_links=False)
    return jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]),
                        with_links, without)


def _breakdown_residual(parts, total):
    """Largest |sum of the parts - total| / |total| (0 where the total is 0)."""
    gap = jnp.abs(sum(parts) - total)
    return jnp.where(total != 0, gap / jnp.where(total != 0, jnp.abs(total), 1.0), gap)


def make_check(kind: str, model, plan, system: hw.System):
    """The jitted per-chunk check: counts of non-finite values, gradients and unflagged
    nonsense over a batch of systems."""
    args = (kind, model, plan, 1536, 32.0, 2048.0, 256.0)
    values_of = make_objective(*args)
    smooth_of = make_objective(*args, smooth=True)

    def scaled_sum(s):
        # Each metric over its own magnitude (held constant): one reverse pass whose gradient
        # is non-finite exactly where some metric's gradient is (a non-finite term never
        # cancels), on a common scale.
        m = smooth_of(s)
        return sum(v / jax.lax.stop_gradient(jnp.where(v != 0, jnp.abs(v), 1.0))
                   for k, v in m.items() if k != "reason")

    def one(s: hw.System):
        m = values_of(s)
        # Forward mode along every field at once (each moved by its own value, or by 1 where
        # it is 0: sum_j J_ij v_j is non-finite when one J_ij is), and reverse mode.
        tangent = jax.tree.map(lambda x: jnp.where(x != 0, x, 1.0), s)
        _, forward = jax.jvp(smooth_of, (s,), (tangent,))
        reverse = jax.grad(scaled_sum)(s)
        grads_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in
                                      jax.tree.leaves((forward, reverse))
                                      if jnp.issubdtype(leaf.dtype, jnp.floating)]))
        values_ok = jnp.all(jnp.stack([jnp.isfinite(v) for v in m.values()]))
        reason = m["reason"].astype(jnp.int32)
        feasible = reason == 0
        a, p, c = hw.area(s.chip), hw.power(s.chip), hw.cost(s.chip)
        positive = [m[k] for k in ("area", "cost", "energy_per_token")]
        positive += [m[k] for k in (("step_time", "tokens_per_s") if kind == "training"
                                    else ("ttft", "tpot", "tokens_per_s_per_chip"))]
        nonsense = jnp.any(jnp.stack([x <= 0 for x in positive]))
        nonsense |= m["power"] < 0
        nonsense |= (m["memory_shortfall"] > 0) | (m["memory_margin"] < 0)
        nonsense |= a.per_die > WAFER_AREA_MM2
        if kind == "training":
            nonsense |= m["mfu"] > 1.0 + 1e-6
        # Conservation holds flagged or not: the breakdown is part of every answer.
        residuals = [_breakdown_residual(list(a.blocks.values()), a.total),
                     _breakdown_residual(list(p.blocks.values()), p.total),
                     _breakdown_residual([c.silicon, c.hbm, c.package], c.total)]
        if kind == "training":
            report = models.train_step(model, plan, s)
            residuals.append(_breakdown_residual(list(report.breakdown.values()),
                                                 report.step_time))
            # A memory miss is always flagged, and says by how much.
            flag = int(Reason.MEMORY | Reason.SRAM)
            missed = report.memory_per_chip > report.memory_capacity
            residuals.append(jnp.where(missed & ((report.reason & flag) == 0), 1.0, 0.0))
        broken_sum = jnp.max(jnp.stack(residuals)) > SUM_RTOL
        unflagged = (feasible & nonsense) | broken_sum
        return ~values_ok, ~grads_ok, unflagged

    @jax.jit
    def check(systems):
        bad_values, bad_grads, unflagged = jax.vmap(one)(systems)
        return jnp.sum(bad_values), jnp.sum(bad_grads), jnp.sum(unflagged)

    return check


def run(kind: str, with_hbm: bool, points: int, seed: int) -> tuple[int, int, int, int, float]:
    """Counts (points, non-finite values, non-finite gradients, unflagged) and seconds."""
    if kind == "training":
        model = models.TRANSFORMERS["gpt3-175b"]
        base = hw.SYSTEMS["DGX-H100"].with_num_chips(1024)
        plan = models.TrainingPlan(tp=8, pp=8, dp=16, microbatch_size=1, global_batch=1536,
                                   interleave=2, sequence_parallel=1, recompute=1,
                                   zero_stage=1)
    else:
        model = models.TRANSFORMERS["llama3-70b"]
        base = hw.SYSTEMS["DGX-H100"]
        plan = models.InferencePlan(tp=8, batch=32)
    check = make_check(kind, model, plan, base)
    totals = np.zeros(3, np.int64)
    t0 = time.perf_counter()
    for start in range(0, points, CHUNK):
        size = min(CHUNK, points - start)
        systems = random_systems(base, size, seed + start, with_hbm=with_hbm)
        totals += np.array([int(x) for x in check(systems)])
    return (points, *map(int, totals), time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=12_800,
                        help="designs per dtype, workload and chip kind (x8 in all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    total = np.zeros(4, np.int64)
    for x64 in (False, True):
        jax.config.update("jax_enable_x64", x64)
        dtype = "float64" if x64 else "float32"
        for kind in ("training", "inference"):
            for with_hbm in (True, False):
                n, values, grads, unflagged, seconds = run(kind, with_hbm, args.points,
                                                           args.seed)
                total += (n, values, grads, unflagged)
                chips = "HBM" if with_hbm else "SRAM-only"
                print(f"{dtype} {kind:9s} {chips:9s}: {n} designs, {values} non-finite values, "
                      f"{grads} non-finite gradients, {unflagged} unflagged ({seconds:.1f} s)",
                      flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"points={total[0]} nonfinite_values={total[1]} nonfinite_grads={total[2]} "
          f"unflagged={total[3]}")


if __name__ == "__main__":
    main()
