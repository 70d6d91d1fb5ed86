"""The plane of a training trajectory's principal directions
(`keras_sam.landscape`)."""

import os

import numpy as np

from keras_sam._validation import check_int, check_positive_float, short_repr
from keras_sam.hessian.probe import (
    DEFAULT_PROBE_BATCH_SIZE,
)
from keras_sam.landscape._evaluation import Evaluator, collect


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
    evaluator = Evaluator(model, data, probe_batch_size)
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
    results = collect(
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


