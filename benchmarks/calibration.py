"""Leave-one-source-out error of the models on the rows of data/, before and after
calibration, with and without the learned residual.

Parameters: fields of `dse.models.Calibration`: the four operator fields, the sustained
`kernel_fraction` of training steps, the scale-up `link_efficiency` (bandwidth) and
`latency_scale` (per-step latency) of the collectives for each fabric the rows ran on (NVLink +
NVSwitch for the NVIDIA rows, TPU v4 ICI for Pope et al.), and the training step's
`dp_overlap_fraction`. A field that no row depends on (zero elasticity in every row at the
defaults) is not fitted and is said so: that is `dp_overlap_fraction`, because every
data-parallel training row ran without gradient-reduction overlap. Every row is predicted by the
model it measures, with the `Calibration` passed in:

- kernel rows (`dse.calibration.data_kernel_measurements`): LLMCompass A100 per-operator
  latencies (llmcompass_fig5) and the A100 measured max-achievable matmul (stas00_mamf),
  predicted by `gemm` / `elementwise` (`operator_model`);
- collective rows: the LLMCompass A100 tensor-parallel all-reduces (AllReduce_MHA, source
  llmcompass_fig5) of the prefill layer (403 MB over 4 GPUs: bandwidth-bound, it constrains
  `link_efficiency`) and of the decode layer (196 KB: latency-bound, 26 us measured against
  the model's 13 us of NCCL start-up and steps, it constrains `latency_scale`), predicted by
  `all_reduce`
  (`collective_model`) on the DGX-A100 preset;
- training rows (`dse.calibration.training_cases`): `train_step` (`layer_time` for Korthikanti
  Table 4). Rows whose layout the source does not give keep the plan `best_plan` picks at the
  shipped defaults. Rows that share their static structure are evaluated in one vmapped call
  (`_TrainingRows`);
- inference rows (`dse.calibration.inference_rows`): FasterTransformer (kipply) prefill and
  decode on A100 and Pope et al. 2022 on TPU v4, predicted by `prefill` / `decode`. The Pope et
  al. decode rows (64-way tensor parallel on a TPU v4 torus) depend on the ICI `latency_scale`;
  only they constrain the ICI pair, so held out they are predicted with its starting values
  (a latency fitted on NVSwitch says nothing about ICI). The LLMCompass layer totals are left
  out: their per-op latencies are already the kernel rows and the collective rows.

The output says, per parameter, which sources' rows constrain it (their share of the
Gauss-Newton curvature), whether the fit converged and which parameters sit on a bound, and for
each held-out source the values its fold fitted. No prior is used: the natural centres are the
shipped defaults, fitted to some of these same rows.

"before" is the shipped defaults (`dse.models.DEFAULT`), which were themselves fitted to some of
these rows (llmcompass_fig5, stas00_mamf, and `dse.calibration.FIT_SOURCES`): for those sources
"before" is an in-sample figure. "after" and "residual" are held-out: each source is predicted
by parameters (and a network) fitted without it.

Run: `python benchmarks/calibration.py [DATA_DIR]`; with `--write-defaults` it instead rewrites
the shipped `calibration/saved/a100_operators.json` from the kernel rows.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dse.calibration import (
    FIT_SOURCES,
    OPERATOR_FIELDS,
    Measurements,
    TrainingRows,
    calibrate,
    collective_measurements,
    collective_model,
    data_kernel_measurements,
    fit_residual,
    inference_rows,
    operator_model,
    param_names,
    training_cases,
)
from dse.calibration._fit import _predict_z
from dse.calibration._operator_data import _per_op
from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS
from dse.models import DEFAULT

# Inference sources calibrated here (the LLMCompass layer rows enter as kernel and collective
# rows instead; see the module docstring).
INFERENCE_SOURCES = ("kipply_fastertransformer", "pope_table2")
# Row kinds of `inputs["kind"]`.
KERNEL, COLLECTIVE, TRAINING, INFERENCE = 0, 1, 2, 3

# Scale-up fabrics of the rows (training_runs.csv / inference_runs.csv `hardware`): every
# NVIDIA row ran on NVLink + NVSwitch (DGX-A100, DGX-2 / DGX-2H for the V100 rows), the Pope et
# al. rows on the TPU v4 ICI torus. The collectives' bandwidth efficiency and per-step latency
# are properties of a fabric (its links, switches and collective library), so each fabric has
# its own pair: a source on a fabric no other source ran on is predicted, held out, with the
# uncalibrated values of that fabric instead of another fabric's fit.
def fabric_of(hardware: str) -> str:
    """The scale-up fabric of a row from its `hardware` column."""
    return "ici" if "TPU" in hardware else "nvlink"


# The shipped defaults; latency_scale.nvlink (0.88 x the stated per-step latency), the
# collectives' start-up and their pipelining cost are fitted to NCCL's one-node sweeps
# (fit_collective_latency), and dp_overlap_fraction 1 is the whole overlap window.
DEFAULTS = DEFAULT
# The models with nothing calibrated: datasheet peaks sustained in full, start-up times at the
# lower end of the search box, stated latencies, no collective start-up or pipelining. Printed
# for scale only.
DATASHEET = DEFAULT.replace(matrix_max=1.0, matrix_overhead_s=1e-8, memory_max=1.0,
                            memory_overhead_s=1e-8, kernel_fraction=1.0, link_efficiency=1.0,
                            latency_scale=1.0, collective_latency=0.0, pipeline_overhead_bytes=0.0)
# The fields this benchmark may fit (those no row depends on are dropped at run time).
CANDIDATES = OPERATOR_FIELDS + ("kernel_fraction", "link_efficiency.nvlink",
                                "link_efficiency.ici", "latency_scale.nvlink",
                                "latency_scale.ici", "dp_overlap_fraction")
BOUNDS = {"kernel_fraction": (0.05, 1.0)}
# Sources the shipped defaults were fitted to: "before" is in-sample for them.
# (dse.calibration.fit_operator_efficiency: llmcompass_fig5 and stas00_mamf;
# dse.calibration.FIT_SOURCES for the kernel fraction.)
DEFAULTS_FITTED_TO = ("llmcompass_fig5", "stas00_mamf") + tuple(FIT_SOURCES)


def _collective_rows(data_dir) -> Measurements:
    """The LLMCompass tensor-parallel all-reduces (AllReduce_MHA) of the prefill layer (403 MB,
    bandwidth-bound) and of the decode layer (one token per sequence: 196 KB, latency-bound)
    as collective rows."""
    with open(Path(data_dir) / "inference_runs.csv", newline="") as f:
        by_id = {r["run_id"]: r for r in csv.DictReader(f)}
    rows, sources = [], []
    for run_id in ("llmcompass_a100x4_gpt3_layer_prefill", "llmcompass_a100x4_gpt3_layer_decode"):
        row = by_id[run_id]
        # Activations all-reduced: batch x tokens of this pass x hidden, 16-bit.
        tokens = float(row["input_len"]) if row["phase"] == "prefill" else 1.0
        message = float(row["batch_size"]) * tokens * float(row["hidden"]) * 2.0
        rows.append(dict(kind="all_reduce", message_bytes=message, group_size=float(row["tp"]),
                         stride=1.0, time_s=_per_op(row["notes"])["AllReduce_MHA"]))
        sources.append(row["source_key"])
    return collective_measurements(rows, SYSTEMS["DGX-A100"], sources=sources,
                                   description="LLMCompass A100 AllReduce_MHA (prefill, decode)")


def build(data_dir=None):
    """Kernel, collective, training and inference rows of data/ as one
    `Measurements`, and the model that predicts them: `(data, model_fn)`."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    kern = data_kernel_measurements(data_dir)
    coll = _collective_rows(data_dir)
    train = TrainingRows(training_cases(data_dir))
    inf = [r for r in inference_rows(data_dir) if r["source"] in INFERENCE_SOURCES]
    with open(Path(data_dir) / "inference_runs.csv", newline="") as f:
        hardware = {r["run_id"]: r["hardware"] for r in csv.DictReader(f)}
    for r in inf:  # each row's System carries its fabric; check it matches the hardware
        system_fabric = "ici" if r["source"] == "pope_table2" else "nvlink"
        assert system_fabric == fabric_of(hardware[r["row_id"].split(":")[0]]), r["row_id"]
    nk, nc, nt, ni = kern.n, coll.n, len(train.measured), len(inf)
    log_chips = [np.log10(c.system.num_chips) for c in train.cases]
    n = nk + nc + nt + ni
    dtype = jnp.result_type(float)
    kind = np.repeat([KERNEL, COLLECTIVE, TRAINING, INFERENCE], [nk, nc, nt, ni])
    index = np.concatenate([np.arange(nk), np.arange(nc), np.arange(nt), np.arange(ni)])

    # Kernel and collective inputs are padded to every row (repeating their first row):
    # computed and discarded for rows of other kinds.
    def pad(x, own, before):
        x = jnp.asarray(x)
        first = jnp.broadcast_to(x[:1], (n - own,) + x.shape[1:])
        return jnp.concatenate([first[:before], x, first[before:]])

    inputs = dict(kernel=jax.tree.map(lambda x: pad(x, nk, 0), kern.inputs),
                  collective=jax.tree.map(lambda x: pad(x, nc, nk), coll.inputs),
                  kind=jnp.asarray(kind), index=jnp.asarray(index))
    seconds = [r["seconds"] for r in inf]

    def model_fn(params, x):
        """Each row's modelled value: kernels, collectives, training steps, inference passes."""
        by_kind = [operator_model(params, x["kernel"]),
                   # The LLMCompass all-reduces ran on a DGX A100 (NVLink + NVSwitch).
                   collective_model(params, x["collective"]),
                   train(params)[jnp.clip(x["index"], 0, nt - 1)],
                   jnp.stack([f(params) for f in seconds])[jnp.clip(x["index"], 0, ni - 1)]]
        return jnp.take_along_axis(jnp.stack(by_kind), x["kind"][None, :], axis=0)[0]

    measured = np.concatenate([np.asarray(kern.measured), np.asarray(coll.measured),
                               train.measured, [r["measured"] * 1e-3 for r in inf]])
    row_sources = ([kern.sources[g] for g in np.asarray(kern.group)]
                   + [coll.sources[g] for g in np.asarray(coll.group)]
                   + train.sources + [r["source"] for r in inf])
    sources = list(dict.fromkeys(row_sources))
    group = np.array([sources.index(s) for s in row_sources])
    # Residual features: log10 of the shipped model's prediction, log10 chips, row kind.
    base = np.asarray(model_fn(DEFAULTS, inputs))
    inf_chips = [np.log10(float(r["chips"])) for r in inf]
    chips = np.concatenate([np.zeros(nk), np.full(nc, np.log10(4.0)), log_chips, inf_chips])
    is_gemm = np.asarray(inputs["kernel"]["is_gemm"]) * (kind == KERNEL)
    onehot = [is_gemm, (kind == KERNEL) - is_gemm] + [kind == k for k in
                                                      (COLLECTIVE, TRAINING, INFERENCE)]
    features = np.stack([np.log10(base), chips] + onehot, 1)
    data = Measurements(inputs, jnp.asarray(measured, dtype), jnp.asarray(group),
                        tuple(sources), features=jnp.asarray(features, dtype),
                        description=kern.description + "; LLMCompass A100 all-reduces; "
                        "training_runs.csv (every modelled row, step time / layer time / "
                        "1 / TFLOP/s / 1 / MFU); inference_runs.csv FasterTransformer and "
                        "Pope et al. rows (prefill / per-token decode latency)")
    return data, model_fn


