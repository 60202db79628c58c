"""Validate the workload models against every row of data/, in sample and out of sample.

Training (data/training_runs.csv): every row is either modelled (`dse.calibration.training_rows`:
`train_step`, or `layer_time` for Korthikanti Table 4, with the plan the source states or the
fastest feasible one it leaves open) or counted as not modellable with its reason (FP8 / FP4 rows
are modelled in the low-precision tables of benchmarks/validate_precision.py, which `main` runs
too: its `lp_...` figures end the last line). The constants fitted to training runs,
`Calibration.kernel_fraction` and the `framework_scale` of every framework with a row, under a
prior centred on 1 (`dse.calibration.fit_training_constants`), are fitted to every modelled row and,
leave-one-source-out, refitted without each source in turn to predict it. Every other constant
is fitted to data that contains no training run (FlashAttention kernel throughputs, LLMCompass
A100 operators, chips.csv, one NCCL measurement), so it is the same in every fold.

Per source the tables give rows (in the file), modelled, median |err|, p90 |err|, signed mean,
share optimistic (predicted faster than measured) and, out of sample, the share of rows inside
their 90% prediction interval (`dse.calibration.prediction_interval`: the fold's fitted value
with the residual spread across the other sources, `source_spread`, and Student's t at its
Satterthwaite degrees of freedom, `spread_dof`). The error of a row is
predicted / measured time - 1.

Serving: the TensorRT-LLM throughput rows of inference_runs.csv (`dse.calibration.
serving_cases`) and the external checks of serving_external_checks.csv (other TensorRT-LLM
versions, models, chips, TP degrees; and latency under load), each predicted with
`serve_continuous` and the stored calibration. No constant is fitted to a serving row, so every
serving source is held out of every fit: each source's error is out of sample.

Recommendation (data/recsys_runs.csv): published DLRM training throughput (TorchRec on 8 A100,
MLPerf Training v4.0 DLRM-DCNv2 on 4-128 GPUs) predicted by `dse.models.rec_train_step`
(`dse.calibration.recsys_cases`); per source, every row held out of every fit.

Speculative decoding (data/speculative_runs.csv: Spec-Bench's A100 EAGLE / EAGLE-2 / EAGLE-3
speed-ups with their measured acceptance lengths, `dse.calibration.speculative_cases`): the
modelled speed-up of `speculative_decode` at the measured tau; nothing is fitted to these rows.

MoE and context parallelism (source `megatron_moe_modelzoo_qwen3` of training_runs.csv:
Qwen3-235B-A22B on 256 H100, `dse.calibration.moe_cases`): every row held out of every fit
(`benchmarks/validate_moe_cp.py` prints each row's breakdown).

External checks (data/external_checks.csv): published runs that no fit reads, predicted by the
same models and the all-source fit, unchanged. Inference (data/inference_runs.csv): per source.

Last line: `train_src_median=<x> train_p90=<y> train_bias=<z> train_coverage=<c>
loso_src_median=<l> interval_coverage=<k> infer_src_median=<i> serve_src_median=<s>
serve_coverage=<v> rec_src_median=<r> moe_src_median=<m> lp_train_src_median=...
lp_serve_group_median=...`
(fractions): the median over
sources of the per-source median |err| (in sample); the 90th percentile of |err| over rows (in
sample); the mean over sources of the signed mean error (in sample); the share of rows in
their in-sample 90% interval; the median over sources of the leave-one-source-out median
|err|; the share of leave-one-source-out rows in their 90% interval; the median over
inference sources of the median |err|; the median over serving sources of the median |err|,
and the share of serving rows modelled; the median over recommendation (DLRM) sources of the
median |err| (no constant is fitted to them: in sample = leave one source out); the same for
the MoE / context-parallel sources; then the
low-precision figures of benchmarks/validate_precision.py (worst source, in sample and held out;
pairs within 8%; worst serving group).

Run: `python benchmarks/validate.py [--rows] [DATA_DIR]` (`--rows` prints every row).
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import jax
import numpy as np

from dse.calibration import (
    FRAMEWORK_PRIOR_LOG_STD,
    TrainingRows,
    fit_training_constants,
    inference_rows,
    inference_skipped,
    moe_cases,
    multimodal_cases,
    param_names,
    parameter_log_std,
    predict_moe,
    predict_multimodal,
    predict_online,
    predict_recsys,
    predict_serving,
    predict_speculative,
    prediction_interval,
    recsys_cases,
    serving_cases,
    source_spread,
    speculative_cases,
    spread_dof,
    training_rows,
)
from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS, describe_reason
from dse.models import (
    DEFAULT,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    TrainingPlan,
    train_step,
)

LEVEL = 0.9  # prediction-interval coverage

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


def memory_table() -> None:
    """Print Fig. 1 memory per GPU vs the model."""
    print("\nKorthikanti et al. 2022 Fig. 1, GiB per GPU (published / model / error)")
    errors = []
    for name, (p_opt, act_base, act_sel, layout) in FIG1.items():
        model = TRANSFORMERS[name]
        base = TrainingPlan(dp=1, recompute=RECOMPUTE_NONE, **layout)
        sel = base.replace(sequence_parallel=1.0, recompute=RECOMPUTE_SELECTIVE)
        system = SYSTEMS["DGX-A100"].with_num_chips(int(layout["tp"] * layout["pp"]))
        rb = train_step(model, base, system, flash_attention=False)
        rs = train_step(model, sel, system, flash_attention=False)
        got = (float(rb.weights_bytes + rb.grads_bytes + rb.optimizer_bytes),
               float(rb.activations_bytes), float(rs.activations_bytes))
        cells = []
        for pub, g in zip((p_opt, act_base, act_sel), got, strict=True):
            g = g / 2**30
            errors.append(abs(g / pub - 1) * 100)
            cells.append(f"{pub:7.2f} / {g:7.2f} / {100 * (g / pub - 1):+5.1f}%")
        print(f"  {name:15s} " + " ".join(f"{c:>28s}" for c in cells))
    print(f"  Fig. 1 memory: mean |error| {np.mean(errors):.2f}%, max {np.max(errors):.2f}%")


def _stats(err, covered=None) -> dict:
    err = np.asarray(err)
    a = np.abs(err)
    out = dict(median=float(np.median(a)), p90=float(np.quantile(a, 0.9)),
               mean=float(np.mean(err)), optimistic=float(np.mean(err < 0)),
               mean_abs=float(np.mean(a)))
    if covered is not None:
        out["coverage"] = float(np.mean(covered))
    return out


def source_table(title, sources, in_file, err, covered=None) -> dict:
    """Print one row per source; return {source: stats}."""
    print(f"\n{title}")
    cov = " cover90" if covered is not None else ""
    print(f"  {'source':30s} {'rows':>4s} {'model':>5s} {'med|e|':>7s} {'p90|e|':>7s} "
          f"{'mean':>7s} {'optim':>6s}{cov}")
    stats = {}
    for src in dict.fromkeys(in_file):
        mask = np.array([s == src for s in sources], bool)
        n_file = sum(1 for s in in_file if s == src)
        if not mask.any():
            print(f"  {src:30s} {n_file:4d} {0:5d}   (no modellable row)")
            continue
        st = _stats(err[mask], None if covered is None else covered[mask])
        stats[src] = st
        extra = f" {100 * st['coverage']:6.0f}%" if covered is not None else ""
        print(f"  {src:30s} {n_file:4d} {int(mask.sum()):5d} {100 * st['median']:6.1f}% "
              f"{100 * st['p90']:6.1f}% {100 * st['mean']:+6.1f}% {100 * st['optimistic']:5.0f}%"
              f"{extra}")
    return stats


def skipped_table(skipped) -> None:
    counts = collections.Counter((s.source_key, s.reason) for s in skipped)
    print(f"  not modellable: {len(skipped)} rows")
    for (src, reason), k in sorted(counts.items()):
        print(f"    {src:30s} {k:3d}  {reason}")


def _fold_intervals(result, data, model_fn, frameworks):
    """Leave-one-source-out 90% intervals: each fold's prediction of its held-out rows with the
    residual spread of its own training sources and the all-row parameter uncertainty. A row
    whose framework no training row of its fold ran on has its framework scale from the prior
    alone, so its interval also carries the prior's spread, `FRAMEWORK_PRIOR_LOG_STD`.

    The spread is that of the training sources' held-out residuals (each predicted by the fit
    without it), not of their in-sample residuals: a fit pulls the rows it saw toward itself, so
    in-sample residuals understate the error a new source meets (the jackknife+ interval builds
    on leave-one-out residuals for that reason: Barber, Candes, Ramdas & Tibshirani 2021,
    "Predictive inference with the jackknife+", Ann. Statist. 49(1)). A training source's
    held-out residual comes from the fit without it but with the fold's held-out source (the
    leave-one-source-out fits already run, not a nested refit): a slight understatement."""
    measured = np.asarray(data.measured)
    group = np.asarray(data.group)
    held = np.asarray(result.fold_held)
    preds = np.asarray(result.fold_predicted)
    loso = np.asarray(result.validation_predicted)
    param_std = np.asarray(parameter_log_std(model_fn, result, data.inputs))
    frameworks = np.asarray(frameworks)
    covered = np.zeros(data.n, bool)
    width = np.zeros(data.n)
    for k in range(held.shape[0]):
        train = ~held[k]
        train_residual = np.log(loso[train] / measured[train])
        spread = source_spread(train_residual, group[train])
        rows = held[k]
        unseen = ~np.isin(frameworks[rows], frameworks[train])
        log_std = np.sqrt(spread**2 + param_std[rows] ** 2
                          + np.where(unseen, FRAMEWORK_PRIOR_LOG_STD**2, 0.0))
        iv = prediction_interval(preds[k][rows], log_std, level=LEVEL,
                                 dof=spread_dof(train_residual, group[train]))
        covered[rows] = np.asarray(iv.contains(measured[rows]))
        width[rows] = np.asarray(iv.upper / iv.value - 1.0)
    return covered, width


def main(argv) -> None:
    t0 = time.perf_counter()
    show_rows = "--rows" in argv
    args = [a for a in argv if not a.startswith("--")]
    data_dir = default_data_dir() if not args else Path(args[0])

    cases, skipped = training_rows(data_dir)
    in_file = [c.source_key for c in cases] + [s.source_key for s in skipped]
    rows = TrainingRows(cases)
    result, data, model_fn = fit_training_constants(rows)
    fitted = result.params
    measured = np.asarray(data.measured)
    group = np.asarray(data.group)
    sources = [data.sources[g] for g in group]
    pred_in = np.asarray(model_fn(fitted, data.inputs))
    err_in = pred_in / measured - 1.0
    spread_all = source_spread(np.log(pred_in / measured), group)
    log_std_in = np.sqrt(spread_all**2 + np.asarray(parameter_log_std(model_fn, result,
                                                                      data.inputs)) ** 2)
    dof_in = spread_dof(np.log(pred_in / measured), group)
    iv_in = prediction_interval(pred_in, log_std_in, level=LEVEL, dof=dof_in)
    covered_in = np.asarray(iv_in.contains(measured))
    loso = np.asarray(result.validation_predicted)
    err_loso = loso / measured - 1.0
    covered_loso, width = _fold_intervals(result, data, model_fn,
                                          [c.framework for c in cases])

    print(f"Training: {len(cases)} of {len(in_file)} rows of training_runs.csv modelled "
          f"({len(data.sources)} sources). Constants fitted to all of them "
          f"({result.convergence_report()}):")
    shipped = dict(zip(param_names(DEFAULT), jax.tree.leaves(DEFAULT), strict=True))
    for name, (value, std) in result.as_dict().items():
        print(f"  {name:32s} {value:.4f} +- {std:.4f} (shipped {float(shipped[name]):.4f})")
    print("  (every other constant is fitted to data without a training run: the same in "
          "every fold)")
    example = prediction_interval(pred_in[0], log_std_in[0], level=LEVEL, dof=dof_in)
    print(f"  residual spread across sources (log std): {spread_all:.3f}; a prediction reads "
          f"e.g. {example.format()} for {cases[0].run_id} (measured {measured[0]:.3g} s)")
    skipped_table(skipped)
    if show_rows:
        print(f"\n  {'row':52s} {'measured':>9s} {'in':>7s} {'loso':>7s} {'+-90%':>6s}  plan")
        for i, case in enumerate(cases):
            p = rows.plans[i]
            plan = " ".join(f"{k}{float(getattr(p, f)):g}" for k, f in (
                ("tp", "tp"), ("pp", "pp"), ("dp", "dp"), ("b", "microbatch_size"),
                ("v", "interleave"), ("rc", "recompute"), ("z", "zero_stage")))
            print(f"  {case.run_id:52s} {measured[i]:9.4g} {100 * err_in[i]:+6.1f}% "
                  f"{100 * err_loso[i]:+6.1f}% {100 * width[i]:5.0f}%  {plan}")
    in_stats = source_table("In sample (the training constants fitted to every source)",
                            sources, in_file, err_in, covered_in)
    loso_stats = source_table("Leave one source out (the training constants refitted without "
                              "the source they predict)", sources, in_file, err_loso,
                              covered_loso)
    k5 = [abs(e) for e, s in zip(err_loso, sources, strict=True) if s == "korthikanti_table5"]
    print(f"  Korthikanti Table 5, held out: mean |err| {100 * np.mean(k5):.2f}% "
          f"(target 3.5%)")
    memory_table()

    # External checks: the same models, the all-source fit, no refitting.
    ext_cases, ext_skipped = training_rows(data_dir, filename="external_checks.csv")
    ext_rows = TrainingRows(ext_cases)
    ext_pred = np.asarray(ext_rows(fitted))
    ext_err = ext_pred / ext_rows.measured - 1.0
    ext_in_file = [c.source_key for c in ext_cases] + [s.source_key for s in ext_skipped]
    ext_stats = source_table("External checks (data/external_checks.csv: no fit reads them; "
                             "all-source fit, models unchanged)",
                             [c.source_key for c in ext_cases], ext_in_file, ext_err)
    skipped_table(ext_skipped)
    if show_rows:
        for c, e in zip(ext_cases, ext_err, strict=True):
            print(f"  {c.run_id:52s} {c.measured:9.4g} {100 * e:+6.1f}%  {c.stated}")
    print(f"  external: median over sources of median |err| "
          f"{100 * np.median([s['median'] for s in ext_stats.values()]):.1f}%, all rows "
          f"median {100 * np.median(np.abs(ext_err)):.1f}%, p90 "
          f"{100 * np.quantile(np.abs(ext_err), 0.9):.1f}%, signed mean "
          f"{100 * np.mean(ext_err):+.1f}%")

    # Inference.
    inf = inference_rows(data_dir)
    inf_skipped = inference_skipped(data_dir)
    inf_err = np.array([r["predicted"] / r["measured"] - 1.0 for r in inf])
    inf_sources = [r["source"] for r in inf]
    inf_stats = source_table("Inference (shipped defaults)", inf_sources,
                             inf_sources + [s.source_key for s in inf_skipped], inf_err)
    skipped_table(inf_skipped)
    if show_rows:
        for r, e in zip(inf, inf_err, strict=True):
            print(f"  {r['row_id']:52s} {r['measured']:9.4g} ms {100 * e:+6.1f}%")

    serve_src_median, serve_coverage = serving_table(data_dir)
    rec_src_median = recsys_table(data_dir, show_rows)
    moe_src_median = moe_table(data_dir)
    multimodal_table(data_dir)
    speculative_table(data_dir)
    low = low_precision(data_dir)

    print(f"\n(validated in {time.perf_counter() - t0:.0f} s)")
    print(f"train_src_median={np.median([s['median'] for s in in_stats.values()]):.4f} "
          f"train_p90={np.quantile(np.abs(err_in), 0.9):.4f} "
          f"train_bias={np.mean([s['mean'] for s in in_stats.values()]):.4f} "
          f"train_coverage={np.mean(covered_in):.4f} "
          f"loso_src_median={np.median([s['median'] for s in loso_stats.values()]):.4f} "
          f"interval_coverage={np.mean(covered_loso):.4f} "
          f"infer_src_median={np.median([s['median'] for s in inf_stats.values()]):.4f} "
          f"serve_src_median={serve_src_median:.4f} serve_coverage={serve_coverage:.4f} "
          f"rec_src_median={rec_src_median:.4f} moe_src_median={moe_src_median:.4f} "
          f"{low}")


def multimodal_table(data_dir) -> None:
    """Print the multimodal (DiT) rows' step-time and memory errors; no constant is fitted to
    them (held out of every fit)."""
    cases, skipped = multimodal_cases(data_dir)
    print("\nMultimodal (data/multimodal_runs.csv: step s and memory per chip, measured / "
          "model / error; no constant fitted to these rows)")
    for c, (t, mem) in zip(cases, predict_multimodal(cases), strict=True):
        mem_err = f"{100 * (mem / c.memory - 1):+6.1f}%" if np.isfinite(c.memory) else "n/a"
        print(f"  {c.run_id:40s} {c.source_key:18s} {c.measured:7.3f} {t:7.3f} "
              f"{100 * (t / c.measured - 1):+6.1f}%   {c.memory / 1e9:6.1f} GB "
              f"{mem / 1e9:6.1f} GB {mem_err}")
    skipped_table(skipped)


def speculative_table(data_dir) -> None:
    """Print the speculative-decoding rows' speed-ups (measured / model at the measured
    acceptance length / error); no constant is fitted to them."""
    cases = speculative_cases(data_dir)
    print("\nSpeculative decoding (data/speculative_runs.csv: speed-up over plain decoding at the "
          "measured acceptance length tau; measured / model / error; nothing fitted to these rows)")
    errors = []
    for c, model in zip(cases, predict_speculative(cases), strict=True):
        errors.append(100 * (model / c.measured - 1))
        print(f"  {c.run_id:36s} {c.method:8s} tau {float(c.speculation.acceptance_length):4.2f} "
              f"{c.measured:5.2f}x {model:5.2f}x {errors[-1]:+6.1f}%")
    print(f"  median |error| {np.median(np.abs(errors)):.1f}% over {len(errors)} rows")


def moe_table(data_dir) -> float:
    """Print the MoE / context-parallel rows' step-time errors by source; return the median
    over sources of each source's median |error|. No constant is fitted to these rows, so in
    sample is leave one source out; a row the model flags infeasible is counted and marked
    with its reason."""
    cases = moe_cases(data_dir)
    reports = predict_moe(cases)
    err = np.array([float(r.step_time) / c.measured - 1.0
                    for c, r in zip(cases, reports, strict=True)])
    sources = [c.source_key for c in cases]
    print("\nMoE and context parallelism (step s, measured / model / error; no constant fitted "
          "to these rows: in sample = leave one source out; flagged rows name their reason)")
    for c, r, e in zip(cases, reports, err, strict=True):
        flag = "" if bool(r.fits) else f"  flagged: {describe_reason(r.reason)}"
        print(f"  {c.run_id:48s} {c.measured:8.2f} {float(r.step_time):8.2f} {100 * e:+6.1f}%"
              f"{flag}")
    stats = source_table("MoE / context parallel by source", sources, sources, err)
    return float(np.median([s["median"] for s in stats.values()]))


def recsys_table(data_dir, show_rows: bool) -> float:
    """Print the DLRM training rows' errors (samples/s) by source; return the median over
    sources of each source's median |error| (a fraction).

    No constant is fitted to a recommendation row: the shipped calibration (fitted to operator,
    attention, NCCL and LLM training data) predicts them, so each source's error is already
    out of sample and its leave-one-source-out error is the same figure.
    """
    cases, skipped = recsys_cases(data_dir)
    pred = predict_recsys(cases)
    measured = np.array([c.measured for c in cases])
    # Error of the step time (predicted / measured time - 1), as the training rows.
    err = measured / pred - 1.0
    sources = [c.source_key for c in cases]
    print("\nRecommendation (data/recsys_runs.csv, DLRM training samples/s; no constant fitted "
          "to these rows: in sample = leave one source out)")
    if show_rows:
        for c, p, e in zip(cases, pred, err, strict=True):
            print(f"  {c.run_id:44s} {c.measured:10.4g} {p:10.4g} {100 * e:+6.1f}%")
    stats = source_table("Recommendation by source (error of the step time)", sources,
                         sources + [s.source_key for s in skipped], err)
    skipped_table(skipped)
    return float(np.median([s["median"] for s in stats.values()]))


def serving_table(data_dir) -> tuple[float, float]:
    """Print the serving rows' errors by source and by model x chip group; return the median
    over sources of each source's median |error| (a fraction) and the share of rows modelled."""
    by_source = collections.defaultdict(list)
    by_group = collections.defaultdict(list)
    modelled = total = 0
    print("\nServing rows at full load: output tokens/s of the TP group (measured / model / "
          "error); every source held out of every fit")
    for external in (False, True):
        cases, skipped = serving_cases(data_dir, external=external)
        modelled, total = modelled + len(cases), total + len(cases) + len(skipped)
        for case, value in zip(cases, predict_serving(cases), strict=True):
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
    for case, (ttft, tpot) in zip(cases, predict_online(cases), strict=True):
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
    return float(np.median(list(medians.values()))) / 100.0, modelled / max(total, 1)


def low_precision(data_dir: Path) -> str:
    """The FP8, MXFP8 and FP4 rows of data/ (training per source with leave-one-source-out
    refits, the same-shape pairs, the serving rows per source), printed by the companion
    benchmarks/validate_precision.py; returns its `lp_...` key figures for the last line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import validate_precision

    print("\nLow-precision rows (benchmarks/validate_precision.py)")
    return validate_precision.main(data_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
