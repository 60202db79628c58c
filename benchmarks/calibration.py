"""Leave-one-source-out error of the models on the rows of ../shared/data, before and after
calibration, with and without the learned residual.

Rows (every one names its source; a source is one fold):

- kernel rows (`dse._measure.shared_kernel_measurements`): LLMCompass A100 per-operator
  latencies (llmcompass_fig5) and the A100 measured max-achievable matmul (stas00_mamf),
  predicted by `gemm` / `elementwise` with the `Efficiency` being fitted;
- training rows (`models/_fit_training.py: training_cases`, every source_key of
  training_runs.csv): the modelled step time is affine in 1 / kernel_fraction,
  A / kernel_fraction + B (`train_step(..., kernel_fraction=...)`; A and B from two
  evaluations, the plan held at its kernel_fraction = 1 choice, as `fit_kernel_fraction` does).
  `train_step` takes no `Efficiency`, so these rows see the operator efficiency at its shipped
  value; only `kernel_fraction` moves them.

The inference rows other than LLMCompass (FasterTransformer, Pope et al.) are not used: `prefill`
and `decode` take no `Efficiency`, so no calibrated parameter reaches them.

"before" is the shipped defaults (`FITTED_EFFICIENCY`, `SUSTAINED_KERNEL_FRACTION`), which were
themselves fitted to most of these rows (llmcompass_fig5, stas00_mamf, and the training
sources in `models/_fit_training.py: FIT_SOURCES`): for those sources "before" is an in-sample
figure. "after" and "residual" are held-out: each source is predicted by parameters (and a
network) fitted without it.

Run: `python benchmarks/calibration.py [DATA_DIR]`; with `--write-defaults` it instead rewrites
the shipped `dse/calibrated/a100_operators.json` from the kernel rows.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from dse.models._fit_training import predict, training_cases
from dse.models._operators import default_efficiency
from dse.models._training import SUSTAINED_KERNEL_FRACTION

from dse import Measurements, calibrate, fit_residual
from dse._measure import OPERATOR_BOUNDS, operator_model, shared_kernel_measurements


def _parts(case):
    """(measured, A, B): the case's modelled time is A / kernel_fraction + B.

    Two evaluations at kernel_fraction 1 and 0.5 with the plan held at its kernel_fraction = 1
    choice give A and B. Metrics inverse to time (MFU, TFLOP/s) are inverted, measured and
    modelled alike, so their log-ratio is unchanged.
    """
    v1, plan, _ = predict(case, 1.0)
    v2, _, _ = predict(case, 0.5, plan=plan)
    inverse = case.metric in ("mfu", "tflops_eq3")
    t1, t2, measured = ((1 / v1, 1 / v2, 1 / case.measured) if inverse
                        else (v1, v2, case.measured))
    return measured, t2 - t1, 2 * t1 - t2


def _training_rows(data_dir):
    """(measured, A, B, source, log10 chips) of every modelled training row."""
    out = []
    for case in training_cases(data_dir):
        measured, a, b = _parts(case)
        out.append((measured, a, b, case.source_key, np.log10(case.system.num_chips)))
    return out


def build(data_dir=None) -> Measurements:
    """Kernel and training rows of ../shared/data as one `Measurements`."""
    kern = shared_kernel_measurements(data_dir)
    train = _training_rows(data_dir)
    nk, nt = kern.n, len(train)
    dtype = jnp.result_type(float)
    measured = np.concatenate([np.asarray(kern.measured), [t[0] for t in train]])
    a = np.concatenate([np.zeros(nk), [t[1] for t in train]])
    b = np.concatenate([np.zeros(nk), [t[2] for t in train]])
    is_train = np.concatenate([np.zeros(nk), np.ones(nt)])
    # Training rows take unit-size kernels (computed and discarded): stack the first chip.
    pad = lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (nt,) + x.shape[1:])])
    kin = jax.tree.map(pad, kern.inputs)
    inputs = dict(kernel=kin, a=jnp.asarray(a, dtype), b=jnp.asarray(b, dtype),
                  is_train=jnp.asarray(is_train, dtype))
    sources = list(kern.sources) + sorted({t[3] for t in train} - set(kern.sources))
    group = np.concatenate([np.asarray(kern.group),
                            [sources.index(t[3]) for t in train]])
    # Residual features: log10 of the shipped model's prediction, log10 chips, row kind.
    base = np.asarray(model(DEFAULTS, inputs))
    chips = np.concatenate([np.zeros(nk), [t[4] for t in train]])
    is_gemm = np.asarray(kin["is_gemm"]) * (1 - is_train)
    features = np.stack([np.log10(base), chips, is_gemm, 1 - is_gemm - is_train, is_train], 1)
    return Measurements(inputs, jnp.asarray(measured, dtype), jnp.asarray(group),
                        tuple(sources), features=jnp.asarray(features, dtype),
                        description=kern.description + "; training_runs.csv (every modelled "
                        "row, step time / layer time / 1 / TFLOP/s / 1 / MFU)")


def model(params, inputs):
    """Kernel rows: `operator_model`; training rows: A / kernel_fraction + B."""
    kernel = operator_model(params["efficiency"], inputs["kernel"])
    step = inputs["a"] / params["kernel_fraction"] + inputs["b"]
    return jnp.where(inputs["is_train"] > 0.5, step, kernel)


DEFAULTS = dict(efficiency=default_efficiency(),
                kernel_fraction=jnp.asarray(SUSTAINED_KERNEL_FRACTION))
BOUNDS = {f"efficiency.{k}": v for k, v in OPERATOR_BOUNDS.items()} | {
    "kernel_fraction": (0.05, 1.0)}


def _mape(pred, measured, mask):
    err = np.abs(np.asarray(pred) / np.asarray(measured) - 1.0)
    return 100 * float(np.mean(err[mask]))


def main(data_dir=None) -> None:
    t0 = time.perf_counter()
    data = build(data_dir)
    t_rows = time.perf_counter() - t0
    result = calibrate(model, DEFAULTS, data, bounds=BOUNDS, validation="source",
                       uncertainty="laplace")
    residual = fit_residual(model, result, data)
    before = np.asarray(model(DEFAULTS, data.inputs))
    measured = np.asarray(data.measured)
    held = np.asarray(result.fold_held)
    folds = np.asarray(result.fold_predicted)
    with_net = np.asarray(residual.validation_predicted)
    group = np.asarray(data.group)
    after = (held * folds).sum(0)
    print(f"rows={data.n} sources={len(data.sources)} (rows built in {t_rows:.0f} s)")
    print(f"{'held-out source':24s} {'rows':>4s} {'before%':>8s} {'after%':>8s} "
          f"{'residual%':>9s}")
    for i, src in enumerate(data.sources):
        mask = group == i
        print(f"{src:24s} {mask.sum():4d} {_mape(before, measured, mask):8.1f} "
              f"{_mape(after, measured, mask):8.1f} {_mape(with_net, measured, mask):9.1f}")
    print("fitted on all rows (Laplace std):")
    for (name, (v, s)), edge in zip(result.as_dict().items(), result.at_bound, strict=True):
        print(f"  {name:30s} {v:.4g} +- {s:.2g}{'  (at its bound)' if edge else ''}")
    print(f"residual network kept: {residual.kept} (held-out {100 * residual.validation_mape:.1f}%"
          f" vs {100 * residual.base_validation_mape:.1f}% without)")
    everything = np.ones(data.n, bool)
    print(f"before_mape={_mape(before, measured, everything):.2f} "
          f"after_mape={100 * float(result.validation_mape):.2f} "
          f"residual_mape={100 * float(residual.validation_mape):.2f}")


def write_defaults(data_dir=None) -> Path:
    """Calibrate the operator `Efficiency` to the shared kernel rows and write the shipped
    `dse/calibrated/a100_operators.json` (tests/test_calibrate.py re-runs this fit)."""
    data = shared_kernel_measurements(data_dir)
    data = dataclasses.replace(data, description=data.description + "; fitted by "
                               "benchmarks/calibration.py --write-defaults (dse.calibrate, "
                               "operator_model, OPERATOR_BOUNDS, leave-one-source-out)")
    result = calibrate(operator_model, default_efficiency(), data, bounds=OPERATOR_BOUNDS,
                       validation="source", uncertainty="laplace")
    path = Path(__file__).resolve().parents[1] / "dse" / "calibrated" / "a100_operators.json"
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
