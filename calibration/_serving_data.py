"""Serving rows: TensorRT-LLM throughput at full load and latency under load, as modelled cases.

`serving_cases(data_dir)` turns the rows of data/inference_runs.csv that report throughput at
full load (source `trtllm_perf_overview`: Llama 3.1 8B on H100 and H200 in FP8, Llama 3.3 70B
on H100 in FP8 and on B200 in FP4) into `ServingCase`s: the model, the system, the
`ServingPlan` trtllm-bench ran and the workload; `predict_serving` evaluates them with
`dse.models.serve_continuous`. `serving_cases(data_dir, external=True)` does the same for
data/serving_external_checks.csv (published runs that no fit reads: other TensorRT-LLM
versions, models, chips and TP degrees), and `online_cases` for its latency-under-load rows.

How a row is set up, from what the source states:

- **The scheduler.** trtllm-bench sizes `max_batch_size` and `max_num_tokens` from the KV cache
  that the target lengths allow (`tensorrt_llm/bench/build/tuning.py`, `calc_engine_setting`
  and `finetune_setting`; `trtllm_bench_limits` re-implements them), schedules with
  GUARANTEED_NO_EVICT (blocks for the whole output reserved at admission) in blocks of 32
  tokens, and the perf-overview pages run "in many cases" with
  `--kv_cache_free_gpu_mem_fraction 0.95`.
- **Number formats.** "FP8" rows are ModelOpt FP8 checkpoints (weights and activations) whose
  KV cache is FP8 ("If you specify FP8 quantization, the KV cache will automatically be set to
  FP8 as well", perf-overview v0.17); "FP4" rows NVFP4 (4-bit elements with one FP8 scale per 16:
  0.5625 bytes per weight) with an FP8 KV cache. A row is modelled in those formats
  (`InferencePlan.weights`, `activations`, `kv_cache`: `FORMATS_OF`) on the chip preset's
  per-format engines (`Chip.fp8_rate`, `fp4_rate`, their sustained fractions); activations
  between operators stay 16-bit, and so do the embedding and the LM head (ModelOpt leaves
  `lm_head` unquantized: `InferencePlan.head_weights`' default).
- **CUDA graphs.** The PyTorch-backend rows (v1.0) ran with `cuda_graph_config:
  enable_padding: true` and the batch sizes 1, 2, 4, ..., 8192 (`TRTLLM_GRAPH_BATCHES`): a
  decode-only iteration runs padded to the next captured size (`ServingPlan.graph_batches`).
- **Requests.** The throughput is total output tokens over the makespan of a fixed dataset:
  the perf-overview pages give `$num_requests` per input / output length (`BENCH_REQUESTS`).
  With every request of one length and GUARANTEED_NO_EVICT, requests are admitted and finish
  in waves of the full-load batch; the last wave holds the remainder. `predict_serving` scales
  the steady-state throughput by the steady makespan over the waves' (`finite_run_factor`).
- **Memory.** The KV cache gets `KV_FRACTION` of what the weights, the activations of a full
  token budget and the runtime (CUDA context and workspaces, NCCL buffers:
  `ServingPlan.runtime_bytes`' default, as NVIDIA's AIConfigurator observes TensorRT-LLM) leave.
- **Systems.** H100: DGX-H100; H200, B200: the same 8-GPU NVSwitch chassis with that chip (DGX
  H200 and DGX B200 have 8 GPUs, NVSwitch and 8 x 400 Gb/s like DGX H100); GB200: GB200-NVL72;
  A100: DGX-A100.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, FORMATS, SYSTEMS, System
from dse.models import (
    DEFAULT,
    TRANSFORMERS,
    TRTLLM_GRAPH_BATCHES,
    Calibration,
    InferencePlan,
    ServingPlan,
    ServingWorkload,
    Transformer,
    serve_continuous,
)

from ._hardware_data import read_chips_csv

SOURCES = ("trtllm_perf_overview",)
EXTERNAL_FILE = "serving_external_checks.csv"

# Model presets of the rows' models (Llama 3.1 and 3.3 share the Llama 3 shapes: Dubey et al.
# 2024, Table 3).
SERVING_MODELS = {"Llama 3.1 8B": "llama3-8b", "Llama 3.1 70B": "llama3-70b",
                  "Llama 3.3 70B": "llama3-70b", "Llama 3.1 405B": "llama3-405b",
                  "Mixtral 8x7B": "mixtral-8x7b", "Mixtral 8x22B": "mixtral-8x22b",
                  "Mistral 7B": "mistral-7b", "Qwen3-235B-A22B": "qwen3-235b-a22b"}
# Chip preset and the system it sits in, by the hardware named in a row.
SERVING_HARDWARE = {"H100": ("H100-SXM", "DGX-H100"), "H200": ("H200", "DGX-H100"),
                    "B200": ("B200", "DGX-H100"), "GB200": ("GB200", "GB200-NVL72"),
                    "A100": ("A100-80GB", "DGX-A100")}
# The rows' precisions as `InferencePlan` formats: ModelOpt FP8 is W8A8 with an FP8 KV cache;
# NVFP4 weights and activations (4-bit elements and one 8-bit E4M3 scale per block of 16:
# NVIDIA, "Introducing NVFP4", 2025) with an FP8 KV cache.
FORMATS_OF = {
    "FP16": dict(weights="fp16", activations="fp16", kv_cache="fp16"),
    "BF16": dict(weights="bf16", activations="bf16", kv_cache="bf16"),
    "FP8": dict(weights="fp8", activations="fp8", kv_cache="fp8"),
    "FP4": dict(weights="nvfp4", activations="nvfp4", kv_cache="fp8"),
}
# Rows whose notes say this ran MoE with attention data parallelism and an EP size the source
# does not give (TensorRT-LLM perf-overview v1.0: `--ep $ep_size`, `enable_attention_dp: true`).
UNSTATED_EP = "expert parallelism of an unstated size"
MOE_LAYOUTS = ("ep", "tp")

# trtllm-bench (`tensorrt_llm/bench/build/tuning.py`): the KV-cache fraction its perf pages use
# "in many cases" (perf-overview), its batch cap and token cap, and block size (KvCacheConfig).
KV_FRACTION = 0.95
# `$num_requests` of each (input, output) length pair: perf-overview.md, "Preparing a Dataset"
# (the same table at v0.17, commit 258c7540, and v1.0, commit 00f37686, which adds 1000 / 2000).
BENCH_REQUESTS = {(128, 128): 30000, (128, 2048): 3000, (128, 4096): 1500, (1000, 2000): 1500,
                  (2048, 128): 3000, (2048, 2048): 1500, (5000, 500): 1500, (1000, 1000): 3000,
                  (500, 2000): 3000, (20000, 2000): 1000}
BENCH_SOURCES = ("trtllm_perf_overview", "ext_trtllm_perf_v1", "ext_trtllm_perf_v017")
BENCH_MAX_BATCH = 4096
BENCH_MAX_TOKENS = 32768
TOKENS_PER_BLOCK = 32.0


@dataclasses.dataclass(frozen=True)
class ServingCase:
    """A modelled serving row: what was run, on what, and what was measured.

    `measured` is output tokens/s of the TP group (throughput rows), or for online rows mean
    TTFT and mean inter-token latency in s at `rate` requests/s (`measured_latency`).
    """

    run_id: str
    source_key: str
    group: str
    measured: float
    model: Transformer
    system: System
    plan: ServingPlan
    workload: ServingWorkload
    rate: float = float("nan")
    measured_latency: tuple[float, float] = (float("nan"), float("nan"))
    requests: float = float("nan")  # the dataset's request count (nan: steady state)


@dataclasses.dataclass(frozen=True)
class SkippedServingRow:
    """A serving row that is not modelled, and why."""

    run_id: str
    source_key: str
    reason: str


def _hardware_key(hardware: str) -> str | None:
    """The chip a row's hardware names (None for one without a preset: GH200, L40S, ...)."""
    words = hardware.replace("(", " ").split()
    for key in ("GB200", "B200", "H200", "H100", "A100"):
        if key in words:
            return key
    return None


