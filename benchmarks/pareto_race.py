"""Pareto race: gradient search (dse.optimize) vs Sobol search vs NSGA-II, to 99% hypervolume.

The problem (issue 5): a chip for training Llama 3 70B on 1024 chips with a fixed plan
(TP 8 x PP 4 x DP 32, 1024 sequences of 8192 tokens per step, sequence parallel, selective
recomputation, ZeRO-1), in a DGX-H100-like system (its scale-up domain and scale-out network).
Seven chip knobs: SRAM, HBM bandwidth, HBM capacity, link count (integer), link bandwidth, MAC
count, clock. Objectives: training step time and die area, both minimized. Budgets: power at the
TDP operating point (`dse.hardware.power`, full activity) <= 1000 W, die area <= reticle
(`area(...).reticle_margin >= 0`), and the plan's memory per chip <= HBM capacity (without it the
search would simply shrink HBM to nothing).

The reference front is a dense scrambled-Sobol sweep (2^24 = 16.8 M points by default, at least
10^7), chunked jit(vmap) with a streaming non-dominated filter. The reference hypervolume is
taken against the front's nadir + 10% of its range. Each method then counts model evaluations
until its feasible designs reach 99% of that hypervolume:

- gradient (the headline): `dse.optimize(method="trace")`, front tracing by continuation: 8
  pilot points, then one SQP step per front point on a forward-mode Jacobian of every metric.
  Its points come in order, so it is counted like the baselines: the evaluations until its
  feasible points reach the target. One Jacobian counts as its true cost, timed: the measured
  ratio of vmapped Jacobian to vmapped value wall time on this device (the headline); the
  figures with the library's conservative count, 6 evaluations per Jacobian
  (`EVALUATIONS_PER_JACOBIAN`, two gradients), are printed beside it;
- gradient, multistart (for comparison): `dse.optimize(method="multistart")`, with a ladder of
  effort settings (more preference vectors / steps); the first setting whose result reaches the
  target counts. One gradient counts as 3 model evaluations (reverse mode costs a small multiple
  of the function; the measured ratio of vmapped value-and-gradient to value time is printed);
- random: scrambled Sobol points (another seed than the reference) in order;
- nsga2: pymoo's NSGA-II, population 100, every evaluated design archived.

Every design is evaluated with the same exact model (integer knob rounded). The last line is
`speedup_vs_nsga2=<x> speedup_vs_random=<y>` in evaluations (the trace's, Jacobian timed); where
a baseline did not reach the target in its budget, its figure is a lower bound and is printed
with ">=".

Run: `python benchmarks/pareto_race.py [--points 16777216] [--quick]`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import dse
from dse import optimizers as opt
from dse._optimize import EVALUATIONS_PER_GRADIENT, EVALUATIONS_PER_JACOBIAN
from dse.hardware import SYSTEMS, area, power
from dse.models import TRANSFORMERS, TrainingPlan, train_step

POWER_BUDGET_W = 1000.0
TARGET = 0.99

# Knob ranges: from below the smallest to beyond the largest of the presets (V100 ... B200,
# TPU v5p, MI300X: chips.csv), so that the front is interior to the box (wider than the
# defaults of dse.hardware.FIELDS, whose paths and scales they keep).
KNOBS = {
    "sram_bytes": (8e6, 1e9),
    "hbm_bandwidth": (0.5e12, 12e12),
    "hbm_bytes": (16e9, 288e9),
    "link_count": (2, 36),
    "link_bandwidth": (10e9, 200e9),
    "mac_units": (16e3, 1.2e6),
    "clock_hz": (0.8e9, 2.2e9),
}
OBJECTIVES = ("step_time", "area")
BUDGETS = {"power": POWER_BUDGET_W, "reticle_margin": (0.0, None), "memory_margin": (0.0, None)}


def problem():
    """The Space (a 1024-chip DGX-H100-like system) and the objective `system -> metrics`."""
    system = SYSTEMS["DGX-H100"].with_num_chips(1024)
    model = TRANSFORMERS["llama3-70b"]
    # Llama 3 70B used 8192-token sequences, TP 8 and PP 4 on H100s at 16 M tokens per batch
    # (Llama 3 paper, Table 4); 1024 chips -> DP 32, 1024 sequences (8.4 M tokens) per step.
    plan = TrainingPlan(tp=8, pp=4, dp=32, microbatch_size=1, global_batch=1024,
                        sequence_parallel=1, recompute=1, zero_stage=1)
    space = dse.Space(system, [dse.Param.from_field(system, name, low=low, high=high)
                               for name, (low, high) in KNOBS.items()])

    def objective(s):
        report = train_step(model, plan, s, smooth=True)
        a = area(s.chip)
        return {
            "step_time": report.step_time,
            "area": a.total,
            "power": power(s.chip).total,
            "reticle_margin": a.reticle_margin,
            "memory_margin": s.chip.hbm_bytes - report.memory_per_chip,
        }

    return space, objective


class Exact:
    """The exact model on unit-cube points: u -> x = snap(from_unit(u)) -> (f [n, 2], g [n, 3]).

    The same map serves the reference sweep, Sobol and NSGA-II; it counts every evaluation.
    """

    def __init__(self, space, objective, chunk: int = 1 << 15):
        self.space, self.chunk, self.count = space, chunk, 0

        def one(u):
            x = space.snap(space.from_unit(u))
            m = objective(space.build(x))
            f = jnp.stack([m[k] for k in OBJECTIVES])
            g = jnp.stack([(m["power"] - POWER_BUDGET_W) / POWER_BUDGET_W,
                           -m["reticle_margin"], -m["memory_margin"] / 1e9])
            return f, g

        self._fn = jax.jit(jax.vmap(one))

    def __call__(self, u):
        u = np.asarray(u, dtype=np.float32)
        n = u.shape[0]
        self.count += n
        # Pad to a fixed chunk so that every call reuses one compiled program.
        size = min(self.chunk, max(1 << int(np.ceil(np.log2(max(n, 1)))), 128))
        fs, gs = [], []
        for i in range(0, n, size):
            part = u[i:i + size]
            pad = np.concatenate([part, np.full((size - len(part), u.shape[1]), 0.5,
                                                np.float32)])
            f, g = self._fn(jnp.asarray(pad))
            fs.append(np.asarray(f, np.float64)[:len(part)])
            gs.append(np.asarray(g, np.float64)[:len(part)])
        return np.concatenate(fs), np.concatenate(gs)


def feasible_of(f, g):
    return np.all(np.isfinite(f), axis=1) & np.all(g <= 0.0, axis=1)


def merge_front(front, f):
    """Non-dominated subset of front U f (minimization)."""
    both = np.concatenate([front, f]) if front.size else f
    if not both.size:
        return both
    return both[opt.pareto_mask(both)]


def reference_front(exact: Exact, n_points: int, seed: int, chunk: int = 1 << 18):
    from scipy.stats import qmc

    engine = qmc.Sobol(d=exact.space.dim, scramble=True, seed=seed)
    front = np.zeros((0, 2))
    n_feasible = 0
    done = 0
    while done < n_points:
        k = min(chunk, n_points - done)
        u = engine.random(k)
        f, g = exact(u)
        ok = feasible_of(f, g)
        n_feasible += int(ok.sum())
        front = merge_front(front, f[ok])
        done += k
    return front, n_feasible


def first_reaching(f_stream, ok_stream, reference, target_hv, step: int = 1024):
    """Smallest prefix of an evaluation stream whose feasible points reach `target_hv`."""
    n = len(f_stream)
    front = np.zeros((0, 2))
    for start in range(0, n, step):
        stop = min(start + step, n)
        new_front = merge_front(front, f_stream[start:stop][ok_stream[start:stop]])
        if opt.hypervolume(new_front, reference) >= target_hv:
            lo, hi = start, stop  # bisect inside the block: hv is monotone in the prefix
            while hi - lo > 1:
                mid = (lo + hi) // 2
                cand = merge_front(front, f_stream[start:mid][ok_stream[start:mid]])
                if opt.hypervolume(cand, reference) >= target_hv:
                    hi = mid
                else:
                    lo = mid
            return hi
        front = new_front
    return None


def gradient_cost_ratio(space, objective, n: int = 1024, repeats: int = 3):
    """Wall time of vmapped value-and-gradient, and of the vmapped forward-mode Jacobian of every
    metric (what `method="trace"` computes), over vmapped value, on the same designs."""
    x = jnp.asarray(space.sample(n, seed=7), dtype=jnp.float32)

    def scalar(xi):
        m = objective(space.build(xi))
        return m["step_time"] + m["area"]

    def vector(xi):
        m = objective(space.build(xi))
        return jnp.stack([m[k] for k in sorted(m)])

    value = jax.jit(jax.vmap(vector))
    grad = jax.jit(jax.vmap(jax.value_and_grad(scalar)))
    jacobian = jax.jit(jax.vmap(jax.jacfwd(vector)))
    for fn in (value, grad, jacobian):
        jax.block_until_ready(fn(x))

    def best(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            times.append(time.perf_counter() - t)
        return min(times)

    return best(grad) / best(value), best(jacobian) / best(value)


class Scale:
    """Hypervolume against a reference front, on the objectives ("linear") or their logs ("log").

    Reference point: the reference front's nadir + 10% of its range (in that scale).
    """

    def __init__(self, kind: str, front: np.ndarray):
        self.kind = kind
        t = self(front)
        span = t.max(axis=0) - t.min(axis=0)
        self.reference = t.max(axis=0) + 0.1 * span
        self.hv_ref = opt.hypervolume(t, self.reference)
        self.target = TARGET * self.hv_ref

    def __call__(self, f):
        f = np.asarray(f, dtype=np.float64)
        return np.log(np.where(f > 0, f, np.nan)) if self.kind == "log" else f

    def fraction(self, f, feasible):
        return opt.hypervolume(self(f), self.reference, feasible=feasible) / self.hv_ref

    def first_reaching(self, f, feasible, step=1024):
        t = self(f)
        ok = feasible & np.all(np.isfinite(t), axis=1)
        return first_reaching(np.where(ok[:, None], t, 0.0), ok, self.reference, self.target,
                              step)


# Gradient ladder: the first setting whose result reaches the target counts (settings are tried
# in order of cost, so a user who knew the right one in advance would pay exactly that).
# Front tracing (`method="trace"`): pilot size and point spacing (objectives normalized to the
# pilot's range), one setting for every seed; the first seed is the headline.
TRACE_PILOT, TRACE_SPACING, TRACE_SEEDS = 8, 0.05, (0, 1, 2)

LADDER = [
    dict(n_preferences=16, outer_steps=4, inner_steps=8, learning_rate=0.3),
    dict(n_preferences=24, outer_steps=4, inner_steps=8, learning_rate=0.3),
    dict(n_preferences=32, outer_steps=4, inner_steps=10, learning_rate=0.3),
    dict(n_preferences=32, outer_steps=6, inner_steps=15, learning_rate=0.2),
    dict(n_preferences=48, outer_steps=8, inner_steps=20, learning_rate=0.2),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1 << 24,
                        help="reference sweep size (>= 1e7 for the issue's figure)")
    parser.add_argument("--random-budget", type=int, default=1 << 22)
    parser.add_argument("--nsga2-generations", type=int, default=500)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (figures not meaningful)")
    args = parser.parse_args()
    ladder = LADDER
    if args.quick:
        args.points, args.random_budget, args.nsga2_generations = 1 << 16, 1 << 14, 30
        ladder = LADDER[:1]

    space, objective = problem()
    exact = Exact(space, objective)
    print(f"devices: {jax.devices()}")
    print(f"problem: llama3-70b, 1024 chips, TP8 PP4 DP32; knobs {list(KNOBS)}; "
          f"objectives {OBJECTIVES}; budgets power <= {POWER_BUDGET_W:g} W, area <= reticle, "
          f"memory fits")

    t = time.perf_counter()
    sweep_front, n_feasible = reference_front(exact, args.points, seed=20240723)
    t_ref = time.perf_counter() - t
    print(f"reference sweep: {args.points} Sobol points ({n_feasible} feasible), front "
          f"{len(sweep_front)} designs, step_time {sweep_front[:, 0].min():.4g}-"
          f"{sweep_front[:, 0].max():.4g} s, area {sweep_front[:, 1].min():.4g}-"
          f"{sweep_front[:, 1].max():.4g} mm^2, wall={t_ref:.1f} s")

    ratio, jac_ratio = gradient_cost_ratio(space, objective)
    print(f"gradient cost: counted as {EVALUATIONS_PER_GRADIENT} evaluations; measured "
          f"value-and-grad / value wall time = {ratio:.2f} (vmapped, batch 1024, this device)")
    print(f"jacobian cost (forward mode, every metric): counted as {EVALUATIONS_PER_JACOBIAN} "
          f"evaluations; measured jacobian / value wall time = {jac_ratio:.2f}")

    traces = []
    for seed in TRACE_SEEDS:
        t = time.perf_counter()
        res = dse.optimize(objective, space, objectives=list(OBJECTIVES), budgets=BUDGETS,
                           log_objectives=True, method="trace", n_pilot=TRACE_PILOT,
                           spacing=TRACE_SPACING, seed=seed, progress=False)
        wall = time.perf_counter() - t
        f = np.stack([res.metrics[k] for k in OBJECTIVES], axis=1)
        traces.append((seed, res, f, wall))
        print(f"gradient trace (seed {seed}, {TRACE_PILOT} pilot, spacing {TRACE_SPACING}): "
              f"{res.n_gradients} jacobians, evaluations={res.n_evaluations}, "
              f"{int(res.feasible.sum())} feasible, front {len(res.front)}, wall={wall:.1f} s; "
              f"{res.message}")

    rungs = []
    for setting in ladder:
        t = time.perf_counter()
        res = dse.optimize(objective, space, objectives=list(OBJECTIVES), budgets=BUDGETS,
                           log_objectives=True, n_pilot=32, n_starts=1,
                           keep_iterates=True, seed=0, progress=False, **setting)
        wall = time.perf_counter() - t
        f = np.stack([res.metrics[k] for k in OBJECTIVES], axis=1)
        rungs.append((setting, res, f, wall))
        print(f"gradient {setting}: evaluations={res.n_evaluations} ({res.n_gradients} "
              f"gradients x {EVALUATIONS_PER_GRADIENT} + "
              f"{res.n_evaluations - EVALUATIONS_PER_GRADIENT * res.n_gradients} exact), "
              f"{int(res.feasible.sum())} feasible, front {len(res.front)}, wall={wall:.1f} s, "
              f"{res.status}")

    t = time.perf_counter()
    sob = opt.random_search(exact, space.dim, args.random_budget, method="sobol", seed=11,
                            batch_size=1 << 15)
    t_sobol = time.perf_counter() - t
    print(f"random (Sobol): {args.random_budget} evaluations, wall={t_sobol:.1f} s")
    t = time.perf_counter()
    ns = opt.nsga2(exact, space.dim, pop_size=100, n_generations=args.nsga2_generations, seed=5)
    t_nsga = time.perf_counter() - t
    print(f"nsga2: {len(ns.objectives)} evaluations (population 100), wall={t_nsga:.1f} s")

    # Two references: the dense sweep (the issue's), and the non-dominated union of the sweep
    # with every design any method found (a sweep cannot sit on the active budgets, so searches
    # beat it; against the union no method can exceed 100%).
    union = merge_front(sweep_front, np.concatenate(
        [f[res.feasible] for _, res, f, _ in rungs + traces]
        + [sob.objectives[sob.feasible], ns.objectives[ns.feasible]]))
    headline = None
    for ref_name, ref_front in (("sweep", sweep_front), ("union", union)):
        for kind in ("log", "linear"):
            sc = Scale(kind, ref_front)
            g = next(((s, res, w) for s, res, f, w in rungs
                      if sc.fraction(f, res.feasible) >= TARGET), None)
            n_sob = sc.first_reaching(sob.objectives, sob.feasible)
            n_ns = sc.first_reaching(ns.objectives, ns.feasible, step=100)
            best = max(sc.fraction(f, res.feasible) for _, res, f, _ in rungs)
            tag = f"[{ref_name} reference, {kind} hv]"
            if g is None:
                print(f"{tag} gradient multistart: not reached on the ladder (best {best:.4f})")
            else:
                s_, res, w = g
                print(f"{tag} gradient multistart: evaluations={res.n_evaluations} "
                      f"({res.n_gradients} gradients), wall={w:.1f} s, setting {s_}; "
                      f"speedup_vs_nsga2={_speedup(res.n_evaluations, n_ns, len(ns.objectives))}")
            print(f"{tag} random (Sobol): evaluations="
                  f"{n_sob if n_sob else '>' + str(args.random_budget)} "
                  f"(final {sc.fraction(sob.objectives, sob.feasible):.4f})")
            print(f"{tag} nsga2: evaluations={n_ns if n_ns else '>' + str(len(ns.objectives))}"
                  f" (final {sc.fraction(ns.objectives, ns.feasible):.4f})")
            for seed, res, f, w in traces:
                k = sc.first_reaching(f, res.feasible, step=1)
                n_trace = int(res.history["n_evaluations"][k - 1]) if k else None
                n_jac = max(k - TRACE_PILOT, 0) if k else None
                line = (f"speedup_vs_nsga2={_speedup(n_trace, n_ns, len(ns.objectives))} "
                        f"speedup_vs_random={_speedup(n_trace, n_sob, args.random_budget)}")
                if n_trace is None:
                    print(f"{tag} gradient trace seed {seed}: not reached (final "
                          f"{sc.fraction(f, res.feasible):.4f}); {line}")
                else:
                    timed = TRACE_PILOT + jac_ratio * n_jac
                    timed_line = (
                        f"speedup_vs_nsga2={_speedup(timed, n_ns, len(ns.objectives))} "
                        f"speedup_vs_random={_speedup(timed, n_sob, args.random_budget)}")
                    print(f"{tag} gradient trace seed {seed}: jacobian at its timed cost "
                          f"({jac_ratio:.2f}): evaluations={timed:.0f}, {timed_line}; "
                          f"jacobian counted as {EVALUATIONS_PER_JACOBIAN}: evaluations="
                          f"{n_trace} ({TRACE_PILOT} pilot + {n_jac} jacobians), {line}; "
                          f"wall={w:.1f} s")
                    line = timed_line
                if headline is None:
                    headline = line
    # Headline: the reference (the dense sweep), hypervolume of log objectives, the
    # trace's first seed, each Jacobian at its true (timed) cost on this device.
    print(headline)


def _speedup(n_grad, n_other, budget):
    if n_grad is None:
        return "nan"
    return f"{n_other / n_grad:.2f}" if n_other is not None else f">={budget / n_grad:.2f}"


if __name__ == "__main__":
    main()
