"""Model the rows of data/speculative_runs.csv (published speculative-decoding speed-ups with the
acceptance length of the same runs): `speculative_cases(data_dir)` and `predict_speculative`.

Each row gives the target, the chip, the draft method with its tree or chain settings (the
benchmark scripts' defaults, turned into `Speculation` fields in the row's `notes`), the mean
accepted tokens per step (tau) and the measured speed-up over plain decoding in the same
framework. The runs are HuggingFace transformers in eager PyTorch, so the plans are unfused
(`InferencePlan(fused=False)`: every op pays the fitted start-up time). The rows give no
context length (the benchmark's prompts and outputs vary): the model is evaluated at
`CONTEXT_TOKENS`, and at batch 1 its speed-up moves by under 2% between 256 and 2,048 tokens
(`tests/test_speculative.py`).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS, System
from dse.models import (
    DEFAULT,
    TRANSFORMERS,
    Calibration,
    InferencePlan,
    Speculation,
    Transformer,
    eagle_draft,
    speculative_decode,
)

# The context a step is evaluated at, tokens (a choice: see the module docstring).
CONTEXT_TOKENS = 1024.0


@dataclasses.dataclass(frozen=True)
class SpeculativeCase:
    """One row: ids, the target, its plan and system, the `Speculation` and the measured
    speed-up."""

    run_id: str
    source_key: str
    method: str
    model: Transformer
    plan: InferencePlan
    system: System
    speculation: Speculation
    measured: float


def speculative_cases(data_dir: Path | None = None) -> list[SpeculativeCase]:
    """The rows of speculative_runs.csv as `SpeculativeCase`s (every row is modellable)."""
    path = Path(data_dir or default_data_dir()) / "speculative_runs.csv"
    cases = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            model = TRANSFORMERS[row["model"]]
            fmt = row["precision"]
            plan = InferencePlan(tp=float(row["num_devices"]), batch=float(row["batch"]),
                                 weights=fmt, activations=fmt, kv_cache=fmt, fused=False)
            spec = Speculation(draft=eagle_draft(model),
                               acceptance_length=float(row["acceptance_length"]),
                               draft_passes=float(row["draft_passes"]),
                               draft_width=float(row["draft_width"]),
                               verify_tokens=float(row["verify_tokens"]))
            system = SYSTEMS[row["system"]].with_num_chips(int(row["num_devices"]))
            cases.append(SpeculativeCase(row["run_id"], row["source_key"], row["method"], model,
                                         plan, system, spec, float(row["speedup"])))
    return cases


def predict_speculative(cases: list[SpeculativeCase], calibration: Calibration = DEFAULT,
                        context: float = CONTEXT_TOKENS) -> list[float]:
    """The modelled speed-up over plain decoding of each case, at `context` tokens."""
    return [float(speculative_decode(c.model, c.plan, c.system, context, c.speculation,
                                     calibration=calibration).speedup) for c in cases]
