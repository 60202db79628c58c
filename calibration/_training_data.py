"""Published LLM training measurements as modelled cases (data/training_runs.csv).

Each row that states enough to be modelled becomes a `TrainingCase`: the model shape from the
row, the system it ran on, the plan it states (or a constraint on the plan that `best_plan`
completes where the source does not give the layout), and the measured figure with how to
predict it. `benchmarks/validate.py` prints the comparison; tests assert the published figures.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize_scalar

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, SYSTEMS, System
from dse.hardware import units as u
from dse.models import (
    DEFAULT,
    RECOMPUTE_FULL,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    Calibration,
    TrainingPlan,
    Transformer,
    enumerate_plans,
    evaluate_plans,
    layer_time,
    select_plan,
    train_step,
)

# Megatron-LM before FlashAttention (SC21, 2021; Korthikanti et al., 2022) materialized the
# attention scores: every case here is modelled with `flash_attention=False`.
FLASH = False

# Rows `Calibration.kernel_fraction` is fitted to: every training source except Korthikanti et al.
# Table 5, which is held out for validation (benchmarks/validate.py also reports each source's
# error with the constant refitted without it). Megatron SC21 rows use the layout `best_plan`
# picks under the paper's own rule (TP up to the server, PP beyond).
FIT_SOURCES = ("korthikanti_table4", "megatron_readme_2020", "megatron_sc21_table1",
               "megatron_sc21_text", "korthikanti_text")


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """One measured row: what ran, what was measured, and how we predict it.

    `metric` is "step_time" (s), "layer_time" (s, one layer fwd+bwd, Korthikanti Table 4),
    "tflops_eq3" (per-GPU TFLOP/s counted by Narayanan et al. 2021 eq. 3) or "mfu".
    `plan` is the stated plan, or None with `model_parallel` (TP * PP, or 0 for free) for
    `best_plan` to complete with the knobs the framework of the time had.
    """

    run_id: str
    source_key: str
    metric: str
    measured: float
    model: Transformer
    system: System
    plan: TrainingPlan | None
    model_parallel: int = 0
    global_batch: int = 0
    fixed_tp: int = 0
    fixed_pp: int = 0


def _f(row, key, default=None):
    v = row.get(key, "")
    return float(v) if v not in ("", None) else default


def _model(row, seq_len=None) -> Transformer:
    hidden = _f(row, "hidden")
    # Megatron-LM GPT MLPs are 4h wide (Narayanan et al. 2021, Sec. 3.2); rows without
    # ffn_hidden are Megatron GPT shapes.
    return Transformer(layers=_f(row, "layers"), hidden=hidden, heads=_f(row, "heads"),
                       kv_heads=_f(row, "heads"), ffn_hidden=_f(row, "ffn_hidden", 4 * hidden),
                       vocab=_f(row, "vocab", 51200.0), seq_len=seq_len or _f(row, "seq_len"),
                       name=row["model"])


def _dgx_a100(n: int) -> System:
    return SYSTEMS["DGX-A100"].with_num_chips(int(n))


def _dgx2_v100(n: int) -> System:
    # DGX-2: 16 V100 SXM3 on NVSwitch (scale-up 16), 8 x 100 Gb/s EDR InfiniBand per 16 GPUs
    # = 6.25 GB/s per GPU (NVIDIA DGX-2 datasheet). Latencies as the DGX-A100 preset.
    a = SYSTEMS["DGX-A100"]
    return System(chip=CHIPS["V100"], num_chips=int(n), scaleup_size=16,
                  scaleup_latency=a.scaleup_latency, scaleout_bandwidth=100 * u.Gbit * 8 / 16,
                  scaleout_latency=a.scaleout_latency, name="DGX-2")


def _recompute(text: str) -> float:
    text = (text or "").lower()
    if text.startswith("selective"):
        return RECOMPUTE_SELECTIVE
    if text.startswith("full"):
        return RECOMPUTE_FULL
    return RECOMPUTE_NONE


def training_cases(data_dir: Path | None = None) -> list[TrainingCase]:
    """Every row of training_runs.csv that states enough to be modelled, as cases."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "training_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cases = []
    for row in rows:
        key = row["source_key"]
        n = int(_f(row, "num_devices"))
        rid = row["run_id"]
        if key == "megatron_sc21_table1":
            # Layout: only TP * PP stated (TP and PP for 530B / 1T); micro-batch and interleave
            # unstated. Megatron-LM 2021: full recomputation (eq. 3 assumes it), no ZeRO, no
            # sequence parallelism, gradient all-reduce after the backward pass.
            cases.append(TrainingCase(
                rid, key, "tflops_eq3", _f(row, "tflops_per_device"), _model(row),
                _dgx_a100(n), None, model_parallel=int(_f(row, "model_parallel_size")),
                global_batch=int(_f(row, "global_batch_seqs")),
                fixed_tp=int(_f(row, "tp", 0)), fixed_pp=int(_f(row, "pp", 0))))
        elif key == "megatron_sc21_text":
            row = dict(row, ffn_hidden="")
            cases.append(TrainingCase(
                rid, key, "tflops_eq3", _f(row, "tflops_per_device"), _model(row),
                _dgx_a100(n), None, model_parallel=0,
                global_batch=int(_f(row, "global_batch_seqs"))))
        elif key in ("korthikanti_table5", "korthikanti_text"):
            sp = 1.0 if row["sequence_parallel"] == "yes" else 0.0
            gb = _f(row, "global_batch_seqs", 2240.0)  # the paired dp8 row's batch (same run)
            plan = TrainingPlan(tp=_f(row, "tp"), pp=_f(row, "pp"), dp=_f(row, "dp"),
                                microbatch_size=_f(row, "microbatch", 1.0), global_batch=gb,
                                interleave=_f(row, "vp_interleave", 1.0), sequence_parallel=sp,
                                recompute=_recompute(row["recompute"]), zero_stage=0.0,
                                dp_overlap=0.0)  # "no grad all-reduce overlap" (Sec. 6.3)
            metric, measured = ("step_time", _f(row, "step_time_s"))
            if measured is None:
                metric, measured = "mfu", _f(row, "mfu_pct") / 100.0
            model = _model(row)
            cases.append(TrainingCase(rid, key, metric, measured, model, _dgx_a100(n), plan))
        elif key == "korthikanti_table4":
            sp = 1.0 if row["sequence_parallel"] == "yes" else 0.0
            plan = TrainingPlan(tp=_f(row, "tp"), microbatch_size=_f(row, "microbatch"),
                                global_batch=_f(row, "global_batch_seqs"), sequence_parallel=sp,
                                recompute=_recompute(row["recompute"]))
            cases.append(TrainingCase(rid, key, "layer_time", _f(row, "step_time_s"),
                                      _model(row), _dgx_a100(n), plan))
        elif key == "megatron_readme_2020":
            # One micro-batch per replica (no pipeline; 2020 Megatron-LM has no gradient
            # accumulation in these runs), activation checkpointing on (the README's GPT-2
            # example scripts pass --checkpoint-activations), local DDP without overlap.
            tp, dp = _f(row, "tp"), _f(row, "dp")
            gb = _f(row, "global_batch_seqs")
            plan = TrainingPlan(tp=tp, dp=dp, microbatch_size=gb / dp, global_batch=gb,
                                recompute=RECOMPUTE_FULL, dp_overlap=0.0)
            system = _dgx2_v100(n) if "V100" in row["hardware"] else _dgx_a100(n)
            cases.append(TrainingCase(rid, key, "step_time", _f(row, "step_time_s"),
                                      _model(row), system, plan))
    return cases


