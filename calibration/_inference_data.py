"""Model every row of data/inference_runs.csv that states enough to be modelled.

`inference_rows(data_dir)` returns one dict per measured quantity (a row with both a prefill and
a per-token decode latency gives two): row_id, source, chips, measured, predicted, unit, and
`seconds(calibration)`, the modelled time in s under a `dse.models.Calibration` (`predicted` is
its value at `DEFAULT`, in ms), which `benchmarks/calibration.py` calibrates.
`benchmarks/validate.py` prints them; `python -m dse.calibration._inference_data` prints them
alone.

Model shapes come from the sources the rows name:

- LLMCompass rows: one GPT-3 175B layer (Brown et al. 2020: hidden 12288, 96 heads, MLP 4h),
  tensor parallel 4 on A100 80GB (DGX A100), batch 8; the measured figure is the sum of the
  layer's per-op latencies, so no logits projection is counted.
- FasterTransformer rows: llm-analysis `test-13b` config (github.com/cli99/llm-analysis,
  llm_analysis/model_configs/test-13b.json: 40 layers, 40 heads, hidden 5120, MLP 20480,
  vocab 50272), fp16 on A100 40GB, batch 1, 512 prompt tokens, 10 generated.
- Pope et al. 2022 rows: PaLM 540B (Chowdhery et al. 2022, Table 1: 118 layers, d_model 18432,
  48 heads, multi-query attention, SwiGLU MLP of 4 d_model, vocab 256k, shared embeddings) on
  64 TPU v4 chips (3D torus), tensor parallel 64; int8 weights where the row says so. The
  Transformer derives head_dim = hidden / heads = 384 where PaLM uses 256, so the modelled
  Q/output projections are 1.5x PaLM's (+5% parameters).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import jax

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, SYSTEMS
from dse.models import DEFAULT, Calibration, InferencePlan, Transformer, decode, gemm, prefill

from ._training_data import LOW_PRECISION, SkippedRow

GPT3_LAYER = Transformer(layers=1, hidden=12288, heads=96, kv_heads=96, ffn_hidden=4 * 12288,
                         vocab=1, seq_len=2048, name="gpt3-175b-one-layer")
TEST_13B = Transformer(layers=40, hidden=5120, heads=40, kv_heads=40, ffn_hidden=20480,
                       vocab=50272, seq_len=2048, name="llm-analysis-test-13b")
PALM_540B = Transformer(layers=118, hidden=18432, heads=48, kv_heads=1, ffn_hidden=4 * 18432,
                        vocab=256000, seq_len=2048, gated_mlp=True, tied_embeddings=True,
                        name="palm-540b")


def _f(x: str) -> float:
    return float(x) if x not in ("", None) else float("nan")


def _ms(seconds) -> float:
    return float(seconds) * 1e3


def _row(row_id, row, chips, measured, seconds) -> dict:
    return dict(row_id=row_id, source=row["source_key"], chips=chips, measured=measured,
                predicted=_ms(seconds(DEFAULT)), unit="ms", seconds=seconds)


def _llmcompass(row: dict) -> list[dict]:
    system = SYSTEMS["DGX-A100"]
    # PyTorch eager, op by op: norms replicated over the tp GPUs, every op its own kernel.
    plan = InferencePlan(tp=_f(row["tp"]), batch=_f(row["batch_size"]),
                         sequence_parallel=False, fused=False)

    def seconds(calibration: Calibration):
        kw = dict(calibration=calibration)
        # One layer: subtract the (vocab = 1) logits GEMM so that only the layer's ops remain.
        logits = gemm(system.chip, plan.batch, GPT3_LAYER.vocab / plan.tp, GPT3_LAYER.hidden,
                      calibration=calibration).time
        if row["phase"] == "prefill":
            return prefill(GPT3_LAYER, plan, system, _f(row["input_len"]), **kw).time - logits
        return decode(GPT3_LAYER, plan, system, _f(row["context_len"]), **kw).time - logits

    column = "prefill_latency_ms" if row["phase"] == "prefill" else "decode_latency_per_token_ms"
    return [_row(row["run_id"], row, plan.chips, _f(row[column]), seconds)]


def _fastertransformer(row: dict) -> list[dict]:
    system = SYSTEMS["DGX-A100"].replace(chip=CHIPS["A100-40GB"])
    # FasterTransformer: Megatron tensor parallel (norms replicated), fused element-wise kernels.
    plan = InferencePlan(tp=_f(row["tp"]), batch=_f(row["batch_size"]), sequence_parallel=False,
                         fused=True)
    input_len, output_len = _f(row["input_len"]), _f(row["output_len"])

    def pre(calibration: Calibration):
        return prefill(TEST_13B, plan, system, input_len, calibration=calibration).time

    def dec(calibration: Calibration):
        return decode(TEST_13B, plan, system, input_len + 0.5 * (output_len + 1.0),
                      calibration=calibration).time

    return [_row(row["run_id"] + ":prefill", row, plan.chips, _f(row["prefill_latency_ms"]), pre),
            _row(row["run_id"] + ":decode", row, plan.chips, _f(row["decode_latency_per_token_ms"]),
                 dec)]


def _pope(row: dict) -> list[dict]:
    chips = int(_f(row["num_devices"]))
    system = SYSTEMS["TPUv4-pod"].with_num_chips(chips)
    weights = "int8" if row["precision"].startswith("int8") else "bf16"
    # The row's notes name the layout: weight-gathered for the high-throughput prefill, 2D
    # weight-stationary otherwise; XLA fuses element-wise ops and the layouts shard activations.
    layout = "weight_gathered" if "weight-gathered" in row["notes"] else "weight_stationary_2d"
    plan = InferencePlan(tp=float(chips), batch=_f(row["batch_size"]), weights=weights,
                         layout=layout, sequence_parallel=True, fused=True)
    context = _f(row["context_len"])

    def seconds(calibration: Calibration):
        kw = dict(calibration=calibration)
        if row["phase"] == "prefill":
            return prefill(PALM_540B, plan, system, _f(row["input_len"]), **kw).time
        output_len = _f(row["output_len"])
        return decode(PALM_540B, plan, system, context + 0.5 * (output_len + 1.0), **kw).time

    column = "prefill_latency_ms" if row["phase"] == "prefill" else "decode_latency_per_token_ms"
    return [_row(row["run_id"], row, plan.chips, _f(row[column]), seconds)]


_MODELLERS = {"llmcompass_fig5": _llmcompass, "kipply_fastertransformer": _fastertransformer,
              "pope_table2": _pope}


def inference_rows(data_dir: str | Path | None = None) -> list[dict]:
    """Measured vs modelled latency for every modellable row of inference_runs.csv.

    **Arguments:**

    - `data_dir`: the data folder (default the repository's, `dse.data`).

    **Returns:** list of dict(row_id, source, chips, measured, predicted, unit, seconds)
    (latencies in ms; `seconds(calibration)` the modelled time in s).
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "inference_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        modeller = _MODELLERS.get(row["source_key"])
        if modeller is not None:
            out.extend(modeller(row))
    return out


def inference_skipped(data_dir: str | Path | None = None) -> list:
    """The rows of inference_runs.csv that are not modelled, each with its reason
    (`dse.calibration.SkippedRow`): FP8 / FP4 serving is modelled in the low-precision and
    serving tables (`dse.calibration.serving_cases`, benchmarks/validate_precision.py)."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "inference_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if row["source_key"] in _MODELLERS:
            continue
        p = row["precision"].lower()
        reason = LOW_PRECISION if ("fp8" in p or "fp4" in p) else \
            f"source {row['source_key']}: no modeller"
        out.append(SkippedRow(row["run_id"], row["source_key"], reason))
    return out


def main(data_dir=None) -> None:
    results = inference_rows(data_dir)
    errors = []
    print(f"{'row':44s} {'measured':>12s} {'predicted':>12s} {'error':>8s}")
    for r in results:
        err = r["predicted"] / r["measured"] - 1.0
        errors.append(abs(err))
        print(f"{r['row_id']:44s} {r['measured']:10.3f}{r['unit']} {r['predicted']:10.3f}"
              f"{r['unit']} {100 * err:+7.1f}%")
    print(f"inference_mape={100 * sum(errors) / len(errors):.2f} rows={len(results)}")


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    main(sys.argv[1] if len(sys.argv) > 1 else None)
