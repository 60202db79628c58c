"""`calibrate`: fit a model's positive parameters to measurements, with uncertainty.

The fit works on log-parameters z = log p inside bounds [log lo, log hi] (a sigmoid maps an
unconstrained u onto them, so optax never steps outside) and minimizes the mean squared log-ratio
of modelled to measured values: a relative error, so a 50 us kernel weighs as much as a 50 s
training step. Everything is one jitted, pure function of per-row weights, so the same code
gives

- the fit on all rows (weights 1),
- cross-validation (weights 0 on the held-out fold; folds vmapped),
- the bootstrap (multinomial counts as weights; replicates vmapped): by default whole sources
  are resampled (a cluster bootstrap, since rows of one source share its setup and errors;
  Davison & Hinkley 1997, "Bootstrap Methods and their Application", Sec. 3.8), rows on request,

and uncertainty comes from the Laplace approximation at the optimum: with log-ratio residuals
r_i ~ N(0, sigma^2), the negative log-likelihood is sum r^2 / (2 sigma^2), its Hessian in z is
H / sigma^2 with H the Gauss-Newton Hessian J^T J of sum r^2 / 2 (J = d r / d z), and
cov(z) = (J^T J / sigma^2 + I / s^2)^-1 with the optional Gaussian prior of log-std s around the
starting values; sigma^2 = sum r^2 / (n - k) (Seber & Wild 2003, "Nonlinear Regression",
Sec. 2.1-2.2, 5.1; Bishop 2006, Sec. 4.4).

Convergence is checked at the end of the fit on all rows, as optimizers state it (Nocedal &
Wright 2006, "Numerical Optimization", Sec. 2.2 and 12.3): the relative change of the loss over
the last tenth of the iterations, and the decrease one more Gauss-Newton step on the projected
gradient would still give, 0.5 g^T H^+ g (zero components where a parameter sits on a bound and
the gradient pushes it outward), relative to the loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from dse.models import Calibration

from ._measurements import Measurements
from ._result import AT_BOUND, CalibrationResult, _with_values, param_names
from ._uncertainty import Resample, _laplace_covariance, bootstrap_weights

Validation = Literal["source", "kfold", "none"]
Uncertainty = Literal["laplace", "bootstrap", "both"]

# Smallest modelled value the log-ratio accepts: a model that returns 0 for a positive
# measurement gets a large finite residual instead of -inf (and a zero, not NaN, gradient).
_TINY = 1e-30
# Convergence tolerances (`CalibrationResult.converged`): relative loss change over the last
# tenth of the iterations, and the relative decrease a further Gauss-Newton step predicts.
# float32 resolves a relative change of ~1e-7; both tolerances sit well above it.
LOSS_CHANGE_TOL = 1e-4
DECREMENT_TOL = 1e-3


def _log_ratio(predicted, measured):
    ok = predicted > _TINY
    return jnp.where(ok, jnp.log(jnp.where(ok, predicted, 1.0)), jnp.log(_TINY)) - jnp.log(
        measured)


def _mape(predicted, measured, weights):
    err = jnp.abs(predicted / measured - 1.0)
    return jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1e-12)


def _predict_z(z, params, inputs, model_fn, names):
    return model_fn(_with_values(params, names, jnp.exp(z)), inputs)


# The pieces below run inside `_fit_and_summarize`, one jitted function with the model as a
# static argument: a second calibration of the same model on data of the same shapes reuses
# its compiled code.
def _predict_batch(z, params, inputs, model_fn, names):
    return jax.vmap(lambda z_: _predict_z(z_, params, inputs, model_fn, names))(z)


def _gauss_newton(z, params, inputs, measured, model_fn, names):
    """J^T J of the log-ratio residuals at z: the Gauss-Newton Hessian of sum r^2 / 2, which is
    positive semi-definite wherever the fit stopped (the exact Hessian adds sum r H_r, which
    vanishes as the model fits and can make the matrix indefinite away from a minimum), and
    J^T r, the gradient of sum r^2 / 2."""
    residual = lambda z_: _log_ratio(_predict_z(z_, params, inputs, model_fn, names), measured)
    jac = jax.jacfwd(residual)(z)
    return jac.T @ jac, jac.T @ residual(z)


def _loss_z(z, w, params, inputs, measured, z0, inv_prior, model_fn, names):
    """The fitted loss: weighted sum of squared log-ratios (scaled to n rows) / 2 + prior."""
    n = measured.shape[0]
    r = _log_ratio(_predict_z(z, params, inputs, model_fn, names), measured)
    return (0.5 * jnp.sum(w * r**2) / jnp.maximum(jnp.sum(w), 1e-12) * n
            + 0.5 * jnp.sum(inv_prior * (z - z0) ** 2))



def _fit_batch(weights, params, inputs, measured, zlo, zhi, z0, u0, inv_prior, *, model_fn,
               names, steps):
    """Fitted log-parameters for each row of `weights` (vmapped L-BFGS in unconstrained u),
    and each fit's relative loss change over its last tenth of iterations."""
    # A zoom line search (strong Wolfe conditions) keeps every L-BFGS curvature pair positive
    # (Nocedal & Wright 2006, Sec. 3.5 and 6.1); a backtracking (Armijo-only) search does not,
    # and where the sigmoid onto the bounds makes the loss concave in u (a start near a
    # bound) its pairs go negative and the iteration stalls.
    solver = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=20))

    def to_z(u):
        return zlo + (zhi - zlo) * jax.nn.sigmoid(u)

    def fit_z(w):
        def f(u):
            return _loss_z(to_z(u), w, params, inputs, measured, z0, inv_prior, model_fn, names)

        value_and_grad = optax.value_and_grad_from_state(f)

        def step(carry, _):
            u, state, best_u, best_f = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = solver.update(grad, state, u, value=value, grad=grad, value_fn=f)
            # Keep the best finite iterate: a line search that lands on a non-finite loss
            # (a model evaluated outside its domain) never becomes the answer.
            ok = jnp.isfinite(value) & (value <= best_f)
            best_u = jnp.where(ok, u, best_u)
            best_f = jnp.where(ok, value, best_f)
            u = optax.apply_updates(u, updates)
            return (u, state, best_u, best_f), best_f

        init = (u0, solver.init(u0), u0, jnp.asarray(jnp.inf, u0.dtype))
        (u, _, best_u, best_f), history = jax.lax.scan(step, init, None, length=steps)
        last = f(u)
        better = jnp.isfinite(last) & (last <= best_f)
        u = jnp.where(better, u, best_u)
        final = jnp.where(better, last, best_f)
        # Best loss a tenth of the iterations before the end vs the final one.
        before = history[steps - max(1, steps // 10)]
        change = jnp.abs(before - final) / jnp.maximum(jnp.abs(final), 1e-30)
        return to_z(u), change

    if weights.shape[0] == 1:
        # One fit (no bootstrap, no folds): run it unbatched. Under vmap every `cond` of the
        # zoom line search becomes a select of both branches and the loops are batched, which
        # took 1.0 of 1.5 s of tracing for a four-field fit of 48 rows
        # (benchmarks/compile_times.py's `calibrate`).
        z, change = fit_z(weights[0])
        return z[None], change[None]
    return jax.vmap(fit_z)(weights)


@functools.partial(jax.jit, static_argnames=("model_fn", "names", "steps", "n_boot",
                                             "bootstrap_std"))
def _fit_and_summarize(weights, held, params, inputs, measured, zlo, zhi, z0, u0, inv_prior, *,
                       model_fn, names, steps, n_boot, bootstrap_std):
    """Every fit of `calibrate` and what its result reports, as one compiled program.

    Run op by op, the summary (Laplace covariance, folds, error figures) compiled some sixty
    small XLA programs, each costing more to compile than to run (measured: 5.3 s for a
    four-parameter fit of 48 rows, 3.2 s of it in the backend compiler).

    **Arguments:** `weights` (1 + n_boot + folds, n): the fit on all rows, the bootstrap
    replicates, then the cross-validation folds; `held` (folds, n): the rows each fold holds
    out; the rest as `calibrate` prepares them.

    **Returns:** a dict of the `CalibrationResult` fields computed from the fits.
    """
    n, k = measured.shape[0], len(names)
    dtype = measured.dtype
    ones = jnp.ones((n,), dtype)
    # Jitted inside: the model is called at a dozen places (the L-BFGS loss and its line
    # search, the Gauss-Newton Jacobian, the folds' predictions), and a jitted callee is traced
    # once per argument shape and transformed from its jaxpr after that, instead of each call
    # tracing the model's Python again: `tests/test_calibrate.py`'s DP-overlap fit traced in
    # 4.8 s instead of 15.5 (the XLA compile, 12-14 s, is the same program inlined).
    model_fn = jax.jit(model_fn)
    z_all, changes = _fit_batch(weights, params, inputs, measured, zlo, zhi, z0, u0, inv_prior,
                                model_fn=model_fn, names=names, steps=steps)
    z_hat = z_all[0]
    pred_hat = _predict_z(z_hat, params, inputs, model_fn, names)
    hess, jtr = _gauss_newton(z_hat, params, inputs, measured, model_fn, names)
    opt = _at_optimum(z_hat, measured, pred_hat, hess, jtr, zlo, zhi, z0, inv_prior, n, k)
    refits = changes[1:]
    boot = jnp.exp(z_all[1:1 + n_boot])
    std = jnp.std(boot, axis=0, ddof=1) if bootstrap_std else jnp.exp(z_hat) * opt["log_std"]

    n_folds = held.shape[0]
    fold_z = z_all[1 + n_boot:]
    preds = _predict_batch(fold_z, params, inputs, model_fn, names) if n_folds \
        else jnp.zeros((0, n), dtype)
    val_pred = jnp.sum(jnp.where(held, preds, 0.0), axis=0) if n_folds \
        else jnp.full((n,), jnp.nan, dtype)
    nan = jnp.asarray(jnp.nan, dtype)
    return dict(
        value=jnp.exp(z_hat), std=std, log_covariance=opt["log_cov"], bootstrap=boot,
        at_bound=opt["at_bound"],
        before_mape=_mape(_predict_z(z0, params, inputs, model_fn, names), measured, ones),
        train_mape=_mape(pred_hat, measured, ones),
        validation_mape=_mape(val_pred, measured, ones) if n_folds else nan,
        validation_train_mape=jnp.mean(jax.vmap(lambda p, w: _mape(p, measured, w))(
            preds, (~held).astype(dtype))) if n_folds else nan,
        validation_predicted=val_pred, fold_held=held, fold_predicted=preds,
        fold_value=jnp.exp(fold_z) if n_folds else jnp.zeros((0, k), dtype),
        residual_log_std=opt["residual_log_std"],
        converged=(changes[0] <= LOSS_CHANGE_TOL) & (opt["decrement"] <= DECREMENT_TOL),
        loss_change=changes[0], grad_norm=jnp.linalg.norm(opt["grad"]) / n,
        decrement=opt["decrement"],
        refits_converged=jnp.mean(refits <= LOSS_CHANGE_TOL) if refits.shape[0] else nan)


# Search box of each `Calibration` field when `calibrate` fits it and no bound is given: a
# fraction of a peak in (1%, 100%] (of a measured best rate, or a framework's factor on the
# kernel fraction: up to 150%); start-up times from 10 ns to 10 ms (a kernel launch is ~5-10 us
# on current GPUs: three decades either way); latency factors 1/100 to 100 times the stated
# latency; attention's softmax work and exposed I/O over three decades. Search boxes, not
# fitted values.
SEARCH_BOUNDS: dict[str, tuple[float, float]] = {
    "matrix_max": (0.01, 1.5), "matrix_overhead_s": (1e-8, 1e-2),
    "memory_max": (0.01, 1.0), "memory_overhead_s": (1e-8, 1e-2),
    "attention_scale": (0.01, 1.5), "attention_backward_scale": (0.01, 1.5),
    "attention_softmax_dim": (0.1, 1e3), "attention_forward_io": (1e-3, 1e2),
    "attention_backward_io": (1e-3, 1e2), "kernel_fraction": (0.3, 1.0),
    "link_efficiency": (0.01, 1.0), "scaleout_efficiency": (0.3, 1.0),
    "latency_scale": (0.01, 100.0), "collective_latency": (1e-7, 1e-4),
    # Above ~29 MB the LLMCompass all-reduce would imply a link efficiency over 1.
    "pipeline_overhead_bytes": (1e2, 1e7),
    "dp_overlap_fraction": (0.01, 1.0), "framework_scale": (0.5, 1.5),
}


def selected_names(params: Any, fit: Callable[[Any], Any] | Sequence[str] | None) -> tuple:
    """Dotted names of the leaves `fit` selects.

    **Arguments:**

    - `params`: the parameter pytree (e.g. a `Calibration`).
    - `fit`: None (every leaf), a sequence of dotted names, or an equinox-style filter: a
      function of the pytree returning the nodes to fit (`lambda c: (c.link_efficiency,
      c.latency_scale["nvlink"])`); every leaf under a returned node is fitted.

    **Returns:** the names, in the pytree's leaf order.
    """
    all_names = param_names(params)
    if fit is None:
        return tuple(all_names)
    if callable(fit):
        # Mark every leaf with a unique object; the nodes `fit` picks carry the marks to find.
        marks = jax.tree.map(lambda _: object(), params)
        chosen = {id(m) for m in jax.tree.leaves(fit(marks))}
        names = tuple(n for n, m in zip(all_names, jax.tree.leaves(marks), strict=True)
                      if id(m) in chosen)
        if not names:
            raise ValueError("calibrate: the fit filter selects no parameter")
        return names
    names = tuple(fit)
    unknown = sorted(set(names) - set(all_names))
    if unknown:
        raise ValueError(f"calibrate: fit names {unknown} are not parameters; the parameters "
                         f"are {all_names}")
    return names


def _field_of(name: str) -> str:
    return name.split(".")[0]


def _search_box(names, p0, bounds):
    """(low, high) arrays of the fitted parameters, checked against their starting values."""
    bounds = dict(bounds or {})
    bad = sorted(set(bounds) - set(names))
    if bad:
        raise ValueError(f"calibrate: bounds given for {bad}, which are not fitted ({names})")
    box = [bounds.get(n, SEARCH_BOUNDS.get(_field_of(n), (p / 100.0, p * 100.0)))
           for n, p in zip(names, p0, strict=True)]
    lo = np.array([b[0] for b in box], dtype=float)
    hi = np.array([b[1] for b in box], dtype=float)
    for n, a, b, p in zip(names, lo, hi, p0, strict=True):
        if not (0 < a < b) or not (a <= p <= b):
            raise ValueError(f"calibrate: bounds of {n} must satisfy 0 < low <= start <= high; "
                             f"got low={a}, start={p}, high={b}")
    return lo, hi


def _inverse_prior(names, prior_log_std) -> np.ndarray:
    """1 / s^2 of the Gaussian prior on each log-parameter (0: no prior)."""
    if prior_log_std is None:
        prior = {}
    elif isinstance(prior_log_std, Mapping):
        prior = dict(prior_log_std)
        bad = sorted(set(prior) - set(names))
        if bad:
            raise ValueError(f"calibrate: prior_log_std given for {bad}, which are not fitted "
                             f"({names})")
    else:
        prior = dict.fromkeys(names, prior_log_std)
    for name, sd in prior.items():
        if not (math.isfinite(float(sd)) and float(sd) > 0):
            raise ValueError(f"calibrate: prior_log_std of {name} must be finite and > 0; "
                             f"got {sd}")
    return np.array([1.0 / float(prior[n]) ** 2 if n in prior else 0.0 for n in names])


def _check_options(data, validation, uncertainty, resample) -> None:
    if validation not in ("source", "kfold", "none"):
        raise ValueError(f"calibrate: validation must be 'source', 'kfold' or 'none'; got "
                         f"{validation!r}")
    if validation == "source" and len(np.unique(np.asarray(data.group))) < 2:
        raise ValueError(f"calibrate: validation='source' needs rows from at least 2 sources; "
                         f"got {data.sources}; use validation='kfold'")
    if uncertainty not in ("laplace", "bootstrap", "both"):
        raise ValueError(f"calibrate: uncertainty must be 'laplace', 'bootstrap' or 'both'; "
                         f"got {uncertainty!r}")
    if resample not in ("source", "row"):
        raise ValueError(f"calibrate: resample must be 'source' or 'row'; got {resample!r}")


def _held_out_folds(data: Measurements, validation, folds, key) -> np.ndarray:
    """(folds, n) True for the rows each validation fold holds out ((0, n) for "none")."""
    n = data.n
    if validation == "none":
        return np.zeros((0, n), bool)
    if validation == "source":
        fold_of_row = np.asarray(data.group)
    else:
        n_folds = min(int(folds), n)
        perm = np.asarray(jax.random.permutation(key, n))
        fold_of_row = np.empty(n, int)
        fold_of_row[perm] = np.arange(n) % n_folds
    return np.stack([fold_of_row == f for f in np.unique(fold_of_row)])


def _at_optimum(z_hat, measured, pred_hat, hess, jtr, zlo, zhi, z0, inv_prior, n, k):
    """Laplace uncertainty, bound flags and convergence figures of the fit on all rows."""
    r = _log_ratio(pred_hat, measured)
    sigma2 = jnp.sum(r**2) / max(n - k, 1)
    # The fitted loss is sigma^2 times the negative log posterior (residuals of std sigma, the
    # prior's std in units of sigma: `calibrate`'s `prior_log_std`), so its Gauss-Newton
    # Hessian over sigma^2 is the posterior precision: the prior's term is scaled with the
    # data's (added unscaled, a prior of 0.1 / sigma in sigma's units counted as 0.1 / sigma in
    # log units: the training fit's kernel fraction read 0.80 +- 0.47 for one of +- 0.04).
    log_cov, unconstrained = _laplace_covariance((hess + jnp.diag(inv_prior)) / sigma2)
    log_std = jnp.where(unconstrained, jnp.inf, jnp.sqrt(jnp.clip(jnp.diag(log_cov), 0.0)))
    # At a bound the minimum need not be stationary: flagged, and its error is one-sided.
    # The sigmoid only approaches a bound, so "at" is within AT_BOUND of the log-box width.
    width = zhi - zlo
    at_lo = z_hat - zlo < AT_BOUND * width
    at_hi = zhi - z_hat < AT_BOUND * width
    # The decrease one more Gauss-Newton step on the projected gradient would give.
    loss = 0.5 * jnp.sum(r**2) + 0.5 * jnp.sum(inv_prior * (z_hat - z0) ** 2)
    grad = jtr + inv_prior * (z_hat - z0)
    grad = jnp.where((at_lo & (grad > 0)) | (at_hi & (grad < 0)), 0.0, grad)
    gn = hess + jnp.diag(inv_prior)
    step_z = jnp.linalg.pinv(0.5 * (gn + gn.T), hermitian=True) @ grad
    decrement = 0.5 * jnp.dot(grad, step_z) / jnp.maximum(loss, 1e-30)
    return dict(log_cov=log_cov, log_std=log_std, at_bound=at_lo | at_hi, grad=grad,
                decrement=decrement, residual_log_std=jnp.sqrt(jnp.sum(r**2) / n))


def calibrate(model_fn: Callable[[Any, Any], Float[Array, " n"]], params: Any,
              data: Measurements, *, fit: Callable[[Any], Any] | Sequence[str] | None = None,
              bounds: Mapping[str, tuple[float, float]] | None = None,
              validation: Validation = "source", folds: int = 5,
              uncertainty: Uncertainty = "laplace", n_bootstrap: int = 64,
              resample: Resample = "source",
              prior_log_std: float | Mapping[str, float] | None = None, steps: int = 300,
              key: PRNGKeyArray | None = None) -> CalibrationResult:
    """Fit positive parameters of `model_fn` to measured rows, in log space, with bounds.

    **Arguments:**

    - `model_fn`: `model_fn(params, data.inputs) -> predicted` (shape (n,), same units as
      `data.measured`); pure JAX, differentiable in `params`.
    - `params`: the parameters at their starting values, usually a `dse.models.Calibration`
      (any pytree of positive scalars works).
    - `data`: the `Measurements`.
    - `fit`: which leaves to fit: an equinox-style filter (`fit=lambda c: (c.link_efficiency,
      c.latency_scale)`), a sequence of dotted names, or None for all; the others are held.
    - `bounds`: {name: (low, high)} in parameter units (default `SEARCH_BOUNDS` of the field,
      else 1/100 to 100 times the starting value).
    - `validation`: "source" (leave one source out), "kfold" (`folds` random folds of rows) or
      "none".
    - `uncertainty`: "laplace" (Hessian of the loss at the optimum), "bootstrap"
      (`n_bootstrap` refits on resampled data, vmapped) or "both".
    - `resample`: what the bootstrap draws with replacement: "source" (whole sources, the
      clusters of `data.group`; needs >= 2 sources) or "row" (single rows).
    - `prior_log_std`: std of a Gaussian prior on each log-parameter around its starting
      value, in units of the residual log std (the loss adds sum (z - z0)^2 / (2 std^2) to
      sum r^2 / 2; a prior of s in log units is s / sigma here, as
      `dse.calibration.fit_training_constants` passes it): one float for all, or {name: std}
      for some (None: no prior).
    - `steps`: L-BFGS iterations of each fit (`CalibrationResult.converged` says whether they
      were enough).
    - `key`: `jax.random` key for the folds and the bootstrap (default `PRNGKey(0)`).

    **Returns:** a `CalibrationResult` whose `params` is `params` with the fitted leaves set.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    names = selected_names(params, fit)
    leaves = dict(zip(param_names(params), jax.tree.leaves(params), strict=True))
    p0 = np.array([float(leaves[n]) for n in names])
    if np.any(~np.isfinite(p0)) or np.any(p0 <= 0):
        raise ValueError(f"calibrate: starting values must be finite and > 0; got "
                         f"{dict(zip(names, p0, strict=True))}")
    lo, hi = _search_box(names, p0, bounds)
    _check_options(data, validation, uncertainty, resample)
    dtype = jnp.result_type(float)
    zlo, zhi = jnp.asarray(np.log(lo), dtype), jnp.asarray(np.log(hi), dtype)
    z0 = jnp.asarray(np.log(p0), dtype)
    inv_prior = jnp.asarray(_inverse_prior(names, prior_log_std), dtype)
    measured = jnp.asarray(data.measured, dtype)
    n = data.n
    span = np.clip((np.log(p0) - np.log(lo)) / (np.log(hi) - np.log(lo)), 1e-3, 1 - 1e-3)
    u0 = jnp.asarray(np.log(span / (1.0 - span)), dtype)
    static = dict(model_fn=model_fn, names=names)
    ones = jnp.ones((n,), dtype)

    # Every fit (all rows, bootstrap replicates, cross-validation folds) is one row of
    # weights, so one vmapped, jitted call (one compilation) runs them all.
    key_fold, key_boot = jax.random.split(key)
    n_boot = n_bootstrap if uncertainty in ("bootstrap", "both") else 0
    held = _held_out_folds(data, validation, folds, key_fold)
    weights = [ones[None, :]]
    if n_boot:
        weights.append(bootstrap_weights(key_boot, data.group, n_boot, resample).astype(dtype))
    weights.append(jnp.asarray(~held, dtype))
    # `Calibration.provenance` is static (part of the compiled program's key) and takes no part
    # in the arithmetic: fits of calibrations that differ only in it (any `.replace`) share one
    # compilation. The result keeps `params`' own provenance.
    traced = params.replace(provenance=()) if isinstance(params, Calibration) else params
    out = _fit_and_summarize(jnp.concatenate(weights, axis=0), jnp.asarray(held), traced,
                             data.inputs, measured, zlo, zhi, z0, u0, inv_prior,
                             steps=int(steps), n_boot=n_boot,
                             bootstrap_std=uncertainty == "bootstrap", **static)
    return CalibrationResult(
        params=_with_values(params, names, out["value"]), names=names, **out,
        n_rows=n, validation=validation, sources=tuple(data.sources),
        description=data.description, resample=resample if n_boot else "none")
