"""Validate the workload models against every modellable row of data/.

Training: each row of training_runs.csv that states enough (`dse.calibration.
training_cases`) is predicted with `train_step` (or `best_plan` where the source does not give
the layout) and compared with its measured figure. Also printed: Korthikanti et al. 2022 Fig. 1
memory per GPU, the error of each source with the one fitted constant refitted without it
(held-out), and the inference rows (`dse.calibration.inference_rows`).

Serving: the TensorRT-LLM throughput rows of inference_runs.csv (`dse.calibration.
serving_cases`) and the external checks of serving_external_checks.csv (other TensorRT-LLM
versions, models, chips, TP degrees; and latency under load), each predicted with
`serve_continuous` and the stored calibration. No constant is fitted to a serving row, so every
serving source is held out of every fit (leave-one-source-out holds trivially): the error of
each source and of each model x chip group is out of sample.

Last line: `training_mape=<x> inference_mape=<y> rows=<n> serve_src_median=<s>
serve_coverage=<c>` (mean absolute percentage errors over all training and all inference
figures; n figures in all; s the median over serving sources of each source's median |error|,
%; c the share of the serving rows that are modelled).

Run: `python benchmarks/validate.py [DATA_DIR]` (default: the repository's data/).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

from dse.calibration import (
    FIT_SOURCES,
    inference_rows,
    predict_online,
    predict_serving,
    serving_cases,
    training_cases,
)
from dse.calibration._training_data import fit_fraction_from_parts, predict_parts
from dse.data import data_dir as default_data_dir
from dse.models import (
    DEFAULT,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    TrainingPlan,
    train_step,
)

SUSTAINED_KERNEL_FRACTION = float(DEFAULT.kernel_fraction)

# Korthikanti et al. 2022 (arXiv:2205.05198) Fig. 1, GiB per GPU: parameters + optimizer state;
# activations without sequence parallelism or recomputation; activations with sequence
# parallelism + selective recomputation. Layouts from its Table 3 (as in training_runs.csv).
FIG1 = {
    "gpt-22b": (45.56, 59.25, 9.56, dict(tp=8, pp=1, microbatch_size=4, global_batch=4)),
    "gpt-175b": (45.56, 66.84, 12.35, dict(tp=8, pp=8, microbatch_size=1, global_batch=64,
                                           interleave=3)),
    "megatron-530b": (31.64, 114.02, 23.08, dict(tp=8, pp=35, microbatch_size=1,
                                                 global_batch=280, interleave=3)),
    "megatron-1t": (32.96, 131.25, 26.56, dict(tp=8, pp=64, microbatch_size=1,
                                               global_batch=512)),
}


def _plan_text(plan) -> str:
    if plan is None:
        return ""
    keys = ("tp", "pp", "dp", "microbatch_size", "interleave", "sequence_parallel", "recompute")
    short = ("tp", "pp", "dp", "b", "v", "sp", "rc")
    return " ".join(f"{s}{float(getattr(plan, k)):g}" for s, k in zip(short, keys, strict=False))


def memory_table(system_for) -> list[float]:
    """Print Fig. 1 memory per GPU vs the model; return the absolute % errors."""
    print("\nKorthikanti et al. 2022 Fig. 1, GiB per GPU (published / model / error)")
    print(f"{'model':15s} {'params+optimizer':>28s} {'activations (no SP)':>28s} "
          f"{'activations (SP+selective)':>28s}")
    errors = []
    for name, (p_opt, act_base, act_sel, layout) in FIG1.items():
        model = TRANSFORMERS[name]
        base = TrainingPlan(dp=1, recompute=RECOMPUTE_NONE, **layout)
        sel = base.replace(sequence_parallel=1.0, recompute=RECOMPUTE_SELECTIVE)
        system = system_for(int(layout["tp"] * layout["pp"]))
        # Megatron-LM of 2022 stored the attention scores (no fused attention).
        rb = train_step(model, base, system, flash_attention=False)
        rs = train_step(model, sel, system, flash_attention=False)
        got = ((float(rb.weights_bytes + rb.grads_bytes + rb.optimizer_bytes)),
               float(rb.activations_bytes), float(rs.activations_bytes))
        cells = []
        for pub, g in zip((p_opt, act_base, act_sel), got, strict=False):
            g = g / 2**30
            errors.append(abs(g / pub - 1) * 100)
            cells.append(f"{pub:7.2f} / {g:7.2f} / {100 * (g / pub - 1):+5.1f}%")
        print(f"{name:15s} " + " ".join(f"{c:>28s}" for c in cells))
    print(f"Fig. 1 memory: mean |error| {np.mean(errors):.2f}%, max {np.max(errors):.2f}%")
    return errors


def main(data_dir=None) -> None:
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    cases = training_cases(data_dir)

    print(f"Training rows (sustained kernel fraction {SUSTAINED_KERNEL_FRACTION}, fitted to "
          f"{', '.join(FIT_SOURCES)})")
    print(f"{'row':50s} {'metric':10s} {'measured':>10s} {'predicted':>10s} {'error':>7s}  plan")
    errors = collections.defaultdict(list)
    parts = {}
    for case in cases:
        value, plan, parts[case.run_id] = predict_parts(case)
        err = 100 * (value / case.measured - 1)
        errors[case.source_key].append(err)
        print(f"{case.run_id:50s} {case.metric:10s} {case.measured:10.4g} {value:10.4g} "
              f"{err:+6.1f}%  {_plan_text(plan)}")

    # Held-out: refit the one constant without each source and predict that source.
    print("\nPer source: mean |error| (max) with the stored constant; held out = the constant "
          "refitted without that source")
    for key, errs in errors.items():
        others = [parts[c.run_id] for c in cases
                  if c.source_key != key and c.source_key in FIT_SOURCES]
        eta = fit_fraction_from_parts(others)
        held = []
        for c in cases:
            if c.source_key == key:
                measured, a, b = parts[c.run_id]
                t = a / eta + b
                held.append(100 * abs(measured / t - 1 if c.metric in ("mfu", "tflops_eq3")
                                      else t / measured - 1))
        e = np.abs(errs)
        tag = "fitted" if key in FIT_SOURCES else "held out"
        print(f"  {key:24s} n={len(e):2d} ({tag:8s}) mean {e.mean():5.2f}% max {e.max():5.2f}%"
              f"   held out (eta={eta:.3f}): mean {np.mean(held):5.2f}% max {np.max(held):5.2f}%")

    refit = fit_fraction_from_parts([parts[c.run_id] for c in cases
                                     if c.source_key in FIT_SOURCES])
    print(f"  refit of the stored constant on {', '.join(FIT_SOURCES)}: {refit} "
          f"(stored {SUSTAINED_KERNEL_FRACTION})")

    from dse.hardware import SYSTEMS
    memory_table(lambda n: SYSTEMS["DGX-A100"].with_num_chips(n))

    print("\nInference rows")
    inf = inference_rows(data_dir)
    inf_err = []
    for r in inf:
        err = 100 * (r["predicted"] / r["measured"] - 1)
        inf_err.append(abs(err))
        print(f"{r['row_id']:50s} {r['unit']:10s} {r['measured']:10.4g} {r['predicted']:10.4g} "
              f"{err:+6.1f}%")

    serve_src_median, serve_coverage = serving_table(data_dir)

    train_err = np.abs(np.concatenate([np.asarray(v) for v in errors.values()]))
    n = len(train_err) + len(inf_err)
    print(f"training_mape={train_err.mean():.2f} inference_mape={np.mean(inf_err):.2f} rows={n} "
          f"serve_src_median={serve_src_median:.2f} serve_coverage={serve_coverage:.2f}")


def serving_table(data_dir) -> tuple[float, float]:
    """Print the serving rows' errors by source and by model x chip group; return the median
    over sources of each source's median |error| (%) and the share of rows modelled."""
    by_source = collections.defaultdict(list)
    by_group = collections.defaultdict(list)
    modelled = total = 0
    print("\nServing rows at full load: output tokens/s of the TP group (measured / model / "
          "error); every source held out of every fit")
    for external in (False, True):
        cases, skipped = serving_cases(data_dir, external=external)
        modelled, total = modelled + len(cases), total + len(cases) + len(skipped)
        for case, value in zip(cases, predict_serving(cases)):
            err = 100 * (value / case.measured - 1)
            by_source[case.source_key].append(err)
            by_group[(case.source_key, case.group)].append(err)
            print(f"{case.run_id:55s} {case.measured:10.4g} {value:10.4g} {err:+6.1f}%")
        for row in skipped:
            print(f"{row.run_id:55s} not modelled: {row.reason}")

    print("\nServing rows under load: mean TTFT and mean TPOT at the offered rate, ms "
          "(measured / model / error); rate inf = every request at once (not in the median: "
          "the concurrency is the request count, not a steady state)")
    cases, skipped = serving_cases(data_dir, external=True, online=True)
    modelled, total = modelled + len(cases), total + len(cases) + len(skipped)
    for case, (ttft, tpot) in zip(cases, predict_online(cases)):
        m_ttft, m_tpot = case.measured_latency
        e_tpot = 100 * (tpot / m_tpot - 1)
        e_ttft = 100 * (ttft / m_ttft - 1) if np.isfinite(ttft) else float("nan")
        if np.isfinite(case.rate):
            by_source[case.source_key].append(e_tpot)
            by_group[(case.source_key, case.group + " TPOT")].append(e_tpot)
            by_group[(case.source_key, case.group + " TTFT")].append(e_ttft)
        print(f"{case.run_id:55s} rate {case.rate:5g}/s TTFT {1e3 * m_ttft:8.1f} "
              f"{1e3 * ttft:8.1f} {e_ttft:+7.1f}%  TPOT {1e3 * m_tpot:6.1f} {1e3 * tpot:6.1f} "
              f"{e_tpot:+7.1f}%")

    print("\nServing: median |error| (median signed error) per source x model x chip group")
    for (source, group), errs in sorted(by_group.items()):
        e = np.asarray(errs)
        saturated = int(np.sum(~np.isfinite(e)))
        e = e[np.isfinite(e)]
        met = "met" if np.median(np.abs(e)) <= 15.0 else "missed"
        extra = f"; {saturated} rows past the modelled capacity (TTFT inf)" if saturated else ""
        print(f"  {source:24s} {group:36s} n={len(e):3d} {np.median(np.abs(e)):6.1f}% "
              f"({np.median(e):+6.1f}%)  15% target {met}{extra}")
    medians = {k: float(np.median(np.abs(v))) for k, v in by_source.items()}
    for source, m in medians.items():
        print(f"  source {source:24s} n={len(by_source[source]):3d} median |error| {m:6.1f}% "
              "(held out)")
    return float(np.median(list(medians.values()))), modelled / max(total, 1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
