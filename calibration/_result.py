"""`CalibrationResult`: fitted values with their uncertainty and errors; saving and loading."""

from __future__ import annotations

import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from dse.models import DEFAULT

_FORMAT = 1  # version of the JSON written by `CalibrationResult.save`
# A fitted value within this fraction of its log-box width of a bound is flagged `at_bound`.
AT_BOUND = 1e-2


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


def saved_calibrations() -> list[str]:
    """Names of the calibrations shipped with dse (`load_calibration(name)` reads one)."""
    folder = resources.files(__package__) / "saved"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _saved_path(name_or_path: str | os.PathLike):
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text or "/" in text:
        return Path(name_or_path)
    path = resources.files(__package__) / "saved" / f"{text}.json"
    if not path.is_file():
        raise ValueError(f"load_calibration: no saved calibration {text!r}; shipped: "
                         f"{saved_calibrations()} (or give a path to a .json file)")
    return Path(str(path))


def load_calibration(name_or_path: str | os.PathLike, like=None) -> CalibrationResult:
    """Read a calibration written by `CalibrationResult.save`, by name or path.

    A saved calibration sets the fields it fitted (`CalibrationResult.names`, also in the
    file's "fitted" list); every other field keeps its value in `like`.

    **Arguments:**

    - `name_or_path`: a shipped calibration's name (`saved_calibrations()`, e.g.
      "a100_operators") or the path of a JSON file.
    - `like`: the parameter pytree the fitted values are written into (default the models'
      `dse.models.DEFAULT` calibration).

    **Returns:** the `CalibrationResult`; `.params` is the calibration to pass to the models.
    """
    path = _saved_path(name_or_path)
    doc = json.loads(path.read_text())
    if doc.get("format") != _FORMAT:
        raise ValueError(f"load_calibration: {path} has format {doc.get('format')}; "
                         f"this dse reads format {_FORMAT}")
    like = DEFAULT if like is None else like
    known = param_names(like)
    unknown = sorted(set(doc["fitted"]) - set(known))
    if unknown:
        raise ValueError(f"load_calibration: {path} sets {unknown}, which the calibration "
                         f"does not have (its fields: {known})")
    stored = doc["params"]
    values = np.asarray([[stored[n] for n in doc["fitted"]]])
    params = _with_values(like, tuple(doc["fitted"]), values[0])
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
            new.append(jnp.asarray(values[..., index[n]]).astype(jnp.result_type(leaf)))
        elif batch is not None:
            new.append(jnp.broadcast_to(jnp.asarray(leaf), (batch,) + jnp.shape(leaf)))
        else:
            new.append(leaf)
    return jax.tree.unflatten(treedef, new)


