"""The training loss of a Keras model at given variable values, with no
side effects: the one stateless loss of the package, used by the SAM step
(`keras_sam.backend`) and by the curvature measurements
(`keras_sam.hessian`).
"""

from typing import NamedTuple

import keras


class ModelVariables(NamedTuple):
    """A model's variables in the three lists of a stateless call."""

    trainable: list
    non_trainable: list
    metrics: list


def stateless_loss(
    model,
    trainable_values,
    non_trainable_values,
    metrics_values,
    x,
    y=None,
    sample_weight=None,
    training=True,
    variables=None,
):
    """The loss `fit` minimizes, evaluated at the given values.

    Runs `model(x, training=training)` and `model.compute_loss` inside a
    `keras.StatelessScope` that maps every variable to the given value, so
    the loss includes the weight regularizers and `add_loss` terms of this
    call, and no variable is assigned: the state the pass would write
    (BatchNorm statistics, seed counters, metrics) is returned instead.

    Args:
        model: A compiled, built `keras.Model`.
        trainable_values: Values of `model.trainable_variables`, in order.
        non_trainable_values: Values of `model.non_trainable_variables`.
        metrics_values: Values of `model.metrics_variables`.
        x: The batch's inputs.
        y: The batch's targets, if any.
        sample_weight: The batch's sample weights, if any.
        training: Boolean, the mode of the forward pass. Defaults to
            `True` (BatchNorm normalizes with batch statistics and updates
            its moving ones; dropout on).
        variables: `(trainable, non_trainable, metrics)` variable lists, if
            the caller has listed them already (listing walks the layer
            tree, which eager torch pays on every call).

    Returns:
        `(loss, (y_pred, non_trainable, metrics))`: the scalar loss, the
        predictions, and the values the non-trainable and metrics variables
        would take.
    """
    trainable_variables, non_trainable_variables, metrics_variables = (
        variables or variable_lists(model)
    )
    mapping = list(zip(trainable_variables, trainable_values))
    mapping += zip(non_trainable_variables, non_trainable_values)
    mapping += zip(metrics_variables, metrics_values)
    with _stateless_scope(mapping) as scope:
        y_pred = model(x, training=training)
        loss = model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
            training=training,
        )
    non_trainable = [
        scope.get_current_value(v) for v in non_trainable_variables
    ]
    metrics = [scope.get_current_value(v) for v in metrics_variables]
    return loss, (y_pred, non_trainable, metrics)


def stateless_predictions(model, trainable_values, non_trainable_values, x,
                          training=False, variables=None):
    """The predictions `model(x, training=training)` at the given values,
    with no side effects (the state the call would write is discarded).

    Args:
        model: A built `keras.Model`.
        trainable_values: Values of `model.trainable_variables`, in order.
        non_trainable_values: Values of `model.non_trainable_variables`.
        x: The batch's inputs.
        training: Boolean, the mode of the forward pass. Defaults to
            `False` (inference: BatchNorm's moving statistics, no dropout).
        variables: The `ModelVariables` of `model`, if already listed.

    Returns:
        The predictions.
    """
    trainable_variables, non_trainable_variables, _ = (
        variables or variable_lists(model)
    )
    mapping = list(zip(trainable_variables, trainable_values))
    mapping += zip(non_trainable_variables, non_trainable_values)
    with _stateless_scope(mapping):
        return model(x, training=training)


def variable_lists(model):
    """The `ModelVariables` (trainable, non-trainable, metrics) of
    `model`."""
    return ModelVariables(
        model.trainable_variables,
        model.non_trainable_variables,
        model.metrics_variables,
    )


def _stateless_scope(mapping):
    """`keras.StatelessScope(state_mapping=mapping, collect_losses=True)`.

    On torch, which runs eagerly, the mapping is filled directly: the
    constructor's per-value `convert_to_tensor` and shape check cost about
    1 ms per pass on a WRN (two passes: ~4% of a host-bound step), and the
    values here are the variables' own tensors or same-shaped results of
    them. Traced backends (TensorFlow, JAX) pay the constructor once.
    """
    if keras.backend.backend() != "torch":
        return keras.StatelessScope(state_mapping=mapping, collect_losses=True)
    from keras_sam import _keras_compat

    return _keras_compat.filled_stateless_scope(mapping)