def _mape(pred, measured, mask):
    err = np.abs(np.asarray(pred) / np.asarray(measured) - 1.0)
    return 100 * float(np.mean(err[mask]))


@functools.partial(jax.jit, static_argnames=("model", "names"))
def _elasticities(z, params, inputs, model, names):
    """d log prediction / d log parameter of every row, (n, k)."""
    return jax.jacfwd(lambda z_: jnp.log(_predict_z(z_, params, inputs, model, names)))(z)


def constraints(model, params, data):
    """Which rows constrain which parameter: the share of each source in the Gauss-Newton
    curvature sum_i (d log prediction_i / d log p)^2 of every parameter at `params`, and the
    rows whose prediction moves by more than 1% per unit of log p (|elasticity| > 0.01).
    Returns ({name: [(source, share, rows)]}, {name: total curvature})."""
    names = tuple(param_names(params))
    z = jnp.log(jnp.asarray([float(x) for x in jax.tree.leaves(params)]))
    jac = np.asarray(_elasticities(z, params, data.inputs, model, names))  # (n, k)
    group = np.asarray(data.group)
    out, total = {}, {}
    for j, name in enumerate(names):
        c = jac[:, j] ** 2
        total[name] = float(c.sum())
        rows = []
        for g, src in enumerate(data.sources):
            mask = group == g
            share = float(c[mask].sum() / c.sum()) if c.sum() > 0 else 0.0
            moved = int(np.sum(np.abs(jac[mask, j]) > 0.01))
            if moved:
                rows.append((src, share, moved))
        out[name] = sorted(rows, key=lambda r: -r[1])
    return out, total


