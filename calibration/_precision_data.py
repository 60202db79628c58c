"""Published low-precision training runs as modelled cases: the FP8, MXFP8 and NVFP4 rows of
data/training_runs.csv, and the same-shape pairs of data/precision_pairs.csv (a low-precision run
and its 16-bit or other-recipe twin, same model, chips and layout).

Every row is either a `PrecisionCase` or a `SkippedRow` with the reason: nothing is dropped
silently. Layouts are the rows' own; where a source leaves a knob open the frameworks' defaults
are taken and named here:

- Megatron-Core (NeMo 24.07, Megatron-Bridge): the distributed optimizer (ZeRO-1) with gradient
  reduction overlapped, sequence parallelism whenever TP > 1, Transformer Engine's fused
  attention; "FSDP" rows shard everything (ZeRO-3). Recomputation is not stated, nor the
  gradient buffer's precision (Megatron-Core's `grad_reduce_in_fp32` is a switch), nor whether
  the weights are kept only in FP8 (`--fp8-param-gather`, which the Megatron-Bridge notes
  mention; torchao's "float8 all-gather" is the same for FSDP2): the fastest feasible of none /
  selective / full recomputation, FP32 or BF16 gradients, and 16-bit or quantized-only weights
  is taken, for every source (the benchmarks are tuned).
- NeMo 24.07's "fp8 (Transformer Engine)" is delayed scaling (Transformer Engine 1.x's only
  FP8 recipe then); Megatron-Bridge's FP8-CS is current scaling, FP8-MX (32 x 32 blocks on
  Blackwell, its note) MXFP8, NVFP4 NVFP4; its 26.x "FP8" rows are FP8-CS, the default recipe
  of those containers.
- LLM Foundry's amp_fp8 is Transformer Engine's default delayed scaling; torchao's "tensorwise"
  is one scale per tensor from its current amax (current scaling), "mxfp8_cublas" MXFP8.

Context parallelism is the row's (`TrainingPlan.cp`). What the model does not express is
skipped: DeepSeek-V3 with its multi-token-prediction module, GPT-OSS's alternating
sliding-window attention, and
a source row whose columns are shifted (Megatron-Bridge 25.11, DGX-H100 Qwen3_235B_a22B: its
GBS cell is missing, so the batch it ran cannot be read).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS, System
from dse.models import (
    DEFAULT,
    RECOMPUTE_FULL,
    RECOMPUTE_NONE,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    Calibration,
    TrainingPlan,
    Transformer,
    evaluate_plans,
    select_plan,
)

from ._training_data import check_attention_kernel, llmfoundry_h100_attention, with_attention_kernel

# Model names of the rows -> presets.
MODELS = {
    "GPT3-5B": "gpt3-5b", "GPT3-20B": "gpt3-20b", "GPT3-175B": "gpt3-175b",
    "LLAMA2-7B": "llama2-7b", "LLAMA2-13B": "llama2-13b", "LLAMA2-70B": "llama2-70b",
    "Nemotron-8B": "nemotron3-8b", "Nemotron-22B": "nemotron3-22b",
    "Nemotron-340B": "nemotron4-340b", "LLAMA3-8B": "llama3-8b", "LLAMA3-70B": "llama3-70b",
    "LLAMA3_8B": "llama3-8b", "LLAMA3_70B": "llama3-70b", "LLAMA3.1_405B": "llama3-405b",
    "Llama3-8b": "llama3-8b", "Qwen3_30B_a3B": "qwen3-30b-a3b",
    "Qwen3_235B_a22B": "qwen3-235b-a22b", "DeepSeekV3 (w/o MTP)": "deepseek-v3",
}
RECIPES_OF = {
    "fp8 (Transformer Engine)": "fp8_delayed", "amp_fp8": "fp8_delayed",
    "FP8-CS": "fp8_current", "FP8": "fp8_current", "FP8-MX": "mxfp8", "MXFP8": "mxfp8",
    "NVFP4": "nvfp4", "BF16": "bf16", "amp_bf16": "bf16", "bf16": "bf16",
    "float8 tensorwise (float8 all-gather)": "fp8_current",
    "float8 tensorwise (f8 all-gather)": "fp8_current", "mxfp8_cublas": "mxfp8",
}
# The framework of each source (`Calibration.for_framework`); NeMo and Megatron-Bridge run
# Megatron-Core.
FRAMEWORK_OF = {"llmfoundry_h100": "composer", "torchao_float8": "pytorch"}
# MPT shapes of the LLM Foundry pairs (as in training_runs.csv's MPT rows: MHA, GELU MLP of 4h,
# vocab 50368).
MPT = {"MPT-3b": (32, 2560, 20), "MPT-1b": (24, 2048, 16)}


@dataclasses.dataclass(frozen=True)
class PrecisionCase:
    """One measured low-precision run and how it is predicted.

    **Fields:** `run_id`, `source_key`; `measured` step time, s (the global batch's tokens over
    the stated tokens/s); `model`, `system`; `plans`: the candidate `TrainingPlan`s (a batch:
    the recomputation modes the source leaves open), the fastest feasible is the prediction;
    `stated`: the figure as the source gives it.
    """

    run_id: str
    source_key: str
    measured: float
    model: Transformer
    system: System
    plans: tuple[TrainingPlan, ...]
    stated: str = ""
    # The framework that ran it (`dse.models.FRAMEWORKS`): its `framework_scale` applies.
    framework: str = "megatron-core"
    # Its fused attention kernel (`ATTENTION_KERNELS` of _training_data.py).
    attention_kernel: str = "chip"

    def __post_init__(self):
        check_attention_kernel("PrecisionCase", self.attention_kernel)

    @property
    def precision(self) -> str:
        """The recipe of the run (`TrainingPlan.precision`)."""
        return self.plans[0].precision


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A row that is not modelled, and why."""

    run_id: str
    source_key: str
    reason: str


