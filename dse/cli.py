"""`dse` command line: demo, evaluate, sweep, optimize and sensitivity of a TOML config.

Every command prints a table on the terminal and writes CSV (and PNGs where a plot applies) to
the config's output folder. A bad config is one line on stderr naming the key and its line, and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jaxtyping import ArrayLike, Real

from ._format import UNITS, si, table, unit_of

EXIT_BAD_INPUT = 2


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _status(reason: Real[ArrayLike, ""], shortfall: Real[ArrayLike, ""] | None = None,
            broken: Sequence[str] = ()) -> str:
    """"ok", or what makes a result infeasible and by how much, in words (a report's or a sweep
    row's reason flags and memory shortfall in bytes, python or numpy scalars)."""
    from .hardware import Reason, describe_reason

    reason = int(np.asarray(reason))
    words = [] if reason == 0 else [describe_reason(reason)]
    if shortfall is not None and float(shortfall) > 0 and reason & (Reason.MEMORY | Reason.SRAM):
        words.append(f"short by {si(float(shortfall), 'B')} per chip")
    words += list(broken)
    return "ok" if not words else "INFEASIBLE: " + "; ".join(words)


def _blocks(report, unit: str) -> tuple[list[dict], str]:
    """A one-row table of a report's blocks and its total, without the blocks that are 0 (the
    design or the model does not have them), and a note naming those."""
    blocks = {k: float(v) for k, v in report.blocks.items()}
    absent = [k for k, v in blocks.items() if v == 0.0]
    row = {k: v for k, v in blocks.items() if v != 0.0} | {"total": float(report.total)}
    note = f" (not shown, 0 here: {', '.join(absent)})" if absent else ""
    return [row], note


def cmd_evaluate(args) -> int:
    import jax

    from . import hardware as hw
    from . import models
    from ._format import REASON_METRIC
    from ._study import load_study

    study = load_study(args.config)
    system = study.system
    metrics = _scalar_metrics(jax.jit(study.objective())(system))
    reason = metrics.pop(REASON_METRIC)
    print(f"{system.chip.name} x {system.num_chips} ({system.name}), {study.kind} of "
          f"{study.model.name}")
    print(table([metrics]))
    print("cost: manufacturing cost per chip (dies at their yield, HBM, package), not a price")
    print(f"status: {_status(reason, metrics.get('memory_shortfall'))}")
    area = hw.area(system.chip)
    power = hw.power(system.chip)
    rows, note = _blocks(area, unit_of("area"))
    print(f"\narea by block (mm2){note}:")
    print(table(rows, units={k: unit_of("area") for k in rows[0]}))
    rows, note = _blocks(power, unit_of("power"))
    print(f"\npower by block at full activity (peak MAC rate, HBM and links saturated), W{note}:")
    print(table(rows, units={k: unit_of("power") for k in rows[0]}))
    if study.kind == "training":
        if study.plan is None:
            plan, report = models.best_plan(study.model, system, study.global_batch,
                                            precision=study.precision)
            chosen = "best plan" if bool(report.fits) else \
                "NO PLAN FITS; the plan that misses least"
        else:
            plan, report = study.plan, models.train_step(study.model, study.plan, system)
            chosen = "plan"
        print(f"\n{chosen}: " + ", ".join(f"{k}={float(getattr(plan, k)):g}" for k in
                                         ("tp", "pp", "dp", "microbatch_size", "interleave",
                                          "recompute", "zero_stage")))
        print(f"plan status: {_status(report.reason, float(report.memory_shortfall))}")
        print("step time by component (s):")
        print(table([{k: float(v) for k, v in report.breakdown.items()}
                     | {"step_time": float(report.step_time)}],
                    units={k: unit_of("step_time") for k in report.breakdown}))
    out = study.output_dir / "evaluate.csv"
    _write_csv(out, [metrics | {REASON_METRIC: reason, "status": _status(reason)}])
    print(f"\nwrote {out}")
    return 0


def _front_rows(names, x, metrics, order, limit=20):
    rows = []
    for i in order[:limit]:
        row = {n: float(x[i, j]) for j, n in enumerate(names)}
        row.update({k: float(v[i]) for k, v in metrics.items()})
        rows.append(row)
    return rows


def _sweep_status(result, i: int, budgets) -> str:
    """Why row i of a sweep table is infeasible ("ok" when it is not)."""
    from ._format import REASON_METRIC

    broken = []
    for name, (low, high) in budgets.items():
        margin = result[f"margin_{name}"][i] if f"margin_{name}" in result.columns else 0.0
        if margin < 0:
            broken.append(f"{_budget_text(name, (low, high))} missed by "
                          f"{si(-float(margin), UNITS.get(name, ''))}")
    reason = result[REASON_METRIC][i] if REASON_METRIC in result.columns else 0.0
    shortfall = result["memory_shortfall"][i] if "memory_shortfall" in result.columns else None
    return _status(reason, shortfall, broken)


def cmd_sweep(args) -> int:
    from ._study import budgets_as_constraints, load_study
    from ._sweep import SweepInfeasibleWarning, sweep

    study = load_study(args.config)
    if study.space is None:
        print(f"dse: error: {study.path}: space: a sweep needs a [space] table", file=sys.stderr)
        return EXIT_BAD_INPUT
    n = args.n or study.sweep_n
    directions = study.objectives or {"step_time": "min", "area": "min"}
    # The config's [sweep] path, or with --resume a folder beside the outputs: an interrupted
    # sweep continues there (and refuses to continue a different one).
    path = study.sweep_path or (study.output_dir / "sweep-state" if args.resume else None)
    with warnings.catch_warnings():
        # Said below in the table's own words (NO FEASIBLE DESIGN, and each row's miss).
        warnings.simplefilter("ignore", SweepInfeasibleWarning)
        result = sweep(study.objective(), study.space, n, chunk_size=study.sweep_chunk,
                       seed=study.seed, directions=directions,
                       constraints=budgets_as_constraints(study.budgets),
                       keep="pareto" if n > 2_000_000 else "all", progress=not args.quiet,
                       path=path)
    front = result.pareto() if result.keep == "all" else result
    feasible_front = bool(np.any(front.feasible))
    print(f"{result.n_points} points in {result.run_s:.2f} s "
          f"({result.points_per_s:,.0f} points/s, compile {result.compile_s:.2f} s); "
          f"{int(np.sum(result.feasible))} feasible rows kept, "
          f"{len(front) if feasible_front else 0} on the feasible front")
    if path is not None:
        print(f"sweep state in {path} (rerun with the same config to resume)")
    if result.nan_count:
        print(f"warning: {result.nan_count} points gave NaN (first: index "
              f"{int(result.nan_index[0])}, metrics {', '.join(result.nan_metrics[0])})")
    first = next(iter(directions))
    order = np.argsort(front[first])
    if directions[first] == "max":
        order = order[::-1]
    cols = list(front.params) + list(directions)
    rows = [{c: float(front[c][i]) for c in cols} | {"status": _sweep_status(front, int(i),
                                                                             study.budgets)}
            for i in order[:20]]
    if not feasible_front:
        print("NO FEASIBLE DESIGN: every point breaks a budget or is infeasible. The rows below "
              "are the non-dominated infeasible points, for reference only, each with what it "
              "misses:")
    elif len(front) > len(rows):
        print(f"the first {len(rows)} of {len(front)} front designs by {first} "
              f"(all in {study.output_dir / 'sweep_front.csv'}):")
    print(table(rows) if rows else "no design on the front")
    study.output_dir.mkdir(parents=True, exist_ok=True)
    front.to_csv(study.output_dir / "sweep_front.csv")
    if result.keep == "all":
        result.to_csv(study.output_dir / "sweep.csv")
    _maybe_plot_front(study, result, directions)
    print(f"wrote {study.output_dir}")
    return 0


def _maybe_plot_front(study, result, directions) -> None:
    from . import plot

    names = list(directions)[:2]
    if len(names) < 2 or not len(result):
        return
    base = {k: float(v) for k, v in jax.jit(study.objective())(study.system).items()}
    plot.pareto_front(result, names[0], names[1],
                      directions=tuple(directions[n] for n in names),
                      presets={study.system.chip.name: (base[names[0]], base[names[1]])},
                      budgets=", ".join(_budget_text(k, b) for k, b in study.budgets.items()),
                      path=study.output_dir / "pareto.png")


def _budget_text(name, bound) -> str:
    low, high = bound
    unit = UNITS.get(name, "")
    return " ".join(p for p in (f"{si(low, unit)} <=" if low is not None else "", name,
                                f"<= {si(high, unit)}" if high is not None else "") if p)


def cmd_optimize(args) -> int:
    from ._optimize import optimize
    from ._study import load_study

    study = load_study(args.config)
    if study.space is None or not study.objectives:
        print(f"dse: error: {study.path}: optimize needs [space] and [objectives] tables",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    budgets = {k: (lo, hi) for k, (lo, hi) in study.budgets.items()}
    result = optimize(study.objective(smooth=True), study.space, objectives=study.objectives,
                      budgets=budgets, progress=not args.quiet, **study.optimize_options)
    print(f"{result.status}: {len(result.front)} designs on the feasible front, "
          f"{result.n_evaluations} model evaluations, {result.seconds:.1f} s")
    if result.message:
        print(result.message)
    names = list(result.names)
    rows = _front_rows(names, result.x, {k: v for k, v in result.metrics.items()
                                         if k in study.objectives or k in study.budgets},
                       result.front)
    print(table(rows) if rows else "no feasible design")
    study.output_dir.mkdir(parents=True, exist_ok=True)
    result.to_dataframe().to_csv(study.output_dir / "optimize_front.csv", index=False)
    print(f"wrote {study.output_dir}")
    return 0 if result.status == "ok" else 1


def cmd_sensitivity(args) -> int:
    from . import plot
    from ._sensitivity import sensitivity
    from ._study import load_study
    from .hardware import FIELDS

    study = load_study(args.config)
    fields = [f.path(study.system) for f in FIELDS.values() if f.owner == "Chip"]
    metrics = list(study.objectives) or [study.metric_names[0]]
    directions = dict(study.objectives) or {metrics[0]: "min"}
    result = sensitivity(study.objective(smooth=True), study.system, fields=fields,
                         directions=directions)
    study.output_dir.mkdir(parents=True, exist_ok=True)
    for metric in metrics:
        ranked = result.table(metric, per="area" if metric != "area" else None)
        print(f"\n{metric} = {float(result.values[metric]):.4g}; binding resource: "
              f"{result.binding[metric]}")
        print(ranked.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        ranked.to_csv(study.output_dir / f"sensitivity_{metric}.csv", index=False)
        plot.sensitivity_bars(result, metric,
                              path=study.output_dir / f"sensitivity_{metric}.png")
    print(f"\nwrote {study.output_dir}")
    return 0


def cmd_demo(args) -> int:
    from ._demo import run_demo

    return run_demo(out_dir=Path(args.out), points=args.points, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dse", description="Differentiable design-space exploration of AI hardware.")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (also: "
                             "DSE_COMPILATION_CACHE=0)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the whole story in about a minute: evaluate, sweep, "
                                       "optimize, sensitivities, plots")
    demo.add_argument("--out", default="dse-demo", help="folder for the plots (default dse-demo)")
    demo.add_argument("--points", type=int, default=1_000_000, help="points in the sweep")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    for name, func, text in (("evaluate", cmd_evaluate, "metrics and breakdowns of one design"),
                             ("sweep", cmd_sweep, "sweep the [space] and print the front"),
                             ("optimize", cmd_optimize, "gradient search under [budgets]"),
                             ("sensitivity", cmd_sensitivity, "elasticities of the metrics")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="TOML config (see examples/)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "sweep":
            p.add_argument("--n", type=int, default=None, help="points (overrides the config)")
            p.add_argument("--resume", action="store_true",
                           help="keep the sweep's state in <output dir>/sweep-state and "
                                "continue an interrupted run from there (a [sweep] path in the "
                                "config does the same)")
        p.set_defaults(func=func)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dse` console script."""
    from ._study import ConfigError

    args = build_parser().parse_args(argv)
    if args.no_compile_cache:
        from ._cache import compilation_cache

        compilation_cache(False)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"dse: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, KeyError) as e:
        message = str(e).strip("'\"")
        print(f"dse: error: {message.splitlines()[0] if message else type(e).__name__}",
              file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
