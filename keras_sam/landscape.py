"""The loss landscape along lines and planes in weight space: linear
interpolation between two sets of weights (Goodfellow et al., 2015),
random filter-normalized directions, and the plane of a training
trajectory's principal directions (Li et al., 2018).

Every function evaluates the probe loss of `keras_sam.hessian` (the
compiled loss plus the regularization losses, averaged over the probe
data, in inference mode: BatchNorm uses its moving statistics, dropout is
off) and the model's compiled metrics, aggregated over the whole probe set
as `evaluate` aggregates them, at weights `w` given as NumPy arrays. The
passes are stateless (`stateless_call` inside a `keras.StatelessScope`):
no variable of the model is assigned, so its weights, BatchNorm
statistics, seeds and metrics stay bitwise as they were. Only the
trainable variables move; the non-trainable ones (BatchNorm moving
statistics) keep the model's current values at every point.

Results are dicts of float64 NumPy arrays: the coordinates, `loss`, and
one array per compiled metric under the name `evaluate` logs it with.

References:
    - Goodfellow, Vinyals & Saxe, 2015. Qualitatively characterizing
      neural network optimization problems.
      https://arxiv.org/abs/1412.6544
    - Li et al., 2018. Visualizing the Loss Landscape of Neural Nets.
      https://arxiv.org/abs/1712.09913
"""

import os

import keras
import numpy as np

from keras_sam import _keras_compat, stateless
from keras_sam import backend as sam_backend
from keras_sam._validation import check_int, check_positive_float, short_repr
from keras_sam.hessian.curvature import (
    check_model,
    compiled_for,
    prepare_curvature,
    snapshot,
    undo_replica_scaling,
)
from keras_sam.hessian.linalg import make_rng
from keras_sam.hessian.probe import (
    DEFAULT_PROBE_BATCH_SIZE,
    as_probe_set,
    to_numpy,
    weighted_batches,
)

__all__ = [
    "filter_normalized_direction",
    "interpolate",
    "loss_surface_1d",
    "loss_surface_2d",
    "trajectory_plane",
]

# Layers whose kernel does not hold its output units on the last axis.
_OUTPUT_AXIS = {
    keras.layers.Conv1DTranspose: -2,
    keras.layers.Conv2DTranspose: -2,
    keras.layers.Conv3DTranspose: -2,
}


def interpolate(
    model,
    start_weights,
    end_weights,
    data,
    num_points=25,
    alpha_range=(0.0, 1.0),
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Evaluates the loss on the line between two sets of weights.

    At `num_points` evenly spaced `alpha` in `alpha_range`, the loss and
    compiled metrics of `model` with trainable weights `(1 - alpha) *
    start + alpha * end` (Goodfellow et al., 2015), on `data`, in
    inference mode (see the module docstring). `alpha = 0` is `start`,
    `alpha = 1` is `end`; a range beyond `[0, 1]` extrapolates. The
    model's own weights are not used (except for its non-trainable
    variables) and not changed.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        start_weights: The weights at `alpha = 0`: a list of arrays shaped
            like `model.trainable_variables`, or a model with the same
            trainable variables (its current values are read).
        end_weights: The weights at `alpha = 1`, as `start_weights`.
        data: Probe data: `x`, a tuple `(x, y)` or `(x, y, sample_weight)`,
            a finite batched `tf.data.Dataset`, a `keras.utils.PyDataset`,
            or a `keras_sam.hessian.ProbeSet`.
        num_points: Integer >= 2, the number of points. Defaults to `25`.
        alpha_range: A pair of floats `(first, last)`, the first and last
            `alpha`. Defaults to `(0.0, 1.0)`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of float64 NumPy arrays of shape `(num_points,)`: `alpha`,
        `loss`, and one per compiled metric.

    Example:

    >>> start = [w.numpy() for w in model.trainable_variables]
    >>> model.fit(x, y, epochs=10)
    >>> line = keras_sam.landscape.interpolate(
    ...     model, start, model, (x, y), alpha_range=(-0.5, 1.5)
    ... )
    >>> plt.plot(line["alpha"], line["loss"])

    References:
        - Goodfellow, Vinyals & Saxe, 2015.
          https://arxiv.org/abs/1412.6544
    """
    num_points = check_int("num_points", num_points, minimum=2)
    first, last = _check_range("alpha_range", alpha_range)
    evaluator = _Evaluator(model, data, probe_batch_size)
    start = evaluator.flat("start_weights", start_weights)
    end = evaluator.flat("end_weights", end_weights)
    alphas = np.linspace(first, last, num_points)
    results = _collect(
        evaluator(start + alpha * (end - start)) for alpha in alphas
    )
    return {"alpha": alphas, **results}


def loss_surface_1d(
    model,
    data,
    direction=None,
    num_points=25,
    extent=1.0,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Evaluates the loss along a random filter-normalized direction.

    `f(alpha) = L(w + alpha d)` at `num_points` evenly spaced `alpha` in
    `[-extent, extent]`, `w` the model's trainable weights and `d` a
    direction from `filter_normalized_direction` (Li et al., 2018), or
    the one given. Nothing in the model is changed.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `interpolate`).
        direction: A list of arrays shaped like
            `model.trainable_variables`, or `None` for
            `filter_normalized_direction(model, seed)`. Defaults to `None`.
        num_points: Integer >= 2, the number of points. Defaults to `25`.
        extent: Positive float, the largest `|alpha|`. Defaults to `1.0`.
        seed: Integer seed of the random direction, or `None`. Defaults
            to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of float64 NumPy arrays of shape `(num_points,)`: `alpha`,
        `loss`, and one per compiled metric.

    Example:

    >>> line = keras_sam.landscape.loss_surface_1d(model, (x, y), seed=0)
    >>> plt.plot(line["alpha"], line["loss"])

    References:
        - Li et al., 2018. https://arxiv.org/abs/1712.09913
    """
    num_points = check_int("num_points", num_points, minimum=2)
    extent = check_positive_float("extent", extent)
    evaluator = _Evaluator(model, data, probe_batch_size)
    if direction is None:
        direction = filter_normalized_direction(model, seed)
    flat_direction = evaluator.flat("direction", direction)
    weights = evaluator.curvature.weights()
    alphas = np.linspace(-extent, extent, num_points)
    results = _collect(
        evaluator(weights + alpha * flat_direction) for alpha in alphas
    )
    return {"alpha": alphas, **results}