def _f(row, key, default=None):
    v = row.get(key, "")
    return float(v) if v not in ("", None, "n/a") else default


def system_for(hardware: str, n: int) -> System:
    """The system preset a row's hardware names, with `n` chips."""
    for key, preset in (("GB300", "GB300-NVL72"), ("GB200", "GB200-NVL72"),
                        ("B200", "DGX-B200"), ("H100", "DGX-H100"), ("MI300X", "MI300X-8")):
        if key in hardware:
            return SYSTEMS[preset].with_num_chips(int(n))
    raise KeyError(f"no system preset for hardware {hardware!r}")


def _plans(n, tp, pp, vp, ep, microbatch, global_batch, precision, fsdp,
           recompute=None, gradients="fp32", quantized_params=False, cp=1,
           offload=0.0, tp_overlap=0.0, account=0.0) -> TrainingPlan:
    """The candidate plans of a row: its layout under each open recomputation mode."""
    dp = n // (tp * pp * cp)
    modes = (RECOMPUTE_NONE, RECOMPUTE_SELECTIVE, RECOMPUTE_FULL) if recompute is None \
        else (recompute,)
    plans = [TrainingPlan(tp=tp, pp=pp, dp=dp, ep=ep, cp=cp, microbatch_size=microbatch,
                          global_batch=global_batch, interleave=vp,
                          sequence_parallel=1.0 if tp > 1 else 0.0, recompute=rc,
                          zero_stage=3.0 if fsdp else 1.0, dp_overlap=1.0, precision=precision,
                          gradients=gradients, quantized_params=quantized_params,
                          activation_offload=offload, tp_overlap=tp_overlap,
                          account_embedding_loss=account)
             for rc in modes]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *plans)


