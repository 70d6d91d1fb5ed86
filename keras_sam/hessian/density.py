"""The eigenvalue density of the loss Hessian by stochastic Lanczos
quadrature, and its Gaussian smoothing for plots."""

import math

import numpy as np

from keras_sam._validation import (
    check_int,
    check_positive_float,
    short_repr,
)
from keras_sam.hessian.linalg import lanczos_ritz_pairs, make_rng
from keras_sam.hessian.operators import prepare_operator
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE


def eigenvalue_density(
    model,
    data,
    num_steps=30,
    num_runs=4,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
    operator="hessian",
    layers=None,
):
    """Estimates the eigenvalue density of the loss Hessian (SLQ).

    With `operator` set, that of the Gauss-Newton or Fisher matrix
    instead (see `curvature_vector_product`); with `layers`, that of the
    diagonal block of the chosen layers' variables (`n` is then the
    block's size).

    Stochastic Lanczos quadrature: for each of `num_runs` Rademacher
    vectors `v` (entries +-1, scaled to unit length), `num_steps` Lanczos
    steps from `v` give the tridiagonal `T = Q diag(theta) Q^T`. Its
    eigenvalues `theta` (the nodes) and the squared first components of
    its eigenvectors `Q[0, :]^2` (the weights, summing to 1) are the
    Gauss quadrature of the spectral measure `sum_i (v . u_i)^2
    delta(t - lambda_i)` of `H = sum_i lambda_i u_i u_i^T` along `v`, so
    `sum_j weights_j f(nodes_j)` approximates `v^T f(H) v`, exactly for
    polynomials `f` of degree below `2 num_steps`. Its expectation over
    `v` is `Tr f(H) / n` (`n` parameters): the runs average to the density
    of the `n` eigenvalues, each of mass `1 / n`. In particular
    `sum_j weights_j nodes_j = v^T H v`, whose mean over runs estimates
    `Tr(H) / n`. The nodes lie in `[lambda_min, lambda_max]`; the
    largest converges to `lambda_max` as in `top_eigenvalues`.

    Each step is one Hessian-vector product over `data`: the call costs
    `num_steps * num_runs` products. The Lanczos recurrence runs in
    float64 with full reorthogonalization (no ghost eigenvalues). If the
    Krylov space of `v` is exhausted before `num_steps` steps (a Hessian
    with few distinct eigenvalues, or `num_steps >= n`), Lanczos goes on
    in an orthogonal direction and the extra nodes get weight 0.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        num_steps: Integer, Lanczos steps per run (capped at the number
            of trainable parameters). Defaults to `30`.
        num_runs: Integer, the number of random start vectors. Defaults
            to `4`.
        seed: Integer seed of the start vectors, or `None`. Defaults to
            `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        operator: The curvature matrix: `"hessian"`, `"ggn"`, `"fisher"`
            or `"empirical_fisher"` (see `curvature_vector_product`).
            Defaults to `"hessian"`.
        layers: `None` for all trainable variables, or the block of the
            variables of the layers chosen as `SAMModel(perturb=...)`
            chooses them (a layer class, a tuple of layer classes or a
            callable `layer -> bool`). Defaults to `None`.

    Returns:
        A dict of float64 NumPy arrays of shape `(num_runs, m)`, `m =
        min(num_steps, n)`: `nodes` (each run's in ascending order) and
        `weights` (each row sums to 1). `smoothed_density` turns it into
        a curve.

    Example:

    >>> density = keras_sam.hessian.eigenvalue_density(
    ...     model, (x, y), num_steps=40, num_runs=4, seed=0
    ... )
    >>> density["nodes"].shape, density["weights"].sum(axis=1)
    ((4, 40), array([1., 1., 1., 1.]))
    >>> curve = keras_sam.hessian.smoothed_density(density)
    >>> plt.semilogy(curve["grid"], curve["density"])

    References:
        - Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural
          Net Optimization via Hessian Eigenvalue Density.
          https://arxiv.org/abs/1901.10159
        - Yao et al., 2020. PyHessian. https://arxiv.org/abs/1912.07145
        - Golub & Meurant, 2010. Matrices, Moments and Quadrature with
          Applications. https://doi.org/10.1515/9781400833887
    """
    num_steps = check_int("num_steps", num_steps)
    num_runs = check_int("num_runs", num_runs)
    rng = make_rng(seed)
    curvature = prepare_operator(
        model, data, probe_batch_size, operator, layers
    )
    nodes, weights = [], []
    for _ in range(num_runs):
        start = rng.choice([-1.0, 1.0], size=curvature.dim)
        values, _, eigenvectors = lanczos_ritz_pairs(
            curvature.hvp, curvature.dim, num_steps, rng, start=start
        )
        nodes.append(values)
        weights.append(eigenvectors[0] ** 2)
    return {"nodes": np.array(nodes), "weights": np.array(weights)}