def loss_surface_2d(
    model,
    data,
    directions=None,
    num_points=21,
    extent=1.0,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Evaluates the loss on a plane of two filter-normalized directions.

    `f(alpha, beta) = L(w + alpha d1 + beta d2)` on a `num_points` by
    `num_points` grid of `[-extent, extent]^2`, `d1` and `d2` independent
    directions from `filter_normalized_direction` (Li et al., 2018), or
    the two given. In high dimension two random directions are nearly
    orthogonal. The cost is `num_points^2` evaluations over `data`.
    Nothing in the model is changed.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `interpolate`).
        directions: A pair of lists of arrays shaped like
            `model.trainable_variables`, or `None` for two calls of
            `filter_normalized_direction` with one random generator seeded
            by `seed`. Defaults to `None`.
        num_points: Integer >= 2, points per axis. Defaults to `21`.
        extent: Positive float, the largest `|alpha|` and `|beta|`.
            Defaults to `1.0`.
        seed: Integer seed of the random directions, or `None`. Defaults
            to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of float64 NumPy arrays: `alpha` and `beta` of shape
        `(num_points,)`, and `loss` and one array per compiled metric of
        shape `(num_points, num_points)`, entry `[i, j]` at `(alpha[i],
        beta[j])`.

    Example:

    >>> plane = keras_sam.landscape.loss_surface_2d(model, (x, y), seed=0)
    >>> plt.contour(plane["alpha"], plane["beta"], plane["loss"].T)

    References:
        - Li et al., 2018. https://arxiv.org/abs/1712.09913
    """
    num_points = check_int("num_points", num_points, minimum=2)
    extent = check_positive_float("extent", extent)
    evaluator = _Evaluator(model, data, probe_batch_size)
    if directions is None:
        rng = make_rng(seed)
        directions = [_filter_normalized(model, rng) for _ in range(2)]
    first, second = _check_pair(directions)
    first = evaluator.flat("directions[0]", first)
    second = evaluator.flat("directions[1]", second)
    weights = evaluator.curvature.weights()
    alphas = np.linspace(-extent, extent, num_points)
    results = _collect(
        evaluator(weights + alpha * first + beta * second)
        for alpha in alphas
        for beta in alphas
    )
    shape = (num_points, num_points)
    return {
        "alpha": alphas,
        "beta": alphas.copy(),
        **{name: values.reshape(shape) for name, values in results.items()},
    }


def filter_normalized_direction(model, seed=None):
    """Draws a random direction in weight space, normalized per filter.

    Li et al. (2018): a Gaussian direction `d` with each filter rescaled
    to the norm of the corresponding filter of the weights, `d_f <- d_f
    |w_f| / |d_f|`, so that a step along `d` is the same relative change
    for every filter and the plots of networks with different weight
    scales can be compared. A filter is one output unit's (channel's)
    slice of a kernel: the slice at one index of the output axis, the
    last axis for `Dense`, `Conv1D`/`Conv2D`/`Conv3D`, `DepthwiseConv2D`
    and `SeparableConv2D` kernels and axis `-2` for `Conv*Transpose`
    kernels (Keras stores them `(..., filters, in_channels)`).

    Variables with fewer than two dimensions (biases, the scale and
    offset of BatchNormalization and LayerNormalization) get a zero
    direction, as in Li et al.'s plots (their code's `ignore="biasbn"`):
    they are few, and a normalization's scale would otherwise be changed
    by a relative step of size 1. Non-trainable variables (BatchNorm's
    moving statistics) are not part of the direction at all.

    Args:
        model: A built `keras.Model` (or `SAMModel`).
        seed: Integer seed of the direction, or `None`. Defaults to
            `None`.

    Returns:
        A list of float64 NumPy arrays shaped like
        `model.trainable_variables`.

    Example:

    >>> d = keras_sam.landscape.filter_normalized_direction(model, seed=0)
    >>> line = keras_sam.landscape.loss_surface_1d(model, (x, y), d)

    References:
        - Li et al., 2018. https://arxiv.org/abs/1712.09913
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a built `keras.Model`. Received: "
            f"model={short_repr(model)} of type {type(model).__name__}."
        )
    return _filter_normalized(model, make_rng(seed))


