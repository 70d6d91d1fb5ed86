"""Linear stability on matrices: closed-form thresholds and SGD's
second-moment map.

Pure NumPy on numbers and matrices, no model: the thresholds of GD and
SAM on a quadratic (`gd_stability_threshold`, `sam_stability_threshold`,
`sam_oscillation_amplitude`) and the mean-square growth of SGD, with or
without Keras's momentum, from per-sample Hessians
(`sgd_second_moment_growth`). `keras_sam.hessian.stability` measures the
same quantities on a Keras model.
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


def sam_stability_threshold(
    learning_rate,
    rho,
    momentum=0.0,
    nesterov=False,
    *,
    normalized=True,
    gradient_norm=None,
):
    """The largest Hessian eigenvalue at which SAM stays near a minimum.

    SAM's descent step uses the gradient at `w + eps`. On a quadratic
    loss `L(w) = (w - w*)^T H (w - w*) / 2`, with `x = w - w*`, that
    gradient is `H (x + eps)`, and Keras's optimizer (here `SGD` with
    `momentum` and `nesterov`) takes it in place of the plain gradient.
    Which threshold applies depends on the perturbation:

    - Un-normalized SAM, `eps = rho g = rho H x` (`normalized=False`): the
      step is linear, plain GD (or heavy-ball, Nesterov) on the matrix
      `H + rho H^2`, whose eigenvalues are `lambda (1 + rho lambda)`. It
      converges iff `lambda (1 + rho lambda) < T` for the top eigenvalue,
      `T = gd_stability_threshold(learning_rate, momentum, nesterov)`
      (`2 / lr` without momentum), i.e. `lambda < lambda*` with

          lambda* = (sqrt(1 + 4 rho T) - 1) / (2 rho).

    - SAM as Foret et al. and `keras_sam.SAMModel` write it,
      `eps = rho g / |g|` (`normalized=True`), at a minimum
      (`gradient_norm=None`): the perturbation has the fixed length
      `rho`, so it adds a bounded input `lr rho H g / |g|` to the linear
      step of GD on `H`; the iterates stay bounded iff GD's linear part
      is stable, `lambda < T`, and diverge above. Below, they do not
      converge to `w*`: they bounce across the minimum along the top
      eigenvector (Bartlett, Long & Bousquet, 2023), on the period-2
      orbit `x = +-A v` of `sam_oscillation_amplitude`. This function
      returns `T`.

    - Normalized SAM away from the minimum, at a point where the gradient
      has norm `|g| = gradient_norm`: Long & Bartlett's (2023) SAM edge of
      stability. Holding `|g|` fixed over a step, the update is GD on
      `H + rho H^2 / |g|`, unstable along an eigenvector once
      `lambda + rho lambda^2 / |g| > T`, i.e. above

          lambda* = |g| / (2 rho) (sqrt(1 + 4 rho T / |g|) - 1),

      which is `|g| / (2 rho) (sqrt(1 + 8 rho / (lr |g|)) - 1)` without
      momentum, below `T`, and falls to 0 with `|g|` (momentum enters
      through `T`, an extension of the paper's GD analysis). On the
      period-2 orbit of amplitude `A`, `|g| = lambda A` and `lambda*`
      equals `lambda`: the orbit sits exactly at this edge.

    Args:
        learning_rate: Positive float.
        rho: Non-negative float, SAM's radius `rho` (`0` gives GD's
            threshold).
        momentum: Float in [0, 1), the optimizer's momentum. Defaults to
            `0.0`.
        nesterov: Boolean. Defaults to `False`.
        normalized: Boolean, `eps = rho g / |g|` (SAM) or, if `False`,
            `eps = rho g` (un-normalized SAM). Defaults to `True`.
        gradient_norm: Positive float or `None`, `|g|` for the SAM edge
            of normalized SAM; `None` means at a minimum. Only with
            `normalized=True`. Defaults to `None`.

    Returns:
        The threshold on the sharpness `lambda_max(H)`, a float.

    Example:

    >>> keras_sam.hessian.sam_stability_threshold(0.1, rho=0.05)
    20.0
    >>> keras_sam.hessian.sam_stability_threshold(
    ...     0.1, rho=0.05, normalized=False)  # doctest: +ELLIPSIS
    12.36...

    References:
        - Foret et al., 2021. Sharpness-Aware Minimization for Efficiently
          Improving Generalization. https://arxiv.org/abs/2010.01412
        - Bartlett, Long & Bousquet, 2023. The Dynamics of
          Sharpness-Aware Minimization: Bouncing Across Ravines and
          Drifting Towards Wide Minima. JMLR 24(316).
          https://arxiv.org/abs/2210.01513
        - Long & Bartlett, 2024. Sharpness-Aware Minimization and the Edge
          of Stability. https://arxiv.org/abs/2309.12488
        - Agarwala & Dauphin, 2023. SAM operates far from home:
          eigenvalue regularization as a dynamical phenomenon.
          https://arxiv.org/abs/2302.08692
    """
    threshold = gd_stability_threshold(learning_rate, momentum, nesterov)
    rho = check_non_negative_float("rho", rho)
    check_bool("normalized", normalized)
    if gradient_norm is not None:
        if not normalized:
            raise ValueError(
                "Argument `gradient_norm` applies to normalized SAM only: "
                "un-normalized SAM's threshold does not depend on it. "
                f"Received: gradient_norm={gradient_norm!r}, "
                "normalized=False."
            )
        gradient_norm = check_positive_float("gradient_norm", gradient_norm)
    if rho == 0.0 or (normalized and gradient_norm is None):
        return threshold
    scale = 1.0 if not normalized else gradient_norm
    # The positive root of rho lambda^2 / scale + lambda = threshold,
    # written without cancellation.
    root = math.sqrt(1.0 + 4.0 * rho * threshold / scale)
    return 2.0 * threshold / (1.0 + root)


def sam_oscillation_amplitude(
    learning_rate, rho, sharpness, momentum=0.0, nesterov=False
):
    """The distance from the minimum at which SAM bounces, on a quadratic.

    Normalized SAM (`keras_sam.SAMModel`) with Keras's `SGD` on a
    quadratic with top eigenvalue `lambda` (eigenvector `v`) and
    `a = lr lambda` below `tau = lr * gd_stability_threshold(lr, momentum,
    nesterov)` has the period-2 orbit `x_t = (-1)^t A v` (its velocity
    `(-1)^t 2 A v` for heavy ball, `(-1)^t 2 A v / (1 + 2 beta)` for
    Nesterov) at

        A = a rho / (tau - a),

    which is `a rho / (2 - a)` without momentum (Bartlett, Long &
    Bousquet, 2023). Derivation without momentum: on `x = c v`,
    `g / |g| = sign(c) v`, so `c <- (1 - a) c - a rho sign(c)`, and
    `c = A`, `-A`, `A`, ... solves `-A = (1 - a) A - a rho`. With
    momentum the same substitution in Keras's update (see
    `sgd_second_moment_growth`) gives `tau - a` in the denominator. Along
    the other eigenvectors (eigenvalue `lambda_j < lambda`) the step
    multiplies the deviation by `1 - a_j - a_j^2 (2 - a) / a^2` (no
    momentum), of modulus below 1: the orbit is transversally stable.
    Without momentum the iterates were always seen to settle on it; with
    momentum 0.9 and `a` well below `tau` they can settle on other
    bounded orbits (period 4), reaching this one near the threshold.

    Args:
        learning_rate: Positive float.
        rho: Non-negative float, SAM's radius.
        sharpness: Positive float, `lambda_max(H)`.
        momentum: Float in [0, 1). Defaults to `0.0`.
        nesterov: Boolean. Defaults to `False`.

    Returns:
        `A`, a float; `inf` when `sharpness` is at or above
        `sam_stability_threshold(learning_rate, rho, momentum, nesterov)`
        (the iterates diverge).

    Example:

    >>> keras_sam.hessian.sam_oscillation_amplitude(
    ...     0.1, rho=0.05, sharpness=15.0)  # doctest: +ELLIPSIS
    0.15...

    References:
        - Bartlett, Long & Bousquet, 2023.
          https://arxiv.org/abs/2210.01513
    """
    threshold = gd_stability_threshold(learning_rate, momentum, nesterov)
    rho = check_non_negative_float("rho", rho)
    sharpness = check_positive_float("sharpness", sharpness)
    if sharpness >= threshold:
        return math.inf
    a, tau = learning_rate * sharpness, learning_rate * threshold
    return a * rho / (tau - a)


def finite_population_factor(population, batch_size):
    """`(N - B) / (B (N - 1))`: the variance of a mean of `B` draws without
    replacement from `N` items, over the variance of one draw."""
    if population <= 1:
        return 0.0
    return (population - batch_size) / (batch_size * (population - 1))


# Mean-square stability with momentum: the second-moment map -----------------

_DENSE_SECOND_MOMENT_SIZE = 1200
"""Second-moment maps on at most this many symmetric coordinates are built
as dense matrices (a few seconds at this size); larger ones are handed to
ARPACK as products. ARPACK agreed to 1e-12 in the tests, but converges
slowly when many eigenvalues crowd near the spectral radius (flat
directions put many near 1)."""


def _sgd_transition(mean_hessian, learning_rate, momentum, nesterov):
    """`(A, u)`: the mean transition matrix of SGD's linearised state and
    the block vector through which the batch Hessian enters it.

    The state is `x = w - w*` (`momentum == 0`) or `z = (x, v)`; one step
    is `z <- A_B z` with `A_B = P - lr (u e_1^T) (x) H_B`, so `A = E[A_B]`
    is `A_B` with `H_B` replaced by `H` (see `sgd_second_moment_growth`).
    """
    lr, beta = learning_rate, momentum
    eye = np.eye(len(mean_hessian))
    if beta == 0.0:
        return eye - lr * mean_hessian, np.ones(1)
    if nesterov:
        transition = np.block(
            [
                [eye - lr * (1.0 + beta) * mean_hessian, beta**2 * eye],
                [-lr * mean_hessian, beta * eye],
            ]
        )
        return transition, np.array([1.0 + beta, 1.0])
    transition = np.block(
        [
            [eye - lr * mean_hessian, beta * eye],
            [-lr * mean_hessian, beta * eye],
        ]
    )
    return transition, np.ones(2)


class SecondMomentMap:
    """`S -> E_B[A_B S A_B^T]` on symmetric `m x m` matrices, `m = k` or `2k`.

    `E_B[A_B S A_B^T] = A S A^T + lr^2 (u u^T) (x) D(S_11)`, where `S_11` is
    the `k x k` block of the weights and
    `D(X) = E_B[H_B X H_B] - H X H = noise_weight * (mean_s H_s X H_s -
    H X H)`, the `H_s` being the stacked `sample_hessians`.
    """

    def __init__(
        self,
        mean_hessian,
        sample_hessians,
        noise_weight,
        learning_rate,
        momentum,
        nesterov,
    ):
        self.mean_hessian = mean_hessian
        self.sample_hessians = sample_hessians
        self.noise_weight = noise_weight
        self.transition, u = _sgd_transition(
            mean_hessian, learning_rate, momentum, nesterov
        )
        self.coupling = learning_rate**2 * noise_weight * np.outer(u, u)
        self.k = len(mean_hessian)
        self.m = len(self.transition)
        self.rows, self.cols = np.triu_indices(self.m)

    def __call__(self, matrices):
        """Applies the map to a stack of symmetric matrices `(p, m, m)`."""
        a = self.transition
        out = a @ matrices @ a.T
        if self.noise_weight == 0.0 or self.sample_hessians is None:
            return out
        k, h = self.k, self.mean_hessian
        block = matrices[:, :k, :k]
        noise = np.zeros_like(block)
        for hs in self.sample_hessians:
            noise += hs @ block @ hs
        noise = noise / len(self.sample_hessians) - h @ block @ h
        blocks = self.coupling.shape[0]
        for i in range(blocks):
            for j in range(blocks):
                out[:, i * k : (i + 1) * k, j * k : (j + 1) * k] += (
                    self.coupling[i, j] * noise
                )
        return out

    @property
    def size(self):
        """The number of symmetric coordinates, `m (m + 1) / 2`."""
        return len(self.rows)

    def _to_matrices(self, coordinates):
        """Symmetric matrices from upper-triangle coordinates `(p, size)`."""
        matrices = np.zeros((len(coordinates), self.m, self.m))
        matrices[:, self.rows, self.cols] = coordinates
        matrices[:, self.cols, self.rows] = coordinates
        return matrices

    def spectral_radius(self):
        """The largest modulus of an eigenvalue of the map on symmetric
        matrices: dense for small maps, ARPACK for large ones."""
        if self.size > _DENSE_SECOND_MOMENT_SIZE:
            radius = self._arpack_radius()
            if radius is not None:
                return radius
        columns = self(self._to_matrices(np.eye(self.size)))
        matrix = columns[:, self.rows, self.cols].T
        return float(np.max(np.abs(np.linalg.eigvals(matrix))))

    def _arpack_radius(self):
        """The spectral radius by ARPACK, or `None` if it did not
        converge."""
        from scipy.sparse import linalg as sparse_linalg

        def matvec(coordinates):
            matrices = self._to_matrices(np.ravel(coordinates)[None])
            return self(matrices)[0, self.rows, self.cols]

        operator = sparse_linalg.LinearOperator(
            (self.size, self.size), matvec=matvec, dtype=np.float64
        )
        # Start from the identity: the map preserves the positive
        # semidefinite cone, where its spectral radius is attained.
        start = np.eye(self.m)[self.rows, self.cols]
        try:
            values = sparse_linalg.eigs(
                operator, k=6, which="LM", v0=start, return_eigenvectors=False
            )
        except sparse_linalg.ArpackNoConvergence:
            return None
        return float(np.max(np.abs(values)))


def sgd_second_moment_growth(
    sample_hessians,
    learning_rate,
    batch_size,
    dataset_size=None,
    momentum=0.0,
    nesterov=False,
):
    """The exact mean-square growth of SGD near a minimum, from dense Hessians.

    Keras's `SGD(learning_rate=lr, momentum=beta, nesterov=...)` updates
    its velocity `v` and the weights `w` as

        v <- beta v - lr g,    w <- w + v                (heavy ball)
        v <- beta v - lr g,    w <- w + beta v - lr g    (Nesterov, with
                                                          the new v)

    and, with `beta = 0`, `w <- w - lr g`. Near a minimum `w*` the batch
    gradient is `g = H_B x`, `x = w - w*`, `H_B` the Hessian of the batch
    loss, so the state `z = (x, v)` moves linearly, `z <- A_B z`, with

        A_B = [[I - lr H_B,  beta I], [-lr H_B, beta I]]              (heavy
              ball)
        A_B = [[I - lr (1 + beta) H_B, beta^2 I], [-lr H_B, beta I]]
              (Nesterov)

    and, without momentum, `A_B = I - lr H_B` acting on `x` alone. Both
    are `A_B = P - lr (u e_1^T) (x) H_B`, with `u = (1, 1)` (heavy ball) or
    `(1 + beta, 1)` (Nesterov). The batches of successive steps are
    independent, so the second moment `S_t = E[z_t z_t^T]` follows the
    linear map

        S <- Phi(S) = E_B[A_B S A_B^T]
                    = A S A^T + lr^2 (u u^T) (x) (E[H_B X H_B] - H X H),

    where `A = E[A_B]` (`H_B` replaced by `H`) and `X` is the weights'
    block `S_11` of `S`. For a batch of `B` samples drawn without
    replacement from `N`, `P(i in B) = B / N` and
    `P(i, j in B) = B (B - 1) / (N (N - 1))` for `i != j`, so

        E[H_B X H_B] = (1 / B^2) sum_ij P(i, j in B) H_i X H_j
                     = H X H + c (mean_i H_i X H_i - H X H),
        c = (N - B) / (B (N - 1)).

    `Phi` maps positive semidefinite matrices to positive semidefinite
    ones, so its spectral radius `rho(Phi)` is an eigenvalue with a
    positive semidefinite eigenvector; `E[|z_t|^2]` grows or decays like
    `rho(Phi)^t`, and SGD is stable in mean square iff `rho(Phi) <= 1`
    (strictly: `< 1`, or `= 1` on flat directions). This function returns
    the growth `rho(Phi) - 1`.

    Without momentum, `tr Phi(S) = tr(S M)` with `M = E[(I - lr H_B)^2] =
    (I - lr H)^2 + lr^2 c Sigma`, `Sigma = mean_i H_i^2 - H^2`; applied to
    the positive semidefinite top eigenvector this gives
    `rho(Phi) <= lambda_max(M)`: Wu, Ma & E's criterion
    `lambda_max(M) <= 1` (`linear_stability`'s `sgd_growth` at momentum 0)
    is a sufficient bound, equal to the exact value when the `H_i`
    commute (then `Phi(v v^T) = (v^T M v) v v^T` for their common top
    eigenvector `v`). With momentum there is no such bound, and the exact
    value is the one to use. With `c = 0` (full batch) and `k x k` `H`
    the spectral radius is `max |mu|^2` over the eigenvalues `mu` of `A`,
    which reproduces `gd_stability_threshold`.

    The map acts on symmetric `m x m` matrices, `m = 2 n` (`n` the number
    of parameters; `m = n` without momentum): it is built densely on the
    `m (m + 1) / 2` coordinates of the upper triangle and its eigenvalues
    computed directly while there are at most 1200 of them (`n <= 24`
    with momentum, `n <= 48` without; a few seconds), else the largest
    are found by ARPACK from products `S -> Phi(S)` (each `O(N n^3)`),
    which can take minutes when many eigenvalues are close to the
    largest.

    Args:
        sample_hessians: Array `(N, n, n)`, the Hessian of each sample's
            loss at the minimum (symmetrized), e.g. `2 x_i x_i^T` for
            Keras's `"mse"` on a linear model.
        learning_rate: Positive float.
        batch_size: Integer `B`, at most `dataset_size`.
        dataset_size: Integer `N`, or `None` for `len(sample_hessians)`.
            A larger `N` treats the given Hessians as a sample standing
            for the training set (only `c` changes). Defaults to `None`.
        momentum: Float in [0, 1). Defaults to `0.0`.
        nesterov: Boolean. Defaults to `False`.

    Returns:
        The growth `rho(Phi) - 1`, a float: SGD is stable in mean square
        iff it is at most 0.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> hessians = np.stack([2 * np.outer(row, row) for row in x])
    >>> keras_sam.hessian.sgd_second_moment_growth(
    ...     hessians, learning_rate=0.1, batch_size=2, momentum=0.9)

    References:
        - Wu, Ma & E, 2018. How SGD Selects the Global Minima in
          Over-parameterized Learning: A Dynamical Stability Perspective.
          https://papers.nips.cc/paper/8049
    """
    hessians = np.asarray(sample_hessians, dtype=np.float64)
    if hessians.ndim != 3 or hessians.shape[1] != hessians.shape[2]:
        raise ValueError(
            "Argument `sample_hessians` must be an array of shape "
            f"(N, n, n). Received shape {hessians.shape}."
        )
    if len(hessians) == 0 or not np.all(np.isfinite(hessians)):
        raise ValueError(
            "Argument `sample_hessians` must hold at least one Hessian, "
            f"all entries finite. Received shape {hessians.shape}."
        )
    learning_rate = check_positive_float("learning_rate", learning_rate)
    batch_size = check_int("batch_size", batch_size)
    momentum = check_unit_interval("momentum", momentum)
    check_bool("nesterov", nesterov)
    population = len(hessians) if dataset_size is None else dataset_size
    population = check_int("dataset_size", population)
    if batch_size > population:
        raise ValueError(
            "Argument `batch_size` must be at most `dataset_size` (the "
            "number of Hessians when it is None). Received: "
            f"batch_size={batch_size}, dataset_size={population}."
        )
    hessians = (hessians + np.swapaxes(hessians, 1, 2)) / 2.0
    noise_weight = finite_population_factor(population, batch_size)
    second_moment = SecondMomentMap(
        hessians.mean(axis=0), hessians, noise_weight,
        learning_rate, momentum, nesterov,
    )
    return second_moment.spectral_radius() - 1.0
