"""Linear stability measured on a model: GD, SGD with Keras momentum.

`linear_stability` measures at a Keras model's weights what
`keras_sam.hessian.stability_theory` computes from matrices: the
sharpness against GD's threshold, and SGD's mean-square growth from
Hessian-vector products of probe batches.
"""

import math

import numpy as np

from keras_sam._validation import (
    check_bool,
    check_int,
    check_non_negative_float,
    check_positive_float,
    check_unit_interval,
)
from keras_sam.hessian.curvature import prepare_curvature
from keras_sam.hessian.linalg import lanczos, make_rng
from keras_sam.hessian.noise_batches import (
    DEFAULT_MAX_EXACT_SAMPLES,
    NoiseBatches,
    check_dataset_size,
)
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE
from keras_sam.hessian.stability_theory import (
    SecondMomentMap,
    finite_population_factor,
    gd_stability_threshold,
)

DEFAULT_NUM_DIRECTIONS = 8
"""`linear_stability`'s default `num_directions`: the dimension of the
top Hessian eigenspace in which `sgd_growth_exact` is computed."""

DEFAULT_STABILITY_TOLERANCE = 1e-3
"""`linear_stability`'s default `tolerance`: `sgd_stable` is
`sgd_growth <= DEFAULT_STABILITY_TOLERANCE`."""


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
    num_directions=DEFAULT_NUM_DIRECTIONS,
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

    The exact growth, with and without momentum. The second moment of
    SGD's deviation (weights and velocity, with Keras's update) grows per
    step by the spectral radius of the map `Phi(S) = E_B[A_B S A_B^T]`
    (derived in `sgd_second_moment_growth`); `sgd_growth_exact` is that
    radius minus 1. Without momentum it is at most Wu et al.'s bound
    `lambda_max(M) - 1`, and equal to it when the `H_i` commute. With
    momentum (`momentum > 0`) there is no bound of Wu's kind, and
    `sgd_growth` is the exact value (Wu's criterion, which ignores
    momentum, is not computed).

    How the exact growth is computed. `Phi` acts on `2 n x 2 n` matrices
    for `n` parameters, far too many for a network, so it is restricted
    to a subspace: if the model has at most `num_directions` parameters,
    the whole space (exact); else the span `U` of the top
    `num_directions` Ritz vectors of `H` from Lanczos. The projected
    Hessians `U^T H_b U` of the same sets of probe samples that give
    `Sigma` (single samples, or random batches, see below) take
    `num_directions` Hessian-vector products per set, and the map of the
    projected problem gives `sgd_growth_exact` (see
    `sgd_second_moment_growth`). The projection keeps the dynamics in
    the directions of large curvature, where instability starts, and
    drops the coupling of those directions with the rest through the
    per-sample Hessians; it ignores flat directions, so its growth can
    be below 0 where the full map's is 0. Measured against the full map
    on a `Dense(4, tanh) -> Dense(1)` network (21 parameters) at an
    interpolating minimum of `"mse"`, 48 samples, `B = 4`
    (`benchmarks/stability_subspace.py`, `saved_results/
    stability_subspace/`): the learning rate at which the growth turns
    positive came out too large by 14%, 4.3%, 1.3% and 0.25% with 1, 2,
    4 and 8 directions without momentum, and by 250%, 55%, 8.6% and
    1.5% with momentum 0.9: the subspace is optimistic (it calls stable
    what is slightly unstable), and momentum needs more directions.
    Wu et al.'s bound, on the full space, came out 11% too small on the
    same network.

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
    `n` samples), with `m = num_iterations` and `k = num_directions`:
    `max(m, 2 k)` for the sharpness (and the subspace), `2 m (1 + c)` for
    `Sigma` and again for `M` (not computed with momentum), where
    `c = num_noise_batches * b / n` when sampled, and `c = 1/2` in exact
    mode, which makes its products one sample at a time (slower per
    sample than microbatches); and `k c` for the projected Hessians
    (`k` single-sample products per sample in exact mode).

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`), samples of the
            training set.
        learning_rate: Positive float, the SGD learning rate.
        batch_size: Integer, the SGD batch size `B`, at most
            `dataset_size`.
        momentum: Float in [0, 1), the momentum of Keras's `SGD`. It
            enters `gd_stability_ratio` and `sgd_growth_exact`; with
            `momentum > 0`, `sgd_growth` is `sgd_growth_exact`. Defaults
            to `0.0`.
        dataset_size: Integer, the training set size `N`, or `None` for
            the probe set's size. Defaults to `None`.
        nesterov: Boolean, Nesterov momentum as Keras writes it (see
            `gd_stability_threshold`). Defaults to `False`.
        num_iterations: Integer, Lanczos steps per eigenvalue. Defaults to
            `20`.
        num_directions: Integer, the dimension of the subspace in which
            `sgd_growth_exact` is computed; a model with at most this many
            parameters is measured exactly. Defaults to `8`.
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
        `sgd_growth` (`lambda_max(M) - 1` without momentum,
        `sgd_growth_exact` with it), `sgd_growth_exact` (the spectral
        radius of the second-moment map minus 1), all floats,
        `sgd_stable` (a bool, `sgd_growth <= tolerance`), `exact` (bool,
        whether `Sigma` and the projected Hessians came from per-sample
        products), and `growth_subspace_dim` (int, the dimension of the
        subspace of `sgd_growth_exact`: the number of parameters when it
        is exact).

    Example:

    >>> keras_sam.hessian.linear_stability(
    ...     model, (x, y), learning_rate=0.1, batch_size=32, momentum=0.9,
    ...     dataset_size=50_000, seed=0)

    References:
        - Wu, Ma & E, 2018. https://papers.nips.cc/paper/8049
    """
    learning_rate = check_positive_float("learning_rate", learning_rate)
    batch_size = check_int("batch_size", batch_size)
    momentum = check_unit_interval("momentum", momentum)
    check_bool("nesterov", nesterov)
    num_iterations = check_int("num_iterations", num_iterations)
    num_directions = check_int("num_directions", num_directions)
    max_exact_samples = check_int("max_exact_samples", max_exact_samples, 0)
    if num_noise_batches is not None:
        num_noise_batches = check_int("num_noise_batches", num_noise_batches)
    tolerance = check_non_negative_float("tolerance", tolerance)
    rng = make_rng(seed)
    curvature = prepare_curvature(model, data, probe_batch_size)
    population = check_dataset_size(dataset_size, batch_size, curvature)
    noise = NoiseBatches(
        curvature, batch_size, max_exact_samples, num_noise_batches, rng
    )
    train_factor = finite_population_factor(population, batch_size)
    dim = curvature.dim
    full_space = dim <= num_directions
    steps = (
        num_iterations
        if full_space
        else max(num_iterations, 2 * num_directions)
    )
    ritz_values, ritz_vectors = lanczos(
        curvature.hvp, dim, steps, rng, return_vectors=True
    )
    sharpness = float(ritz_values[-1])
    sigma_top = float(lanczos(noise.sigma, dim, num_iterations, rng)[-1])
    basis = np.eye(dim) if full_space else ritz_vectors[:, -num_directions:]
    exact_growth = _projected_growth(
        noise, basis, train_factor, learning_rate, momentum, nesterov
    )
    if momentum == 0.0:
        growth_operator = _growth_operator(noise, learning_rate, train_factor)
        growth = float(lanczos(growth_operator, dim, num_iterations, rng)[-1])
    else:
        growth = exact_growth
    threshold = gd_stability_threshold(learning_rate, momentum, nesterov)
    return {
        "sharpness": sharpness,
        "non_uniformity": math.sqrt(max(sigma_top, 0.0)),
        "gd_stability_ratio": sharpness / threshold,
        "sgd_growth": growth,
        "sgd_growth_exact": exact_growth,
        "sgd_stable": bool(growth <= tolerance),
        "exact": bool(noise.exact),
        "growth_subspace_dim": int(basis.shape[1]),
    }


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


def _projected_growth(
    noise, basis, train_factor, learning_rate, momentum, nesterov
):
    """`sgd_growth_exact` in the span of the orthonormal columns of
    `basis`: the second-moment map of the Hessians projected on it."""
    curvature = noise.curvature

    def projected(batches):
        columns = [curvature.hvp(u, batches) for u in basis.T]
        matrix = basis.T @ np.stack(columns, axis=1)
        return (matrix + matrix.T) / 2.0

    noise_weight = 0.0
    if train_factor > 0.0 and noise.factor > 0.0:
        noise_weight = train_factor / noise.factor
    sample_hessians = None
    if noise_weight > 0.0:
        sample_hessians = np.stack([projected(b) for b in noise.batches])
    if noise.exact and sample_hessians is not None:
        mean_hessian = sample_hessians.mean(axis=0)
    else:
        mean_hessian = projected(None)
    second_moment = SecondMomentMap(
        mean_hessian, sample_hessians, noise_weight,
        learning_rate, momentum, nesterov,
    )
    return second_moment.spectral_radius() - 1.0
