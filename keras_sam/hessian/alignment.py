"""The alignment of SGD noise with the Hessian (Wu, Wang & Su, 2022)."""


import numpy as np

from keras_sam._validation import check_int
from keras_sam.hessian.curvature import prepare_curvature
from keras_sam.hessian.linalg import hutchinson, make_rng
from keras_sam.hessian.noise_batches import (
    DEFAULT_MAX_EXACT_SAMPLES,
    NoiseBatches,
    check_dataset_size,
)
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE
from keras_sam.hessian.stability_theory import finite_population_factor


def noise_alignment(
    model,
    data,
    batch_size,
    dataset_size=None,
    *,
    num_samples=32,
    max_exact_samples=DEFAULT_MAX_EXACT_SAMPLES,
    num_noise_batches=None,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Measures how SGD's gradient noise aligns with the curvature.

    With per-sample gradients `g_i` and `g` their mean, the per-sample
    gradient covariance is `C = mean_i (g_i - g)(g_i - g)^T`, and that of a
    batch of `B` samples drawn without replacement from `N` is
    `C_B = (N - B) / (B (N - 1)) C`. The term `lr^2 / 2 Tr(H C_B)` is what
    the noise adds to the expected loss after one SGD step. Wu, Wang & Su
    (2022) show that the noise is aligned with the curvature,
    `Tr(H C) >= mu 2 L |H|_F^2` with a factor `mu` of order one, for the
    square loss near a minimum (where `H` is close to the Gauss-Newton
    matrix); this function returns `mu = Tr(H C) / (2 L |H|_F^2)`. The
    ratio does not change when the loss is scaled, so Keras's `"mse"`
    (without `1/2`) gives the paper's value.

    `Tr(H C)` is `mean_i (g_i - g)^T H (g_i - g)` over single samples when
    the probe set has at most `max_exact_samples` samples (exact, `n`
    Hessian-vector products over the probe set), else the same average
    over `num_noise_batches` random batches of `b = B` samples (`n // 2`
    if `B >= n`; batches of random permutations), divided by
    `(n - b) / (b (n - 1))`: unbiased. `|H|_F^2` is
    Hutchinson's estimate from `num_samples` products.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        batch_size: Integer, the SGD batch size `B`.
        dataset_size: Integer `N`, or `None` for the probe set's size.
            Defaults to `None`.
        num_samples: Integer, Hutchinson vectors for `|H|_F`. Defaults to
            `32`.
        max_exact_samples: Integer, the largest probe set measured with
            per-sample gradients. Defaults to `64`.
        num_noise_batches: Integer or `None`; `None` means
            `max(8, ceil(n / B))`. Defaults to `None`.
        seed: Integer seed or `None`. Defaults to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of floats: `noise_trace` (`Tr(H C_B)`), `noise_alignment`
        (`mu`), `loss` (`L`), `gradient_noise` (`Tr(C_B)`),
        `frobenius_norm` (`|H|_F`), and `exact` (bool).

    Example:

    >>> keras_sam.hessian.noise_alignment(model, (x, y), batch_size=32)

    References:
        - Wu, Wang & Su, 2022. https://arxiv.org/abs/2207.02628
    """
    batch_size = check_int("batch_size", batch_size)
    num_samples = check_int("num_samples", num_samples)
    max_exact_samples = check_int("max_exact_samples", max_exact_samples, 0)
    if num_noise_batches is not None:
        num_noise_batches = check_int("num_noise_batches", num_noise_batches)
    rng = make_rng(seed)
    curvature = prepare_curvature(model, data, probe_batch_size)
    population = check_dataset_size(dataset_size, batch_size, curvature)
    train_factor = finite_population_factor(population, batch_size)
    noise = NoiseBatches(
        curvature, batch_size, max_exact_samples, num_noise_batches, rng
    )
    mean_gradient = curvature.gradient()
    quadratic, squared = [], []
    for batches in noise.batches:
        deviation = curvature.gradient(batches) - mean_gradient
        quadratic.append(deviation @ curvature.hvp(deviation))
        squared.append(deviation @ deviation)
    if noise.factor == 0.0:
        curvature_noise = gradient_noise = 0.0
    else:
        curvature_noise = float(np.mean(quadratic)) / noise.factor
        gradient_noise = float(np.mean(squared)) / noise.factor
    frobenius = hutchinson(curvature, num_samples, rng)["frobenius_norm"]
    loss = curvature.loss()
    denominator = 2.0 * loss * frobenius**2
    return {
        "noise_trace": train_factor * curvature_noise,
        "noise_alignment": (
            curvature_noise / denominator if denominator > 0 else float("nan")
        ),
        "loss": loss,
        "gradient_noise": train_factor * gradient_noise,
        "frobenius_norm": frobenius,
        "exact": bool(noise.exact),
    }
