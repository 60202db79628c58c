"""Cold compile times of the main entry points, in one fresh process on the default device.

Each model entry point is jitted on its own and timed from trace to executable
(`jax.jit(f).lower(*args).compile()`: tracing, lowering and XLA compilation; JAX's persistent
compilation cache is switched off, so nothing is reused from disk):

- `train_step`: GPT-3 175B (Brown et al. 2020) on 1,024 H100s (DGX-H100), TP 8 x PP 16 x DP 8;
- `best_plan`: the same model and system, every valid plan (`enumerate_plans` defaults);
- `prefill`, `decode`, `serve`: Llama-3 70B on one DGX-H100, TP 8, batch 32, 2,048-token prompt,
  256 output tokens;
- `calibrate`: the operator-efficiency fit (`dse.calibration.calibrate` of `operator_model`,
  four fields, L-BFGS, Laplace uncertainty, no validation) on 48 synthetic A100 kernel rows;
  it jits internally, so its figure is the first call's wall time minus the second's.

Prints one line per entry point (wall and CPU seconds: on a machine shared with other jobs the
CPU time is the steadier figure), the CPU times, and, last, the wall times as
`train_step=<s> best_plan=<s> prefill=<s> decode=<s> serve=<s> calibrate=<s>`.

Run: `python benchmarks/compile_times.py`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import dse.calibration as dc
from dse.hardware import CHIPS, SYSTEMS
from dse.models import (
    DEFAULT,
    TRANSFORMERS,
    InferencePlan,
    TrainingPlan,
    best_plan,
    decode,
    prefill,
    serve,
    train_step,
)


def _timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of `run()`; CPU counts every thread of this process."""
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w0, time.process_time() - c0


def _compile_s(fn, *args) -> tuple[float, float]:
    return _timed(lambda: jax.jit(fn).lower(*args).compile())


def _kernel_rows(n: int = 48):
    """Synthetic GEMM and element-wise rows (the model's own times: only the shapes matter)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        m, nn, k = (float(2 ** rng.integers(6, 14)) for _ in range(3))
        rows.append(dict(kind="gemm", m=m, n=nn, k=k, time_s=1.0) if i % 2 == 0 else
                    dict(kind="elementwise", elements=float(2 ** rng.integers(14, 28)),
                         time_s=1.0))
    data = dc.kernel_measurements(rows, CHIPS["A100-80GB"],
                                  sources=[f"lab{i % 4}" for i in range(n)])
    return dataclasses.replace(data, measured=dc.operator_model(DEFAULT, data.inputs))


def _calibrate_s() -> tuple[float, float]:
    data = _kernel_rows()

    def run():
        r = dc.calibrate(dc.operator_model, DEFAULT, data, fit=dc.OPERATOR_FIELDS,
                         validation="none", steps=50)
        jax.block_until_ready(r.value)

    cold, warm = _timed(run), _timed(run)
    return cold[0] - warm[0], cold[1] - warm[1]


def main() -> None:
    jax.config.update("jax_enable_compilation_cache", False)
    jax.jit(lambda x: x + 1.0)(jnp.zeros(()))  # backend start-up is not a compile time

    gpt3 = TRANSFORMERS["gpt3-175b"]
    cluster = SYSTEMS["DGX-H100"].with_num_chips(1024)
    plan = TrainingPlan(tp=8.0, pp=16.0, dp=8.0, microbatch_size=1.0, global_batch=1536.0)
    llama = TRANSFORMERS["llama3-70b"]
    node = SYSTEMS["DGX-H100"]
    iplan = InferencePlan(tp=8.0, batch=32.0)
    times = {
        "train_step": _compile_s(lambda s: train_step(gpt3, plan, s), cluster),
        "best_plan": _compile_s(lambda s: best_plan(gpt3, s, 1536), cluster),
        "prefill": _compile_s(lambda s: prefill(llama, iplan, s, 2048.0), node),
        "decode": _compile_s(lambda s: decode(llama, iplan, s, 2048.0), node),
        "serve": _compile_s(lambda s: serve(llama, iplan, s, 32.0, 2048.0, 256.0), node),
        "calibrate": _calibrate_s(),
    }
    for name, (wall, cpu) in times.items():
        print(f"{name:>10}: {wall:6.2f} s wall, {cpu:6.2f} s CPU")
    print("cpu: " + " ".join(f"{k}={cpu:.2f}" for k, (_, cpu) in times.items()))
    print(" ".join(f"{k}={wall:.2f}" for k, (wall, _) in times.items()))


if __name__ == "__main__":
    main()
