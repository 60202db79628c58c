"""Serving-plan search: Llama 3.3 70B on 64 H100s (DGX H100) under a latency objective.

Every serving plan (TP dividing the heads, PP dividing the layers, the replicas that fill the 64
chips, batch limit, chunked-prefill token budget, precision recipe BF16 or FP8) is enumerated
with numpy and evaluated in one jitted, vmapped `serve_continuous` with its SLO goodput
(`dse.models.best_serving_plan`). The workload is 1000 input and 1000 output tokens per request
(one of the TensorRT-LLM perf-overview length pairs), the objective p99 TPOT <= 50 ms and p99
TTFT <= 2 s. FP8's matrix peak is H100 SXM's dense FP8 over dense BF16 in data/chips.csv
(1979 / 989.4 TFLOP/s), its layers' weights and KV cache one byte per element (the embedding
and LM head 16-bit, as ModelOpt leaves them).

Prints the plan count, the best plan with its tokens/s within the objective and its latencies,
the compile time and, last, `plans=<n> seconds=<t> compile_s=<c>` (seconds: enumeration +
evaluation after compilation, best of three runs).

Run: `python benchmarks/serving_plan.py`.
"""

from __future__ import annotations

import time

import jax

from dse.calibration import read_chips_csv
from dse.hardware import CHIPS, SYSTEMS, describe_reason
from dse.models import (
    TRANSFORMERS,
    ServingWorkload,
    Slo,
    enumerate_serving_plans,
    evaluate_serving_plans,
    select_serving_plan,
)

NUM_CHIPS = 64
WORKLOAD = ServingWorkload(1000.0, 1000.0)
SLO = Slo(ttft=2.0, tpot=0.05, quantile=0.99)


def main() -> None:
    model = TRANSFORMERS["llama3-70b"]
    chip = CHIPS["H100-SXM"]
    system = SYSTEMS["DGX-H100"].replace(chip=chip).with_num_chips(NUM_CHIPS)
    row = read_chips_csv()[chip.name]
    fp8 = float(row["peak_dense_fp8_tflops"]) / float(row["peak_dense_bf16_tflops"])
    precisions = {"bf16": (2.0, 2.0, 1.0), "fp8": (1.0, 1.0, fp8)}

    def enumerate_():
        return enumerate_serving_plans(model, NUM_CHIPS, precisions=precisions)

    def search(plans, system):
        reports, goodputs = evaluate_serving_plans(model, plans, system, WORKLOAD, SLO)
        return select_serving_plan(plans, reports, goodputs)

    plans = enumerate_()
    n = len(plans)
    t0 = time.perf_counter()
    compiled = jax.jit(search).lower(plans, system).compile()
    compile_s = time.perf_counter() - t0

    best_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        choice = compiled(enumerate_(), system)
        jax.block_until_ready(choice)
        best_s = min(best_s, time.perf_counter() - t0)

    plan, g, r = choice.plan, choice.goodput, choice.report
    inf = plan.inference
    print(f"model {model.name}, {NUM_CHIPS} x {chip.name}, input {float(WORKLOAD.mean_input):g} "
          f"/ output {float(WORKLOAD.mean_output):g} tokens, objective p99 TPOT <= "
          f"{1e3 * float(SLO.tpot):g} ms, p99 TTFT <= {float(SLO.ttft):g} s")
    print(f"plans evaluated: {n}, meeting the objective: {int(choice.feasible)}")
    print(f"best plan: tp={float(inf.tp):g} pp={float(inf.pp):g} "
          f"replicas={float(plan.replicas):g} max_batch={float(plan.max_batch):g} "
          f"max_tokens={float(plan.max_tokens):g} precision={choice.names[int(choice.precision)]}")
    print(f"within the objective: {float(g.tokens_per_s):.0f} output tokens/s "
          f"({float(g.tokens_per_s_per_chip):.0f} per chip) at {float(g.rate):.2f} req/s, "
          f"p99 TTFT {float(g.ttft):.3f} s, p99 TPOT {1e3 * float(g.tpot):.1f} ms "
          f"({describe_reason(choice.reason)})")
    print(f"at full load: {float(r.tokens_per_s):.0f} tokens/s, decode batch "
          f"{float(r.batch):.0f} per replica, TPOT {1e3 * float(r.iteration_time):.1f} ms")
    print(f"compile time {compile_s:.2f} s; search after compilation {best_s:.3f} s "
          f"({1e6 * best_s / n:.2f} us per plan)")
    print(f"plans={n} seconds={best_s:.3f} compile_s={compile_s:.2f}")


if __name__ == "__main__":
    main()