def predict_parts(case: TrainingCase):
    """The case's prediction and its split into kernel and other time.

    Modelled times are affine in 1 / kernel_fraction: t = A / kernel_fraction + B. With the plan
    the stored constant selects held fixed, one vmapped evaluation at two fractions gives A and
    B. Metrics inverse to time (MFU, TFLOP/s) are turned into times.

    **Returns:** `(value, plan, (measured_time, A, B))`.
    """
    value, plan, _ = predict_case(case)
    inverse = case.metric in ("mfu", "tflops_eq3")
    fractions = jnp.array([1.0, 0.5])
    def at(eta):
        return DEFAULT.replace(kernel_fraction=eta)

    if case.metric == "layer_time":
        v = jax.vmap(lambda e: layer_time(case.model, plan, case.system, flash_attention=FLASH,
                                          calibration=at(e)))(fractions)
        t1, t2 = (float(x) for x in v)
    else:
        r = jax.vmap(lambda e: train_step(case.model, plan, case.system, flash_attention=FLASH,
                                          calibration=at(e)))(fractions)
        t1, t2 = (float(x) for x in r.step_time)
    a, b = t2 - t1, 2 * t1 - t2
    measured = case.measured
    if inverse:
        # value = K / t for a case constant K, so the measured figure is a time K / measured.
        measured = (a / float(DEFAULT.kernel_fraction) + b) * value / case.measured
    return value, plan, (measured, a, b)


