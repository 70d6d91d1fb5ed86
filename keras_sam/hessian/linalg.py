"""Linear algebra on a Hessian given as a product `v -> H v`: Lanczos
with full reorthogonalization (float64) and Hutchinson's trace."""

import math

import numpy as np
from scipy import linalg as scipy_linalg

from keras_sam._validation import is_integer


def _lanczos(matvec, dim, num_iterations, rng, return_vectors=False):
    """Ritz values of a symmetric operator after `num_iterations` products.

    Lanczos with full reorthogonalization (twice, classical Gram-Schmidt)
    in float64. On an invariant subspace it restarts with a random vector
    orthogonal to the basis, so repeated eigenvalues are found too.

    Args:
        matvec: A function mapping a float64 vector of length `dim` to
            the operator applied to it.
        dim: The dimension of the operator.
        num_iterations: The number of products (capped at `dim`).
        rng: A `numpy.random.Generator` for the start vectors.
        return_vectors: Boolean, also return the Ritz vectors. Defaults to
            `False`.

    Returns:
        The Ritz values, a float64 NumPy array in ascending order; with
        `return_vectors`, a pair `(values, vectors)`, `vectors[:, j]` the
        unit Ritz vector of `values[j]` (orthonormal columns).
    """
    steps = min(num_iterations, dim)
    basis = np.zeros((steps, dim))
    alphas = np.zeros(steps)
    betas = np.zeros(max(steps - 1, 0))
    vector = _random_unit(rng, dim, basis[:0])
    scale = 0.0
    for j in range(steps):
        basis[j] = vector
        product = np.asarray(matvec(vector), dtype=np.float64)
        alphas[j] = product @ vector
        scale = max(scale, np.linalg.norm(product))
        for _ in range(2):
            product -= basis[: j + 1].T @ (basis[: j + 1] @ product)
        if j == steps - 1:
            break
        beta = np.linalg.norm(product)
        if beta <= 1e-10 * scale:
            vector = _random_unit(rng, dim, basis[: j + 1])
            betas[j] = 0.0
        else:
            vector = product / beta
            betas[j] = beta
    if not return_vectors:
        return scipy_linalg.eigh_tridiagonal(alphas, betas, eigvals_only=True)
    values, coefficients = scipy_linalg.eigh_tridiagonal(alphas, betas)
    return values, basis.T @ coefficients


def _random_unit(rng, dim, basis):
    vector = rng.standard_normal(dim)
    for _ in range(2):
        vector -= basis.T @ (basis @ vector)
    return vector / np.linalg.norm(vector)


def _rng(seed):
    if seed is not None and not is_integer(seed):
        raise ValueError(
            f"Argument `seed` must be None or an integer. Received: "
            f"seed={seed!r}."
        )
    return np.random.default_rng(seed)


def _hutchinson(curvature, num_samples, rng):
    quadratic = np.zeros(num_samples)
    squared_norms = np.zeros(num_samples)
    for i in range(num_samples):
        z = rng.choice([-1.0, 1.0], size=curvature.dim)
        product = curvature.hvp(z)
        quadratic[i] = z @ product
        squared_norms[i] = product @ product
    stderr = (
        float(np.std(quadratic, ddof=1) / math.sqrt(num_samples))
        if num_samples > 1
        else float("nan")
    )
    return {
        "trace": float(np.mean(quadratic)),
        "trace_stderr": stderr,
        "frobenius_norm": float(math.sqrt(np.mean(squared_norms))),
    }
