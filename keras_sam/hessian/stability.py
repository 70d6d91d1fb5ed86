"""Linear stability of GD and SGD at the current weights (Wu et al., 2018)."""

import math

import numpy as np

from keras_sam._validation import (
    check_int,
    check_non_negative_float,
    check_positive_float,
    check_unit_interval,
)
from keras_sam.hessian.curvature import _prepare
from keras_sam.hessian.linalg import _lanczos, _rng
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE

DEFAULT_MAX_EXACT_SAMPLES = 64
"""Probe sets up to this size use exact per-sample products in
`linear_stability` and `noise_alignment`."""

DEFAULT_STABILITY_TOLERANCE = 1e-3
"""`linear_stability`'s default `tolerance`: `sgd_stable` is
`sgd_growth <= DEFAULT_STABILITY_TOLERANCE`."""


def gd_stability_threshold(learning_rate, momentum=0.0, nesterov=False):
    """The largest Hessian eigenvalue at which GD is linearly stable.

    Gradient descent with learning rate `lr` on a quadratic with curvature
    `a` is stable iff `lr * a <= 2`; with heavy-ball momentum `beta` (Keras
    `SGD(momentum=beta)`) iff `lr * a <= 2 (1 + beta)`; with Nesterov
    momentum as Keras writes it (`SGD(momentum=beta, nesterov=True)`) iff
    `lr * a <= 2 (1 + beta) / (1 + 2 beta)`.

    Args:
        learning_rate: Positive float.
        momentum: Float in [0, 1). Defaults to `0.0`.
        nesterov: Boolean. Defaults to `False`.

    Returns:
        The threshold on the sharpness, a float.
    """
    learning_rate = check_positive_float("learning_rate", learning_rate)
    momentum = check_unit_interval("momentum", momentum)
    threshold = 2.0 * (1.0 + momentum) / learning_rate
    if nesterov:
        threshold /= 1.0 + 2.0 * momentum
    return threshold


def _finite_population_factor(population, batch_size):
    """`(N - B) / (B (N - 1))`: the variance of a mean of `B` draws without
    replacement from `N` items, over the variance of one draw."""
    if population <= 1:
        return 0.0
    return (population - batch_size) / (batch_size * (population - 1))


