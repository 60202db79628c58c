"""`dse demo`: the whole story on a fresh install, in about a minute on two CPU cores.

1. the hardware models on the preset chips (area, power, cost against published figures);
2. H100s training GPT-3 175B with the best parallel plan, and where the step time goes;
3. a sweep of a million chip designs around H100 (seven knobs), keeping the Pareto front of
   step time vs die area under power, reticle and memory budgets;
4. a gradient search of the same problem, and how its front compares;
5. the elasticities at the knee of the front: what to improve next;
6. the plots, in the folder it names.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from . import hardware as hw
from . import models, plot
from ._format import si, table, unit_of
from ._optimize import EVALUATIONS_PER_JACOBIAN, optimize
from ._sensitivity import sensitivity
from ._space import Param, Space
from ._study import make_objective
from ._sweep import sweep
from .optimizers import hypervolume, knee_point

MODEL = "gpt3-175b"
CHIPS_IN_CLUSTER = 1024
GLOBAL_BATCH = 1536
BUDGETS = {"power": (None, 1000.0), "reticle_margin": (0.0, None), "memory_margin": (0.0, None)}
PRESET_TABLE = ("V100", "A100-80GB", "H100-SXM", "H200", "B200", "MI300X", "TPUv4", "Gaudi3",
                "Groq-TSP", "GC200")


# The seven chip knobs of the README's reference problem (their ranges: dse.hardware.FIELDS),
# and the fields whose elasticities the demo ranks at the knee.
KNOBS = ("sram_bytes", "hbm_bandwidth", "hbm_bytes", "link_count", "link_bandwidth", "mac_units",
         "clock_hz")
SENSITIVITY_FIELDS = ("mac_units", "clock_hz", "sram_bytes", "hbm_bandwidth", "hbm_bytes",
                      "link_count", "link_bandwidth", "node_nm")


def chip_space(system: hw.System) -> Space:
    """Seven chip knobs around the system's chip (the README's reference problem)."""
    return Space(system, [Param.from_field(system, name) for name in KNOBS])


def _section(title: str) -> None:
    print(f"\n== {title} ==")


def run_demo(out_dir: Path = Path("dse-demo"), points: int = 1_000_000,
             quiet: bool = False) -> int:
    """Run the demo, print its story, write its plots to `out_dir`; returns the exit status."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    _section("1. Hardware models on preset chips (area per die, power at peak activity, cost)")
    rows = []
    for name in PRESET_TABLE:
        chip, published = hw.CHIPS[name], hw.PUBLISHED[name]
        a, p, c = hw.area(chip), hw.power(chip), hw.cost(chip)
        rows.append({"chip": name, "node_nm": float(chip.node_nm), "dies": chip.die_count,
                     "area per die": float(a.per_die),
                     "published area": published.die_area_mm2 or float("nan"),
                     "peak_flops": float(chip.peak_flops), "power": float(p.total),
                     "TDP": published.tdp_w or float("nan"), "cost": float(c.total),
                     "yield": float(c.die_yield)})
    print(table(rows, units={"area per die": unit_of("area"), "published area": unit_of("area"),
                             "TDP": unit_of("power")}))
    print("power at peak activity is an upper bound: GPUs at TDP throttle to their measured "
          "matmul rate (tests/test_hardware_fit.py); the energy per MAC is fitted to NVIDIA GPUs, "
          "so non-GPU chips are not validated")

    _section(f"2. H100 x {CHIPS_IN_CLUSTER} training GPT-3 175B, best parallel plan")
    model = models.TRANSFORMERS[MODEL]
    system = hw.SYSTEMS["DGX-H100"].with_num_chips(CHIPS_IN_CLUSTER)
    t = time.perf_counter()
    plan, report = models.best_plan(model, system, GLOBAL_BATCH)
    n_plans = int(models.enumerate_plans(model, CHIPS_IN_CLUSTER, GLOBAL_BATCH).tp.shape[0])
    print(f"{n_plans} plans evaluated in one vmapped call ({time.perf_counter() - t:.1f} s)")
    print("best plan: " + ", ".join(f"{k}={float(getattr(plan, k)):g}" for k in (
        "tp", "pp", "dp", "microbatch_size", "interleave", "sequence_parallel", "recompute",
        "zero_stage")))
    print(f"step time {si(float(report.step_time), 's')}, MFU {float(report.mfu):.1%}, "
          f"{si(float(report.tokens_per_s), unit_of('tokens_per_s'))}, memory/chip "
          f"{si(float(report.memory_per_chip), 'B')} of {si(float(system.chip.hbm_bytes), 'B')}")
    print(table([{k: float(v) for k, v in report.breakdown.items()}],
                units={k: unit_of("step_time") for k in report.breakdown}))
    fig = plot.breakdown({"H100 (best plan)": report}, title="GPT-3 175B step on 1024 H100")
    written.append(plot.save(fig, out_dir / "step_breakdown.png"))

    _section(f"3. Sweep of {points:,} chip designs (7 knobs), step time vs die area")
    space = chip_space(system)
    objective = make_objective("training", model, plan, GLOBAL_BATCH)
    constraints = {"power": ("<=", 1000.0), "reticle_margin": (">=", 0.0),
                   "memory_margin": (">=", 0.0)}
    directions = {"step_time": "min", "area": "min"}
    # Up to a few million rows the whole table is kept (the plot shows the feasible region);
    # beyond that only the streaming front (memory bounded by the chunk).
    table_all = sweep(objective, space, points, chunk_size=1 << 16, directions=directions,
                      constraints=constraints, keep="all" if points <= 4_000_000 else "pareto",
                      progress=not quiet)
    swept = table_all.pareto() if table_all.keep == "all" else table_all
    print(f"{table_all.n_points:,} points in {table_all.run_s:.2f} s "
          f"({table_all.points_per_s:,.0f} points/s after {table_all.compile_s:.1f} s compile); "
          f"{int(np.sum(table_all.feasible)):,} meet every budget (power <= 1000 W, die <= "
          f"reticle, weights fit in HBM); {len(swept)} on the front")

    _section("4. Gradient search of the same problem (front tracing: one SQP step per point)")
    # Two objectives: the front is traced by continuation on forward-mode Jacobians
    # (`optimize(method="trace")`; benchmarks/pareto_race.py measures it against NSGA-II).
    found = optimize(make_objective("training", model, plan, GLOBAL_BATCH, smooth=True), space,
                     objectives=directions, budgets=BUDGETS, method="trace", n_pilot=8,
                     log_objectives=True, progress=not quiet)
    front = found.front_metrics
    print(f"{found.status}: {len(found.front)} feasible front designs from "
          f"{found.n_evaluations} model evaluations ({found.n_gradients} Jacobians counted as "
          f"{EVALUATIONS_PER_JACOBIAN} each; {found.seconds:.1f} s)")
    sweep_points = np.stack([swept["step_time"], swept["area"]], axis=1)
    grad_points = np.stack([front["step_time"], front["area"]], axis=1) if len(found.front) \
        else np.zeros((0, 2))
    both = np.concatenate([sweep_points, grad_points])
    reference = both.max(axis=0) * 1.05
    hv_sweep = hypervolume(sweep_points, reference)
    hv_grad = hypervolume(grad_points, reference) if len(grad_points) else 0.0
    print(f"hypervolume (s x mm2, reference {si(reference[0], 's')}, {reference[1]:.0f} mm2): "
          f"sweep {hv_sweep:.4g} from {table_all.n_points:,} evaluations, gradient {hv_grad:.4g} "
          f"from {found.n_evaluations:,}")

    _section("5. Pareto front (sweep), and the knee")
    order = np.argsort(swept["step_time"])
    idx = order[np.linspace(0, len(order) - 1, min(10, len(order))).astype(int)]
    cols = list(space.names) + ["step_time", "area", "power"]
    print(table([{c: float(swept[c][i]) for c in cols} for i in idx]))
    knee = int(knee_point(sweep_points))
    knee_x = np.array([swept[n][knee] for n in space.names])
    knee_system = space.build(jax.numpy.asarray(knee_x, dtype=jax.numpy.float32))
    print(f"knee: step time {si(float(swept['step_time'][knee]), 's')}, die "
          f"{float(swept['area'][knee]):.0f} mm2, power {float(swept['power'][knee]):.0f} W")

    _section("6. What to improve next at the knee (elasticities of step time, priced in area)")
    sens = sensitivity(objective, knee_system,
                       fields=[hw.FIELDS[f].path(knee_system) for f in SENSITIVITY_FIELDS],
                       directions={"step_time": "min", "area": "min", "tokens_per_s": "max",
                                   "mfu": "max", "memory_margin": "max"})
    ranked = sens.table("step_time", per="area")
    print(ranked[["field", "resource", "elasticity", "direction", "change", "price"]]
          .head(6).to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    print(f"binding resource of the step time: {sens.binding['step_time']}")
    written.append(plot.save(plot.sensitivity_bars(sens, "step_time",
                                                   title="Step time elasticities at the knee"),
                             out_dir / "sensitivity.png"))

    h100 = {k: float(v) for k, v in jax.jit(objective)(system).items()}
    fig = plot.pareto_front(table_all, "step_time", "area",
                            presets={"H100": (h100["step_time"], h100["area"])},
                            budgets="power <= 1000 W, die <= reticle, fits in HBM",
                            title=f"GPT-3 175B on {CHIPS_IN_CLUSTER} chips: "
                                  f"{table_all.n_points:,}-point sweep")
    if len(grad_points):
        ax = fig.axes[0]
        ax.scatter(grad_points[:, 0], grad_points[:, 1], marker="x", s=36, c="tab:red",
                   label="gradient search", zorder=5)
        ax.legend(loc="upper right", fontsize=8)
    written.append(plot.save(fig, out_dir / "pareto.png"))
    fig = plot.breakdown({"H100": hw.area(system.chip), "knee": hw.area(knee_system.chip)},
                         title="Die area by block")
    written.append(plot.save(fig, out_dir / "area_breakdown.png"))

    _section("Plots")
    for path in written:
        print(f"wrote {path}")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    return 0
