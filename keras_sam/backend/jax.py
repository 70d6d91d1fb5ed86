"""SAM step for the JAX backend: stateless, `train_step(state, data)`.

Under `keras.distribution.DataParallel` the step is one SPMD program and
the gradients are already global, so `eps` is computed from the whole
batch's gradient whatever `perturbation` says (`"global"` semantics).
"""

import jax
import keras

from keras_sam.backend import common


def value_and_grad(fn):
    return jax.value_and_grad(fn, has_aux=True)


def train_step(model, state, data):
    trainable, non_trainable, optimizer_values, metrics = state
    x, y, sample_weight = common.unpack(model, data)
    optimizer = model.optimizer

    def scale_loss(loss):
        mapping = list(zip(optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return optimizer.scale_loss(loss)

    result = model.sam_gradients(
        value_and_grad,
        trainable,
        non_trainable,
        metrics,
        x,
        y,
        sample_weight,
        scale_loss=scale_loss,
    )
    trainable, optimizer_values = optimizer.stateless_apply(
        optimizer_values, result["gradients"], trainable
    )
    logs, metrics = _update_metrics(
        model, result["metrics"], x, y, sample_weight, result
    )
    state = (trainable, result["non_trainable"], optimizer_values, metrics)
    return logs, state


def _update_metrics(model, metrics, x, y, sample_weight, result):
    mapping = list(zip(model.metrics_variables, metrics))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.update_sam_metrics(x, y, sample_weight, result)
    new_metrics = []
    for variable in model.metrics_variables:
        value = scope.get_current_value(variable)
        new_metrics.append(variable.value if value is None else value)
    return logs, new_metrics


def test_step(model, state, data):
    logs, state = keras.Model.test_step(model, state, data)
    return common.without_sam_logs(logs), state
