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
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

Validation = Literal["source", "kfold", "none"]
Uncertainty = Literal["laplace", "bootstrap", "both"]
Resample = Literal["source", "row"]

# Smallest modelled value the log-ratio accepts: a model that returns 0 for a positive
# measurement gets a large finite residual instead of -inf (and a zero, not NaN, gradient).
_TINY = 1e-30
_FORMAT = 1  # version of the JSON written by `CalibrationResult.save`
# Convergence tolerances (`CalibrationResult.converged`): relative loss change over the last
# tenth of the iterations, and the relative decrease a further Gauss-Newton step predicts.
# float32 resolves a relative change of ~1e-7; both tolerances sit well above it.
LOSS_CHANGE_TOL = 1e-4
DECREMENT_TOL = 1e-3
# A fitted value within this fraction of its log-box width of a bound is flagged `at_bound`.
AT_BOUND = 1e-2


class Measurements(eqx.Module):
    """Measured rows to calibrate against, and what a model needs to predict them.

    **Fields:**

    - `inputs`: any pytree of arrays with a leading row axis (n); `model_fn(params, inputs)`
      must return the n predicted values.
    - `measured`: the n measured values (positive; seconds, or any positive metric in the units
      the model returns).
    - `group`: integer source index of each row (leave-one-source-out folds), shape (n,).
    - `sources` (static): name of each source, `sources[group[i]]`.
    - `features`: optional (n, f) array of row features for the learned residual
      (`dse.fit_residual`); `None` if unused.
    - `description` (static): what the data is and where it comes from (saved with a result).
    """

    inputs: Any
    measured: Float[Array, " n"]
    group: Int[Array, " n"]
    sources: tuple[str, ...] = eqx.field(static=True)
    features: Float[Array, "n f"] | None = None
    description: str = eqx.field(static=True, default="")

    def __check_init__(self):
        measured = np.asarray(self.measured)
        if measured.ndim != 1 or measured.size == 0:
            raise ValueError(f"Measurements.measured must be a non-empty 1-D array; got shape "
                             f"{measured.shape}")
        if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
            raise ValueError(f"Measurements.measured must be finite and > 0; got "
                             f"{measured[~(np.isfinite(measured) & (measured > 0))][:5]}")
        group = np.asarray(self.group)
        if group.shape != measured.shape:
            raise ValueError(f"Measurements.group must have shape {measured.shape}; got "
                             f"{group.shape}")
        if group.min() < 0 or group.max() >= len(self.sources):
            raise ValueError(f"Measurements.group must index sources (0..{len(self.sources) - 1})"
                             f"; got range {group.min()}..{group.max()}")
        for leaf in jax.tree.leaves(self.inputs):
            if np.shape(leaf)[:1] != measured.shape:
                raise ValueError(f"Measurements.inputs leaves need a leading row axis of "
                                 f"{measured.size}; got a leaf of shape {np.shape(leaf)}")
        if self.features is not None and np.shape(self.features)[:1] != measured.shape:
            raise ValueError(f"Measurements.features must have {measured.size} rows; got shape "
                             f"{np.shape(self.features)}")

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(np.shape(self.measured)[0])

    def subset(self, rows) -> Measurements:
        """The rows selected by an index or boolean array (same sources)."""
        rows = np.asarray(rows)
        take = lambda x: jnp.asarray(x)[rows]
        return Measurements(jax.tree.map(take, self.inputs), take(self.measured),
                            take(self.group), self.sources,
                            None if self.features is None else take(self.features),
                            self.description)


