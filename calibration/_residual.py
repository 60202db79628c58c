"""`fit_residual`: an optional learned correction on top of a calibrated analytical model.

A small flax (nnx) MLP maps row features (workload and hardware descriptors) to the
log-residual log(measured / modelled) of the calibrated model; the corrected prediction is
model * exp(residual), so the sum in log space stays a pure, differentiable JAX function of the
model's parameters, the hardware, and the network's weights. The output passes through
`bound * tanh(. / bound)`, so the network can move a prediction by at most a factor
exp(bound) either way and its gradients stay finite whatever the features.

The network is judged the way the calibration is: it is trained once per validation fold of the
`CalibrationResult` (vmapped), on that fold's training rows, against the residuals of that
fold's calibrated parameters, and predicts the held-out rows. It is kept only if that
held-out error beats the calibrated model's own held-out error; otherwise `compose_residual`
returns the analytical model unchanged. Off unless you call it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, PRNGKeyArray

from ._fit import _log_ratio, _mape
from ._measurements import Measurements
from ._result import CalibrationResult

# Largest correction the network may apply, as a log factor: exp(log 10) = 10x either way. A
# design choice (a residual model that needs more than 10x is hiding a missing physical term),
# not a measured constant.
DEFAULT_BOUND = math.log(10.0)


class ResidualNet(nnx.Module):
    """Two-layer tanh MLP from standardized features to one log-residual per row.

    The output layer starts at zero, so an untrained network is the identity correction.
    """

    def __init__(self, n_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(n_features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))[..., 0]


class ResidualFit(eqx.Module):
    """A trained residual network and the evidence for keeping it.

    **Fields:**

    - `graphdef` (static), `state`: the `ResidualNet` split by `nnx.split`.
    - `mean`, `scale`: feature standardization, shape (f,).
    - `bound`: largest |log correction|.
    - `kept` (static): True if the network improved the held-out error; `compose_residual`
      ignores the network otherwise.
    - `base_validation_mape`: held-out error of the calibrated model alone.
    - `validation_mape`: held-out error with the fold-trained network.
    - `validation_predicted`: (n,) held-out prediction of each row with its fold's network.
    - `train_mape`: in-sample error with the network trained on all rows.
    """

    graphdef: Any = eqx.field(static=True)
    state: Any
    mean: Float[Array, " f"]
    scale: Float[Array, " f"]
    bound: Float[Array, ""]
    kept: bool = eqx.field(static=True)
    base_validation_mape: Float[Array, ""]
    validation_mape: Float[Array, ""]
    validation_predicted: Float[Array, " n"]
    train_mape: Float[Array, ""]

    def log_residual(self, features: Float[Array, "*batch f"]) -> Float[Array, "*batch"]:
        """The network's log correction for each row of `features` (0 if not kept)."""
        out = _apply(self.graphdef, self.state, self.mean, self.scale, self.bound, features)
        return out if self.kept else jnp.zeros_like(out)


def _apply(graphdef, state, mean, scale, bound, features):
    features = jnp.asarray(features)
    shape = (1,) * (features.ndim - 1) + mean.shape
    x = (features - mean.reshape(shape)) / scale.reshape(shape)
    raw = nnx.merge(graphdef, state)(x)
    return bound * jnp.tanh(raw / bound)


def compose_residual(model_fn: Callable[[Any, Any], Float[Array, " n"]],
            residual: ResidualFit) -> Callable[[Any, Any, Any], Float[Array, " n"]]:
    """The analytical model times the learned correction, as one differentiable function.

    **Arguments:**

    - `model_fn`: `model_fn(params, inputs) -> predicted` (positive).
    - `residual`: a `ResidualFit`.

    **Returns:** `fn(params, inputs, features) -> model_fn(params, inputs) *
    exp(residual.log_residual(features))` (just `model_fn` when the residual was not kept).
    """

    def fn(params, inputs, features):
        return model_fn(params, inputs) * jnp.exp(residual.log_residual(features))

    return fn


@functools.partial(jax.jit, static_argnames=("model_fn",))
def _model(params, inputs, model_fn):
    return model_fn(params, inputs)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "learning_rate",
                                             "weight_decay"))
