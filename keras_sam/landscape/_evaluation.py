"""Evaluating the probe loss and metrics at given weights, for the
landscape functions (internal to `keras_sam.landscape`)."""


import keras
import numpy as np

from keras_sam import _keras_compat, stateless
from keras_sam import backend as sam_backend
from keras_sam._validation import check_int, short_repr
from keras_sam.hessian.curvature import (
    check_model,
    compiled_for,
    prepare_curvature,
    snapshot,
    undo_replica_scaling,
)
from keras_sam.hessian.probe import (
    as_probe_set,
    to_numpy,
    weighted_batches,
)


class Evaluator:
    """The probe loss and compiled metrics at flat trainable weights."""

    def __init__(self, model, data, probe_batch_size):
        check_model(model)
        probe = as_probe_set(data)
        probe_batch_size = check_int("probe_batch_size", probe_batch_size)
        _build_metrics(model, probe, probe_batch_size)
        self.curvature = prepare_curvature(model, probe, probe_batch_size)
        self.model = model
        self._evaluate = _evaluation_function(model)
        self._reset_values = _reset_metric_values(model)

    def __call__(self, weights):
        """`{"loss": float, metric: float, ...}` at the flat `weights`."""
        state = self.curvature.state_at(weights)
        metric_values = self._reset_values
        loss = 0.0
        for batch, weight in self.curvature.batches():
            value, metric_values = self._evaluate(state, metric_values, batch)
            loss += weight * float(keras.ops.convert_to_numpy(value))
        return {"loss": loss, **_metric_results(self.model, metric_values)}

    def flat(self, name, weights):
        """Weights (a list of arrays or a model) as one flat vector."""
        if isinstance(weights, keras.Model):
            weights = weights.trainable_variables
        shapes = self.curvature.shapes
        if not isinstance(weights, (list, tuple)) or [
            tuple(np.shape(w)) for w in weights
        ] != shapes:
            received = (
                [tuple(np.shape(w)) for w in weights]
                if isinstance(weights, (list, tuple))
                else short_repr(weights)
            )
            raise ValueError(
                f"Argument `{name}` must be a list of arrays shaped like "
                f"`model.trainable_variables` ({shapes}), or a model with "
                f"such variables. Received: {name}={received}."
            )
        return np.concatenate(
            [np.asarray(to_numpy(w), np.float64).ravel() for w in weights]
        )


def collect(points):
    """A list of dicts of floats as a dict of float64 arrays."""
    points = list(points)
    return {
        name: np.array([point[name] for point in points], np.float64)
        for name in points[0]
    }


def _build_metrics(model, probe, probe_batch_size):
    """Builds the compiled metrics (lazy until the first batch), as `fit`
    would, so the stateless passes do not create variables."""
    if not isinstance(model, keras.Model) or _keras_compat.fully_built(model):
        return
    first = np.arange(min(probe.num_samples, probe_batch_size))
    batch, _ = weighted_batches(probe, first, probe_batch_size)[0]
    _keras_compat.symbolic_build(model, data_batch=batch)


def _evaluation_function(model):
    """`(state, metric_values, batch) -> (loss, metric_values)`, compiled
    and cached per model: the probe loss and the compiled metrics'
    variables updated with the batch, statelessly."""
    return compiled_for(model, "evaluate", _build_evaluation)


def _build_evaluation(model_ref):
    def evaluate(state, metric_values, batch):
        model = model_ref()
        x, y, sample_weight = batch
        loss, (y_pred, _, metric_values) = stateless.stateless_loss(
            model, state[0], state[1], metric_values, x, y, sample_weight,
            training=False,
        )
        mapping = list(zip(model.metrics_variables, metric_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            model.compute_metrics(x, y, y_pred, sample_weight)
        updated = [scope.get_current_value(v) for v in model.metrics_variables]
        return undo_replica_scaling(loss), updated

    return sam_backend.compile_function(evaluate)


def _reset_metric_values(model):
    """The values the metrics variables take after `reset_state`."""
    current = snapshot(model.metrics_variables)
    mapping = list(zip(model.metrics_variables, current))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        for metric in model.metrics:
            metric.reset_state()
    return [scope.get_current_value(v) for v in model.metrics_variables]


def _metric_results(model, metric_values):
    """`{name: float}` of the compiled metrics at `metric_values` (the
    loss tracker, which these passes do not update, left out)."""
    mapping = list(zip(model.metrics_variables, metric_values))
    with keras.StatelessScope(state_mapping=mapping):
        results = model.get_metrics_result()
    results.pop("loss", None)
    return {
        name: float(np.asarray(keras.ops.convert_to_numpy(value)))
        for name, value in results.items()
        if np.size(keras.ops.convert_to_numpy(value)) == 1
    }


