"""Published LLM training measurements as modelled cases (data/training_runs.csv).

Every row of the file is either a `TrainingCase` (the model shape from the row, the system it
ran on, the plan it states, or a set of candidate plans that `best_plan` completes where the
source leaves the layout open, and the measured time) or a `SkippedRow` that says why it cannot
be modelled yet: nothing is dropped silently. `training_rows` returns both.

Every measured figure becomes a time, with the source's own arithmetic: a step time as stated;
TFLOP/s per GPU as the FLOPs of the source's formula over TFLOP/s x GPUs (Narayanan et al. 2021
eq. 3 for Megatron-LM SC21; the model-FLOP count of `Transformer.flops_per_token`, which is
Megatron-Core's `num_floating_point_operations`, for Megatron-Core); MFU likewise against the
dense peak; tokens/s per GPU as the step's tokens over tokens/s x GPUs. The error of a case is
predicted time / measured time - 1: negative is optimistic (a faster run than measured).

`TrainingRows` evaluates every case under a `Calibration` in one jitted call (the rows stacked by
their static structure and vmapped): what the validation and the leave-one-source-out refits
of benchmarks/validate.py run on.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, SYSTEMS, Reason, System
from dse.hardware import units as u
from dse.models import (
    CP_ALL_GATHER,
    DEFAULT,
    FRAMEWORKS,
    RECOMPUTE_FULL,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    Calibration,
    TrainingPlan,
    Transformer,
    enumerate_plans,
    evaluate_plans,
    layer_time,
    select_plan,
    train_step,
)

from ._fit import calibrate
from ._measurements import Measurements

# Megatron-LM before FlashAttention (SC21, 2021; Korthikanti et al., 2022) materialized the
# attention scores: those cases run with `flash_attention=False`; later frameworks fuse it.
FLASH = False

# The training sources `Calibration.kernel_fraction` is fitted to (`fit_kernel_fraction`):
# every source of training_runs.csv with a modelled row. benchmarks/validate.py refits it
# without each source in turn and predicts that source.
FIT_SOURCES = ("megatron_sc21_table1", "megatron_sc21_table2", "megatron_sc21_text",
               "korthikanti_table5", "korthikanti_text", "korthikanti_table4",
               "mcore_h100_weak_scaling", "megatron_readme_2020", "mosaicml_llmfoundry_bench",
               "megatron_bridge_25.11")
# Published runs kept out of every fit: data/external_checks.csv. Its rows carry source keys
# that start with this prefix; `training_measurements` refuses them.
EXTERNAL_PREFIX = "ext_"
# Kernel fractions at which `training_measurements` tabulates every row: a modelled time is
# piecewise smooth in 1 / kernel_fraction, and linear interpolation between these 101 points
# (steps of 0.005) is within 1e-4 of the model (checked in tests/test_validation.py).
KERNEL_FRACTION_GRID = np.linspace(0.5, 1.0, 101)

# Why a row cannot be modelled (the `reason` of a `SkippedRow`).
LOW_PRECISION = ("FP8/FP4 compute: modelled in the low-precision tables "
                 "(dse.calibration.precision_training_rows, benchmarks/validate_precision.py)")
NO_PRESET_GB300 = ("GB300: not yet a case (the GB300-NVL72 preset exists; adding the row "
                   "to a fitted source refits the training constants)")
MLA = "DeepSeek-V3: the Transformer has its shape (MLA, shared expert, dense first layers; " \
      "the deepseek-v3 preset) but no case builder reads this row's layout yet"
GPT_OSS = "GPT-OSS-120B: no preset of its shape (alternating sliding-window attention is in " \
          "Transformer, the model's other fields are not in the sources used)"
MOE_MODELZOO = "Megatron-MoE-ModelZoo Qwen3-235B-A22B: predicted out of sample in the MoE " \
               "table (dse.calibration.moe_cases), not a fit case, so that no training " \
               "constant is fitted to the MoE family"


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """One measured row: what ran, what was measured, and how we predict it.

    **Fields:**

    - `metric`: "step_time" (s per optimizer step) or "layer_time" (s, one layer forward and
      backward, Korthikanti Table 4); `measured` is that time, s.
    - `stated`: the figure as the source states it ("140 TFLOP/s per GPU (eq. 3)").
    - `plan`: the stated plan, or None with `candidates` (a batched `TrainingPlan`) from which
      the fastest feasible at the shipped defaults is taken (`resolve_plan`).
    - `flash_attention`: the framework fuses attention (FlashAttention / cuDNN), as
      `train_step`'s argument.
    - `framework`: what ran it (one of `dse.models.FRAMEWORKS`: "megatron-lm",
      "megatron-core", "deepspeed", "composer", "pytorch").
    - `attention_kernel`: "chip" (the chip generation's fused kernel), "previous" (one
      generation older: `Calibration.with_previous_generation_attention`) or "two_older"
      (two generations older: FlashAttention v1 or its Triton port on H100).
    """

    run_id: str
    source_key: str
    metric: str
    measured: float
    model: Transformer
    system: System
    plan: TrainingPlan | None
    candidates: TrainingPlan | None = None
    flash_attention: bool = False
    framework: str = "megatron-lm"
    stated: str = ""
    attention_kernel: str = "chip"

    def __post_init__(self):
        check_attention_kernel("TrainingCase", self.attention_kernel)

    def calibration(self, calibration: Calibration) -> Calibration:
        """The calibration this case runs under: `calibration` for its framework
        (`Calibration.for_framework`), with an older attention kernel where the case ran one
        (`with_attention_kernel`)."""
        return with_attention_kernel(calibration.for_framework(self.framework),
                                     self.attention_kernel)


# How many generations a run's fused attention kernel is older than its chip's own:
# "chip" (FlashAttention-2 on A100, -3 on H100, -4 on B200), "previous" (one older) or
# "two_older" (FlashAttention v1 or its Triton port on H100).
ATTENTION_KERNELS = {"chip": 0, "previous": 1, "two_older": 2}


def check_attention_kernel(owner: str, kernel: str) -> None:
    """A `ValueError` naming `owner.attention_kernel` unless `kernel` is in `ATTENTION_KERNELS`."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"{owner}.attention_kernel must be one of {list(ATTENTION_KERNELS)}; "
                         f"got {kernel!r}")


