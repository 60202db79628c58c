"""Model every row of data/recsys_runs.csv (published DLRM training throughput) that states
enough to be modelled.

`recsys_cases(data_dir)` returns (cases, skipped): a `RecCase` per modellable row (the preset, a
`RecPlan`, the `System`, the measured samples/s) and a `SkippedRow` with its reason for the
others. `predict_recsys(cases, calibration)` gives the modelled samples/s.

How each source ran, from the source itself:

- TorchRec (facebookresearch/dlrm torchrec_dlrm, README "Preliminary Training Results"): eager
  PyTorch, fp32 tables and MLPs (no mixed precision in dlrm_main.py), FBGEMM's fused embedding
  backward with the optimizer applied in backward (EXACT_ADAGRAD, or SGD for the SGD row).
  The MLPs run in IEEE fp32 on the CUDA cores, not TF32: the README's rows were added in
  facebookresearch/dlrm commit dee060b (2023-05-30), whose dlrm_main.py sets
  `torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32`, a store_true flag (added in
  f753632, 2022-12-05, "as it is disabled by default for PyTorch >= 1.12") that none of the
  rows' "Unique Flags" passes. `RecPlan.matrix_rate` is therefore the A100's FP32 peak over its
  FP16 tensor peak, 19.5 / 312 TFLOP/s (NVIDIA A100 Tensor Core GPU Architecture whitepaper,
  Table 1). (The README's "CUDA 11.0, NCCL 2.10.3" line is older than these rows.)
- HugeCTR MLPerf DLRM-DCNv2 (NVIDIA-Merlin/HugeCTR samples/dlrm/train.py @2f286082):
  `use_cuda_graph=True` (`RecPlan.fused`), Adagrad, 16-bit MLPs (`use_mixed_precision`, an
  assumption: the flag is set by the submission configs, which were not collected) with fp32
  tables.

Both planners balance the tables over the chips (TorchRec's EmbeddingShardingPlanner, HugeCTR's
`sharding.generate_plan`, which weighs memory against communication work), so every row is
modelled with the balanced column-wise sharding (the busiest chip does the mean share of the
lookups and of the pooled exchange), not table-wise (where the 100-hot table would sit on one
chip).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, SYSTEMS, System
from dse.models import DEFAULT, DLRM, DLRMS, Calibration, RecPlan, rec_train_step

from ._training_data import SkippedRow

# Chip of each row's hardware where it differs from the system preset's.
# IEEE fp32 matrix rate over the 16-bit tensor peak on A100: 19.5 / 312 TFLOP/s (NVIDIA A100
# whitepaper, Table 1); TorchRec's rows run fp32 MLPs without TF32 (module docstring).
_A100_FP32_RATE = 19.5 / 312.0
_CHIP = {"A100 40GB": "A100-40GB", "H200": "H200"}


@dataclasses.dataclass(frozen=True)
class RecCase:
    """One modellable row: `run_id`, `source_key`, `model`, `plan`, `system`, `measured`
    (samples/s)."""

    run_id: str
    source_key: str
    model: DLRM
    plan: RecPlan
    system: System
    measured: float


def _system(row) -> System:
    system = SYSTEMS[row["system"]]
    for key, chip in _CHIP.items():
        if key in row["hardware"]:
            system = system.replace(chip=CHIPS[chip])
    system = system.with_num_chips(int(row["num_devices"]))
    if row["scaleout_gbit_per_node"]:
        per_chip = float(row["scaleout_gbit_per_node"]) * 1e9 / 8.0 / float(system.scaleup_size)
        system = system.replace(scaleout_bandwidth=per_chip)
    return system


def recsys_cases(data_dir: Path | None = None) -> tuple[list[RecCase], list[SkippedRow]]:
    """The modellable rows of recsys_runs.csv and the others with their reasons."""
    path = Path(data_dir or default_data_dir()) / "recsys_runs.csv"
    cases, skipped = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if "NOT MODELLED" in row["notes"] or not row["global_batch"] or not row["system"]:
                reason = row["notes"].split("NOT MODELLED:")[-1].strip() or "incomplete row"
                skipped.append(SkippedRow(row["run_id"], row["source_key"], reason))
                continue
            hugectr = row["framework"] == "HugeCTR"
            plan = RecPlan(global_batch=float(row["global_batch"]), sharding="column",
                           embedding_optimizer=row["embedding_optimizer"],
                           embedding_bytes=4.0, dense_bytes=2.0 if hugectr else 4.0,
                           matrix_rate=1.0 if hugectr else _A100_FP32_RATE,
                           fused=hugectr)
            cases.append(RecCase(row["run_id"], row["source_key"], DLRMS[row["model"]], plan,
                                 _system(row), float(row["samples_per_s"])))
    return cases, skipped


def predict_recsys(cases: list[RecCase], calibration: Calibration = DEFAULT) -> np.ndarray:
    """Modelled samples/s of each case."""
    return np.array([float(rec_train_step(c.model, c.plan, c.system,
                                          calibration=calibration).samples_per_s)
                     for c in cases])
