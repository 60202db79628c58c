"""Model the rows of data/multimodal_runs.csv (published DiT / multimodal training speed) that
state enough to be modelled: `multimodal_cases(data_dir)` returns (cases, skipped).

The fast-DiT rows train DiT-XL/2 at 256 x 256 on one A100 in eager PyTorch with the optimizations
its README names (gradient checkpointing, modelled as full recomputation of every block; mixed
precision, fp16), so they take the PyTorch framework's factors
(`Calibration.for_framework("pytorch")`). Their memory adds to `train_step`'s the EMA copy of the
weights that DiT's training keeps on the GPU in fp32, 4 bytes per parameter (`ema =
deepcopy(model).to(device)` in facebookresearch/DiT train.py @ed81ce2 and in fast-DiT's
train.py @dbe04f63, the feature pre-extraction script of the README's last row): `train_step`
holds no EMA. (The VAE that both scripts also load onto the GPU is left out: its parameter count
was not collected.)
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS, System
from dse.models import (
    DEFAULT,
    RECOMPUTE_FULL,
    RECOMPUTE_NONE,
    TRANSFORMERS,
    Calibration,
    TrainingPlan,
    Transformer,
    train_step,
)

from ._training_data import SkippedRow


@dataclasses.dataclass(frozen=True)
class MultimodalCase:
    """One modellable row: ids, the model, plan, system, framework, measured step time (s) and
    memory per chip (bytes, nan where not stated)."""

    run_id: str
    source_key: str
    model: Transformer
    plan: TrainingPlan
    system: System
    framework: str
    measured: float
    memory: float


def multimodal_cases(data_dir: Path | None = None):
    """The modellable rows of multimodal_runs.csv and the others with their reasons."""
    path = Path(data_dir or default_data_dir()) / "multimodal_runs.csv"
    cases, skipped = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if "NOT MODELLED" in row["notes"]:
                skipped.append(SkippedRow(row["run_id"], row["source_key"],
                                          row["notes"].split("NOT MODELLED:")[-1].strip()))
                continue
            n = int(row["num_devices"])
            gb, mb = float(row["global_batch"]), float(row["microbatch"])
            plan = TrainingPlan(tp=1, pp=1, dp=n, microbatch_size=mb, global_batch=gb,
                                recompute=RECOMPUTE_FULL if row["recompute"] == "full"
                                else RECOMPUTE_NONE)
            memory = float(row["memory_mb"]) * 1e6 if row["memory_mb"] else float("nan")
            cases.append(MultimodalCase(row["run_id"], row["source_key"],
                                        TRANSFORMERS[row["model"]], plan,
                                        SYSTEMS[row["system"]].with_num_chips(n),
                                        row["framework"].lower(), 1.0 / float(row["steps_per_s"]),
                                        memory))
    return cases, skipped


# fp32 EMA weights: 4 bytes per parameter (module docstring).
EMA_BYTES_PER_PARAM = 4.0


def ema_bytes(model: Transformer, plan: TrainingPlan) -> float:
    """Bytes per chip of the fp32 EMA weights DiT's training keeps (the model's parameters
    split over the plan's TP x PP)."""
    return EMA_BYTES_PER_PARAM * float(model.params) / float(plan.tp * plan.pp)


def predict_multimodal(cases, calibration: Calibration = DEFAULT):
    """(step time s, memory per chip bytes: `train_step`'s plus the fp32 EMA weights) of each
    case."""
    out = []
    for c in cases:
        r = train_step(c.model, c.plan, c.system, calibration=calibration.for_framework(
            c.framework))
        out.append((float(r.step_time), float(r.memory_per_chip) + ema_bytes(c.model, c.plan)))
    return out