def _noise_plan(num_samples, batch_size, max_exact_samples, num_batches):
    """Returns `(exact, b, count)`: the sets of probe samples that stand
    for SGD's batches, `count` sets of `b` samples (see `_NoiseBatches`)."""
    if num_samples <= max_exact_samples:
        return True, 1, num_samples
    size = batch_size if batch_size < num_samples else num_samples // 2
    count = num_batches or max(8, -(-num_samples // size))
    return False, size, count


class _NoiseBatches:
    """Sets of probe samples giving `E[H_b^2]` and the gradient noise.

    Exact mode: the `n` single samples (`b = 1`, all of them). Sampled
    mode: `count` sets of `b` samples, consecutive batches of random
    permutations, fixed for the call. The mean of a statistic over the
    sets estimates (exactly, in exact mode) its expectation over
    uniformly random `b`-sets of the probe set; a per-sample variance is
    the variance of the set means over `factor = (n - b) / (b (n - 1))`.
    """

    def __init__(
        self, curvature, batch_size, max_exact_samples, num_batches, rng
    ):
        n = curvature.probe.num_samples
        self.exact, size, count = _noise_plan(
            n, batch_size, max_exact_samples, num_batches
        )
        if self.exact:
            self.index_sets = [np.array([i]) for i in range(n)]
        else:
            # Consecutive batches of random permutations (epochs, the
            # remainder dropped): each batch is a uniformly random b-set,
            # and every sample appears about equally often, which
            # lowers the variance severalfold against independent draws.
            self.index_sets = []
            while len(self.index_sets) < count:
                order = rng.permutation(n)
                self.index_sets += [
                    np.sort(order[start : start + size])
                    for start in range(0, n - size + 1, size)
                ]
            self.index_sets = self.index_sets[:count]
        self.factor = _finite_population_factor(n, size)
        self.curvature = curvature
        self.batches = [curvature.batches(s) for s in self.index_sets]

    def squared_terms(self, v):
        """Returns `(H v, H^2 v, mean over the sets of H_b^2 v)`."""
        hvp = self.curvature.hvp
        if self.exact:
            singles = [hvp(v, b) for b in self.batches]
            hv = np.mean(singles, axis=0)
            mean_square = np.mean(
                [hvp(u, b) for u, b in zip(singles, self.batches)], axis=0
            )
        else:
            hv = hvp(v)
            mean_square = np.mean(
                [hvp(hvp(v, b), b) for b in self.batches], axis=0
            )
        return hv, hvp(hv), mean_square

    def sigma(self, v):
        """`Sigma v`, the per-sample Hessians' variance applied to `v`."""
        if self.factor == 0.0:
            return np.zeros(self.curvature.dim)
        _, h2v, mean_square = self.squared_terms(v)
        return (mean_square - h2v) / self.factor


def _growth_operator(noise, learning_rate, train_factor):
    """`v -> (M - I) v = -2 lr H v + lr^2 (H^2 v + train_factor Sigma v)`,
    with `train_factor = (N - B) / (B (N - 1))` of the training set."""
    hvp = noise.curvature.hvp

    def growth(v):
        if train_factor == 0.0 or noise.factor == 0.0:
            hv = hvp(v)
            second = hvp(hv)
        else:
            hv, h2v, mean_square = noise.squared_terms(v)
            second = h2v + train_factor * (mean_square - h2v) / noise.factor
        return -2.0 * learning_rate * hv + learning_rate**2 * second

    return growth


def linear_stability(
    model,
    data,
    learning_rate,
    batch_size,
    momentum=0.0,
    dataset_size=None,
    *,
    nesterov=False,
    num_iterations=20,
    max_exact_samples=DEFAULT_MAX_EXACT_SAMPLES,
    num_noise_batches=None,
    tolerance=DEFAULT_STABILITY_TOLERANCE,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Measures whether GD and SGD are linearly stable at the weights.

    Near a minimum, SGD with learning rate `lr` and batch size `B` drawn
    without replacement from `N` samples is stable in mean square if (Wu,
    Ma & E, 2018)

        lambda_max(M) <= 1,
        M = (I - lr H)^2 + lr^2 (N - B) / (B (N - 1)) Sigma,

    where `Sigma = mean_i H_i^2 - H^2` is the variance of the per-sample
    Hessians (not the gradient-noise covariance, which vanishes at an
    interpolating minimum). The condition is sufficient, and exact when
    the `H_i` commute. Since `E[H_B^2] = H^2 + (N - B)/(B (N - 1)) Sigma`
    over random batches, `M = E[(I - lr H_B)^2]` and `M v` needs only
    Hessian-vector products of batches, no per-sample gradients.
    Over-parameterized networks have flat directions where `M` is the
    identity, so `lambda_max(M) >= 1` always: the growth
    `lambda_max(M - I)` is measured by Lanczos on `M - I`, and SGD is
    called stable when it is at most `tolerance`. For one parameter and
    `B = 1` the condition reads `(1 - lr a)^2 + lr^2 s^2 <= 1`, i.e.
    `a + s^2 / a <= 2 / lr` (not the `a <= 2 (1 - s) / lr` sometimes
    quoted). It implies `lr a <= 2` and `s <= sqrt(B (N - 1) / (N - B))
    / lr`.

    How `Sigma` is obtained. If the probe set has at most
    `max_exact_samples` samples, from the `n` per-sample products
    (batches of one): exact, at about `2 n` single-sample products per
    step. Otherwise from `num_noise_batches` random batches of `B`
    samples (of `n // 2` if `B >= n`), consecutive batches of random
    permutations of the probe set, fixed for the whole call so the
    operator is symmetric: an unbiased estimate of `M` and `Sigma`, whose
    statistical error shrinks like `1 / sqrt(num_noise_batches)`; since
    `lambda_max` is convex, the estimated growth is biased upward, that is
    toward calling SGD unstable. `N` (`dataset_size`) enters only the
    factor `(N - B) / (B (N - 1))`; the probe set stands for the data.

    Cost in passes over the probe set (Hessian-vector products of all
    `n` samples), with `m = num_iterations`: `m` for the sharpness, and
    `2 m (1 + c)` for each of `Sigma` and `M`, where
    `c = num_noise_batches * b / n` when sampled, and `c = 1/2` in exact
    mode, which makes its products one sample at a time (slower per
    sample than microbatches).

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`), samples of the
            training set.
        learning_rate: Positive float, the SGD learning rate.
        batch_size: Integer, the SGD batch size `B`, at most
            `dataset_size`.
        momentum: Float in [0, 1), heavy-ball momentum; it enters only
            `gd_stability_ratio` (`sgd_growth` is the criterion of SGD
            without momentum). Defaults to `0.0`.
        dataset_size: Integer, the training set size `N`, or `None` for
            the probe set's size. Defaults to `None`.
        nesterov: Boolean, Nesterov momentum (see
            `gd_stability_threshold`). Defaults to `False`.
        num_iterations: Integer, Lanczos steps per eigenvalue. Defaults to
            `20`.
        max_exact_samples: Integer, the largest probe set measured with
            exact per-sample products. Defaults to `64`.
        num_noise_batches: Integer or `None`, the number of random batches
            when not exact; `None` means `max(8, ceil(n / B))`. Defaults to
            `None`.
        tolerance: Non-negative float; `sgd_stable` is
            `sgd_growth <= tolerance`. Absorbs rounding and flat
            directions. Defaults to `1e-3`.
        seed: Integer seed (start vectors, noise batches) or `None`.
            Defaults to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict: `sharpness` (`a = lambda_max(H)`), `non_uniformity`
        (`s = sqrt(lambda_max(Sigma))`), `gd_stability_ratio` (`a` over
        `gd_stability_threshold`; GD is stable iff it is <= 1),
        `sgd_growth` (`lambda_max(M) - 1`), all floats, `sgd_stable` (a
        bool), and `exact` (bool, whether `Sigma` came from per-sample
        products).

    Example:

    >>> keras_sam.hessian.linear_stability(
    ...     model, (x, y), learning_rate=0.1, batch_size=32,
    ...     dataset_size=50_000, seed=0)

    References:
        - Wu, Ma & E, 2018. https://papers.nips.cc/paper/8049
    """
    learning_rate = check_positive_float("learning_rate", learning_rate)
    batch_size = check_int("batch_size", batch_size)
    momentum = check_unit_interval("momentum", momentum)
    num_iterations = check_int("num_iterations", num_iterations)
    max_exact_samples = check_int("max_exact_samples", max_exact_samples, 0)
    if num_noise_batches is not None:
        num_noise_batches = check_int("num_noise_batches", num_noise_batches)
    tolerance = check_non_negative_float("tolerance", tolerance)
    rng = _rng(seed)
    curvature = _prepare(model, data, probe_batch_size)
    population = _dataset_size(dataset_size, batch_size, curvature)
    noise = _NoiseBatches(
        curvature, batch_size, max_exact_samples, num_noise_batches, rng
    )
    growth_operator = _growth_operator(
        noise,
        learning_rate,
        _finite_population_factor(population, batch_size),
    )
    dim = curvature.dim
    sharpness = float(_lanczos(curvature.hvp, dim, num_iterations, rng)[-1])
    sigma_top = float(_lanczos(noise.sigma, dim, num_iterations, rng)[-1])
    growth = float(_lanczos(growth_operator, dim, num_iterations, rng)[-1])
    threshold = gd_stability_threshold(learning_rate, momentum, nesterov)
    return {
        "sharpness": sharpness,
        "non_uniformity": math.sqrt(max(sigma_top, 0.0)),
        "gd_stability_ratio": sharpness / threshold,
        "sgd_growth": growth,
        "sgd_stable": bool(growth <= tolerance),
        "exact": bool(noise.exact),
    }


def _dataset_size(dataset_size, batch_size, curvature):
    if dataset_size is None:
        population = curvature.probe.num_samples
        if batch_size > population:
            raise ValueError(
                f"Argument `batch_size` ({batch_size}) is larger than the "
                f"data ({population} probe samples). Pass `dataset_size`, "
                "the training set's size, if the probe set is a subset. "
                f"Received: batch_size={batch_size}."
            )
        return population
    population = check_int("dataset_size", dataset_size)
    if batch_size > population:
        raise ValueError(
            f"Argument `batch_size` must be at most `dataset_size`. "
            f"Received: batch_size={batch_size}, "
            f"dataset_size={population}."
        )
    return population