def _filter_normalized(model, rng):
    output_axes = _output_axes(model)
    direction = []
    for variable in model.trainable_variables:
        weights = np.asarray(to_numpy(variable), np.float64)
        if weights.ndim < 2:
            direction.append(np.zeros_like(weights))
            continue
        axis = output_axes.get(id(variable), -1) % weights.ndim
        random = rng.standard_normal(weights.shape)
        direction.append(_normalize_filters(random, weights, axis))
    return direction


def _output_axes(model):
    """`{id(kernel): axis}` for kernels whose output axis is not last."""
    axes = {}
    for layer in _keras_compat.all_layers(model):
        for layer_type, axis in _OUTPUT_AXIS.items():
            if isinstance(layer, layer_type) and hasattr(layer, "kernel"):
                axes[id(layer.kernel)] = axis
    return axes


def _normalize_filters(direction, weights, axis):
    """`direction` with each slice along `axis` scaled to `weights`'s."""
    others = tuple(a for a in range(weights.ndim) if a != axis)
    direction_norms = np.sqrt(np.sum(direction**2, others, keepdims=True))
    weight_norms = np.sqrt(np.sum(weights**2, others, keepdims=True))
    safe = np.where(direction_norms > 0, direction_norms, 1.0)
    return direction * (weight_norms / safe)


