"""The MoE and context-parallel training rows (source `megatron_moe_modelzoo_qwen3` of
data/training_runs.csv: Qwen3-235B-A22B on 256 H100, BF16, the Megatron-MoE-ModelZoo layouts at
4K tokens and its long-context table with CP 1-8 at 16K-128K), predicted out of sample.

`moe_cases(data_dir)` returns a `MoeCase` per row; `predict_moe(cases)` their modelled
`TrainReport`s. No constant is fitted to these rows (the one training
constant, `Calibration.kernel_fraction`, is fitted to other sources), so every error is out of
sample and leave-one-source-out holds trivially.

How the rows ran, from the source (github.com/yanring/Megatron-MoE-ModelZoo, best_practice/qwen3
@e8650517, the companion of Yan et al. 2025):

- Expert TP 1 in every row: the ModelZoo's Qwen3-235B-A22B benchmarking config sets
  `--expert-tensor-parallel-size: 1` (model_configs/benchmarking/Qwen3-235B-A22B.yaml @1ed4179f,
  with `--moe-permute-fusion` and the embedding and loss counted as pipeline units), and the
  rows that print their EDP agree (ETP = TP CP DP / (EP EDP) = 1).
- The DeepEP dispatcher (`TrainingPlan.ep_hierarchical`) where the row says so; one row ran the
  plain all-to-all dispatcher.
- The "+1f1b overlap" row runs Megatron-Core's combined 1F1B schedule (`TrainingPlan.ep_overlap`):
  the ModelZoo's sbatch_benchmarking.sh turns A2A_OVERLAP=1 into
  `--delay-wgrad-compute --overlap-moe-expert-parallel-comm`.
- Measured: the step time where the source prints it; otherwise its TFLOP/s per GPU converted to
  a step time with Megatron-Core's own model-FLOP count (megatron/training/training.py
  `num_floating_point_operations` @d98e8a64: weight GEMMs 6 N_active per token, causal attention,
  i.e. our count with the attention context halved).
- Qwen3's 94 layers run over PP 8 x VP 4 (or PP 32 x VP 3) with the embedding and the loss
  counted as pipeline units (`--account-for-embedding-in-pipeline-split` /
  `--account-for-loss-in-pipeline-split` in the same config; `TrainingPlan.
  account_embedding_loss`): 96 units, 12 per stage (3 per stage), the first and last stages one
  layer short beside the embedding and the output layer.
- Dropless routing as learned: the source gives no imbalance figure, so the model keeps
  balanced routing and those rows show what that misses.
- The long-context rows recompute each MoE block in backward (`TrainingPlan.recompute_moe`):
  the source's command for that table runs `--recompute-granularity selective
  --recompute-modules layernorm moe` (best_practice/qwen3/readme.md). The layer norms'
  recomputation (their outputs not stored, about a tenth of a layer's activations here) is not
  modelled.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS, System
from dse.models import (
    RECOMPUTE_FULL,
    RECOMPUTE_SELECTIVE,
    TRANSFORMERS,
    TrainingPlan,
    Transformer,
    train_step,
)

MOE_SOURCE = "megatron_moe_modelzoo_qwen3"


@dataclasses.dataclass(frozen=True)
class MoeCase:
    """One row: `run_id`, `source_key`, the `model`, `plan` and `system` it ran, the `measured`
    step time (s) and `what` was measured ("step s" or "step s (from TFLOP/s)")."""

    run_id: str
    source_key: str
    model: Transformer
    plan: TrainingPlan
    system: System
    measured: float
    what: str


def _f(row, key, default=1.0):
    return float(row[key]) if row[key] else default


def _case(r) -> MoeCase:
    model = TRANSFORMERS["qwen3-235b-a22b"].replace(seq_len=_f(r, "seq_len"))
    n = int(_f(r, "num_devices"))
    recompute = RECOMPUTE_FULL if r["recompute"] == "full" else RECOMPUTE_SELECTIVE
    tp, cp, dp, ep = _f(r, "tp"), _f(r, "cp"), _f(r, "dp"), _f(r, "ep")
    stage_chips = tp * cp * dp
    edp = re.search(r"EDP(\d+)", r["notes"])
    etp = stage_chips / (ep * float(edp.group(1))) if edp else 1.0
    deepep = "DeepEP" in r["notes"] and "not DeepEP" not in r["notes"]
    # "+1f1b overlap" in the source's table: its A2A_OVERLAP=1 (sbatch_benchmarking.sh adds
    # --overlap-moe-expert-parallel-comm --delay-wgrad-compute).
    a2a_overlap = "all-to-all overlap" in r["notes"]
    long_context = "long-context table" in r["notes"]
    plan = TrainingPlan(tp=tp, pp=_f(r, "pp"), dp=dp, cp=cp, ep=ep, etp=etp,
                        interleave=_f(r, "vp_interleave"), microbatch_size=_f(r, "microbatch"),
                        global_batch=_f(r, "global_batch_seqs"),
                        sequence_parallel=1.0 if tp > 1 else 0.0, recompute=recompute,
                        zero_stage=3.0 if r["sharding"] == "FSDP" else 1.0,
                        ep_hierarchical=1.0 if deepep else 0.0,
                        ep_overlap=1.0 if a2a_overlap else 0.0, account_embedding_loss=1.0,
                        recompute_moe=1.0 if long_context else 0.0)
    if r["step_time_s"]:
        measured, what = _f(r, "step_time_s"), "step s"
    else:
        tokens = _f(r, "global_batch_seqs") * _f(r, "seq_len")
        flops = 3.0 * float(model.forward_flops_per_token(context=0.5 * model.seq_len))
        measured = tokens * flops / (_f(r, "tflops_per_device") * 1e12 * n)
        what = "step s (from TFLOP/s)"
    return MoeCase(r["run_id"], r["source_key"], model, plan,
                   SYSTEMS["DGX-H100"].with_num_chips(n), measured, what)


def moe_cases(data_dir: Path | None = None) -> list[MoeCase]:
    """Every row of the MoE / context-parallel source (`MOE_SOURCE`) as a `MoeCase`."""
    path = Path(data_dir or default_data_dir()) / "training_runs.csv"
    with open(path, newline="") as f:
        return [_case(r) for r in csv.DictReader(f) if r["source_key"] == MOE_SOURCE]


def _stack(modules):
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *modules)


def predict_moe(cases: list[MoeCase]) -> list:
    """The modelled `TrainReport` of each case: one vmapped `train_step` over the cases (their
    models, plans and systems stacked: the rows share every static field), traced, so a row the
    model finds infeasible comes back flagged (`fits`, `reason`) rather than raising."""
    batch = _train_steps(_stack([c.model for c in cases]), _stack([c.plan for c in cases]),
                         _stack([c.system for c in cases]))
    batch = jax.tree.map(np.asarray, batch)  # one transfer; the per-case reports index numpy
    return [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(len(cases))]


# One jitted function for every call, so that calls with as many cases share a compilation.
_train_steps = jax.jit(jax.vmap(train_step))