def trtllm_bench_limits(model: Transformer, tp: int, pp: int, weight_bytes: float,
                        kv_bytes: float, hbm_bytes: float, input_len: float,
                        output_len: float) -> tuple[float, float]:
    """(max_batch_size, max_num_tokens) as trtllm-bench sets them for a dataset.

    `calc_engine_setting`: the KV cache of the GPUs' memory less the weights, at
    `KV_FRACTION`, holds kv_requests sequences of input + output tokens (KV heads counted at
    least once per TP rank); `finetune_setting` caps it at 4096 / pp, rounds it up
    (to 32 below 256, 128 below 1024, else 256; at least 64), and sets the token budget to that
    batch times (1 + input / output), capped at 32768 and rounded up (to 256 below 4096, 512
    below 8192, else 1024; at least 2048).
    """
    gib = 1024.0 ** 3
    kv_heads = max(tp, float(model.kv_heads))
    per_token = 2.0 * float(model.layers) * kv_heads * float(model.head_dim) * kv_bytes / gib
    engine = float(model.params) * weight_bytes / gib
    available = hbm_bytes / gib * tp * pp - engine
    requests = available * KV_FRACTION / (per_token * (input_len + output_len))
    raw_bs = min(requests, BENCH_MAX_BATCH) / pp
    raw_tokens = min(raw_bs * (1.0 + input_len / output_len), BENCH_MAX_TOKENS)
    if raw_bs < 256:
        bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        bs = 128 * math.ceil(raw_bs / 128)
    else:
        bs = 256 * math.ceil(raw_bs / 256)
    if raw_tokens < 4096:
        tokens = max(2048, 256 * math.ceil(raw_tokens / 256))
    elif raw_tokens < 8192:
        tokens = 512 * math.ceil(raw_tokens / 512)
    else:
        tokens = 1024 * math.ceil(raw_tokens / 1024)
    return float(bs), float(tokens)