def trajectory_plane(
    model,
    data,
    trajectory,
    num_points=21,
    margin=0.25,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Projects a training trajectory on its two principal directions and
    evaluates the loss on that plane (Li et al., 2018, Section 7).

    With `w_0, ..., w_n` the recorded weights and `w_n` the last, the
    differences `w_i - w_n` form a matrix `M` (one row per record). Its
    principal directions are those of PCA (as Li et al. compute it,
    `sklearn.decomposition.PCA`, which centers `M`): the top right
    singular vectors `d1`, `d2` of `M` minus its row mean, unit vectors
    in weight space; `explained_variance` is each one's share `s_k^2 /
    sum_j s_j^2` of the squared singular values (the centered
    trajectory's variance along it). Each record's coordinates are `((w_i
    - w_n) . d1, (w_i - w_n) . d2)`, so the last point is the origin.
    The loss (and compiled metrics) are evaluated at `w_n + alpha d1 +
    beta d2` on a `num_points` by `num_points` grid covering the path's
    coordinates plus `margin` times their range on each side; the
    non-trainable variables (BatchNorm statistics) are the model's
    current ones, so call it with the model at the end of training.
    If the path spans one direction only, `d2` is a random unit vector
    orthogonal to `d1` (explained variance 0). The records are held in
    memory as float32 (`records x parameters x 4` bytes); the cost is
    `num_points^2` evaluations over `data`. Nothing in the model is
    changed.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `interpolate`).
        trajectory: The folder a `keras_sam.callbacks.WeightTrajectory`
            wrote, or a pair `(steps, weights)` as its `load` returns
            (`weights`: one flat vector of all trainable variables per
            record, in the order of `model.trainable_variables`), at least
            two records.
        num_points: Integer >= 2, grid points per axis. Defaults to `21`.
        margin: Positive float, the grid's margin around the path, as a
            fraction of its extent along each direction. Defaults to
            `0.25`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict: `step` (int64, the records' steps), `path` (float64,
        shape `(records, 2)`, the coordinates), `explained_variance`
        (float64, shape `(2,)`), `directions` (a pair of lists of float64
        arrays shaped like `model.trainable_variables`: `d1`, `d2`),
        `alpha` and `beta` (float64, shape `(num_points,)`), and `loss`
        and one array per compiled metric of shape `(num_points,
        num_points)`, entry `[i, j]` at `(alpha[i], beta[j])`.

    Example:

    >>> plane = keras_sam.landscape.trajectory_plane(
    ...     model, (x, y), "run/trajectory"
    ... )
    >>> plt.contour(plane["alpha"], plane["beta"], plane["loss"].T)
    >>> plt.plot(*plane["path"].T, "o-")

    References:
        - Li et al., 2018. Visualizing the Loss Landscape of Neural Nets.
          https://arxiv.org/abs/1712.09913
    """
    num_points = check_int("num_points", num_points, minimum=2)
    margin = check_positive_float("margin", margin)
    evaluator = _Evaluator(model, data, probe_batch_size)
    steps, weights = _trajectory_records(trajectory, evaluator.curvature.dim)
    final = weights[-1].astype(np.float64)
    differences = weights.astype(np.float64) - final
    centered = differences - differences.mean(axis=0)
    gram = centered @ centered.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    total = values.sum()
    directions, explained = [], []
    for k in range(2):
        if values[k] > 1e-12 * max(total, 1e-300):
            direction = centered.T @ vectors[:, order[k]]
            direction /= np.linalg.norm(direction)
            explained.append(values[k] / total)
        else:
            direction = _orthogonal_unit(directions, len(final))
            explained.append(0.0)
        directions.append(direction)
    path = differences @ np.stack(directions, axis=1)
    axes = []
    for k in range(2):
        low, high = path[:, k].min(), path[:, k].max()
        pad = margin * max(high - low, 1e-12 * (1 + np.abs(path).max()))
        axes.append(np.linspace(low - pad, high + pad, num_points))
    results = _collect(
        evaluator(final + alpha * directions[0] + beta * directions[1])
        for alpha in axes[0]
        for beta in axes[1]
    )
    shape = (num_points, num_points)
    return {
        "step": steps,
        "path": path,
        "explained_variance": np.array(explained, np.float64),
        "directions": [evaluator.curvature.split(d) for d in directions],
        "alpha": axes[0],
        "beta": axes[1],
        **{name: values.reshape(shape) for name, values in results.items()},
    }


def _trajectory_records(trajectory, dim):
    """`(steps, weights)` from a folder or a pair, checked against `dim`."""
    from keras_sam.callbacks.weight_trajectory import WeightTrajectory

    if isinstance(trajectory, (str, os.PathLike)):
        steps, weights = WeightTrajectory.load(trajectory)
    elif isinstance(trajectory, (list, tuple)) and len(trajectory) == 2:
        steps = np.asarray(trajectory[0], np.int64)
        weights = np.asarray(trajectory[1], np.float32)
    else:
        raise ValueError(
            "Argument `trajectory` must be a `WeightTrajectory` folder or a "
            "pair `(steps, weights)`. Received: "
            f"trajectory={short_repr(trajectory)}."
        )
    if weights.ndim != 2 or weights.shape[1] != dim or len(weights) < 2:
        raise ValueError(
            "Argument `trajectory` must hold at least two records of "
            f"{dim} weights (the model's trainable parameters). Received "
            f"records of shape {weights.shape}."
        )
    if steps.shape != (len(weights),):
        raise ValueError(
            "Argument `trajectory` must have one step per record. "
            f"Received {steps.shape[0]} steps for {len(weights)} records."
        )
    return steps, weights


def _orthogonal_unit(directions, dim):
    vector = np.random.default_rng(0).standard_normal(dim)
    for direction in directions:
        vector -= (vector @ direction) * direction
    return vector / np.linalg.norm(vector)


class _Evaluator:
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


def _collect(points):
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


def _check_range(name, value):
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(np.isscalar(v) and np.isfinite(v) for v in value)
        or not value[0] < value[1]
    ):
        raise ValueError(
            f"Argument `{name}` must be a pair of finite numbers `(first, "
            f"last)` with first < last. Received: {name}={value!r}."
        )
    return float(value[0]), float(value[1])


def _check_pair(directions):
    if not isinstance(directions, (list, tuple)) or len(directions) != 2:
        raise ValueError(
            "Argument `directions` must be a pair of directions (lists of "
            "arrays shaped like `model.trainable_variables`) or None. "
            f"Received: directions={short_repr(directions)}."
        )
    return directions