def _counted_split(model: Transformer, pp: int) -> float:
    """`TrainingPlan.account_embedding_loss` of a Megatron-Core row: 1 where pp does not divide
    the layers but divides layers + 2.

    Llama 3.1 405B's 126 layers over PP 8 or 16 (and Qwen3-235B's 94 over PP 8): Megatron-Core
    asserts that pp divides the layers unless the embedding and the loss count as pipeline
    units, which Megatron-Bridge's recipes for them set (recipes/llama/h100/llama3.py,
    recipes/qwen/h100/qwen3_moe.py @067f987d: `account_for_embedding_in_pipeline_split` /
    `..._loss_...` = True). DeepSeek-V3's 61 layers run an explicit
    `pipeline_model_parallel_layout` that a plan cannot state: evaluated as the average stage,
    flagged.
    """
    layers = int(model.layers)
    return 1.0 if pp > 1 and layers % pp and (layers + 2) % pp == 0 else 0.0


def _variants(n, tp, pp, vp, ep, microbatch, global_batch, precision, fsdp, recompute=None,
              cp=1, offload=0.0, tp_overlap=0.0, account=0.0):
    """The candidate batches of a case: one per static variant the source leaves open (FP32 /
    BF16 gradients; 16-bit or quantized-only weights under a low-precision recipe)."""
    quantized = (False, True) if precision != "bf16" else (False,)
    return tuple(_plans(n, tp, pp, vp, ep, microbatch, global_batch, precision, fsdp,
                        recompute, g, q, cp, offload, tp_overlap, account)
                 for g in ("fp32", "bf16") for q in quantized)


# Layers whose activations the run offloads to host memory: `cpu_offloading_num_layers` of the
# matching performance configs in Megatron-Bridge v0.2.0 (2025-11-26, the release of the 25.11
# container whose table these rows come from), scripts/performance/configs/llama3/
# workload_base_configs.py: LLAMA3_70B_GB300_FP8_CS (20) and LLAMA3_70B_GB200_FP8_CS (40), each
# with Megatron-FSDP and micro-batch 2 as in the table. (Its 405B configs use offloading too,
# but on 128 GPUs with another layout than the table's 256-GPU rows, so those rows keep none.)
OFFLOADED_LAYERS = {"mbridge_25.11_DGX-GB300_LLAMA3_70B_FP8-CS_64": 20,
                    "mbridge_25.11_DGX-GB200_LLAMA3_70B_FP8-CS_64": 40}


# NeMo 24.07's runs: `model.ub_tp_comm_overlap` of each model's training config in
# NeMo-Framework-Launcher at its 24.07 tag (launcher_scripts/conf/training/<family>/<size>.yaml).
_NEMO_2407_TP_OVERLAP = {"GPT3-20B": True, "GPT3-175B": False, "LLAMA2-70B": True,
                         "LLAMA3-70B": True, "Nemotron-8B": True, "Nemotron-22B": True,
                         "Nemotron-340B": False}


def _tp_overlap(source_key: str, model: str, tp: int, recipe: str) -> float:
    """1 where the run overlapped its TP collectives with the GEMMs. Megatron-Bridge v0.2.0's
    performance recipes (scripts/performance/configs/llama3/llama3_llm_pretrain.py,
    llama31/llama31_llm_pretrain.py, qwen3/qwen3_llm_pretrain.py) set
    `CommOverlapConfig(tp_comm_overlap=tp > 1)`, turned off for NVFP4; NeMo 24.07's configs
    per model (`_NEMO_2407_TP_OVERLAP`). Other sources: not stated, so 0."""
    if tp <= 1:
        return 0.0
    if source_key.startswith("megatron_bridge"):
        return float(recipe != "nvfp4")
    if source_key == "nemo_24.07_perf":
        return float(_NEMO_2407_TP_OVERLAP.get(model, False))
    return 0.0


