"""Validate the low-precision models against the FP8, MXFP8 and FP4 rows of data/.

A companion to benchmarks/validate.py (which covers the 16-bit rows), reporting the same way:

- Training: every FP8 / MXFP8 / NVFP4 row of training_runs.csv as a case
  (`dse.calibration.precision_training_rows`) or a skip with its reason; per source the rows,
  the modelled ones, median |err|, p90 |err|, signed mean and the share predicted faster than
  measured, with every training-fitted constant refitted without the source (leave one source
  out): `Calibration.kernel_fraction` and the framework scales, fitted to the 16-bit rows of
  `dse.calibration.FIT_SOURCES` (Megatron-Bridge 25.11's BF16 rows among them); no constant is
  fitted to a low-precision row.
- Pairs: the published same-shape pairs of data/precision_pairs.csv (FP8 vs BF16, NVFP4 vs
  FP8 / MXFP8, MXFP8 vs FP8 current scaling): measured and predicted throughput ratios.
- Serving: the TensorRT-LLM FP8 / FP4 max-throughput rows of inference_runs.csv, per model x chip
  group.
- GEMM kernels: data/gemm_kernels.csv's measured TFLOP/s against `dse.models.gemm` (kernels
  only: no per-op start-up time). The NVFP4 rows are what the FP4 fixed time per wave and the
  B300's K-loop rate were fitted to (`dse.calibration.fit_fp4_gemm`, in sample); no fit reads
  the 16-bit rows.

Last line: `lp_train_src_median=<worst source> lp_train_loso_median=<worst source, held out>
lp_pairs_fp8_bf16_within_8pct=<k>/<n> lp_pairs_within_8pct=<k>/<n> lp_serve_group_median=<worst
group>` (fractions).

Run: `python benchmarks/validate_precision.py [DATA_DIR]` (default: the repository's data/).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dse.calibration import (
    FIT_SOURCES,
    precision_pairs,
    precision_training_rows,
    predict_serving,
    serving_cases,
)
from dse.calibration._precision_data import predict, predicted_ratio
from dse.calibration._training_data import fit_kernel_fraction
from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS
from dse.models import DEFAULT


def _plan_text(plan) -> str:
    keys = ("tp", "pp", "dp", "ep", "microbatch_size", "interleave", "recompute", "zero_stage")
    short = ("tp", "pp", "dp", "ep", "b", "v", "rc", "z")
    text = " ".join(f"{s}{float(getattr(plan, k)):g}" for s, k in zip(short, keys, strict=True))
    return f"{text} {plan.gradients}-grads" + (" q-params" if plan.quantized_params else "")


def _summary(errors: list[float], optimistic_sign: float = -1.0) -> str:
    """Median and p90 |err|, signed mean, and the share of optimistic predictions (errors of
    the sign `optimistic_sign`: negative for times, positive for throughputs)."""
    e = np.asarray(errors)
    a = np.abs(e)
    return (f"median |err| {100 * np.median(a):5.1f}%  p90 {100 * np.quantile(a, 0.9):5.1f}%  "
            f"signed mean {100 * e.mean():+5.1f}%  optimistic "
            f"{np.mean(optimistic_sign * e > 0):4.0%}")


def training(data_dir: Path) -> tuple[dict, dict]:
    cases, skipped = precision_training_rows(data_dir)
    print(f"Low-precision training rows: {len(cases)} modelled, {len(skipped)} not "
          f"(error = predicted step time / measured - 1; negative = optimistic)")
    print(f"{'row':58s} {'recipe':12s} {'measured':>9s} {'predicted':>9s} {'error':>7s}  plan")
    errors = collections.defaultdict(list)
    for case in cases:
        t, plan, _ = predict(case)
        err = t / case.measured - 1
        errors[case.source_key].append(err)
        print(f"{case.run_id:58s} {case.precision:12s} {case.measured:9.3f} {t:9.3f} "
              f"{100 * err:+6.1f}%  {_plan_text(plan)}")
    print("\nNot modelled:")
    for s in skipped:
        print(f"  {s.run_id:58s} {s.reason}")
    # Leave one source out: refit every training-fitted constant (`kernel_fraction` and the
    # framework scales, fitted to the 16-bit rows of FIT_SOURCES) without the source, and
    # predict its rows with the refitted constants.
    print("\nPer source (stored constants; held out = refitted without the source):")
    loso, refits = {}, {}
    counts = collections.Counter(c.source_key for c in cases)
    counts.update(s.source_key for s in skipped)
    for key, errs in errors.items():
        held_sources = tuple(s for s in FIT_SOURCES if s != key)
        if held_sources not in refits:
            refits[held_sources] = fit_kernel_fraction(data_dir, held_sources)
        values = refits[held_sources]
        calibration = _with_values(DEFAULT, values)
        held = [predict(c, calibration)[0] / c.measured - 1 for c in cases
                if c.source_key == key]
        loso[key] = float(np.median(np.abs(held)))
        framework = next(c.framework for c in cases if c.source_key == key)
        print(f"  {key:24s} rows {counts[key]:2d} modelled {len(errs):2d}  {_summary(errs)}")
        print(f"  {'':24s} held out (kernel_fraction refit {values['kernel_fraction']:.3f}, "
              f"{framework} scale {values.get('framework_scale.' + framework, 1.0):.3f}): "
              f"{_summary(held)}  target <= 8%: {'met' if loso[key] <= 0.08 else 'MISSED'}")
    return {k: float(np.median(np.abs(v))) for k, v in errors.items()}, loso


def _with_values(calibration, values: dict[str, float]):
    """`calibration` with the fitted constants `values` ({dotted name: value}) in place."""
    for name, value in values.items():
        field, _, key = name.partition(".")
        if key:
            def where(c, field=field, key=key):
                return getattr(c, field)[key]
        else:
            def where(c, field=field):
                return getattr(c, field)
        calibration = eqx.tree_at(where, calibration, jnp.asarray(value))
    return calibration


def pairs(data_dir: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    print("\nSame-shape pairs (throughput ratio low-precision / baseline)")
    print(f"{'pair':40s} {'baseline':>9s} {'low':>8s} {'measured':>9s} {'predicted':>9s} "
          f"{'error':>7s}")
    fp8 = [0, 0]
    every = [0, 0]
    by_source = collections.defaultdict(list)
    for pair in precision_pairs(data_dir):
        ratio = predicted_ratio(pair)
        err = ratio / pair.measured - 1
        by_source[pair.source_key].append(err)
        ok = abs(err) <= 0.08
        every[0] += ok
        every[1] += 1
        if pair.versus_bf16:
            fp8[0] += ok
            fp8[1] += 1
        print(f"{pair.pair_id:40s} {pair.baseline.precision:>9s} {pair.low.precision:>8s} "
              f"{pair.measured:9.3f} {ratio:9.3f} {100 * err:+6.1f}%")
    for key, errs in by_source.items():
        print(f"  {key:40s} n={len(errs):2d}  {_summary(errs, optimistic_sign=1.0)}")
    print(f"FP8 / BF16 pairs within 8%: {fp8[0]}/{fp8[1]}; all pairs: {every[0]}/{every[1]}")
    return tuple(fp8), tuple(every)


def serving(data_dir: Path) -> float:
    # The same cases and model as validate.py's serving table (`serve_continuous` under the
    # scheduler limits trtllm-bench sets), summarized per model x chip x format group.
    cases, skipped = serving_cases(data_dir)
    print(f"\nServing rows (TensorRT-LLM max throughput, output tokens/s of the TP group; error = "
          f"predicted / measured - 1, positive = optimistic): {len(cases)} modelled, "
          f"{len(skipped)} not")
    groups, sources = collections.defaultdict(list), collections.defaultdict(list)
    for case, predicted in zip(cases, predict_serving(cases), strict=True):
        err = predicted / case.measured - 1
        groups[case.group].append(err)
        sources[case.source_key].append(err)
        print(f"{case.run_id:45s} batch limit {float(case.plan.max_batch):6.0f}  "
              f"{case.measured:8.0f} {predicted:8.0f} {100 * err:+6.1f}%")
    for group, errs in groups.items():
        print(f"  {group:40s} n={len(errs):2d}  {_summary(errs, optimistic_sign=1.0)}")
    # Per source. No serving constant is fitted to these rows (the operator efficiencies are
    # fitted to LLMCompass's A100 latencies, `DEFAULT.provenance`), so leaving the source out
    # changes nothing: the stored prediction is the held-out one.
    for key, errs in sources.items():
        print(f"  {key:40s} n={len(errs):2d}  {_summary(errs, optimistic_sign=1.0)}  "
              f"(held out: no constant fitted to it)")
    return max(float(np.median(np.abs(e))) for e in groups.values())


def kernels(data_dir: Path) -> None:
    """Measured / modelled TFLOP/s of every row of gemm_kernels.csv, and the median |error| per
    source and engine (error = predicted time / measured - 1, negative = optimistic)."""
    from dse.calibration._gemm_data import gemm_kernel_rows, measured_time, modelled_time

    print("\nGEMM kernels (data/gemm_kernels.csv: TFLOP/s measured / model; error of the time)")
    groups = collections.defaultdict(list)
    for row in gemm_kernel_rows(data_dir):
        t = modelled_time(CHIPS[row["chip"]], row)
        err = t / measured_time(row) - 1.0
        groups[(row["source_key"], row["engine"])].append(err)
        model_tflops = row["tflops"] * measured_time(row) / t
        print(f"  {row['run_id']:32s} {row['chip']:5s} {row['engine']:5s} m {row['m']:7.0f} "
              f"{row['tflops']:8.1f} {model_tflops:8.1f} {100 * err:+6.1f}%")
    for (source, engine), errs in groups.items():
        fitted = "in sample" if engine == "fp4" else "no fit reads it"
        print(f"  {source:24s} {engine:5s} n={len(errs):2d}  median |err| "
              f"{100 * float(np.median(np.abs(errs))):5.1f}%  ({fitted})")


def main(data_dir=None) -> str:
    """Print the tables and the summary line; return the summary line."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    medians, loso = training(data_dir)
    fp8, every = pairs(data_dir)
    serve_median = serving(data_dir)
    kernels(data_dir)
    line = (f"lp_train_src_median={max(medians.values()):.4f} "
            f"lp_train_loso_median={max(loso.values()):.4f} "
            f"lp_pairs_fp8_bf16_within_8pct={fp8[0]}/{fp8[1]} "
            f"lp_pairs_within_8pct={every[0]}/{every[1]} "
            f"lp_serve_group_median={serve_median:.4f}")
    print(line)
    return line


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main(sys.argv[1] if len(sys.argv) > 1 else None)
