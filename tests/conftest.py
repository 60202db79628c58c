"""Strict JAX for every test: rank promotion raises, warnings are errors (pyproject).

The suite runs on one pytest-xdist worker per physical core (`-n auto` in pyproject's addopts;
xdist counts physical cores with psutil, which ipykernel brings). Most of its time is XLA
compilation and eager dispatch, which use about one core per process: measured on 2 cores,
the whole suite took 541 s in one process and 327 s on two workers, for the same CPU time
(629 s vs 624 s user + sys). A runner whose two vCPUs are one core's hyperthreads gets one
worker. At most MAX_WORKERS: each worker imports JAX and rebuilds the module fixtures it needs.
`PYTEST_XDIST_AUTO_NUM_WORKERS=N` sets the count; `-n 0` runs in this process (for `-s`, pdb).
"""

import os

# Four host devices so that sharding tests run on a CPU-only machine. Must precede jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

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
