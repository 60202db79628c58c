"""Shared test kit: tree comparison, finite-difference gradients, random designs, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from dse.models import TrainingPlan

REPO = Path(__file__).resolve().parents[1]


def random_plans(n, seed=0, moe=False):
    """`n` training plans over 64 chips with every knob varied (expert parallelism up to 2 for
    an MoE, 1 otherwise)."""
    rng = np.random.default_rng(seed)
    tp = rng.choice([1.0, 2.0, 4.0, 8.0], n)
    pp = rng.choice([1.0, 2.0, 4.0], n)
    dp = 64.0 / (tp * pp)
    b = rng.choice([1.0, 2.0], n)
    m = rng.choice([4.0, 8.0], n)
    ep = rng.choice([1.0, 2.0], n) if moe else np.ones(n)
    return TrainingPlan(tp=tp, pp=pp, dp=dp, ep=ep, microbatch_size=b, global_batch=dp * b * m,
                        interleave=np.where(pp > 1, rng.choice([1.0, 2.0], n), 1.0),
                        sequence_parallel=np.where(tp > 1, rng.integers(0, 2, n), 0),
                        recompute=rng.integers(0, 3, n).astype(float),
                        zero_stage=rng.integers(0, 4, n).astype(float),
                        dp_overlap=rng.integers(0, 2, n).astype(float),
                        dp_hierarchical=rng.integers(0, 2, n).astype(float),
                        zero3_regather=rng.integers(0, 2, n).astype(float))


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (conftest's compile options included) with `devices` host
    devices: a subprocess whose results are compared bit for bit must compile as this one does."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])


def data_dir() -> Path:
    """The repository's published data folder (`dse.data`): specs and measurements."""
    from dse.data import data_dir as folder

    return folder()


def assert_trees_identical(a, b) -> None:
    """Assert two pytrees have the same structure and bit-identical leaves."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_allclose(a, b, rtol=1e-6, atol=0.0) -> bool:
    """True when two pytrees have the same structure and all leaves are close."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
               for x, y in zip(la, lb, strict=True))


def central_difference(f, x: float, rel_step: float = 1e-6) -> float:
    """d f / d x at x by a central difference in float64 (f: float -> float)."""
    h = rel_step * max(abs(x), 1e-30)
    return (f(x + h) - f(x - h)) / (2 * h)


def jit_over_calibrations(fn):
    """`fn(calibration, *args)` jitted once for every calibration of one structure.

    `Calibration.provenance` is static (part of a compiled program's key) and `replace` drops a
    changed field's entry, so each perturbed calibration would compile anew; it takes no part in
    the arithmetic and is cleared before the call. Op by op instead, every operation of a model
    compiles on its own (about 20 ms each, ~600 in a `train_step`)."""
    run = eqx.filter_jit(fn)
    return lambda calibration, *args: run(calibration.replace(provenance=()), *args)