def smoothed_density(density, grid=None, num_points=1000, sigma=None):
    """Smooths a quadrature density with a Gaussian, for plotting.

    `phi(t) = mean_runs sum_j weights_j N(t; nodes_j, sigma^2)`, the
    run-averaged quadrature with each node replaced by a normal density
    of standard deviation `sigma` (Ghorbani et al., 2019, Section 3). It
    integrates to 1 over the real line; on a grid that covers the nodes
    with a margin of a few `sigma`, `sum(phi) * step` is 1 up to the
    grid's resolution.

    Args:
        density: A dict with `nodes` and `weights`, arrays of the same
            shape `(num_runs, m)` or `(m,)`, such as `eigenvalue_density`
            returns.
        grid: A 1-D array of the points to evaluate at, or `None` for
            `num_points` evenly spaced points from the smallest node minus
            `5 sigma` to the largest plus `5 sigma`. Defaults to `None`.
        num_points: Integer >= 2, the size of the default grid. Defaults
            to `1000`.
        sigma: Positive float, the width of the Gaussians, or `None` for
            1% of the nodes' range (of the largest node's magnitude if all
            nodes coincide; 1 if they are all 0). Defaults to `None`.

    Returns:
        A dict of float64 NumPy arrays of the same length: `grid` and
        `density`.

    Example:

    >>> curve = keras_sam.hessian.smoothed_density(density, sigma=0.1)
    >>> plt.semilogy(curve["grid"], curve["density"] + 1e-7)
    """
    nodes, weights = _quadrature_arrays(density)
    num_points = check_int("num_points", num_points, minimum=2)
    if sigma is None:
        sigma = _default_sigma(nodes)
    else:
        sigma = check_positive_float("sigma", sigma)
    if grid is None:
        grid = np.linspace(
            nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, num_points
        )
    else:
        grid = _check_grid(grid)
    gaussians = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
    gaussians /= sigma * math.sqrt(2 * math.pi)
    mass = weights / weights.shape[0]
    return {"grid": grid, "density": gaussians @ mass.ravel()}


def _quadrature_arrays(density):
    """`(nodes.ravel(), weights)` with `weights` as `(num_runs, m)`."""
    if not isinstance(density, dict) or not {"nodes", "weights"} <= set(
        density
    ):
        raise ValueError(
            "Argument `density` must be a dict with `nodes` and `weights` "
            "(what `eigenvalue_density` returns). Received: "
            f"density={short_repr(density)}."
        )
    nodes = np.asarray(density["nodes"], np.float64)
    weights = np.asarray(density["weights"], np.float64)
    if nodes.shape != weights.shape or nodes.ndim not in (1, 2):
        raise ValueError(
            "Argument `density` must hold `nodes` and `weights` of the same "
            "shape, `(num_runs, num_steps)` or `(num_steps,)`. Received: "
            f"shapes {nodes.shape} and {weights.shape}."
        )
    if nodes.size == 0 or not np.all(np.isfinite(nodes)):
        raise ValueError(
            "Argument `density` must have finite, non-empty `nodes`. "
            f"Received: nodes={short_repr(nodes)}."
        )
    return nodes.ravel(), weights.reshape(-1, nodes.shape[-1])


def _default_sigma(nodes):
    spread = nodes.max() - nodes.min()
    if spread > 0:
        return 0.01 * spread
    magnitude = np.abs(nodes).max()
    return 0.01 * magnitude if magnitude > 0 else 1.0


def _check_grid(grid):
    array = np.asarray(grid, np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(
            "Argument `grid` must be a non-empty 1-D array of finite "
            f"numbers or None. Received: grid={short_repr(grid)}."
        )
    return array
