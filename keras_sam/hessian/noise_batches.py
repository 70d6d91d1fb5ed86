"""Sets of probe samples standing for SGD's batches (internal).

Shared by `linear_stability` (`Sigma` and the growth operator),
`noise_alignment` and their callbacks (which plan the cost of a
measurement with `noise_plan`).
"""

import numpy as np

from keras_sam._validation import check_int
from keras_sam.hessian.stability_theory import finite_population_factor

DEFAULT_MAX_EXACT_SAMPLES = 64
"""Probe sets up to this size use exact per-sample products in
`linear_stability` and `noise_alignment`."""


def noise_plan(num_samples, batch_size, max_exact_samples, num_batches):
    """Returns `(exact, b, count)`: the sets of probe samples that stand
    for SGD's batches, `count` sets of `b` samples (see `NoiseBatches`)."""
    if num_samples <= max_exact_samples:
        return True, 1, num_samples
    size = batch_size if batch_size < num_samples else num_samples // 2
    count = num_batches or max(8, -(-num_samples // size))
    return False, size, count


class NoiseBatches:
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
        self.exact, size, count = noise_plan(
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
        self.factor = finite_population_factor(n, size)
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


def check_dataset_size(dataset_size, batch_size, curvature):
    """The training set size `N`: `dataset_size`, or the probe set's size
    for `None`; raises `ValueError` when `batch_size` exceeds it."""
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