def _train_batch(weights, targets, state0, mean, scale, bound, features, *, graphdef, steps,
                 learning_rate, weight_decay):
    """One network per row of `weights` / `targets` (vmapped full-batch AdamW); returns the
    trained states and their corrections on every row."""
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def train(w, target):
        def loss(state):
            r = _apply(graphdef, state, mean, scale, bound, features) - target
            return jnp.sum(w * r**2) / jnp.maximum(jnp.sum(w), 1e-12)

        def step(carry, _):
            state, opt = carry
            grads = jax.grad(loss)(state)
            updates, opt = optimizer.update(grads, opt, state)
            return (optax.apply_updates(state, updates), opt), None

        (state, _), _ = jax.lax.scan(step, (state0, optimizer.init(state0)), None,
                                     length=steps)
        return state, _apply(graphdef, state, mean, scale, bound, features)

    return jax.vmap(train)(weights, targets)


def fit_residual(model_fn: Callable[[Any, Any], Float[Array, " n"]],
                 result: CalibrationResult, data: Measurements, *, hidden: int = 8,
                 steps: int = 500, learning_rate: float = 1e-2, weight_decay: float = 1e-2,
                 bound: float = DEFAULT_BOUND, key: PRNGKeyArray | None = None) -> ResidualFit:
    """Train the residual network on a calibrated model's log-residuals; keep it if it helps.

    **Arguments:**

    - `model_fn`: the model calibrated in `result`.
    - `result`: a `CalibrationResult` of `calibrate(model_fn, ..., data)` with validation
      (its folds are reused: each fold's network sees only that fold's training rows).
    - `data`: the same `Measurements`, with `features` (n, f).
    - `hidden`: hidden width.
    - `steps`, `learning_rate`, `weight_decay`: full-batch optax AdamW training.
    - `bound`: largest |log correction| (default log 10).
    - `key`: `jax.random` key for the initial weights (default `PRNGKey(0)`).

    **Returns:** a `ResidualFit`.
    """
    if data.features is None:
        raise ValueError("fit_residual: data.features is None; give Measurements(features=...)")
    if result.fold_predicted.shape[0] == 0:
        raise ValueError("fit_residual: the CalibrationResult has no validation folds; "
                         "calibrate with validation='source' or 'kfold'")
    if result.n_rows != data.n:
        raise ValueError(f"fit_residual: result was fitted to {result.n_rows} rows, data has "
                         f"{data.n}")
    key = jax.random.PRNGKey(0) if key is None else key
    dtype = jnp.result_type(float)
    features = jnp.asarray(data.features, dtype)
    measured = jnp.asarray(data.measured, dtype)
    mean = jnp.mean(features, axis=0)
    std = jnp.std(features, axis=0)
    scale = jnp.where(std > 0, std, 1.0)
    bound_ = jnp.asarray(bound, dtype)

    net = ResidualNet(features.shape[1], hidden,
                      rngs=nnx.Rngs(int(jax.random.randint(key, (), 0, 2**31 - 1))))
    graphdef, state0 = nnx.split(net)
    held = jnp.asarray(result.fold_held)
    fold_pred = jnp.asarray(result.fold_predicted, dtype)
    full_pred = _model(result.params, data.inputs, model_fn)
    # Targets: each fold's residuals against its own calibrated parameters; the last row of
    # the batch is the final network, on all rows against the all-rows fit.
    targets = jnp.concatenate([-_log_ratio(fold_pred, measured[None, :]),
                               -_log_ratio(full_pred, measured)[None, :]], axis=0)
    weights = jnp.concatenate([(~held).astype(dtype), jnp.ones((1, data.n), dtype)], axis=0)
    states, corr = _train_batch(weights, targets, state0, mean, scale, bound_, features,
                                graphdef=graphdef, steps=int(steps),
                                learning_rate=float(learning_rate),
                                weight_decay=float(weight_decay))
    with_net = fold_pred * jnp.exp(corr[:-1])
    val_pred = jnp.sum(jnp.where(held, with_net, 0.0), axis=0)
    base_val = jnp.sum(jnp.where(held, fold_pred, 0.0), axis=0)
    ones = jnp.ones((data.n,), dtype)
    val_mape = _mape(val_pred, measured, ones)
    base_mape = _mape(base_val, measured, ones)
    final = jax.tree.map(lambda x: x[-1], states)
    train_mape = _mape(full_pred * jnp.exp(corr[-1]), measured, ones)
    kept = bool(np.asarray(val_mape) < np.asarray(base_mape))
    return ResidualFit(graphdef=graphdef, state=final, mean=mean, scale=scale, bound=bound_,
                       kept=kept, base_validation_mape=base_mape, validation_mape=val_mape,
                       validation_predicted=val_pred,
                       train_mape=train_mape)