def with_attention_kernel(calibration: Calibration, kernel: str) -> Calibration:
    """`calibration` for a run whose fused attention kernel is `kernel` (`ATTENTION_KERNELS`):
    `Calibration.with_previous_generation_attention` of its age, unchanged for "chip"."""
    check_attention_kernel("case", kernel)
    generations = ATTENTION_KERNELS[kernel]
    return calibration.with_previous_generation_attention(generations) if generations \
        else calibration


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A row that is not modelled, and why (`reason`)."""

    run_id: str
    source_key: str
    reason: str


def _f(row, key, default=None):
    v = row.get(key, "")
    return float(v) if v not in ("", None, "n/a") else default


def _model(row, seq_len=None, **kw) -> Transformer:
    hidden = _f(row, "hidden")
    # Megatron-LM GPT MLPs are 4h wide (Narayanan et al. 2021, Sec. 3.2); rows without
    # ffn_hidden are Megatron GPT shapes.
    return Transformer(layers=_f(row, "layers"), hidden=hidden, heads=_f(row, "heads"),
                       kv_heads=_f(row, "heads"), ffn_hidden=_f(row, "ffn_hidden", 4 * hidden),
                       vocab=_f(row, "vocab", 51200.0), seq_len=seq_len or _f(row, "seq_len"),
                       name=row["model"], **kw)


def _dgx_a100(n: int) -> System:
    return SYSTEMS["DGX-A100"].with_num_chips(int(n))


def _dgx2_v100(n: int) -> System:
    # DGX-2: 16 V100 SXM3 on NVSwitch (scale-up 16), 8 x 100 Gb/s EDR InfiniBand per 16 GPUs
    # = 6.25 GB/s per GPU (NVIDIA DGX-2 datasheet). Latencies as the DGX-A100 preset.
    a = SYSTEMS["DGX-A100"]
    return System(chip=CHIPS["V100"], num_chips=int(n), scaleup_size=16,
                  scaleup_latency=a.scaleup_latency, scaleout_bandwidth=100 * u.Gbit * 8 / 16,
                  scaleout_latency=a.scaleout_latency, name="DGX-2")


def _mosaic_a100(row, n: int) -> System:
    # "A100 {40,80}GB with 1600 Gbps node-node interconnect (RoCE)" (the row's hardware): 8 GPUs
    # on NVSwitch per node, 1600 Gb/s per node = 200 Gb/s per GPU, the DGX-A100 rate.
    chip = CHIPS["A100-40GB" if "40GB" in row["hardware"] else "A100-80GB"]
    return SYSTEMS["DGX-A100"].replace(chip=chip).with_num_chips(int(n))


def _recompute(text: str) -> float:
    text = (text or "").lower()
    if text.startswith("selective"):
        return RECOMPUTE_SELECTIVE
    if text.startswith("full"):
        return RECOMPUTE_FULL
    return RECOMPUTE_NONE


def eq3_flops(model: Transformer, global_batch) -> float:
    """FLOPs per iteration by Narayanan et al. 2021 eq. 3 (full recomputation counted)."""
    s, l_, h, v = (float(x) for x in (model.seq_len, model.layers, model.hidden, model.vocab))
    return 96.0 * global_batch * s * l_ * h * h * (1 + s / (6 * h) + v / (16 * l_ * h))


def _model_flops(model: Transformer, global_batch) -> float:
    """Model FLOPs of one step (`Transformer.flops_per_token`, no recomputation)."""
    return float(global_batch * model.seq_len * model.flops_per_token(training=True))


def _filter(plans: TrainingPlan, keep) -> TrainingPlan:
    # Indexed on the host: a boolean gather of a JAX array compiles once per shape.
    keep = np.asarray(keep)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[keep]), plans)


def megatron2021_plans(model: Transformer, system: System, global_batch: int,
                       model_parallel: int = 0, fixed_tp: int = 0,
                       fixed_pp: int = 0) -> TrainingPlan:
    """The plans Megatron-LM of 2021 could run (its model-parallel size fixed where stated)."""
    plans = enumerate_plans(model, system.num_chips, global_batch,
                            recompute=(int(RECOMPUTE_FULL),), zero_stages=(0,),
                            sequence_parallel=(0,), dp_overlap=0)
    keep = np.ones(plans.tp.shape, bool)
    tp, pp = np.asarray(plans.tp), np.asarray(plans.pp)
    if not fixed_tp:
        # Narayanan et al. 2021, Sec. 5.4, Takeaway #1: tensor parallelism up to the GPUs of a
        # server, pipeline parallelism beyond (how the paper laid out its runs).
        node = int(round(float(system.scaleup_size)))
        keep &= tp == np.minimum(tp * pp, node)
    if model_parallel:
        keep &= tp * pp == model_parallel
    if fixed_tp:
        keep &= tp == fixed_tp
    if fixed_pp:
        keep &= pp == fixed_pp
    return _filter(plans, keep)


def _sc21(row, key, rid, n):
    """Megatron-LM SC21 Table 1, its text, and the PTD-P rows of Table 2: TFLOP/s by eq. 3.

    Layout: only TP x PP stated (TP and PP for 530B / 1T); micro-batch and interleave unstated.
    Megatron-LM 2021: full recomputation (eq. 3 assumes it), no ZeRO, no sequence parallelism,
    gradient all-reduce after the backward pass.
    """
    if key == "megatron_sc21_text":
        row = dict(row, ffn_hidden="")
    model, gb = _model(row), int(_f(row, "global_batch_seqs"))
    system = _dgx_a100(n)
    candidates = megatron2021_plans(model, system, gb, int(_f(row, "model_parallel_size", 0)),
                                    int(_f(row, "tp", 0)), int(_f(row, "pp", 0)))
    tflops = _f(row, "tflops_per_device")
    return TrainingCase(rid, key, "step_time", eq3_flops(model, gb) / (tflops * 1e12 * n),
                        model, system, None, candidates=candidates,
                        stated=f"{tflops:g} TFLOP/s per GPU (eq. 3)")


def _sc21_zero3(row, key, rid, n):
    """SC21 Table 2, ZeRO-3 rows: DeepSpeed ZeRO-3 over all GPUs (no model parallelism), the
    stated micro-batch, full activation recomputation (the FLOP count of eq. 3 assumes it; a
    175B model at micro-batch 4 does not fit otherwise), prefetch overlap, DeepSpeed's gathers
    for the recomputed forward, and flat rings over the data-parallel group (the rate these
    rows imply; `TrainingPlan.dp_hierarchical`)."""
    model, gb = _model(row), int(_f(row, "global_batch_seqs"))
    plan = TrainingPlan(tp=1, pp=1, dp=n, microbatch_size=_f(row, "microbatch"),
                        global_batch=gb, recompute=RECOMPUTE_FULL, zero_stage=3.0,
                        dp_overlap=1.0, dp_hierarchical=0.0, zero3_regather=1.0)
    tflops = _f(row, "tflops_per_device")
    return TrainingCase(rid, key, "step_time", eq3_flops(model, gb) / (tflops * 1e12 * n),
                        model, _dgx_a100(n), plan, framework="deepspeed",
                        stated=f"{tflops:g} TFLOP/s per GPU (eq. 3)")


def _korthikanti(row, key, rid, n):
    sp = 1.0 if row["sequence_parallel"] == "yes" else 0.0
    model = _model(row)
    if key == "korthikanti_table4":
        plan = TrainingPlan(tp=_f(row, "tp"), microbatch_size=_f(row, "microbatch"),
                            global_batch=_f(row, "global_batch_seqs"), sequence_parallel=sp,
                            recompute=_recompute(row["recompute"]))
        t = _f(row, "step_time_s")
        return TrainingCase(rid, key, "layer_time", t, model, _dgx_a100(n), plan,
                            stated=f"{1e3 * t:.1f} ms per layer")
    gb = _f(row, "global_batch_seqs", 2240.0)  # the paired dp8 row's batch (same run)
    plan = TrainingPlan(tp=_f(row, "tp"), pp=_f(row, "pp"), dp=_f(row, "dp"),
                        microbatch_size=_f(row, "microbatch", 1.0), global_batch=gb,
                        interleave=_f(row, "vp_interleave", 1.0), sequence_parallel=sp,
                        recompute=_recompute(row["recompute"]), zero_stage=0.0,
                        dp_overlap=0.0)  # "no grad all-reduce overlap" (Sec. 6.3)
    t = _f(row, "step_time_s")
    if t is not None:
        return TrainingCase(rid, key, "step_time", t, model, _dgx_a100(n), plan,
                            stated=f"{t:g} s per step")
    mfu = _f(row, "mfu_pct") / 100.0
    system = _dgx_a100(n)
    t = _model_flops(model, gb) / (mfu * n * float(system.chip.peak_flops))
    return TrainingCase(rid, key, "step_time", t, model, system, plan,
                        stated=f"MFU {100 * mfu:g}%")


def _readme_2020(row, key, rid, n):
    # One micro-batch per replica (no pipeline; 2020 Megatron-LM has no gradient accumulation in
    # these runs), activation checkpointing on (the README's GPT-2 example scripts pass
    # --checkpoint-activations), local DDP without overlap.
    tp, dp = _f(row, "tp"), _f(row, "dp")
    gb = _f(row, "global_batch_seqs")
    plan = TrainingPlan(tp=tp, dp=dp, microbatch_size=gb / dp, global_batch=gb,
                        recompute=RECOMPUTE_FULL, dp_overlap=0.0)
    system = _dgx2_v100(n) if "V100" in row["hardware"] else _dgx_a100(n)
    t = _f(row, "step_time_s")
    return TrainingCase(rid, key, "step_time", t, _model(row), system, plan,
                        stated=f"{t:g} s per step")


def _mcore_h100(row, key, rid, n):
    """Megatron-Core r0.8.0 weak scaling on DGX H100 (README, July 2024): TP and PP stated; the
    distributed optimizer (ZeRO-1) with --overlap-grad-reduce --overlap-param-gather, sequence
    parallelism with TP (Megatron-Core's TP communication overlap needs it), TransformerEngine
    fused attention. Micro-batch, interleave and recomputation unstated: the fastest feasible of
    no / selective recomputation. GPT shapes: MHA, 4h GELU MLP (the README lists layers,
    hidden, heads; vocab 131072, seq 4096)."""
    model = _model(row)
    gb = int(_f(row, "global_batch_seqs"))
    system = SYSTEMS["DGX-H100"].with_num_chips(n)
    tp, pp = int(_f(row, "tp")), int(_f(row, "pp"))
    plans = enumerate_plans(model, n, gb, recompute=(0, 1), zero_stages=(1,),
                            sequence_parallel=(1,) if tp > 1 else (0,), dp_overlap=1)
    candidates = _filter(plans, (np.asarray(plans.tp) == tp) & (np.asarray(plans.pp) == pp))
    tflops = _f(row, "tflops_per_device")
    return TrainingCase(rid, key, "step_time", _model_flops(model, gb) / (tflops * 1e12 * n),
                        model, system, None, candidates=candidates, flash_attention=True,
                        framework="megatron-core",
                        stated=f"{tflops:g} model TFLOP/s per GPU")


def _mosaic(row, key, rid, n):
    """MosaicML LLM Foundry benchmarks (Composer, PyTorch FSDP): MPT shapes from the row
    (MHA, GELU MLP of expansion 4, vocab 50368, tied embeddings), FULL_SHARD = ZeRO-3 over all
    GPUs with prefetch, the stated micro-batch and activation checkpointing, fused attention
    of the generation before the A100's: the A100 tables predate FlashAttention-2 (July 2023)
    and the torch 2.0 Composer release (the benchmark README still defers updating its tables
    to the Composer release after torch 2.0), when LLM Foundry's `attn_impl: flash` / `triton` were
    FlashAttention v1 and its Triton port."""
    model = _model(row)
    gb = _f(row, "global_batch_seqs")
    plan = TrainingPlan(dp=n, microbatch_size=_f(row, "microbatch"), global_batch=gb,
                        recompute=_recompute(row["recompute"]), zero_stage=3.0, dp_overlap=1.0)
    tps = _f(row, "tokens_per_s_per_device")
    t = gb * float(model.seq_len) / (tps * n)
    return TrainingCase(rid, key, "step_time", t, model, _mosaic_a100(row, n), plan,
                        flash_attention=True, framework="composer",
                        stated=f"{tps:g} tokens/s per GPU", attention_kernel="previous")


# The fused attention kernel of LLM Foundry's H100 benchmark tables. Its README's "H100 80GB
# BF16" / "FP8" sections (2023-10-19, commit b2a43a1) were run by
# scripts/train/benchmarking/sweep.sh, which never passes `--attn_impl`, through
# submit_benchmarks.py, which sets `attn_config.attn_impl = args.attn_impl` with the flag
# defaulting to "triton": LLM Foundry's port of the FlashAttention Triton kernel
# (llmfoundry/models/layers/flash_attn_triton.py, on triton-pre-mlir), a first-generation
# kernel, two generations older than Hopper's FlashAttention-3 (one older on A100, as `_mosaic`
# models the A100 tables). The ">= 128 GPUs" section (2024-01-06, commit 5e85bd6) was run by
# that commit's sweep.py, which passes `--attn_impl flash` for MPT-1b, -3b, -7b and -70b
# (FlashAttention-2: the harness installs `.[gpu-flash2]`, one generation older) and
# `--attn_impl triton` for MPT-13b and -30b. That section has 128, 256 and 512 GPUs, the others
# at most 64.
LLMFOUNDRY_H100_FLASH_AT_SCALE = ("1b", "3b", "7b", "70b")
# The MPT sizes LLM Foundry benchmarks (scripts/train/yamls/pretrain/mpt-*.yaml at 5e85bd6).
LLMFOUNDRY_MPT_SIZES = ("125m", "350m", "760m", "1b", "3b", "7b", "13b", "30b", "70b")


def llmfoundry_h100_attention(model: str, num_gpus: int) -> str:
    """The attention kernel (`ATTENTION_KERNELS`) of an LLM Foundry H100 table row ("MPT-<size>"
    on `num_gpus` GPUs): "previous" for the models the >= 128-GPU sweep ran with
    FlashAttention-2, else "two_older" (Triton). Another model name is a `ValueError`: no
    kernel is guessed for a row of another table."""
    size = model.split("-")[-1].lower()
    if not model.upper().startswith("MPT-") or size not in LLMFOUNDRY_MPT_SIZES:
        raise ValueError(f"llmfoundry_h100_attention: model must be MPT-<size> with size one of "
                         f"{list(LLMFOUNDRY_MPT_SIZES)}; got {model!r}")
    return "previous" if num_gpus >= 128 and size in LLMFOUNDRY_H100_FLASH_AT_SCALE \
        else "two_older"


def _megatron_bridge(row, key, rid, n):
    """Megatron-Bridge 25.11 (NeMo, Megatron-Core) MoE rows: the layout is stated in full;
    distributed optimizer, fused attention; recomputation unstated (the fastest of none,
    selective, full that fits)."""
    name = row["model"]
    if "DeepSeek" in name:
        return MLA
    if "GPT OSS" in name:
        return GPT_OSS
    if "GB300" in row["hardware"]:
        return NO_PRESET_GB300
    if not name.startswith("Qwen3_235B"):
        return f"{name}: no preset shape"
    model = TRANSFORMERS["qwen3-235b-a22b"].replace(seq_len=_f(row, "seq_len"))
    gb = int(_f(row, "global_batch_seqs"))
    tp, pp, ep = (int(_f(row, k, 1)) for k in ("tp", "pp", "ep"))
    # GB200 NVL72: 72 GPUs per NVLink domain (the GB200-NVL72 preset).
    system = SYSTEMS["GB200-NVL72"].with_num_chips(n) if "GB200" in row["hardware"] else None
    if system is None:
        return f"{row['hardware']}: no system preset"
    mb, v = _f(row, "microbatch"), _f(row, "vp_interleave", 1.0)
    dp = n // (tp * pp)
    plans = [TrainingPlan(tp=tp, pp=pp, dp=dp, ep=ep, microbatch_size=mb, global_batch=gb,
                          interleave=v, sequence_parallel=0.0, recompute=rc, zero_stage=1.0,
                          dp_overlap=1.0)
             for rc in (RECOMPUTE_NONE, RECOMPUTE_SELECTIVE, RECOMPUTE_FULL)]
    candidates = jax.tree.map(lambda *xs: jnp.stack(xs), *plans)
    tps = _f(row, "tokens_per_s_per_device")
    t = gb * float(model.seq_len) / (tps * n)
    return TrainingCase(rid, key, "step_time", t, model, system, None, candidates=candidates,
                        flash_attention=True, framework="megatron-core",
                        stated=f"{tps:g} tokens/s per GPU")


def _h100_500w(n: int) -> System:
    # torchtitan's Grand Teton H100: "96GB HBM2e with 2.4 TB/sec", "the default 500W power
    # limit", 400 Gb/s RDMA per GPU, 8 per host on NVLink (torchtitan docs/performance.md).
    # Its clock under the 500 W limit is not in the sources used: the 700 W part's measured
    # best-GEMM fraction is kept, which makes these predictions optimistic if anything.
    chip = CHIPS["H100-SXM"].replace(hbm_bandwidth=2.4 * u.TB, hbm_bytes=96 * u.GB,
                                      name="H100-96GB-500W")
    return SYSTEMS["DGX-H100"].replace(chip=chip).with_num_chips(n)


def _llama(row) -> Transformer:
    """The Llama 3 preset of the row's size at the row's sequence length."""
    size = row["model"].split()[-1].lower()
    return TRANSFORMERS[f"llama3-{size}"].replace(seq_len=_f(row, "seq_len"))


def _external(row, key, rid, n):
    """Published runs kept out of every fit (data/external_checks.csv), predicted by the same
    models. Each builder states what the source leaves open and what is assumed."""
    if key == "ext_mosaicml_h100":
        # As the A100 tables (`_mosaic`), on H100. The interconnect of MosaicML's H100 nodes is
        # not stated: a DGX H100 (400 Gb/s per GPU) is assumed. Fused attention: what the
        # benchmark harness ran (`llmfoundry_h100_attention`), not the yamls' `attn_impl`.
        case = _mosaic(row, key, rid, n)
        return dataclasses.replace(case, system=SYSTEMS["DGX-H100"].with_num_chips(n),
                                   attention_kernel=llmfoundry_h100_attention(row["model"], n))
    if key == "ext_flashattn_training":
        # flash-attention training/: DDP (+ ZeRO-1) on one 8 x A100 80GB node, no activation
        # checkpointing, the stated micro-batch; its README figures are FlashAttention v1's
        # (FlashAttention-2 paper, Table 1, lists the same 189 TFLOP/s for it).
        model = _model(row)
        gb = _f(row, "global_batch_seqs")
        zero = 1.0 if "ZeRO-1" in row["sharding"] else 0.0
        plan = TrainingPlan(dp=n, microbatch_size=_f(row, "microbatch"), global_batch=gb,
                            zero_stage=zero, dp_overlap=1.0)
        tps = _f(row, "tokens_per_s_per_device")
        return TrainingCase(rid, key, "step_time", gb * float(model.seq_len) / (tps * n), model,
                            _dgx_a100(n), plan, flash_attention=True, framework="pytorch",
                            stated=f"{tps:g} tokens/s per GPU", attention_kernel="previous")
    if key == "ext_torchtitan":
        # FSDP2 (ZeRO-3, hierarchical NCCL, one gather per backward), the stated local batch
        # and TP; PyTorch SDPA (FlashAttention-2 on A100; cuDNN, the Hopper-generation kernel,
        # the default on H100 since torch 2.5).
        model = _llama(row)
        tp, dp = _f(row, "tp", 1.0), _f(row, "dp", n)
        plan = TrainingPlan(tp=tp, dp=dp, microbatch_size=_f(row, "microbatch"),
                            global_batch=_f(row, "global_batch_seqs"),
                            sequence_parallel=1.0 if tp > 1 else 0.0,
                            recompute=_recompute(row["recompute"]), zero_stage=3.0,
                            dp_overlap=1.0)
        system = _dgx_a100(n) if "A100" in row["hardware"] else _h100_500w(n)
        tps = _f(row, "tokens_per_s_per_device")
        t = float(plan.global_batch) * float(model.seq_len) / (tps * n)
        return TrainingCase(rid, key, "step_time", t, model, system, plan, flash_attention=True,
                            framework="pytorch", stated=f"{tps:g} tokens/s per GPU")
    if key == "ext_llama3":
        # Llama 3 Table 4: TP 8, PP 16 (126 layers: the first and the last stage one layer short
        # beside the embedding and the output layer, Sec. 3.3.2: `account_embedding_loss`), DP
        # (FSDP without resharding weights after forward: ZeRO-2), no activation checkpointing
        # at 8K (Dubey et al. 2024, Sec. 3.3.2); micro-batch unstated (the fastest feasible of
        # 1-4), interleaved schedule of depth 1-4; 8 H100 per node, 400 Gb/s RoCE. The 128K
        # row adds CP 16, which Llama 3 runs as an all-gather of K and V before each attention,
        # exposed (Sec. 3.3.2: `CP_ALL_GATHER`; with 8 KV heads over TP 8, one KV head's chunk
        # per rank).
        model = _llama(row)
        gb = int(_f(row, "global_batch_seqs"))
        tp, pp, dp, cp = _f(row, "tp"), _f(row, "pp"), _f(row, "dp"), _f(row, "cp", 1.0)
        plans = [TrainingPlan(tp=tp, pp=pp, dp=dp, cp=cp, microbatch_size=mb, global_batch=gb,
                              interleave=v, sequence_parallel=1.0, recompute=rc, zero_stage=2.0,
                              dp_overlap=1.0, account_embedding_loss=1.0, cp_comm=CP_ALL_GATHER)
                 for mb in (1.0, 2.0, 4.0) for v in (1.0, 2.0, 4.0)
                 for rc in (RECOMPUTE_NONE, RECOMPUTE_SELECTIVE)]
        tflops = _f(row, "tflops_per_device")
        return TrainingCase(rid, key, "step_time", _model_flops(model, gb) / (tflops * 1e12 * n),
                            model, SYSTEMS["DGX-H100"].with_num_chips(n), None,
                            candidates=_stack(plans), flash_attention=True,
                            framework="pytorch", stated=f"{tflops:g} TFLOP/s per GPU")
    if key == "ext_mtnlg":
        # MT-NLG 530B (Smith et al. 2022): Megatron-LM TP 8 x DeepSpeed PP 35, DP with ZeRO-1,
        # full recomputation, the Megatron kernels of 2021 (no fused attention), micro-batch
        # and the rest as SC21 (the fastest feasible); the stated iteration time.
        model, gb = _model(row), int(_f(row, "global_batch_seqs"))
        system = _dgx_a100(n)
        plans = enumerate_plans(model, n, gb, recompute=(int(RECOMPUTE_FULL),), zero_stages=(1,),
                                sequence_parallel=(0,), dp_overlap=0)
        keep = (np.asarray(plans.tp) == 8) & (np.asarray(plans.pp) == 35) \
            & (np.asarray(plans.interleave) == 1)
        t = _f(row, "step_time_s")
        return TrainingCase(rid, key, "step_time", t, model, system, None,
                            candidates=_filter(plans, keep), framework="deepspeed",
                            stated=f"{t:g} s per iteration")
    reasons = {"ext_bloom": "inter-node bandwidth of Jean Zay not in the sources used",
               "ext_opt": "tensor-parallel degree not stated",
               "ext_mlperf": "time to train from a checkpoint (FP8), layout not given",
               "ext_megascale": "headline MFU only; non-standard transformer block"}
    return reasons.get(key, f"external source {key}: no case builder")


def _is_low_precision(row) -> bool:
    p = row["precision"].lower()
    return "fp8" in p or "fp4" in p or "mx" in p or "float8" in p


def _case(row):
    """A `TrainingCase`, or the reason (str) the row is not modelled."""
    key, rid, n = row["source_key"], row["run_id"], int(_f(row, "num_devices"))
    if _is_low_precision(row):
        return LOW_PRECISION
    if key.startswith(EXTERNAL_PREFIX):
        return _external(row, key, rid, n)
    if key in ("megatron_sc21_table1", "megatron_sc21_text"):
        return _sc21(row, key, rid, n)
    if key == "megatron_sc21_table2":
        return _sc21_zero3(row, key, rid, n) if "ZeRO-3" in row.get("sharding", "") \
            else _sc21(row, key, rid, n)
    if key in ("korthikanti_table5", "korthikanti_text", "korthikanti_table4"):
        return _korthikanti(row, key, rid, n)
    if key == "megatron_readme_2020":
        return _readme_2020(row, key, rid, n)
    if key == "mcore_h100_weak_scaling":
        return _mcore_h100(row, key, rid, n)
    if key == "mosaicml_llmfoundry_bench":
        return _mosaic(row, key, rid, n)
    if key == "megatron_bridge_25.11":
        return _megatron_bridge(row, key, rid, n)
    if key == "megatron_moe_modelzoo_qwen3":
        return MOE_MODELZOO
    return f"source {key}: no case builder"


def training_rows(data_dir: Path | None = None,
                  filename: str = "training_runs.csv") -> tuple[list, list]:
    """Every row of a training-runs CSV: `(cases, skipped)`.

    **Arguments:**

    - `data_dir`: the data folder (default: the repository's data/).
    - `filename`: the CSV (its columns are training_runs.csv's).

    **Returns:** the `TrainingCase`s and the `SkippedRow`s (with the reason), every row in one
    of the two.
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / filename, newline="") as f:
        rows = list(csv.DictReader(f))
    cases, skipped = [], []
    for row in rows:
        out = _case(row)
        if isinstance(out, str):
            skipped.append(SkippedRow(row["run_id"], row["source_key"], out))
        else:
            cases.append(out)
    return cases, skipped


def training_cases(data_dir: Path | None = None) -> list[TrainingCase]:
    """Every row of training_runs.csv that states enough to be modelled, as cases."""
    return training_rows(data_dir)[0]


def _pad(plans: TrainingPlan, multiple: int = 256) -> TrainingPlan:
    """Repeat the last plan up to a multiple of `multiple` plans (duplicates leave the best plan
    unchanged); one array shape for every case lets eager evaluation reuse its kernels."""
    n = plans.tp.shape[0]
    idx = np.minimum(np.arange(-(-n // multiple) * multiple), n - 1)
    return jax.tree.map(lambda x: x[idx], plans)


_ANY_CHIPS = 1 << 20  # a chip count above every candidate plan's


@eqx.filter_jit
def _fastest(model, plans, system, calibration, flash_attention):
    reports = evaluate_plans(model, plans, system, calibration=calibration,
                             flash_attention=flash_attention)
    # Every candidate fills the row's own chips (enumerate_plans); the common stand-in count
    # flags them all CHIPS (a plan must use exactly the system's chips), which says nothing here.
    reason = reports.reason & ~int(Reason.CHIPS)
    reports = eqx.tree_at(lambda r: (r.reason, r.fits), reports, (reason, reason == 0))
    return select_plan(plans, reports)[0]


def resolve_plan(case: TrainingCase, calibration: Calibration = DEFAULT) -> TrainingPlan:
    """The case's stated plan, or the fastest feasible of its candidates under `calibration`."""
    if case.plan is not None:
        return case.plan
    # Jitted on (padded) shapes: cases of one structure share one compilation. The model's
    # name and the system's chip count are static fields; common values keep them out of the
    # cache key (`train_step` sees the chip count only through the scale-up domain, kept here,
    # and the check that a plan fits on the chips, which every candidate does).
    model = dataclasses.replace(case.model, name="row")
    system = case.system.replace(num_chips=_ANY_CHIPS, scaleup_size=case.system.scaleup_domain)
    return _fastest(model, _pad(case.candidates), system, case.calibration(calibration),
                    case.flash_attention)


def predict_case(case: TrainingCase, plan=None, *, calibration: Calibration = DEFAULT):
    """(predicted time of the case's metric in s, the plan used, its TrainReport or None).

    `plan` overrides the case's plan (or its `best_plan` search). `calibration` is passed to
    `train_step` / `layer_time`, so a calibrated parameter set predicts every case.
    """
    plan = resolve_plan(case, calibration) if plan is None else plan
    kw = dict(flash_attention=case.flash_attention, calibration=case.calibration(calibration))
    if case.metric == "layer_time":
        return float(layer_time(case.model, plan, case.system, **kw)), plan, None
    report = train_step(case.model, plan, case.system, **kw)
    return float(report.step_time), plan, report


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


class TrainingRows:
    """Every case's modelled time as one function of the `Calibration`.

    Each case is (model, plan, system, metric, fused attention): its stated plan, or the plan
    `resolve_plan` picks at `plan_calibration` (the shipped defaults) where the source gives
    none. Cases whose pytrees share their static structure are stacked and evaluated by one
    vmapped `train_step` / `layer_time`. To share it, every row's `System` gets the group's
    largest `num_chips` with `scaleup_size` capped at its own chip count: `train_step` sees
    `num_chips` only through the scale-up domain min(scaleup_size, num_chips), which is
    unchanged, and the plan-fits check, not used here.

    **Fields:** `cases`, `plans` (the resolved plans), `measured` (s, numpy), `sources`
    (each case's source key).
    """

    def __init__(self, cases, plan_calibration: Calibration = DEFAULT):
        self.cases = list(cases)
        self.plans = [resolve_plan(c, plan_calibration) for c in self.cases]
        self.measured = np.array([c.measured for c in self.cases])
        self.sources = [c.source_key for c in self.cases]
        groups: dict = {}
        for i, (case, plan) in enumerate(zip(self.cases, self.plans, strict=True)):
            model = dataclasses.replace(case.model, name="row")
            key = (case.metric, case.flash_attention, case.attention_kernel,
                   jax.tree.structure((model, plan, case.system.replace(num_chips=1))))
            groups.setdefault(key, []).append(i)
        self.groups = []
        for (metric, flash, _, _), idx in groups.items():
            n_max = max(self.cases[i].system.num_chips for i in idx)
            systems = [self.cases[i].system.replace(num_chips=n_max,
                                                    scaleup_size=self.cases[i].system
                                                    .scaleup_domain) for i in idx]
            models = [dataclasses.replace(self.cases[i].model, name="row") for i in idx]
            self.groups.append((metric, flash, self.cases[idx[0]], _stack(models),
                                _stack([self.plans[i] for i in idx]), _stack(systems)))
        order = np.concatenate(list(groups.values()))
        self.inverse_order = np.argsort(order)
        self._jitted = eqx.filter_jit(self._times)

    def _times(self, calibration):
        out = []
        for metric, flash, first, model, plan, system in self.groups:
            kw = dict(flash_attention=flash, calibration=first.calibration(calibration))
            if metric == "layer_time":
                fn = lambda m, p, s, kw=kw: layer_time(m, p, s, **kw)  # noqa: E731
            else:
                fn = lambda m, p, s, kw=kw: train_step(m, p, s, **kw).step_time  # noqa: E731
            out.append(jax.vmap(fn)(model, plan, system))
        return jnp.concatenate(out)[self.inverse_order]

    def __call__(self, calibration: Calibration = DEFAULT):
        """Modelled time of every case (s), shape (cases,), in the order of `cases`."""
        # The provenance is static (part of the compiled program's key) and takes no part in
        # the arithmetic: without it, the shipped calibration and one with a field replaced
        # (which drops that field's provenance) share one compilation of every row.
        return self._jitted(calibration.replace(provenance=()))


def training_measurements(rows: TrainingRows, calibration: Calibration = DEFAULT):
    """The rows as `Measurements` and a model of their times in the constants fitted to
    training runs, `Calibration.kernel_fraction` and `framework_scale`: `(data, model_fn)` for
    `calibrate`.

    Every row's time is tabulated at `KERNEL_FRACTION_GRID` (the other fields held at
    `calibration`) and `model_fn(cal, inputs)` interpolates it linearly in 1 / (kernel_fraction
    x the row's framework scale): the same times as `train_step`, at the cost of an
    interpolation, so that fits and leave-one-source-out refits run in seconds.

    Raises `ValueError` if a row is an external check (data/external_checks.csv): those runs
    check the models and no fit may read them.
    """
    external = sorted({s for s in rows.sources if s.startswith(EXTERNAL_PREFIX)})
    if external:
        raise ValueError(f"training_measurements: external checks {external} may not be "
                         "fitted to (data/external_checks.csv is for checking only)")
    inv = 1.0 / KERNEL_FRACTION_GRID[::-1]  # ascending 1 / kernel_fraction
    # Each row's time at each effective fraction (the framework scale set to 1 here and
    # applied in model_fn, so that one table serves every value of it).
    flat = calibration.replace(framework_scale=1.0)
    times = np.stack([np.asarray(rows(flat.replace(kernel_fraction=float(1.0 / u))))
                      for u in inv], axis=1)
    sources = tuple(dict.fromkeys(rows.sources))
    group = np.array([sources.index(s) for s in rows.sources])
    framework = np.array([FRAMEWORKS.index(c.framework) for c in rows.cases])
    dtype = jnp.result_type(float)
    inv_j = jnp.asarray(inv, dtype)

    def model_fn(cal, x):
        scale = jnp.stack([cal.framework_scale[f] for f in FRAMEWORKS])[x["framework"]]
        u = 1.0 / jnp.minimum(cal.kernel_fraction * scale, 1.0)
        return jax.vmap(jnp.interp, in_axes=(0, None, 0))(u, inv_j, x["times"])

    inputs = dict(times=jnp.asarray(times, dtype), framework=jnp.asarray(framework))
    data = Measurements(inputs, jnp.asarray(rows.measured, dtype),
                        jnp.asarray(group), sources,
                        description="data/training_runs.csv, every modelled row (step or "
                        "layer time; dse.calibration.training_rows)")
    return data, model_fn


# Std of the Gaussian prior on log framework_scale: frameworks differ by ~10% in sustained
# speed on the same hardware (an assumption of the model, stated, not fitted); a framework
# whose rows are held out falls back to the common kernel fraction.
FRAMEWORK_PRIOR_LOG_STD = 0.1


def training_fit_names(rows: TrainingRows) -> tuple[str, ...]:
    """The constants fitted to training runs: `kernel_fraction` and the `framework_scale` of
    each framework with a row. Under the prior on log scales (centred on 1) the common
    fraction settles at the geometric mean of the frameworks' own fractions, so a framework
    whose only source is held out is predicted with the average framework's."""
    present = {c.framework for c in rows.cases}
    return ("kernel_fraction",) + tuple(f"framework_scale.{f}" for f in FRAMEWORKS
                                        if f in present)


def fit_training_constants(rows: TrainingRows, validation: str = "source", **kw):
    """Fit the training constants (`training_fit_names`) to `rows` with `calibrate`: log-ratio
    residuals, the framework scales under the prior `FRAMEWORK_PRIOR_LOG_STD`, leave one
    source out by default. **Returns:** `(result, data, model_fn)`."""
    data, model_fn = training_measurements(rows)
    names = training_fit_names(rows)
    # `calibrate` minimizes sum r^2 / 2 + sum (z - z0)^2 / (2 s^2), i.e. it reads the prior in
    # units of the residual std sigma; the prior meant is N(0, FRAMEWORK_PRIOR_LOG_STD^2) next
    # to residuals of std sigma, so it is passed as FRAMEWORK_PRIOR_LOG_STD / sigma, with sigma
    # from the common fraction alone.
    # The prior is centred on the starting values: start from scale 1 (the common fraction),
    # not from the shipped scales, which were fitted to every source and would carry a held-out
    # source's information into its fold.
    start = DEFAULT.replace(framework_scale=1.0)
    sigma = float(calibrate(model_fn, start, data, fit=("kernel_fraction",),
                            validation="none").residual_log_std)
    prior = {n: FRAMEWORK_PRIOR_LOG_STD / sigma for n in names
             if n.startswith("framework_scale")}
    result = calibrate(model_fn, start, data, fit=names, validation=validation,
                       prior_log_std=prior, **kw)
    return result, data, model_fn


def fit_kernel_fraction(data_dir: Path | None = None, sources=None,
                        rows: TrainingRows | None = None) -> dict[str, float]:
    """Least-squares fit of the training constants: `Calibration.kernel_fraction` and each
    framework's `framework_scale` (`fit_training_constants`, every row, no validation).

    **Arguments:**

    - `data_dir`: the data folder.
    - `sources`: the `source_key`s fitted (default `FIT_SOURCES`).
    - `rows`: the evaluated rows, if already built (then `data_dir` is not read).

    **Returns:** {dotted name: value}, rounded to 3 significant digits as stored.
    """
    sources = FIT_SOURCES if sources is None else sources
    if rows is None:
        rows = TrainingRows([c for c in training_cases(data_dir) if c.source_key in sources])
    result = fit_training_constants(rows, validation="none")[0]
    return {n: float(f"{float(v):.3g}") for n, v in zip(result.names, result.value,
                                                         strict=True)}
