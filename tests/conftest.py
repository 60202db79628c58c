"""Strict JAX for every test: rank promotion raises, warnings are errors (pyproject).

The suite runs on one pytest-xdist worker per physical core (`-n auto` in pyproject's addopts;
xdist counts physical cores with psutil, which ipykernel brings). Most of its time is XLA
compilation and eager dispatch, which use about one core per process: measured on 2 cores,
the whole suite took 541 s in one process and 327 s on two workers, for the same CPU time
(629 s vs 624 s user + sys). A runner whose two vCPUs are one core's hyperthreads gets one
worker. At most MAX_WORKERS: each worker imports JAX and rebuilds the module fixtures it needs.
`PYTEST_XDIST_AUTO_NUM_WORKERS=N` sets the count; `-n 0` runs in this process (for `-s`, pdb).
"""

import atexit
import os
import shutil
import tempfile

# Four host devices so that sharding tests run on a CPU-only machine. Must precede jax import.
# The suite's programs are small and run once or a few times, so compiling them costs far more
# than running them: XLA's CPU backend without LLVM optimization and with its classic fused
# emitters compiles them in about half the CPU time (tests/test_training.py: 247 -> 129 CPU-s
# on this 2-core machine), and runs a wide sweep about 40% slower. The programs compute the same
# values (the same HLO; only the generated machine code differs). A caller's own XLA_FLAGS are
# used as they are; TEST_XLA_FAST_COMPILE=0 keeps XLA's defaults.
_FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
                 if os.environ.get("TEST_XLA_FAST_COMPILE", "1") != "0" else "")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {_FAST_COMPILE}")

# One persistent compilation cache per run, shared by every process of it: the xdist workers,
# the notebook kernels and the subprocesses inherit this environment from the process that made
# the folder (the controller), so a program that one of them compiled is loaded, not compiled,
# by the others (the notebooks, the demo and the CLI tests compile the same GPT-3 training step
# and plan search). Fresh for every run and removed at its end, so nothing is reused across
# runs; a cache the caller names in JAX_COMPILATION_CACHE_DIR is used as it is.
# TEST_COMPILE_CACHE_MIN_S: only programs that took at least this long to compile are stored.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="dse-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                          os.environ.get("TEST_COMPILE_CACHE_MIN_S", "0.2"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    try:
        import psutil
    except ImportError:
        return None  # xdist's own count
    return max(1, min(MAX_WORKERS, psutil.cpu_count(logical=False) or 1))


# Work is handed to the xdist workers a test file at a time (xdist's `loadfile`) rather than a
# test at a time: the tests of a file share its module fixtures and the programs their worker has
# traced and compiled, which `load` traces again in every worker that gets one of them. Measured
# on 2 cores over five of the heaviest files (precision, serving, training, properties, plans):
# 540 -> 505 user CPU-s for the same wall. The notebooks are each their own unit (each runs in its
# own kernel, so grouping them gains nothing). Units are handed out largest first, so that one
# worker does not run a long file alone at the end: the notebooks, then the other files by the
# time their tests took in `--durations` (2026-11-30, 2 cores; a stale order costs balance, not
# correctness); files not listed took under 10 s. The whole suite took 1617 vs 1704 user CPU-s
# and 903 vs 953 s wall (notebooks first, the rest in file order; the machine's speed varies by
# 5-10% from run to run). `--dist` other than the default `load` is used as given.
_OWN_UNIT = "tests/test_notebooks.py::"
_LONGEST_FILES = tuple(f"test_{name}.py" for name in (
    "notebooks", "precision", "serving", "calibrate", "cli", "training", "properties", "cluster",
    "calibration_module", "workload_mix", "plans", "offload", "sweep", "codesign", "speculative",
    "inference",
    "no_silent_answers", "recsys", "validation", "hardware", "moe_context", "sweep_distributed",
    "packaging", "multimodal", "cache", "expert_parallel_serving"))


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the test itself for a notebook."""
    return nodeid if nodeid.startswith(_OWN_UNIT) else nodeid.split("::", 1)[0]


def hand_out_rank(nodeid: str) -> int:
    """Position of a test's file in the hand-out order (unlisted files last, in file order)."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return _LONGEST_FILES.index(name) if name in _LONGEST_FILES else len(_LONGEST_FILES)


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: hand_out_rank(item.nodeid))  # stable: order within a file kept
