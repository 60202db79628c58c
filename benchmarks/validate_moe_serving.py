"""MoE serving at full load: expert tensor parallel against expert parallel, on published rows.

Rows: data/serving_external_checks.csv (no fit reads them), TensorRT-LLM perf-overview
max-throughput, output tokens/s of the whole TP group.

- **Mixtral 8x7B / 8x22B (v0.17, TP 2-8).** The engine flow shards MoE experts by tensor
  parallelism, TensorRT-LLM's default pattern ("Expert Parallelism in TensorRT-LLM"), so the
  rows are modelled as run (`InferencePlan(tp=tp)`). Beside them: what the model predicts for
  the same chips with EP = tp (`InferencePlan(tp=1, ep=tp)`, attention data parallel): a
  counterfactual, not a check (no published EP row of these models and chips).
- **Qwen3-235B-A22B (v1.0, 8 GPUs).** The page runs MoE with `--ep $ep_size` and
  `enable_attention_dp: true` without giving the EP size per row: both readings are printed,
  EP = 8 with attention data parallel (every GPU its own expert group) and expert tensor
  parallel 8. The scheduler limits are trtllm-bench's for the 8-GPU engine
  (`trtllm_bench_limits`), applied to the whole group in both readings.

Every constant of the serving model is fitted to other sources (or none), so every error here
is out of sample. Last line:
`mixtral_tp_median=<x> mixtral_ep_median=<y> qwen3_ep_median=<z> qwen3_tp_median=<w>`
(median signed error over rows, a fraction).

    python benchmarks/validate_moe_serving.py
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dse.calibration._serving_data import predict_serving, serving_cases


def _as_ep(case):
    """The case with its TP chips as EP groups of one chip (attention data parallel)."""
    inf = case.plan.inference
    inference = inf.replace(tp=1.0, ep=float(inf.tp))
    return dataclasses.replace(case, plan=dataclasses.replace(case.plan, inference=inference))


def _table(title, cases, readings):
    """Print each row's measured figure and each reading's prediction and error; return each
    reading's signed errors."""
    print(f"\n{title}")
    predictions = {name: predict_serving(cs) for name, cs in readings.items()}
    errors = {name: 100.0 * (p / np.array([c.measured for c in cases]) - 1.0)
              for name, p in predictions.items()}
    for k, case in enumerate(cases):
        cells = "  ".join(f"{name} {predictions[name][k]:9.4g} {errors[name][k]:+6.1f}%"
                          for name in readings)
        print(f"{case.run_id:55s} {case.measured:9.4g}  {cells}")
    groups = sorted({c.group for c in cases})
    for group in groups:
        idx = [k for k, c in enumerate(cases) if c.group == group]
        cells = "  ".join(f"{name} median {np.median(errors[name][idx]):+6.1f}% "
                          f"(|err| {np.median(np.abs(errors[name][idx])):5.1f}%)"
                          for name in readings)
        print(f"  {group:36s} n={len(idx):2d}  {cells}")
    return errors


def main() -> None:
    cases, _ = serving_cases(external=True)
    # TP 1 rows have no expert parallel counterpart.
    mixtral = [c for c in cases if c.model.name.startswith("mixtral")
               and float(c.plan.inference.tp) > 1.0]
    mix = _table("Mixtral (v0.17): as run (experts tensor parallel) and the EP = TP "
                 "counterfactual (measured / model / error)", mixtral,
                 {"TP": mixtral, "EP": [_as_ep(c) for c in mixtral]})

    as_ep, _ = serving_cases(external=True, moe_layout="ep")
    as_tp, _ = serving_cases(external=True, moe_layout="tp")
    pick = lambda cs: [c for c in cs if c.model.name.startswith("qwen3")]  # noqa: E731
    qwen_ep, qwen_tp = pick(as_ep), pick(as_tp)
    qwen = _table("Qwen3-235B-A22B (v1.0, EP size not given): EP 8 with attention data "
                  "parallel, and experts tensor parallel 8", qwen_ep,
                  {"EP8": qwen_ep, "TP8": qwen_tp})
    med = lambda e: float(np.median(e)) / 100.0  # noqa: E731
    print(f"mixtral_tp_median={med(mix['TP']):+.3f} mixtral_ep_median={med(mix['EP']):+.3f} "
          f"qwen3_ep_median={med(qwen['EP8']):+.3f} qwen3_tp_median={med(qwen['TP8']):+.3f}")


if __name__ == "__main__":
    main()
