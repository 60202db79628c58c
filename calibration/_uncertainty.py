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


def _variance_components(log_residual, group):
    """Mean squares of a one-way layout by source: (between-means MS, its dof, within MS, its
    dof, mean over sources of 1 / rows, number of sources)."""
    r = np.asarray(log_residual, dtype=float)
    group = np.asarray(group)
    labels = list(dict.fromkeys(group.tolist()))
    sizes = np.array([np.sum(group == g) for g in labels], dtype=float)
    means = np.array([r[group == g].mean() for g in labels])
    within = sum(float(np.sum((r[group == g] - m) ** 2)) for g, m in zip(labels, means,
                                                                          strict=True))
    dof_within = max(r.size - len(labels), 1)
    dof_between = max(len(labels) - 1, 1)
    between = float(np.sum((means - means.mean()) ** 2) / dof_between)
    return (between, dof_between, within / dof_within, dof_within, float(np.mean(1.0 / sizes)),
            len(labels))


def _spread_terms(log_residual, group):
    """(between-source variance, within-source variance, dof of their sum)."""
    ms_b, dof_b, ms_w, dof_w, inv_n, sources = _variance_components(log_residual, group)
    if sources < 2:
        # One source: no between-source variance can be estimated; the widest t (1 dof).
        return 0.0, ms_w, 1.0
    # The variance of the source means holds the within variance once per source, divided by
    # its rows: sigma_b^2 = MS_means - sigma_w^2 * mean(1 / n_i), the unweighted-means
    # estimator of unbalanced data (Searle, Casella & McCulloch 1992, Sec. 3.6). Without the
    # subtraction a one-row source counts its row scatter twice.
    between = ms_b - inv_n * ms_w
    c = 1.0 - inv_n
    if between <= 0.0:
        # Clipped at 0: the dof of the boundary (MS_means = mean(1 / n_i) sigma_w^2), so that
        # the dof is continuous where the estimate crosses zero.
        return 0.0, ms_w, float(1.0 / (inv_n**2 / dof_b + c**2 / dof_w))
    total = ms_b + c * ms_w
    # Satterthwaite (1946, Biometrics Bulletin 2(6)): the dof of a sum of mean squares.
    dof = total**2 / (ms_b**2 / dof_b + (c * ms_w) ** 2 / dof_w)
    return between, ms_w, float(dof)


def source_spread(log_residual, group) -> float:
    """Std of the log-ratio (modelled / measured) a row of an unseen source should expect.

    A one-way random-effects view of the residuals (Searle, Casella & McCulloch 1992,
    "Variance Components", Ch. 3): each source has its own offset (its setup, its framework
    version, its way of counting), rows scatter around it. A new source draws a new offset, so
    its rows' spread is the between-source variance plus the pooled within-source variance.
    Sources count equally in the between term, whatever their row counts, as the per-source
    targets do; the between term is the unweighted-means estimator (the variance of the source
    means less the within variance they carry), so a source of one row does not count its
    scatter twice. Its uncertainty, as degrees of freedom for Student's t: `spread_dof`.

    **Arguments:**

    - `log_residual`: (n,) log(modelled / measured) of the rows a fit saw.
    - `group`: (n,) source of each row (any hashable labels).

    **Returns:** the std (log units; 0.1 is about +-10%).
    """
    between, within, _ = _spread_terms(log_residual, group)
    return float(np.sqrt(between + within))


def spread_dof(log_residual, group) -> float:
    """Degrees of freedom of `source_spread`'s variance (Satterthwaite's approximation for a
    sum of the between- and within-source mean squares): near n_sources - 1 when the between
    term dominates, up to about n_rows - 1 when the within term does; 1 for a single source.
    The `dof` of `prediction_interval` for a row of an unseen source."""
    return _spread_terms(log_residual, group)[2]


class Interval(eqx.Module):
    """A prediction with its interval (same units as the prediction).

    **Fields:** `value`, `lower`, `upper` (arrays of one shape), `log_std` (the std of the
    log prediction the interval comes from), `level` (static: the coverage it is built for).
    `str()` of a scalar interval reads "4.1 s +- 0.4 s" (the larger of the two half-widths).
    """

    value: Any
    lower: Any
    upper: Any
    log_std: Any
    level: float = eqx.field(static=True, default=0.9)

    def contains(self, measured) -> Array:
        """True where `measured` lies inside the interval."""
        m = jnp.asarray(measured)
        return (m >= self.lower) & (m <= self.upper)

    def format(self, unit: str = "s") -> str:
        """"value unit +- half-width unit" for a scalar interval (3 significant digits)."""
        v, lo, hi = (float(np.asarray(x)) for x in (self.value, self.lower, self.upper))
        half = max(hi - v, v - lo)
        return f"{v:.3g} {unit} +- {half:.2g} {unit} ({100 * self.level:.0f}%)"

    def __str__(self) -> str:
        return self.format()


def prediction_interval(value, log_std, *, level: float = 0.9, dof: float | int | None = None
                        ) -> Interval:
    """A log-normal interval around a prediction: value x exp(+-q log_std).

    **Arguments:**

    - `value`: the prediction(s), > 0.
    - `log_std`: std of the log prediction: sqrt(parameter variance + residual spread^2)
      (`source_spread`, `parameter_log_std`).
    - `level`: coverage, in (0, 1).
    - `dof`: degrees of freedom of Student's t for the quantile q (the spread estimated from
      few sources is itself uncertain: Gosset's small-sample correction; `spread_dof`);
      None: normal.

    **Returns:** an `Interval`.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"prediction_interval: level must be in (0, 1); got {level}")
    from scipy.stats import norm, t  # deferred: scipy.stats adds 0.4 s to `import dse`

    tail = 0.5 + 0.5 * level
    q = float(norm.ppf(tail) if dof is None else t.ppf(tail, max(float(dof), 1.0)))
    value = jnp.asarray(value)
    log_std = jnp.asarray(log_std)
    return Interval(value=value, lower=value * jnp.exp(-q * log_std),
                    upper=value * jnp.exp(q * log_std), log_std=log_std, level=level)


def parameter_log_std(model_fn: Callable[[Any, Any], Any], result: CalibrationResult,
                      inputs: Any) -> Array:
    """Std of each log prediction from the fitted parameters' Laplace covariance (delta method:
    sqrt(J C J^T) with J = d log prediction / d log parameter at the fit).

    **Arguments:** `model_fn(params, inputs)` as given to `calibrate`; `result` its output;
    `inputs` the rows to predict.

    **Returns:** (n,) standard deviations (log units).
    """
    from ._fit import _predict_z  # here, not at the top: _fit imports this module

    z = jnp.log(jnp.asarray(result.value))
    jac = jax.jacfwd(lambda z_: jnp.log(_predict_z(z_, result.params, inputs, model_fn,
                                                   result.names)))(z)
    cov = jnp.where(jnp.isfinite(result.log_covariance), result.log_covariance, 0.0)
    return jnp.sqrt(jnp.clip(jnp.einsum("ij,jk,ik->i", jac, cov, jac), 0.0))