def _skip_reason(row) -> str | None:
    name = row["model"]
    if "DeepSeek" in name and "w/ MTP" in name:
        return "DeepSeek-V3 with its multi-token-prediction module: the preset is the main " \
               "model only (the 14B MTP module is not in Transformer)"
    if "GPT OSS" in name:
        return "GPT-OSS-120B: alternating sliding-window attention is not in Transformer"
    if name == "Qwen3_235B_a22B" and "H100" in row["hardware"]:
        return "source row malformed: the Megatron-Bridge 25.11 DGX-H100 Qwen3_235B_a22B row " \
               "has a missing cell, its columns shifted (GBS unreadable)"
    if _f(row, "tokens_per_s_per_device") is None:
        return "no throughput in tokens/s (only TFLOP/s per GPU, over a layout the source " \
               "prints inconsistently: TP x PP x DP x CP != GPUs)"
    if name not in MODELS or MODELS[name] not in TRANSFORMERS:
        return f"{name}: no preset shape"
    return None


def _is_low_precision(row) -> bool:
    p = row["precision"].lower()
    return "fp8" in p or "fp4" in p or "mx" in p


def _training_row(row) -> list:
    """The cases (or the skip) of one training_runs.csv row; the parenthesised alternative of a
    Megatron-Bridge "FP8-CS (FP8-MX)" row is a second case."""
    rid, key = row["run_id"], row["source_key"]
    reason = _skip_reason(row)
    if reason:
        return [SkippedRow(rid, key, reason)]
    model = TRANSFORMERS[MODELS[row["model"]]]
    model = model.replace(seq_len=_f(row, "seq_len"))
    n = int(_f(row, "num_devices"))
    tp, pp, cp = int(_f(row, "tp", 1)), int(_f(row, "pp", 1)), int(_f(row, "cp", 1) or 1)
    vp, ep = _f(row, "vp_interleave", 1.0), _f(row, "ep", 1.0)
    gb, mb = _f(row, "global_batch_seqs"), _f(row, "microbatch", 1.0)
    fsdp = "FSDP" in (row.get("sharding") or "")
    system = system_for(row["hardware"], n)
    seconds = lambda tps: gb * float(model.seq_len) / (tps * n)  # noqa: E731
    out = []
    precision = row["precision"].split(" (")[0] if key.startswith("megatron_bridge") \
        else row["precision"]
    recipe = RECIPES_OF[precision]
    tps = _f(row, "tokens_per_s_per_device")
    offload = OFFLOADED_LAYERS.get(rid, 0) / float(model.layers)
    account = _counted_split(model, pp)

    def candidates(recipe):
        return _variants(n, tp, pp, vp, ep, mb, gb, recipe, fsdp, cp=cp, offload=offload,
                         tp_overlap=_tp_overlap(key, row["model"], tp, recipe),
                         account=account)

    framework = FRAMEWORK_OF.get(key, "megatron-core")
    out.append(PrecisionCase(rid, key, seconds(tps), model, system, candidates(recipe),
                             f"{tps:g} tokens/s per GPU ({precision})", framework))
    if "(FP8-MX)" in row["precision"]:
        alt = float(row["notes"].split("tokens/s/GPU ")[1].split(",")[0])
        out.append(PrecisionCase(rid + ":FP8-MX", key, seconds(alt), model, system,
                                 candidates("mxfp8"), f"{alt:g} tokens/s per GPU (FP8-MX)",
                                 framework))
    return out


