"""Leave-one-source-out error of the models on the rows of ../shared/data, before and after
calibration, with and without the learned residual.

Parameters fitted together: the operator `Efficiency` (four leaves), the sustained
`kernel_fraction` of training steps and the scale-up `link_efficiency` of the collectives. Every
row is predicted by the model it measures, with those parameters passed in (nothing is held at a
module constant):

- kernel rows (`dse._measure.shared_kernel_measurements`): LLMCompass A100 per-operator
  latencies (llmcompass_fig5) and the A100 measured max-achievable matmul (stas00_mamf),
  predicted by `gemm` / `elementwise` (`dse.operator_model`);
- a collective row: the LLMCompass A100 tensor-parallel all-reduce of the prefill layer
  (AllReduce_MHA, 403 MB over 4 GPUs; source llmcompass_fig5), predicted by `all_reduce`
  (`dse.collective_model`) on the DGX-A100 preset. The decode layer's all-reduce (196 KB) is
  left out: its time is the fixed latency, which no fitted parameter models, as in
  `models/_fit_efficiency.py: fit_link_efficiency`;
- training rows (`models/_fit_training.py: training_cases`, every source_key of
  training_runs.csv): `train_step` (`layer_time` for Korthikanti Table 4) with all three
  parameter sets. Rows whose layout the source does not give keep the plan `best_plan` picks at
  the shipped defaults. Rows that share their static structure are evaluated in one vmapped
  call (`_TrainingRows`);
- inference rows (`benchmarks/_inference_rows.py`): FasterTransformer (kipply) prefill and
  decode on A100 and Pope et al. 2022 on TPU v4, predicted by `prefill` / `decode` with the
  `Efficiency` and link efficiency (their fused runtimes drop the start-up times, as the model
  does for the defaults). The LLMCompass layer totals are left out: their per-op latencies are
  already the kernel rows and the collective row.

"before" is the shipped defaults (`FITTED_EFFICIENCY`, `SUSTAINED_KERNEL_FRACTION`,
`SCALEUP_LINK_EFFICIENCY`), which were themselves fitted to some of these rows (llmcompass_fig5,
stas00_mamf, and the training sources in `models/_fit_training.py: FIT_SOURCES`): for those
sources "before" is an in-sample figure. "after" and "residual" are held-out: each source is
predicted by parameters (and a network) fitted without it.

Run: `python benchmarks/calibration.py [DATA_DIR]`; with `--write-defaults` it instead rewrites
the shipped `dse/calibrated/a100_operators.json` from the kernel rows.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _inference_rows import inference_rows
from dse.hardware import SYSTEMS
from dse.models import layer_time, train_step
from dse.models._collectives import SCALEUP_LINK_EFFICIENCY
from dse.models._fit_efficiency import _per_op
from dse.models._fit_training import FLASH, default_data_dir, predict, training_cases
from dse.models._operators import default_efficiency
from dse.models._training import SUSTAINED_KERNEL_FRACTION

from dse import Measurements, calibrate, fit_residual
from dse._measure import (
    LINK_EFFICIENCY_BOUNDS,
    OPERATOR_BOUNDS,
    collective_measurements,
    collective_model,
    operator_model,
    shared_kernel_measurements,
)

# Inference sources calibrated here (the LLMCompass layer rows enter as kernel and collective
# rows instead; see the module docstring).
INFERENCE_SOURCES = ("kipply_fastertransformer", "pope_table2")
# Row kinds of `inputs["kind"]`.
KERNEL, COLLECTIVE, TRAINING, INFERENCE = 0, 1, 2, 3

DEFAULTS = dict(efficiency=default_efficiency(),
                kernel_fraction=jnp.asarray(SUSTAINED_KERNEL_FRACTION),
                link_efficiency=jnp.asarray(SCALEUP_LINK_EFFICIENCY))
BOUNDS = {f"efficiency.{k}": v for k, v in OPERATOR_BOUNDS.items()} | {
    "kernel_fraction": (0.05, 1.0), "link_efficiency": LINK_EFFICIENCY_BOUNDS}


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


class _TrainingRows:
    """Every modelled training row as a function of the parameters.

    Each row is (model, plan, system, layer?): the case's plan, or the plan `best_plan` picks at
    the shipped defaults where the source gives none. Rows whose pytrees share their static
    structure are stacked and evaluated by one vmapped `train_step` / `layer_time`. To share
    it, every row's `System` gets the group's largest `num_chips` with `scaleup_size` capped at
    its own chip count: `train_step` sees `num_chips` only through the scale-up domain
    min(scaleup_size, num_chips), which is unchanged, and the plan-fits check, not used here.
    Metrics inverse to time (MFU, TFLOP/s) are predicted as their inverse, 1 / value =
    step_time / K with K = value x step_time at the defaults, and measured alike.
    """

    def __init__(self, data_dir):
        self.measured, self.sources, self.log_chips, expected = [], [], [], []
        rows, scale = [], []
        for case in training_cases(data_dir):
            value, plan, _ = predict(case)
            layer = case.metric == "layer_time"
            if layer:
                t = float(layer_time(case.model, plan, case.system, flash_attention=FLASH))
            else:
                t = float(train_step(case.model, plan, case.system,
                                     flash_attention=FLASH).step_time)
            inverse = case.metric in ("mfu", "tflops_eq3")
            scale.append(1.0 / (value * t) if inverse else 1.0)
            expected.append(1.0 / value if inverse else value)
            self.measured.append(1.0 / case.measured if inverse else case.measured)
            self.sources.append(case.source_key)
            self.log_chips.append(np.log10(case.system.num_chips))
            rows.append((layer, dataclasses.replace(case.model, name="row"), plan,
                         case.system))
        groups = {}
        for i, (layer, model, plan, system) in enumerate(rows):
            key = (layer, jax.tree.structure((model, plan, system.replace(num_chips=1))))
            groups.setdefault(key, []).append(i)
        self.groups = []
        for (layer, _), idx in groups.items():
            n_max = max(rows[i][3].num_chips for i in idx)
            systems = [rows[i][3].replace(num_chips=n_max, scaleup_size=rows[i][3].scaleup_domain)
                       for i in idx]
            self.groups.append((layer, _stack([rows[i][1] for i in idx]),
                                _stack([rows[i][2] for i in idx]), _stack(systems)))
        order = np.concatenate(list(groups.values()))
        self.inverse_order = np.argsort(order)
        self.scale = jnp.asarray(scale, jnp.result_type(float))
        got = np.asarray(self(DEFAULTS))
        worst = float(np.max(np.abs(got / np.asarray(expected) - 1.0)))
        if worst > 1e-4:
            raise ValueError(f"_TrainingRows: stacked rows differ from predict() by {worst:.2g}")

    def __call__(self, params):
        """The rows' modelled values (seconds, or inverse metrics), shape (rows,)."""
        kw = dict(flash_attention=FLASH, kernel_fraction=params["kernel_fraction"],
                  efficiency=params["efficiency"], link_efficiency=params["link_efficiency"])
        out = []
        for layer, model, plan, system in self.groups:
            if layer:
                fn = lambda m, p, s: layer_time(m, p, s, **kw)  # noqa: E731
            else:
                fn = lambda m, p, s: train_step(m, p, s, **kw).step_time  # noqa: E731
            out.append(jax.vmap(fn)(model, plan, system))
        return jnp.concatenate(out)[self.inverse_order] * self.scale


