"""Plan search: GPT-3 175B on 1024 A100s (DGX A100), global batch 1536, the full plan space.

Every valid (TP dividing the heads, PP dividing the layers, DP, micro-batch, interleave,
sequence parallel, recompute, ZeRO stage) plan is enumerated with numpy and evaluated in one
jitted, vmapped `train_step`. Prints the plan count, the best plan and its step time, the compile
time and, last, `plans=<n> seconds=<t> compile_s=<c>` (seconds: enumeration + evaluation after
compilation, best of three runs).

Run: `python benchmarks/plan_search.py`.
"""

from __future__ import annotations

import time

import jax

from dse.hardware import SYSTEMS, describe_reason
from dse.models import TRANSFORMERS, enumerate_plans, evaluate_plans, select_plan

GLOBAL_BATCH = 1536
NUM_CHIPS = 1024


def main() -> None:
    model = TRANSFORMERS["gpt3-175b"]
    system = SYSTEMS["DGX-A100"].with_num_chips(NUM_CHIPS)

    def search(plans, system):
        return select_plan(plans, evaluate_plans(model, plans, system))

    plans = enumerate_plans(model, NUM_CHIPS, GLOBAL_BATCH)
    n = int(plans.tp.shape[0])
    t0 = time.perf_counter()
    compiled = jax.jit(search).lower(plans, system).compile()
    compile_s = time.perf_counter() - t0

    best_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        plans = enumerate_plans(model, NUM_CHIPS, GLOBAL_BATCH)
        plan, report = compiled(plans, system)
        jax.block_until_ready(report)
        best_s = min(best_s, time.perf_counter() - t0)

    fields = ("tp", "pp", "dp", "ep", "microbatch_size", "interleave", "sequence_parallel",
              "recompute", "zero_stage")
    print(f"model {model.name}, {NUM_CHIPS} x {system.chip.name}, global batch {GLOBAL_BATCH}")
    print(f"plans evaluated: {n}")
    print("best plan: " + ", ".join(f"{f}={float(getattr(plan, f)):g}" for f in fields))
    print(f"step time {float(report.step_time):.3f} s, MFU {100 * float(report.mfu):.1f}%, "
          f"memory {float(report.memory_per_chip) / 2**30:.1f} GiB/chip "
          f"({describe_reason(report.reason)})")
    print("breakdown: " + ", ".join(f"{k} {float(v):.3f} s" for k, v in report.breakdown.items()))
    print(f"compile time {compile_s:.2f} s; search after compilation {best_s:.3f} s "
          f"({1e6 * best_s / n:.2f} us per plan)")
    print(f"plans={n} seconds={best_s:.3f} compile_s={compile_s:.2f}")


if __name__ == "__main__":
    main()