def precision_training_rows(data_dir: Path | None = None) -> tuple[list, list]:
    """Every low-precision row of training_runs.csv: `(cases, skipped)`."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "training_runs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if _is_low_precision(r)]
    cases, skipped = [], []
    for row in rows:
        for item in _training_row(row):
            (skipped if isinstance(item, SkippedRow) else cases).append(item)
    return cases, skipped


@dataclasses.dataclass(frozen=True)
class PrecisionPair:
    """A published same-shape pair: a low-precision run and its baseline (16-bit or another
    recipe). `measured` = low-precision tokens/s / baseline tokens/s (> 1: the low-precision
    run is faster); `baseline` and `low` are the two cases."""

    pair_id: str
    source_key: str
    measured: float
    baseline: PrecisionCase
    low: PrecisionCase

    @property
    def versus_bf16(self) -> bool:
        """True when the baseline is a 16-bit run (the FP8 / BF16 ratio)."""
        return self.baseline.precision == "bf16"


def _pair_model(row) -> Transformer:
    name = row["model"]
    if name in MPT:
        layers, hidden, heads = MPT[name]
        return Transformer(layers=layers, hidden=hidden, heads=heads, kv_heads=heads,
                           ffn_hidden=4 * hidden, vocab=50368, seq_len=_f(row, "seq_len"),
                           name=name)
    return TRANSFORMERS[MODELS[name]].replace(seq_len=_f(row, "seq_len"))


def precision_pairs(data_dir: Path | None = None) -> list[PrecisionPair]:
    """Every pair of data/precision_pairs.csv as two cases."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "precision_pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = []
    for row in rows:
        model = _pair_model(row)
        n = int(_f(row, "num_devices"))
        system = system_for(row["hardware"], n)
        tp, pp = int(_f(row, "tp", 1)), int(_f(row, "pp", 1))
        vp, ep = _f(row, "vp", 1.0), _f(row, "ep", 1.0)
        fsdp = "FSDP" in row["sharding"]
        recompute = {"none": RECOMPUTE_NONE, "full": RECOMPUTE_FULL,
                     "per-op SAC": RECOMPUTE_SELECTIVE}.get(row["recompute"])
        gb = _f(row, "global_batch_seqs")
        cases = []
        for side in ("baseline_", ""):
            mb = _f(row, f"{side}microbatch")
            # A side whose micro-batch differs keeps the stated grad accumulation: its global
            # batch scales with the micro-batch (LLM Foundry MPT-1b 8192: 96 vs 64 sequences).
            batch = gb * mb / _f(row, "baseline_microbatch")
            tps = _f(row, f"{side}tokens_per_s_per_device")
            precision = RECIPES_OF[row[f"{side}precision"]]
            cases.append(PrecisionCase(
                row["pair_id"] + (":base" if side else ":low"), row["source_key"],
                batch * float(model.seq_len) / (tps * n), model, system,
                _variants(n, tp, pp, vp, ep, mb, batch, precision, fsdp, recompute,
                          account=_counted_split(model, int(pp))),
                f"{tps:g} tokens/s per GPU ({row[f'{side}precision']})",
                FRAMEWORK_OF.get(row["source_key"], "megatron-core"),
                llmfoundry_h100_attention(row["model"], n)
                if row["source_key"] == "llmfoundry_h100" else "chip"))
        measured = _f(row, "tokens_per_s_per_device") / _f(row, "baseline_tokens_per_s_per_device")
        pairs.append(PrecisionPair(row["pair_id"], row["source_key"], measured, *cases))
    return pairs


def predict(case: PrecisionCase, calibration: Calibration = DEFAULT):
    """(predicted step time s, the chosen plan, its `TrainReport`): the fastest feasible of the
    case's candidate plans (fused attention, as every framework here runs it), under the
    `calibration` for the case's framework (`Calibration.for_framework`)."""
    calibration = with_attention_kernel(calibration.for_framework(case.framework),
                                        case.attention_kernel)
    best = None
    for plans in case.plans:
        reports = evaluate_plans(case.model, plans, case.system, calibration=calibration,
                                 flash_attention=True)
        plan, report = select_plan(plans, reports)
        key = (not bool(report.fits), float(report.step_time))
        if best is None or key < best[0]:
            best = (key, plan, report)
    _, plan, report = best
    return float(report.step_time), plan, report


def predicted_ratio(pair: PrecisionPair, calibration: Calibration = DEFAULT) -> float:
    """Predicted low-precision / baseline throughput of a pair (per token, so a side with
    another global batch compares fairly)."""
    def per_token(case):
        t, plan, _ = predict(case, calibration)
        return t / float(plan.global_batch)

    return per_token(pair.baseline) / per_token(pair.low)
