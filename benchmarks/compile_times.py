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
  it jits internally, so its figure is the first call's wall time minus the second's;
- `sweep`: the chunk kernel of `dse demo`'s sweep (GPT-3 on 1,024 H100s, seven chip knobs,
  65,536 points per chunk, table kept), as `dse.sweep` reports it.

Then the same entry points are compiled in two fresh processes sharing one new persistent
compilation cache (what `import dse` turns on): the first fills it, the second's times are
printed as `cached:` (loading from disk instead of compiling).

Prints one line per entry point (wall and CPU seconds: on a machine shared with other jobs the
CPU time is the steadier figure), the CPU times, and, last, the wall times as
`train_step=<s> ... sweep=<s> cached_max=<s>` (cached_max: the slowest entry point of the
second, cached process).

Run: `python benchmarks/compile_times.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
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


def _sweep_s() -> tuple[float, float]:
    from dse import _demo
    from dse._study import make_objective
    from dse._sweep import sweep

    model = TRANSFORMERS[_demo.MODEL]
    system = SYSTEMS["DGX-H100"].with_num_chips(_demo.CHIPS_IN_CLUSTER)
    plan, _ = best_plan(model, system, _demo.GLOBAL_BATCH)
    objective = make_objective("training", model, plan, _demo.GLOBAL_BATCH)
    c0 = time.process_time()
    result = sweep(objective, _demo.chip_space(system), 1 << 16, chunk_size=1 << 16,
                   directions={"step_time": "min", "area": "min"}, progress=False,
                   constraints={"power": ("<=", 1000.0), "reticle_margin": (">=", 0.0),
                                "memory_margin": (">=", 0.0)})
    # CPU: the whole call (one chunk of 65,536 points run after compiling) is an upper bound.
    return result.compile_s, time.process_time() - c0


def measure() -> dict[str, tuple[float, float]]:
    """(wall, CPU) compile seconds of every entry point, in this process."""
    jax.jit(lambda x: x + 1.0)(jnp.zeros(()))  # backend start-up is not a compile time
    gpt3 = TRANSFORMERS["gpt3-175b"]
    cluster = SYSTEMS["DGX-H100"].with_num_chips(1024)
    plan = TrainingPlan(tp=8.0, pp=16.0, dp=8.0, microbatch_size=1.0, global_batch=1536.0)
    llama = TRANSFORMERS["llama3-70b"]
    node = SYSTEMS["DGX-H100"]
    iplan = InferencePlan(tp=8.0, batch=32.0)
    return {
        "train_step": _compile_s(lambda s: train_step(gpt3, plan, s), cluster),
        "best_plan": _compile_s(lambda s: best_plan(gpt3, s, 1536), cluster),
        "prefill": _compile_s(lambda s: prefill(llama, iplan, s, 2048.0), node),
        "decode": _compile_s(lambda s: decode(llama, iplan, s, 2048.0), node),
        "serve": _compile_s(lambda s: serve(llama, iplan, s, 32.0, 2048.0, 256.0), node),
        "calibrate": _calibrate_s(),
        "sweep": _sweep_s(),
    }


def _cached_run(cache_dir: str) -> dict[str, tuple[float, float]]:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, DSE_COMPILATION_CACHE="1",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(measure()))
        return
    jax.config.update("jax_enable_compilation_cache", False)
    times = measure()
    for name, (wall, cpu) in times.items():
        print(f"{name:>10}: {wall:6.2f} s wall, {cpu:6.2f} s CPU")
    print("cpu: " + " ".join(f"{k}={cpu:.2f}" for k, (_, cpu) in times.items()))
    with tempfile.TemporaryDirectory(prefix="dse-compile-cache-") as cache_dir:
        _cached_run(cache_dir)  # fills the cache
        cached = _cached_run(cache_dir)
    print("cached (second process, wall): " + " ".join(f"{k}={w:.2f}" for k, (w, _) in
                                                       cached.items()))
    print("cached (second process, CPU): " + " ".join(f"{k}={c:.2f}" for k, (_, c) in
                                                      cached.items()))
    print(" ".join(f"{k}={wall:.2f}" for k, (wall, _) in times.items())
          + f" cached_max={max(w for w, _ in cached.values()):.2f}")


if __name__ == "__main__":
    main()
