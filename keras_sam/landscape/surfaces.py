"""Linear interpolation and random filter-normalized lines and planes
(`keras_sam.landscape`)."""


import keras
import numpy as np

from keras_sam import _keras_compat
from keras_sam._validation import check_int, check_positive_float, short_repr
from keras_sam.hessian.linalg import make_rng
from keras_sam.hessian.probe import (
    DEFAULT_PROBE_BATCH_SIZE,
    to_numpy,
)
from keras_sam.landscape._evaluation import Evaluator, collect

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
    evaluator = Evaluator(model, data, probe_batch_size)
    start = evaluator.flat("start_weights", start_weights)
    end = evaluator.flat("end_weights", end_weights)
    alphas = np.linspace(first, last, num_points)
    results = collect(
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
    evaluator = Evaluator(model, data, probe_batch_size)
    if direction is None:
        direction = filter_normalized_direction(model, seed)
    flat_direction = evaluator.flat("direction", direction)
    weights = evaluator.curvature.weights()
    alphas = np.linspace(-extent, extent, num_points)
    results = collect(
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
    evaluator = Evaluator(model, data, probe_batch_size)
    if directions is None:
        rng = make_rng(seed)
        directions = [_filter_normalized(model, rng) for _ in range(2)]
    first, second = _check_pair(directions)
    first = evaluator.flat("directions[0]", first)
    second = evaluator.flat("directions[1]", second)
    weights = evaluator.curvature.weights()
    alphas = np.linspace(-extent, extent, num_points)
    results = collect(
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
    kernels (Keras stores them `(..., filters, in_channels)`). An
    `EinsumDense` kernel (the query, key, value and output projections of
    `MultiHeadAttention`) may hold its output units on several axes, the
    kernel axes whose letters appear in the output of its equation: a
    query kernel `(hidden, heads, head_dim)` has one filter per
    `(head, unit)` pair, its slice over `hidden`.

    Biases (a layer's `bias`, whatever its shape: `MultiHeadAttention`'s
    are `(heads, head_dim)`) and the other variables with fewer than two
    dimensions (the scale and offset of BatchNormalization and
    LayerNormalization) get a zero direction, as in Li et al.'s plots
    (their code's `ignore="biasbn"`): they are few, and a normalization's
    scale would otherwise be changed by a relative step of size 1.
    Non-trainable variables (BatchNorm's moving statistics) are not part
    of the direction at all.

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
    output_axes, biases = _layer_roles(model)
    direction = []
    for variable in model.trainable_variables:
        weights = np.asarray(to_numpy(variable), np.float64)
        if weights.ndim < 2 or id(variable) in biases:
            direction.append(np.zeros_like(weights))
            continue
        axes = output_axes.get(id(variable), (-1,))
        axes = tuple(sorted(a % weights.ndim for a in axes))
        random = rng.standard_normal(weights.shape)
        direction.append(_normalize_filters(random, weights, axes))
    return direction


def _layer_roles(model):
    """`({id(kernel): output axes}, {id(bias)})` for the kernels whose
    output units are not (only) on the last axis and for every bias."""
    axes, biases = {}, set()
    for layer in _keras_compat.all_layers(model):
        bias = getattr(layer, "bias", None)
        if isinstance(bias, keras.Variable):
            biases.add(id(bias))
        kernel = getattr(layer, "kernel", None)
        if not isinstance(kernel, keras.Variable):
            continue
        if isinstance(layer, keras.layers.EinsumDense):
            axes[id(kernel)] = _einsum_output_axes(layer.equation)
        for layer_type, axis in _OUTPUT_AXIS.items():
            if isinstance(layer, layer_type):
                axes[id(kernel)] = (axis,)
    return axes, biases


def _einsum_output_axes(equation):
    """The kernel axes of an `EinsumDense` equation `"x,k->o"` whose
    letters appear in the output `o` (its output units)."""
    operands, output = equation.replace(" ", "").split("->")
    kernel = operands.split(",")[1]
    return tuple(i for i, letter in enumerate(kernel) if letter in output)


def _normalize_filters(direction, weights, axes):
    """`direction` with each slice at one index of the `axes` (the output
    units) scaled to the norm of `weights`'s slice there."""
    others = tuple(a for a in range(weights.ndim) if a not in axes)
    direction_norms = np.sqrt(np.sum(direction**2, others, keepdims=True))
    weight_norms = np.sqrt(np.sum(weights**2, others, keepdims=True))
    safe = np.where(direction_norms > 0, direction_norms, 1.0)
    return direction * (weight_norms / safe)


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