def fit_kernel_fraction(data_dir: Path | None = None, sources=None) -> float:
    """Least-squares fit of `Calibration.kernel_fraction` (log-ratio residuals).

    **Arguments:**

    - `data_dir`: the shared data folder.
    - `sources`: the `source_key`s fitted (default `FIT_SOURCES`).

    **Returns:** the fraction, rounded to 3 significant digits as stored.
    """
    sources = FIT_SOURCES if sources is None else sources
    return fit_fraction_from_parts([predict_parts(c)[2] for c in training_cases(data_dir)
                                    if c.source_key in sources])


def fit_fraction_from_parts(parts) -> float:
    """The kernel fraction minimizing the squared log-ratios of (measured, A, B) triples."""
    measured, a, b = np.asarray(parts, dtype=float).T

    def loss(eta):
        return float(np.sum(np.log((a / eta + b) / measured) ** 2))

    res = minimize_scalar(loss, bounds=(0.3, 1.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(f"{res.x:.3g}")


def eq3_flops(model: Transformer, global_batch) -> float:
    """FLOPs per iteration by Narayanan et al. 2021 eq. 3 (full recomputation counted)."""
    s, l_, h, v = (float(x) for x in (model.seq_len, model.layers, model.hidden, model.vocab))
    return 96.0 * global_batch * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h))


def megatron2021_plans(case: TrainingCase) -> TrainingPlan:
    """The plans Megatron-LM of 2021 could run for a case (its model-parallel size fixed)."""
    plans = enumerate_plans(case.model, case.system.num_chips, case.global_batch,
                            recompute=(int(RECOMPUTE_FULL),), zero_stages=(0,),
                            sequence_parallel=(0,), dp_overlap=0)
    keep = np.ones(plans.tp.shape, bool)
    if not case.fixed_tp:
        # Narayanan et al. 2021, Sec. 5.4, Takeaway #1: tensor parallelism up to the GPUs of a
        # server, pipeline parallelism beyond (how the paper laid out its runs).
        node = int(round(float(case.system.scaleup_size)))
        mp = np.asarray(plans.tp * plans.pp)
        keep &= np.asarray(plans.tp) == np.minimum(mp, node)
    if case.model_parallel:
        keep &= np.asarray(plans.tp * plans.pp) == case.model_parallel
    if case.fixed_tp:
        keep &= np.asarray(plans.tp) == case.fixed_tp
    if case.fixed_pp:
        keep &= np.asarray(plans.pp) == case.fixed_pp
    return jax.tree.map(lambda x: x[keep], plans)


def _pad(plans: TrainingPlan, multiple: int = 256) -> TrainingPlan:
    """Repeat the last plan up to a multiple of `multiple` plans (duplicates leave the best plan
    unchanged); one array shape for every case lets eager evaluation reuse its kernels."""
    n = plans.tp.shape[0]
    idx = np.minimum(np.arange(-(-n // multiple) * multiple), n - 1)
    return jax.tree.map(lambda x: x[idx], plans)


def predict_case(case: TrainingCase, plan=None, *, calibration: Calibration = DEFAULT):
    """(predicted value of the case's metric, the plan used, its TrainReport or None).

    `plan` overrides the case's plan (or its `best_plan` search). `calibration` is passed to
    `train_step` / `layer_time`, so a calibrated parameter set predicts every case.
    """
    kw = dict(flash_attention=FLASH, calibration=calibration)
    plan = case.plan if plan is None else plan
    if case.metric == "layer_time":
        return float(layer_time(case.model, plan, case.system, **kw)), plan, None
    if plan is None:
        plans = _pad(megatron2021_plans(case))
        reports = evaluate_plans(case.model, plans, case.system, **kw)
        plan, report = select_plan(plans, reports)
    else:
        report = train_step(case.model, plan, case.system, **kw)
    t = float(report.step_time)
    if case.metric == "step_time":
        value = t
    elif case.metric == "mfu":
        value = float(report.mfu)
    else:
        chips = case.system.num_chips
        value = eq3_flops(case.model, float(plan.global_batch)) / (t * chips) / 1e12
    return value, plan, report