def _collective_rows(data_dir) -> Measurements:
    """The LLMCompass tensor-parallel all-reduce of the prefill layer as a collective row."""
    with open(Path(data_dir) / "inference_runs.csv", newline="") as f:
        row = {r["run_id"]: r for r in csv.DictReader(f)}["llmcompass_a100x4_gpt3_layer_prefill"]
    message = float(row["batch_size"]) * float(row["input_len"]) * float(row["hidden"]) * 2.0
    rows = [dict(kind="all_reduce", message_bytes=message, group_size=float(row["tp"]),
                 stride=1.0, time_s=_per_op(row["notes"])["AllReduce_MHA"])]
    return collective_measurements(rows, SYSTEMS["DGX-A100"], sources=[row["source_key"]],
                                   description="LLMCompass A100 AllReduce_MHA")


def build(data_dir=None):
    """Kernel, collective, training and inference rows of ../shared/data as one
    `Measurements`, and the model that predicts them: `(data, model_fn)`."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    kern = shared_kernel_measurements(data_dir)
    coll = _collective_rows(data_dir)
    train = _TrainingRows(data_dir)
    inf = [r for r in inference_rows(data_dir) if r["source"] in INFERENCE_SOURCES]
    nk, nc, nt, ni = kern.n, coll.n, len(train.measured), len(inf)
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
        by_kind = [operator_model(params["efficiency"], x["kernel"]),
                   collective_model(params["link_efficiency"], x["collective"]),
                   train(params)[jnp.clip(x["index"], 0, nt - 1)],
                   jnp.stack([f(params["efficiency"], params["link_efficiency"])
                              for f in seconds])[jnp.clip(x["index"], 0, ni - 1)]]
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
    chips = np.concatenate([np.zeros(nk), np.full(nc, np.log10(4.0)), train.log_chips,
                            inf_chips])
    is_gemm = np.asarray(inputs["kernel"]["is_gemm"]) * (kind == KERNEL)
    onehot = [is_gemm, (kind == KERNEL) - is_gemm] + [kind == k for k in
                                                      (COLLECTIVE, TRAINING, INFERENCE)]
    features = np.stack([np.log10(base), chips] + onehot, 1)
    data = Measurements(inputs, jnp.asarray(measured, dtype), jnp.asarray(group),
                        tuple(sources), features=jnp.asarray(features, dtype),
                        description=kern.description + "; LLMCompass A100 all-reduce; "
                        "training_runs.csv (every modelled row, step time / layer time / "
                        "1 / TFLOP/s / 1 / MFU); inference_runs.csv FasterTransformer and "
                        "Pope et al. rows (prefill / per-token decode latency)")
    return data, model_fn


def _mape(pred, measured, mask):
    err = np.abs(np.asarray(pred) / np.asarray(measured) - 1.0)
    return 100 * float(np.mean(err[mask]))


def main(data_dir=None) -> None:
    t0 = time.perf_counter()
    data, model = build(data_dir)
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
