"""Uncertainty of a calibration: the Laplace covariance, bootstrap weights, and error bars on
anything the models compute (`propagate`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray

from ._result import CalibrationResult

Resample = Literal["source", "row"]


def _laplace_covariance(precision):
    """(cov, unconstrained): the inverse of a symmetric PSD precision matrix on the directions
    it resolves, and which parameters load on a direction it does not.

    Eigenvalues below 10 k eps max(eigenvalue) are indistinguishable from zero at the working
    precision (J^T J is accumulated in that precision): those directions carry no information,
    so a parameter with more than 1e-4 of its weight on them has no finite error (its std is
    reported as inf, not the near-zero a pseudo-inverse would give).
    """
    sym = 0.5 * (precision + precision.T)
    w, v = jnp.linalg.eigh(sym)
    k = sym.shape[0]
    tol = 10.0 * k * jnp.finfo(sym.dtype).eps * jnp.max(jnp.abs(w))
    resolved = w > tol
    cov = (v * jnp.where(resolved, 1.0 / jnp.where(resolved, w, 1.0), 0.0)[None, :]) @ v.T
    null_weight = jnp.sum(jnp.where(resolved[None, :], 0.0, v**2), axis=1)
    return cov, null_weight > 1e-4


def bootstrap_weights(key: PRNGKeyArray, group: Int[ArrayLike, " n"], n_bootstrap: int,
                      resample: str = "source") -> Int[Array, "b n"]:
    """Per-row weights of `n_bootstrap` bootstrap replicates (multinomial counts).

    **Arguments:**

    - `key`: a `jax.random` key.
    - `group`: (n,) source index of each row (`Measurements.group`).
    - `n_bootstrap`: replicates.
    - `resample`: "source": draw as many sources as there are, with replacement, and give
      every row its source's count (rows of one source move together); "row": draw n rows.

    **Returns:** (n_bootstrap, n) integer weights.
    """
    group = np.asarray(group)
    n = group.shape[0]
    keys = jax.random.split(key, n_bootstrap)
    if resample == "row":
        return jax.vmap(lambda kk: jnp.bincount(jax.random.randint(kk, (n,), 0, n),
                                                length=n))(keys)
    if resample != "source":
        raise ValueError(f"bootstrap_weights: resample must be 'source' or 'row'; got "
                         f"{resample!r}")
    present = np.unique(group)
    if present.size < 2:
        raise ValueError(f"bootstrap_weights: resample='source' needs rows from at least 2 "
                         f"sources; got {present.size}; use resample='row'")
    # Sources are relabelled 0..s-1 over those present, so an empty source is never drawn.
    local = jnp.asarray(np.searchsorted(present, group))
    s = present.size
    counts = jax.vmap(lambda kk: jnp.bincount(jax.random.randint(kk, (s,), 0, s),
                                              length=s))(keys)
    return counts[:, local]


class Spread(eqx.Module):
    """A quantity evaluated under samples of calibrated parameters: its error bars.

    **Fields** (each a pytree shaped like the quantity):

    - `mean`, `std`: over the samples.
    - `lower`, `upper`: the 2.5% and 97.5% quantiles (a 95% band).
    - `samples`: every sample, leading axis = samples.
    """

    mean: Any
    std: Any
    lower: Any
    upper: Any
    samples: Any


def propagate(fn: Callable[[Any], Any], result: CalibrationResult, *, n: int = 256,
              key: PRNGKeyArray | None = None,
              method: Literal["laplace", "bootstrap"] = "laplace") -> Spread:
    """Evaluate `fn(params)` under `n` samples of the calibrated parameters (vmapped).

    Use it for error bars on anything the models compute: a sweep's metrics at fixed designs,
    the points of a Pareto front, sensitivities (`fn` returning a `jax.jacfwd`).

    **Arguments:**

    - `fn`: pure function of the parameter pytree returning a pytree of arrays.
    - `result`: the `CalibrationResult` whose parameters are sampled.
    - `n`: number of samples.
    - `key`: `jax.random` key (default `PRNGKey(0)`).
    - `method`: "laplace" or "bootstrap" (see `CalibrationResult.sample`).

    **Returns:** a `Spread`.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    samples = jax.jit(jax.vmap(fn))(result.sample(key, n, method))
    return Spread(
        mean=jax.tree.map(lambda s: jnp.mean(s, axis=0), samples),
        std=jax.tree.map(lambda s: jnp.std(s, axis=0), samples),
        lower=jax.tree.map(lambda s: jnp.quantile(s, 0.025, axis=0), samples),
        upper=jax.tree.map(lambda s: jnp.quantile(s, 0.975, axis=0), samples),
        samples=samples)
