"""Perturbation sharpness: how much the loss rises in a neighbourhood of
the weights (Keskar et al. 2017; Andriushchenko et al. 2023).

The loss is the probe loss of `keras_sam.hessian` (inference mode,
regularization included), evaluated at perturbed weights through
`stateless_call`: the model's variables are never assigned.
"""

import numpy as np
from scipy import optimize

from keras_sam._validation import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_positive_float,
)
from keras_sam.hessian.curvature import prepare_curvature
from keras_sam.hessian.linalg import make_rng, standard_error
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE

SHARPNESS_KINDS = ("worst", "average")
"""The `kind`s of `adaptive_sharpness`."""

SHARPNESS_NORMS = ("linf", "l2")
"""The `norm`s of `adaptive_sharpness`'s worst case."""


def keskar_sharpness(
    model,
    data,
    epsilon=1e-3,
    max_iterations=10,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Computes Keskar et al.'s epsilon-sharpness of the loss.

    `phi = 100 (max_{y in C} L(w + y) - L(w)) / (1 + L(w))` over the box
    `C = {y : |y_i| <= epsilon (|w_i| + 1)}` in the full parameter space
    (the paper's `A = I`), `L` the probe loss (see `keras_sam.hessian`).
    As in the paper the maximum is found approximately with L-BFGS-B
    (SciPy's, float64, box bounds), here with at most `max_iterations`
    iterations (each one or more loss-and-gradient evaluations over
    `data`); the reported maximum is the largest loss of all evaluated
    points, `L(w)` included, so `phi >= 0`. The ascent starts at a point
    drawn uniformly from the box, since at a minimum the gradient is zero
    and an ascent from `y = 0` would not move. Nothing in the model is
    updated.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        epsilon: Positive float, the box's relative size. Defaults to
            `1e-3` (the paper also used `5e-4`).
        max_iterations: Integer, the L-BFGS-B iteration limit. Defaults to
            `10`.
        seed: Integer seed of the start point, or `None`. Defaults to
            `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of floats: `sharpness` (`phi`), `loss` (`L(w)`) and
        `max_loss` (the maximum found).

    Example:

    >>> keras_sam.hessian.keskar_sharpness(model, (x, y), seed=0)
    {'sharpness': 3.1, 'loss': 0.052, 'max_loss': 0.084}

    References:
        - Keskar et al., 2017. On Large-Batch Training for Deep Learning:
          Generalization Gap and Sharp Minima.
          https://arxiv.org/abs/1609.04836
    """
    epsilon = check_positive_float("epsilon", epsilon)
    max_iterations = check_int("max_iterations", max_iterations)
    rng = make_rng(seed)
    curvature = prepare_curvature(model, data, probe_batch_size)
    weights = curvature.weights()
    bound = epsilon * (np.abs(weights) + 1.0)
    loss = curvature.loss()
    tracker = _MaximumTracker(loss)

    def negative_loss_and_gradient(offset):
        point = weights + offset
        value = tracker.update(curvature.loss(weights=point))
        return -value, -curvature.gradient(weights=point)

    optimize.minimize(
        negative_loss_and_gradient,
        rng.uniform(-bound, bound),
        jac=True,
        method="L-BFGS-B",
        bounds=optimize.Bounds(-bound, bound),
        options={"maxiter": max_iterations},
    )
    return {
        "sharpness": 100.0 * (tracker.maximum - loss) / (1.0 + loss),
        "loss": loss,
        "max_loss": tracker.maximum,
    }


class _MaximumTracker:
    """The largest value seen so far."""

    def __init__(self, initial):
        self.maximum = initial

    def update(self, value):
        self.maximum = max(self.maximum, value)
        return value


def adaptive_sharpness(
    model,
    data,
    rho,
    kind="worst",
    norm="linf",
    adaptive=True,
    num_steps=20,
    num_samples=32,
    batch_size=None,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Computes adaptive worst-case or average-case sharpness.

    Andriushchenko et al. (2023, Section 3) define, with `c = |w|`
    elementwise (adaptive sharpness, Kwon et al. 2021) or `c = 1`
    (standard), `S` a batch of `m` training samples and `L_S` its loss:

    - worst case: `S_max = E_S [max_{|delta / c|_p <= rho} L_S(w + delta)
      - L_S(w)]`, `p` = infinity or 2, the division elementwise;
    - average case: `S_avg = E_S E_{delta ~ N(0, rho^2 diag(c^2))}
      [L_S(w + delta) - L_S(w)]`.

    Here `L_S` is the probe loss (see `keras_sam.hessian`; inference mode)
    of consecutive batches of `batch_size` probe samples (the last may be
    smaller and counts by its size), or of the whole probe set if
    `batch_size=None` (`m = n`). The average case does not depend on `m`
    (the expectation is linear); it is the mean over `num_samples`
    Gaussian draws on the whole probe set, with its standard error.

    The worst case is found approximately (the paper uses Auto-PGD) by
    projected gradient ascent in the scaled variable `u = delta / c`,
    `|u|_p <= rho`: steps along `sign(c * g)` (linf) or `c * g / |c * g|`
    (l2), `g` the gradient at `w + c * u`, projected back onto the ball.
    The step size starts at `2 rho`; a step that does not raise the loss
    is rejected and the step size halved, so the loss found never
    decreases. The ascent costs `num_steps` loss-and-gradient
    evaluations per batch, the start's included. It starts at a random
    point (uniform in the linf ball; at radius `rho / 2` in a uniformly
    random direction for l2), since at a minimum the gradient is zero.
    With `c = |w|`, weights that are exactly zero are not perturbed.
    Nothing in the model is updated.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        rho: Positive float, the radius. Its scale depends on `norm` and
            `adaptive` (an l2 radius spreads over all parameters).
        kind: `"worst"` or `"average"`. Defaults to `"worst"`.
        norm: `"linf"` or `"l2"`, the worst case's ball. Defaults to
            `"linf"`.
        adaptive: Boolean, `c = |w|` if `True`, `c = 1` if `False`.
            Defaults to `True`.
        num_steps: Integer, the worst case's ascent steps. Defaults to
            `20`.
        num_samples: Integer, the average case's Gaussian draws. Defaults
            to `32`.
        batch_size: Integer `m` or `None` (the whole probe set), the
            worst case's batch size. Defaults to `None`.
        seed: Integer seed of the start points and draws, or `None`.
            Defaults to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of floats: `sharpness` and `loss` (`L(w)` on the probe
        set); for `kind="average"` also `sharpness_stderr` (NaN when
        `num_samples=1`).

    Example:

    >>> keras_sam.hessian.adaptive_sharpness(
    ...     model, (x, y), rho=0.002, kind="worst", norm="linf", seed=0
    ... )
    {'sharpness': 0.031, 'loss': 0.052}

    References:
        - Andriushchenko et al., 2023. A Modern Look at the Relationship
          between Sharpness and Generalization.
          https://arxiv.org/abs/2302.07011
        - Kwon et al., 2021. ASAM: Adaptive Sharpness-Aware Minimization
          for Scale-Invariant Learning of Deep Neural Networks.
          https://arxiv.org/abs/2102.11600
        - Croce & Hein, 2020. Reliable evaluation of adversarial
          robustness with an ensemble of diverse parameter-free attacks
          (Auto-PGD). https://arxiv.org/abs/2003.01690
    """
    rho = check_positive_float("rho", rho)
    kind = check_choice("kind", kind, SHARPNESS_KINDS)
    norm = check_choice("norm", norm, SHARPNESS_NORMS)
    adaptive = check_bool("adaptive", adaptive)
    num_steps = check_int("num_steps", num_steps)
    num_samples = check_int("num_samples", num_samples)
    batch_size = check_optional_int("batch_size", batch_size)
    rng = make_rng(seed)
    curvature = prepare_curvature(model, data, probe_batch_size)
    weights = curvature.weights()
    scale = np.abs(weights) if adaptive else np.ones_like(weights)
    loss = curvature.loss()
    if kind == "average":
        return _average_sharpness(
            curvature, weights, scale, rho, num_samples, loss, rng
        )
    ascent = _BallAscent(curvature, weights, scale, rho, norm, num_steps)
    rises = [
        (ascent.maximize(batches, rng), share)
        for batches, share in _sharpness_batches(curvature, batch_size)
    ]
    return {
        "sharpness": float(sum(rise * share for rise, share in rises)),
        "loss": loss,
    }


def _average_sharpness(curvature, weights, scale, rho, num_samples, loss, rng):
    rises = np.array(
        [
            curvature.loss(
                weights=weights + rho * scale * rng.standard_normal(len(scale))
            )
            - loss
            for _ in range(num_samples)
        ]
    )
    return {
        "sharpness": float(np.mean(rises)),
        "loss": loss,
        "sharpness_stderr": standard_error(rises),
    }


def _sharpness_batches(curvature, batch_size):
    """`[(microbatches, share)]`: the batches `S` of `m` probe samples."""
    total = curvature.probe.num_samples
    if batch_size is None or batch_size >= total:
        return [(curvature.batches(), 1.0)]
    return [
        (
            curvature.batches(np.arange(start, min(start + batch_size, total))),
            (min(start + batch_size, total) - start) / total,
        )
        for start in range(0, total, batch_size)
    ]


class _BallAscent:
    """Projected gradient ascent of `L_S(w + c * u)` over `|u|_p <= rho`."""

    def __init__(self, curvature, weights, scale, rho, norm, num_steps):
        self.curvature = curvature
        self.weights = weights
        self.scale = scale
        self.rho = rho
        self.norm = norm
        self.num_steps = num_steps

    def maximize(self, batches, rng):
        """`max L_S(w + c * u) - L_S(w)` found for the batch `batches`."""
        base = self.curvature.loss(batches, self.weights)
        u = self._start(rng)
        value, gradient = self._evaluate(u, batches)
        step = 2.0 * self.rho
        for _ in range(self.num_steps - 1):
            candidate = self._project(u + step * self._direction(gradient))
            candidate_value, candidate_gradient = self._evaluate(
                candidate, batches
            )
            if candidate_value > value:
                u, value, gradient = candidate, candidate_value, (
                    candidate_gradient
                )
            else:
                step /= 2.0
        return max(value, base) - base

    def _evaluate(self, u, batches):
        point = self.weights + self.scale * u
        value = self.curvature.loss(batches, point)
        gradient = self.scale * self.curvature.gradient(batches, point)
        return value, gradient

    def _start(self, rng):
        dim = len(self.weights)
        if self.norm == "linf":
            return rng.uniform(-self.rho, self.rho, dim)
        direction = rng.standard_normal(dim)
        return 0.5 * self.rho * direction / np.linalg.norm(direction)

    def _direction(self, gradient):
        if self.norm == "linf":
            return np.sign(gradient)
        size = np.linalg.norm(gradient)
        return gradient / size if size > 0 else gradient

    def _project(self, u):
        if self.norm == "linf":
            return np.clip(u, -self.rho, self.rho)
        size = np.linalg.norm(u)
        return u * (self.rho / size) if size > self.rho else u