def main(data_dir=None) -> None:
    t0 = time.perf_counter()
    data, model = build(data_dir)
    t_rows = time.perf_counter() - t0
    # A parameter no row's prediction depends on (zero elasticity everywhere at the defaults)
    # is not fitted: the data say nothing about it.
    _, at_defaults = constraints(model, DEFAULTS, data)
    fit = [n for n in CANDIDATES if at_defaults[n] > 0]
    unfitted = [n for n in CANDIDATES if at_defaults[n] == 0]
    result = calibrate(model, DEFAULTS, data, fit=fit,
                       bounds={k: v for k, v in BOUNDS.items() if k in fit},
                       validation="source", uncertainty="laplace")
    residual = fit_residual(model, result, data)
    before = np.asarray(model(DEFAULTS, data.inputs))
    datasheet = np.asarray(model(DATASHEET, data.inputs))
    measured = np.asarray(data.measured)
    held = np.asarray(result.fold_held)
    folds = np.asarray(result.fold_predicted)
    with_net = np.asarray(residual.validation_predicted)
    group = np.asarray(data.group)
    after = (held * folds).sum(0)
    everything = np.ones(data.n, bool)
    print(f"rows={data.n} sources={len(data.sources)} (rows built in {t_rows:.0f} s)")
    print("per held-out source: before = shipped defaults (* = in-sample: the defaults were "
          "fitted to it), after = fitted without the source; 'share' = the source's part of "
          "the total before -> after change of the all-row error")
    print(f"{'held-out source':26s} {'rows':>4s} {'before%':>8s} {'after%':>8s} "
          f"{'residual%':>9s} {'share':>6s}")
    gap = _mape(after, measured, everything) - _mape(before, measured, everything)
    for i, src in enumerate(data.sources):
        mask = group == i
        b, a = _mape(before, measured, mask), _mape(after, measured, mask)
        share = (a - b) * mask.sum() / data.n / gap if gap else float("nan")
        star = "*" if src in DEFAULTS_FITTED_TO else " "
        print(f"{src + star:26s} {mask.sum():4d} {b:8.1f} {a:8.1f} "
              f"{_mape(with_net, measured, mask):9.1f} {100 * share:5.0f}%")
    inside = np.isin(np.asarray(data.sources)[group], DEFAULTS_FITTED_TO)
    for label, mask in (("in-sample for the defaults", inside),
                        ("held out from the defaults", ~inside)):
        print(f"  {label:28s} {mask.sum():3d} rows: before {_mape(before, measured, mask):.2f}% "
              f"after {_mape(after, measured, mask):.2f}%")
    # The rows of the source that moves the all-row error most, one by one.
    worst = int(np.argmax([(_mape(after, measured, group == i) - _mape(before, measured,
                                                                       group == i))
                           * np.sum(group == i) for i in range(len(data.sources))]))
    kinds = {KERNEL: "kernel", COLLECTIVE: "collective", TRAINING: "training",
             INFERENCE: "inference"}
    is_gemm = np.asarray(data.inputs["kernel"]["is_gemm"])
    kind = np.asarray(data.inputs["kind"])
    print(f"rows of {data.sources[worst]} (measured; error before, held out after):")
    for i in np.flatnonzero(group == worst):
        label = kinds[int(kind[i])] + (("-gemm" if is_gemm[i] else "-elementwise")
                                       if kind[i] == KERNEL else "")
        print(f"  {label:20s} {measured[i]:10.3g} s {100 * (before[i] / measured[i] - 1):+7.0f}% "
              f"{100 * (after[i] / measured[i] - 1):+7.0f}%")
    print(f"fitted on all rows (Laplace std; {result.convergence_report()}):")
    for (name, (v, s)), edge in zip(result.as_dict().items(), result.at_bound, strict=True):
        print(f"  {name:30s} {v:.4g} +- {s:.2g}{'  (at its bound)' if edge else ''}")
    print("fitted values of each leave-one-source-out fold (held-out source: values in the "
          "order above):")
    for f, src in enumerate(data.sources):
        vals = " ".join(f"{float(v):.3g}" for v in np.asarray(result.fold_value)[f])
        print(f"  {src:24s} {vals}")
    print("rows that constrain each parameter at the fit (source: share of the curvature, rows "
          "with |d log t / d log p| > 0.01):")
    shares, total = constraints(model, result.params, data)
    for name in CANDIDATES:
        parts = ", ".join(f"{src} {100 * sh:.0f}% ({nr})" for src, sh, nr in shares[name][:4])
        if total[name] == 0:
            parts = "no row: zero sensitivity, not fitted (held at its default)"
        elif not parts:
            parts = "no row moves by > 1% per unit log p"
        print(f"  {name:30s} {parts}")
    for name in unfitted:
        print(f"  not fitted: {name} (no row of the data depends on it)")
    print(f"residual network kept: {residual.kept} (held-out {100 * residual.validation_mape:.1f}%"
          f" vs {100 * residual.base_validation_mape:.1f}% without)")
    print(f"for scale: the uncalibrated datasheet model (every efficiency 1, start-up times "
          f"10 ns) is off by {_mape(datasheet, measured, everything):.2f}% on these rows; the "
          f"shipped defaults (before) by {_mape(before, measured, everything):.2f}%, in-sample "
          f"for {int(inside.sum())} of {data.n} rows")
    print(f"before_mape={_mape(before, measured, everything):.2f} "
          f"after_mape={100 * float(result.validation_mape):.2f} "
          f"residual_mape={100 * float(residual.validation_mape):.2f}")


def write_defaults(data_dir=None) -> Path:
    """Calibrate the operator fields of `Calibration` to the kernel rows of the data and write
    the shipped `calibration/saved/a100_operators.json` (tests/test_calibrate.py re-runs this
    fit)."""
    data = data_kernel_measurements(data_dir)
    data = dataclasses.replace(data, description=data.description + "; fitted by "
                               "benchmarks/calibration.py --write-defaults "
                               "(dse.calibration.calibrate, operator_model, the four operator "
                               "fields of Calibration, leave-one-source-out)")
    result = calibrate(operator_model, DEFAULT, data, fit=OPERATOR_FIELDS, validation="source",
                       uncertainty="laplace")
    path = Path(__file__).resolve().parents[1] / "calibration" / "saved" / "a100_operators.json"
    path.parent.mkdir(exist_ok=True)
    result.save(path)
    return path


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--write-defaults" in sys.argv:
        print("wrote", write_defaults(args[0] if args else None))
    else:
        main(args[0] if args else None)