def param_names(params) -> list[str]:
    """Dotted names of the leaves of a parameter pytree ("matrix_max", "eff.memory_max")."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return [_path_name(p) for p, _ in paths]


def _path_name(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    return ".".join(parts)


class CalibrationResult(eqx.Module):
    """Fitted parameters, their uncertainty and the fit's train / validation error.

    Values and standard errors are in the parameters' own units; the covariance is of the
    natural-log parameters (log-normal uncertainty, so samples stay positive).

    **Fields:**

    - `params`: the fitted parameter pytree (same structure as the one given to `calibrate`).
    - `names` (static): dotted names of the fitted leaves (the order of the arrays below).
    - `value`: fitted values, shape (k,).
    - `std`: standard errors, shape (k,) (delta method: value * std of log value); from the
      bootstrap when `uncertainty="bootstrap"`, else Laplace.
    - `log_covariance`: (k, k) Laplace covariance of log values.
    - `bootstrap`: (b, k) bootstrap replicates of the values (b = 0 without bootstrap).
    - `at_bound`: (k,) True where a value sits at its bound, within `AT_BOUND` of the
      log-box width (its uncertainty is one-sided); `bound_names` lists them by name.
    - `before_mape`, `train_mape`: mean |predicted / measured - 1| of all rows at the starting
      and the fitted parameters.
    - `validation_mape`: the same for every row predicted by a fit that did not see it
      (NaN with `validation="none"`); `validation_train_mape`: mean over folds of the error on
      the folds' own training rows.
    - `validation_predicted`: (n,) held-out prediction of each row.
    - `fold_held`: (folds, n) True for the rows each validation fold held out;
      `fold_predicted`: (folds, n) every row predicted by each fold's fit (both (0, n) with
      `validation="none"` or after `load_calibration`). `dse.fit_residual` validates on them.
    - `fold_value`: (folds, k) the fitted values of each validation fold ((0, k) likewise).
    - `residual_log_std`: sigma, the std of the log-ratio residuals at the fit.
    - `converged`: True when the fit on all rows has converged: `loss_change` <=
      `LOSS_CHANGE_TOL` and `decrement` <= `DECREMENT_TOL` (module docstring).
    - `loss_change`: relative change of the loss over the last tenth of the iterations.
    - `grad_norm`: 2-norm of the projected gradient of the mean loss (per row) in the
      log-parameters at the fit.
    - `decrement`: the loss decrease one more Gauss-Newton step predicts, relative to the loss.
    - `refits_converged`: fraction of the bootstrap and validation refits whose loss changed
      by <= `LOSS_CHANGE_TOL` over their last tenth of iterations (NaN without refits).
    - `resample` (static): what the bootstrap resampled ("source" or "row"; "none" without a
      bootstrap).
    - `n_rows` (static), `validation` (static), `sources` (static), `description` (static):
      what was fitted to.
    """

    params: Any
    names: tuple[str, ...] = eqx.field(static=True)
    value: Float[Array, " k"]
    std: Float[Array, " k"]
    log_covariance: Float[Array, "k k"]
    bootstrap: Float[Array, "b k"]
    at_bound: Array
    before_mape: Float[Array, ""]
    train_mape: Float[Array, ""]
    validation_mape: Float[Array, ""]
    validation_train_mape: Float[Array, ""]
    validation_predicted: Float[Array, " n"]
    fold_held: Array
    fold_predicted: Float[Array, "folds n"]
    fold_value: Float[Array, "folds k"]
    residual_log_std: Float[Array, ""]
    converged: Array
    loss_change: Float[Array, ""]
    grad_norm: Float[Array, ""]
    decrement: Float[Array, ""]
    refits_converged: Float[Array, ""]
    n_rows: int = eqx.field(static=True)
    validation: str = eqx.field(static=True)
    sources: tuple[str, ...] = eqx.field(static=True)
    description: str = eqx.field(static=True)
    resample: str = eqx.field(static=True, default="source")

    @property
    def bound_names(self) -> tuple[str, ...]:
        """Names of the fitted parameters that sit on a bound (their error is one-sided)."""
        return tuple(n for n, b in zip(self.names, np.asarray(self.at_bound), strict=True) if b)

    def convergence_report(self) -> str:
        """One line: converged or not, the end-of-fit figures, the parameters on a bound."""
        bound = ", ".join(self.bound_names) or "none"
        refits = float(self.refits_converged)
        refit = "" if math.isnan(refits) else f", refits converged {100 * refits:.0f}%"
        return (f"converged={bool(self.converged)} (loss change {float(self.loss_change):.1e}, "
                f"Gauss-Newton decrement {float(self.decrement):.1e}, projected gradient "
                f"{float(self.grad_norm):.1e}{refit}); at a bound: {bound}")

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """{name: (value, std)} of the fitted parameters."""
        return {n: (float(v), float(s))
                for n, v, s in zip(self.names, self.value, self.std, strict=True)}

    def sample(self, key: PRNGKeyArray, n: int, method: Literal["laplace", "bootstrap"] =
               "laplace"):
        """`n` draws of the parameter pytree (leading axis n on every fitted leaf).

        **Arguments:**

        - `key`: a `jax.random` key.
        - `n`: number of samples.
        - `method`: "laplace" (log-normal around the fit with `log_covariance`; a parameter
          the data do not constrain, std inf, is held at its value) or "bootstrap"
          (replicates drawn with replacement).

        **Returns:** the parameter pytree with leaves of shape (n,) (unfitted leaves repeated).
        """
        if method == "bootstrap":
            if self.bootstrap.shape[0] == 0:
                raise ValueError("CalibrationResult.sample: method='bootstrap' needs a result "
                                 "calibrated with uncertainty='bootstrap' or 'both'")
            idx = jax.random.randint(key, (n,), 0, self.bootstrap.shape[0])
            z = jnp.log(self.bootstrap[idx])
        else:
            chol = _psd_cholesky(self.log_covariance)
            eps = jax.random.normal(key, (n, len(self.names)), self.value.dtype)
            z = jnp.log(self.value)[None, :] + eps @ chol.T
        return _with_values(self.params, self.names, jnp.exp(z), batch=n)

    def save(self, path: str | os.PathLike) -> None:
        """Write the result to a JSON file (values, uncertainty, errors, data description)."""
        all_names = param_names(self.params)
        leaves = jax.tree.leaves(self.params)
        doc = {
            "format": _FORMAT,
            "description": self.description,
            "sources": list(self.sources),
            "n_rows": self.n_rows,
            "validation": self.validation,
            "params": {n: float(v) for n, v in zip(all_names, leaves, strict=True)},
            "fitted": list(self.names),
            "value": _floats(self.value),
            "std": _floats(self.std),
            "log_covariance": [_floats(r) for r in self.log_covariance],
            "bootstrap": [_floats(r) for r in self.bootstrap],
            "at_bound": [bool(b) for b in np.asarray(self.at_bound)],
            "errors": {k: _float(getattr(self, k)) for k in (
                "before_mape", "train_mape", "validation_mape", "validation_train_mape",
                "residual_log_std")},
            "convergence": {"converged": bool(self.converged),
                            **{k: _float(getattr(self, k)) for k in (
                                "loss_change", "grad_norm", "decrement", "refits_converged")}},
            "resample": self.resample,
            "validation_predicted": _floats(self.validation_predicted),
        }
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, path)


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(a) -> list:
    return [_float(x) for x in np.asarray(a).ravel()]


def _unfloat(xs) -> np.ndarray:
    return np.asarray([np.nan if x is None else x for x in xs], dtype=float)


def load_calibration(path: str | os.PathLike, like=None) -> CalibrationResult:
    """Read a `CalibrationResult` written by `CalibrationResult.save`.

    **Arguments:**

    - `path`: the JSON file.
    - `like`: a parameter pytree of the calibrated structure (e.g. `default_efficiency()`);
      its leaves are replaced by the stored values. Without it `params` is a flat
      {dotted name: value} dict.

    **Returns:** the `CalibrationResult`.
    """
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != _FORMAT:
        raise ValueError(f"load_calibration: {path} has format {doc.get('format')}; "
                         f"this dse reads format {_FORMAT}")
    stored = doc["params"]
    if like is None:
        params = {k: jnp.asarray(v) for k, v in stored.items()}
    else:
        names = param_names(like)
        missing = sorted(set(names) - set(stored))
        if missing:
            raise ValueError(f"load_calibration: {path} has no value for {missing}")
        leaves, treedef = jax.tree.flatten(like)
        params = jax.tree.unflatten(treedef, [
            jnp.asarray(stored[n], dtype=jnp.result_type(leaf))
            for n, leaf in zip(names, leaves, strict=True)])
    k = len(doc["fitted"])
    boot = np.asarray([_unfloat(r) for r in doc["bootstrap"]]).reshape(-1, k)
    errors = {key: (np.nan if v is None else v) for key, v in doc["errors"].items()}
    # Files written before the convergence figures existed read as "not known".
    conv = {key: (np.nan if v is None else v) for key, v in doc.get("convergence", {}).items()}
    return CalibrationResult(
        params=params, names=tuple(doc["fitted"]), value=jnp.asarray(_unfloat(doc["value"])),
        std=jnp.asarray(_unfloat(doc["std"])),
        log_covariance=jnp.asarray(np.asarray([_unfloat(r) for r in doc["log_covariance"]])
                                   .reshape(k, k)),
        bootstrap=jnp.asarray(boot), at_bound=jnp.asarray(doc["at_bound"], dtype=bool),
        before_mape=jnp.asarray(errors["before_mape"]),
        train_mape=jnp.asarray(errors["train_mape"]),
        validation_mape=jnp.asarray(errors["validation_mape"]),
        validation_train_mape=jnp.asarray(errors["validation_train_mape"]),
        validation_predicted=jnp.asarray(_unfloat(doc["validation_predicted"])),
        fold_held=jnp.zeros((0, int(doc["n_rows"])), bool),
        fold_predicted=jnp.zeros((0, int(doc["n_rows"]))), fold_value=jnp.zeros((0, k)),
        residual_log_std=jnp.asarray(errors["residual_log_std"]),
        converged=jnp.asarray(bool(conv.get("converged", False))),
        loss_change=jnp.asarray(conv.get("loss_change", np.nan)),
        grad_norm=jnp.asarray(conv.get("grad_norm", np.nan)),
        decrement=jnp.asarray(conv.get("decrement", np.nan)),
        refits_converged=jnp.asarray(conv.get("refits_converged", np.nan)),
        n_rows=int(doc["n_rows"]), validation=doc["validation"], sources=tuple(doc["sources"]),
        description=doc["description"], resample=doc.get("resample", "row"))


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


def _psd_cholesky(cov):
    """A factor L with L L^T = cov for a symmetric PSD matrix (eigen-decomposition, so a
    singular or inf-free but ill-conditioned covariance still factors)."""
    w, v = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return v * jnp.sqrt(jnp.clip(w, 0.0, None))[None, :]


def _with_values(params, names, values, batch: int | None = None):
    """`params` with the named leaves replaced by `values[..., i]` (others broadcast)."""
    all_names = param_names(params)
    leaves, treedef = jax.tree.flatten(params)
    index = {n: i for i, n in enumerate(names)}
    new = []
    for n, leaf in zip(all_names, leaves, strict=True):
        if n in index:
            new.append(values[..., index[n]].astype(jnp.result_type(leaf)))
        elif batch is not None:
            new.append(jnp.broadcast_to(jnp.asarray(leaf), (batch,) + jnp.shape(leaf)))
        else:
            new.append(leaf)
    return jax.tree.unflatten(treedef, new)


def _log_ratio(predicted, measured):
    ok = predicted > _TINY
    return jnp.where(ok, jnp.log(jnp.where(ok, predicted, 1.0)), jnp.log(_TINY)) - jnp.log(
        measured)


def _mape(predicted, measured, weights):
    err = jnp.abs(predicted / measured - 1.0)
    return jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1e-12)


def _predict_z(z, params, inputs, model_fn, names):
    return model_fn(_with_values(params, names, jnp.exp(z)), inputs)


# Module-level jitted kernels with the model as a static argument: a second calibration of the
# same model on data of the same shapes reuses the compiled code.
_predict = jax.jit(_predict_z, static_argnames=("model_fn", "names"))


@functools.partial(jax.jit, static_argnames=("model_fn", "names"))
def _predict_batch(z, params, inputs, model_fn, names):
    return jax.vmap(lambda z_: _predict_z(z_, params, inputs, model_fn, names))(z)


@functools.partial(jax.jit, static_argnames=("model_fn", "names"))
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



@functools.partial(jax.jit, static_argnames=("model_fn", "names", "steps"))
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

    return jax.vmap(fit_z)(weights)


def calibrate(model_fn: Callable[[Any, Any], Float[Array, " n"]], params: Any,
              data: Measurements, *, fit: Sequence[str] | None = None,
              bounds: Mapping[str, tuple[float, float]] | None = None,
              validation: Validation = "source", folds: int = 5,
              uncertainty: Uncertainty = "laplace", n_bootstrap: int = 64,
              resample: Resample = "source",
              prior_log_std: float | Mapping[str, float] | None = None, steps: int = 300,
              key: PRNGKeyArray | None = None) -> CalibrationResult:
    """Fit the positive parameters of `model_fn` to measured rows, in log space, with bounds.

    **Arguments:**

    - `model_fn`: `model_fn(params, data.inputs) -> predicted` (shape (n,), same units as
      `data.measured`); pure JAX, differentiable in `params`.
    - `params`: pytree of positive scalar parameters at their current (default) values; the
      fit starts there.
    - `data`: the `Measurements`.
    - `fit`: dotted names of the leaves to fit (default: all); the others are held.
    - `bounds`: {name: (low, high)} in parameter units (default: 1/100 to 100 times the
      starting value). A fraction of peak is bounded by (low, 1.0).
    - `validation`: "source" (leave one source out), "kfold" (`folds` random folds of rows) or
      "none".
    - `uncertainty`: "laplace" (Hessian of the loss at the optimum), "bootstrap"
      (`n_bootstrap` refits on resampled data, vmapped) or "both".
    - `resample`: what the bootstrap draws with replacement: "source" (whole sources, the
      clusters of `data.group`: every row of a drawn source gets its weight; needs >= 2
      sources) or "row" (single rows, which treats rows of one source as independent).
    - `prior_log_std`: std of a Gaussian prior on each log-parameter around its starting
      value: one float for all, or {name: std} for some (None: no prior). Keeps parameters
      that the data do not constrain at their starting values, with a finite uncertainty.
    - `steps`: L-BFGS iterations of each fit (`CalibrationResult.converged` says whether they
      were enough).
    - `key`: `jax.random` key for the folds and the bootstrap (default `PRNGKey(0)`).

    **Returns:** a `CalibrationResult`.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    all_names = param_names(params)
    names = tuple(all_names if fit is None else fit)
    unknown = sorted(set(names) - set(all_names))
    if unknown:
        raise ValueError(f"calibrate: fit names {unknown} are not parameters; the parameters "
                         f"are {all_names}")
    leaves = dict(zip(all_names, jax.tree.leaves(params), strict=True))
    p0 = np.array([float(leaves[n]) for n in names])
    if np.any(~np.isfinite(p0)) or np.any(p0 <= 0):
        raise ValueError(f"calibrate: starting values must be finite and > 0; got "
                         f"{dict(zip(names, p0, strict=True))}")
    bounds = dict(bounds or {})
    bad = sorted(set(bounds) - set(names))
    if bad:
        raise ValueError(f"calibrate: bounds given for {bad}, which are not fitted ({names})")
    box = [bounds.get(n, (p / 100.0, p * 100.0)) for n, p in zip(names, p0, strict=True)]
    lo = np.array([b[0] for b in box])
    hi = np.array([b[1] for b in box])
    for n, a, b, p in zip(names, lo, hi, p0, strict=True):
        if not (0 < a < b) or not (a <= p <= b):
            raise ValueError(f"calibrate: bounds of {n} must satisfy 0 < low <= start <= high; "
                             f"got low={a}, start={p}, high={b}")
    if validation not in ("source", "kfold", "none"):
        raise ValueError(f"calibrate: validation must be 'source', 'kfold' or 'none'; got "
                         f"{validation!r}")
    if validation == "source" and len(np.unique(np.asarray(data.group))) < 2:
        raise ValueError(f"calibrate: validation='source' needs rows from at least 2 sources; "
                         f"got {data.sources}; use validation='kfold'")
    if uncertainty not in ("laplace", "bootstrap", "both"):
        raise ValueError(f"calibrate: uncertainty must be 'laplace', 'bootstrap' or 'both'; "
                         f"got {uncertainty!r}")
    dtype = jnp.result_type(float)
    zlo, zhi = jnp.asarray(np.log(lo), dtype), jnp.asarray(np.log(hi), dtype)
    z0 = jnp.asarray(np.log(p0), dtype)
    measured = jnp.asarray(data.measured, dtype)
    n, k = data.n, len(names)
    if resample not in ("source", "row"):
        raise ValueError(f"calibrate: resample must be 'source' or 'row'; got {resample!r}")
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
    inv_prior_np = np.array([1.0 / float(prior[n]) ** 2 if n in prior else 0.0 for n in names])
    inv_prior = jnp.asarray(inv_prior_np, dtype)

    span = np.clip((np.log(p0) - np.log(lo)) / (np.log(hi) - np.log(lo)), 1e-3, 1 - 1e-3)
    u0 = jnp.asarray(np.log(span / (1.0 - span)), dtype)
    static = dict(model_fn=model_fn, names=names)
    predict = lambda z: _predict(z, params, data.inputs, **static)
    predict_batch = lambda z: _predict_batch(z, params, data.inputs, **static)
    ones = jnp.ones((n,), dtype)

    # Every fit (all rows, bootstrap replicates, cross-validation folds) is one row of
    # weights, so one vmapped, jitted call (one compilation) runs them all.
    key_fold, key_boot = jax.random.split(key)
    weights = [ones[None, :]]
    n_boot = n_bootstrap if uncertainty in ("bootstrap", "both") else 0
    if n_boot:
        weights.append(bootstrap_weights(key_boot, data.group, n_boot, resample).astype(dtype))
    held = np.zeros((0, n), bool)
    if validation != "none":
        if validation == "source":
            fold_of_row = np.asarray(data.group)
        else:
            n_folds = min(int(folds), n)
            perm = np.asarray(jax.random.permutation(key_fold, n))
            fold_of_row = np.empty(n, int)
            fold_of_row[perm] = np.arange(n) % n_folds
        held = np.stack([fold_of_row == f for f in np.unique(fold_of_row)])  # (folds, n)
        weights.append(jnp.asarray(~held, dtype))
    z_all, changes = _fit_batch(jnp.concatenate(weights, axis=0), params, data.inputs, measured,
                                zlo, zhi, z0, u0, inv_prior, steps=int(steps), **static)

    z_hat = z_all[0]
    pred_hat = predict(z_hat)
    r = _log_ratio(pred_hat, measured)
    sigma2 = jnp.sum(r**2) / max(n - k, 1)
    hess, jtr = _gauss_newton(z_hat, params, data.inputs, measured, **static)
    precision = hess / sigma2 + jnp.diag(inv_prior)
    log_cov, unconstrained = _laplace_covariance(precision)
    log_std = jnp.where(unconstrained, jnp.inf, jnp.sqrt(jnp.clip(jnp.diag(log_cov), 0.0)))
    # At a bound the minimum need not be stationary: flagged, and its error is one-sided.
    # The sigmoid only approaches a bound, so "at" is within AT_BOUND of the log-box width.
    width = zhi - zlo
    at_lo = z_hat - zlo < AT_BOUND * width
    at_hi = zhi - z_hat < AT_BOUND * width
    at_bound = at_lo | at_hi

    # Convergence of the fit on all rows: loss change at the end, and the decrease one more
    # Gauss-Newton step on the projected gradient would give (both relative to the loss).
    loss = 0.5 * jnp.sum(r**2) + 0.5 * jnp.sum(inv_prior * (z_hat - z0) ** 2)
    grad = jtr + inv_prior * (z_hat - z0)
    grad = jnp.where((at_lo & (grad > 0)) | (at_hi & (grad < 0)), 0.0, grad)
    gn = hess + jnp.diag(inv_prior)
    step_z = jnp.linalg.pinv(0.5 * (gn + gn.T), hermitian=True) @ grad
    scale = jnp.maximum(loss, 1e-30)
    decrement = 0.5 * jnp.dot(grad, step_z) / scale
    loss_change = changes[0]
    converged = (loss_change <= LOSS_CHANGE_TOL) & (decrement <= DECREMENT_TOL)
    refits = changes[1:]
    refits_converged = (jnp.mean(refits <= LOSS_CHANGE_TOL) if refits.shape[0]
                        else jnp.asarray(jnp.nan, dtype))

    boot = jnp.exp(z_all[1:1 + n_boot])
    std = jnp.exp(z_hat) * log_std
    if uncertainty == "bootstrap":
        std = jnp.std(boot, axis=0, ddof=1)

    val_pred = jnp.full((n,), jnp.nan, dtype)
    preds = jnp.zeros((0, n), dtype)
    val_mape = jnp.asarray(jnp.nan, dtype)
    val_train = jnp.asarray(jnp.nan, dtype)
    if validation != "none":
        train_w = jnp.asarray(~held, dtype)
        preds = predict_batch(z_all[1 + n_boot:])  # (folds, n)
        val_pred = jnp.sum(jnp.where(jnp.asarray(held), preds, 0.0), axis=0)
        val_mape = _mape(val_pred, measured, ones)
        val_train = jnp.mean(jax.vmap(lambda p, w: _mape(p, measured, w))(preds, train_w))

    fitted_params = _with_values(params, names, jnp.exp(z_hat))
    return CalibrationResult(
        params=fitted_params, names=names, value=jnp.exp(z_hat), std=std, log_covariance=log_cov,
        bootstrap=boot, at_bound=at_bound, before_mape=_mape(predict(z0), measured, ones),
        train_mape=_mape(pred_hat, measured, ones), validation_mape=val_mape,
        validation_train_mape=val_train, validation_predicted=val_pred,
        fold_held=jnp.asarray(held), fold_predicted=preds,
        fold_value=jnp.exp(z_all[1 + n_boot:]) if validation != "none" else jnp.zeros((0, k)),
        residual_log_std=jnp.sqrt(jnp.sum(r**2) / n), converged=converged,
        loss_change=loss_change, grad_norm=jnp.linalg.norm(grad) / n, decrement=decrement,
        refits_converged=refits_converged, n_rows=n, validation=validation,
        sources=tuple(data.sources), description=data.description,
        resample=resample if n_boot else "none")


def bootstrap_weights(key: PRNGKeyArray, group, n_bootstrap: int,
                      resample: Resample = "source") -> Int[Array, "b n"]:
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