def _case(row: dict, chips_rows: dict,
          moe_layout: str | None = None) -> ServingCase | SkippedServingRow:
    run_id, source = row["run_id"], row["source_key"]
    unstated_ep = UNSTATED_EP in (row.get("notes") or "")
    if unstated_ep and moe_layout is None:
        return SkippedServingRow(run_id, source, f"{row['model']}: MoE with attention data "
                                 "parallel and an EP size the source does not give (layout not "
                                 "determined; benchmarks/validate_moe_serving.py runs both)")
    name = SERVING_MODELS.get(row["model"])
    if name is None:
        return SkippedServingRow(run_id, source, f"{row['model']}: no preset shape")
    key = _hardware_key(row["hardware"])
    if key is None:
        return SkippedServingRow(run_id, source, f"{row['hardware']}: no chip preset")
    model = TRANSFORMERS[name]
    i, o = float(row["input_len"]), float(row["output_len"])
    window = float(model.attention_window)
    if 0.0 < window < i + o:
        # TensorRT-LLM keeps a cyclic KV cache of the window (max_attention_window); the
        # serving model holds and reads the whole context, so such a row is left out.
        return SkippedServingRow(run_id, source, f"{row['model']}: context {i + o:g} beyond "
                                 f"its {window:g}-token sliding window (not modelled)")
    precision = row["precision"]
    chip_name, system_name = SERVING_HARDWARE[key]
    chip = CHIPS[chip_name]
    formats = FORMATS_OF[precision]
    tp, pp = int(row["tp"]), int(row["pp"] or 1)
    system = SYSTEMS[system_name].replace(chip=chip).with_num_chips(tp * pp)
    wb, kb = FORMATS[formats["weights"]].bytes, FORMATS[formats["kv_cache"]].bytes
    max_batch, max_tokens = trtllm_bench_limits(model, tp, pp, wb, kb, float(chip.hbm_bytes),
                                                i, o)
    # TensorRT-LLM: Megatron tensor parallel (norms replicated), fused kernels, chunked context;
    # MoE experts tensor-parallel (its default pattern: "Expert Parallelism in TensorRT-LLM",
    # nvidia.github.io/TensorRT-LLM/advanced/expert-parallelism.html), or read as EP = tp with
    # attention data parallel where `moe_layout="ep"` asks.
    layout = dict(tp=tp)
    if unstated_ep and moe_layout == "ep":
        layout = dict(tp=1, ep=tp)
    inference = InferencePlan(pp=pp, sequence_parallel=False, fused=True, **layout, **formats)
    # The PyTorch-backend runs capture CUDA graphs and pad decode batches to their sizes
    # (perf-overview v1.0 `llm_options.yml`); the engine flow of v0.17 and the Triton backend
    # of the online rows state no graphs.
    graphs = TRTLLM_GRAPH_BATCHES if "PyTorch backend" in (row.get("framework") or "") else ()
    plan = ServingPlan(inference=inference, max_batch=max_batch, max_tokens=max_tokens,
                       block_tokens=TOKENS_PER_BLOCK, kv_memory_fraction=KV_FRACTION,
                       reserve_output=1.0, graph_batches=graphs)
    group = f"{row['model']} {chip_name} {precision}"
    rate = row.get("arrival_rate_per_s", "")
    latency = (float(row["ttft_ms"] or "nan") / 1e3, float(row["tpot_ms"] or "nan") / 1e3)
    requests = float("nan")
    if source in BENCH_SOURCES and (int(i), int(o)) in BENCH_REQUESTS:
        requests = float(BENCH_REQUESTS[(int(i), int(o))])
    return ServingCase(run_id, source, group, float(row["output_tokens_per_s"] or "nan"), model,
                       system, plan, ServingWorkload(i, o),
                       rate=float(rate) if rate not in ("", None) else float("nan"),
                       measured_latency=latency, requests=requests)


def _rows(data_dir, external: bool) -> list[dict]:
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    name = EXTERNAL_FILE if external else "inference_runs.csv"
    with open(data_dir / name, newline="") as f:
        rows = list(csv.DictReader(f))
    if external:
        return rows
    return [r for r in rows if r["source_key"] in SOURCES]


def serving_cases(data_dir: str | Path | None = None, *, external: bool = False,
                  online: bool = False, moe_layout: str | None = None) -> tuple[list, list]:
    """The serving rows as `(cases, skipped)`.

    **Arguments:**

    - `data_dir`: the data folder (default the repository's, `dse.data`).
    - `external`: the external checks (data/serving_external_checks.csv: read by no fit)
      instead of the throughput rows of inference_runs.csv.
    - `online`: with `external`, the latency-under-load rows (offered rate, mean TTFT and
      inter-token latency) instead of the throughput rows.
    - `moe_layout`: how to read MoE rows whose EP size the source does not give (`UNSTATED_EP`
      in their notes): None leaves them out with that reason; "ep" runs them with every GPU
      its own EP rank and attention data parallel (`InferencePlan(tp=1, ep=tp)`); "tp" with
      the experts tensor-parallel like the rest (`InferencePlan(tp=tp)`).

    **Returns:** `(cases, skipped)`: `ServingCase`s and `SkippedServingRow`s (with reasons).
    """
    if moe_layout not in (None,) + MOE_LAYOUTS:
        raise ValueError(f"serving_cases: moe_layout must be None or one of {MOE_LAYOUTS}; got "
                         f"{moe_layout!r}")
    chips_rows = read_chips_csv(data_dir)
    cases, skipped = [], []
    for row in _rows(data_dir, external):
        is_online = bool(row.get("arrival_rate_per_s"))
        if is_online != online:
            continue
        result = _case(row, chips_rows, moe_layout)
        (cases if isinstance(result, ServingCase) else skipped).append(result)
    return cases, skipped


def _structure(case: ServingCase):
    return (case.model.name, case.system.chip.name, case.system.num_chips, case.system.name,
            case.plan.graph_batches)


def _evaluate(cases: list[ServingCase], fn, calibration: Calibration,
              per_case=lambda case: case.rate) -> np.ndarray:
    """`fn(report, per_case(case))` of every case, one jitted vmap per model and system
    structure (the rows of a group differ only in the plan's limits and the workload)."""
    out = None
    groups = collections.defaultdict(list)
    for k, case in enumerate(cases):
        groups[_structure(case)].append(k)
    for idx in groups.values():
        first = cases[idx[0]]
        plans = jax.tree.map(lambda *xs: jnp.stack(xs), *[cases[k].plan for k in idx])
        loads = jax.tree.map(lambda *xs: jnp.stack(xs), *[cases[k].workload for k in idx])
        rates = jnp.asarray([per_case(cases[k]) for k in idx])

        @jax.jit
        def run(plans, loads, rates, system, cal, model=first.model):
            def one(plan, load, rate):
                report = serve_continuous(model, plan, system, load, calibration=cal)
                return fn(report, rate)
            return jax.vmap(one)(plans, loads, rates)

        values = np.asarray(run(plans, loads, rates, first.system, calibration))
        if out is None:
            out = np.full((len(cases),) + values.shape[1:], np.nan)
        out[idx] = values
    return np.full(len(cases), np.nan) if out is None else out


def finite_run_factor(report, requests):
    """The throughput of `requests` requests of one length over the steady state's: the steady
    makespan, requests / batch full-load iterations per output token, over that of waves of the
    full-load batch B, floor(N / B) full waves and one of the remainder at its iteration time
    (read off the load curve). 1 where `requests` is nan (the steady state)."""
    batch, t_full = report.batch, report.iteration_time
    full = jnp.floor(requests / batch)
    rest = requests - full * batch
    t_rest = jnp.where(rest > 0.0, jnp.interp(rest, report.curve_batch, report.tpot_mean), 0.0)
    factor = requests / batch * t_full / (full * t_full + t_rest)
    return jnp.where(jnp.isfinite(requests), factor, 1.0)


def predict_serving(cases: list[ServingCase],
                    calibration: Calibration = DEFAULT) -> np.ndarray:
    """Predicted output tokens/s of every case (the TP group's): the full-load throughput over
    the dataset's requests where the source gives their number (`finite_run_factor`)."""
    return _evaluate(cases, lambda report, n: report.tokens_per_s * finite_run_factor(report, n),
                     calibration, per_case=lambda case: case.requests)


def predict_online(cases: list[ServingCase], calibration: Calibration = DEFAULT) -> np.ndarray:
    """Predicted mean TTFT and mean TPOT (s) of every online case at its offered rate: an array
    of shape (cases, 2); rows offered at an infinite rate get the full-load TPOT and TTFT inf."""
    def fn(report, rate):
        at = report.latency(jnp.minimum(rate, 1e30))
        return jnp.stack([at.ttft_mean, jnp.where(jnp.isinf(rate), report.iteration_time,
                                                  at.tpot_mean)])
    return _evaluate(cases, fn, calibration)
