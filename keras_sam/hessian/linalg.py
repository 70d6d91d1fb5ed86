"""Linear algebra on a Hessian given as a product `v -> H v`: Lanczos
with full reorthogonalization (float64), Hutchinson's and Hutch++'s
traces.

Internal to `keras_sam.hessian`, `keras_sam.landscape` and the callbacks:
its public names are what those modules share; none is part of the
package's API.
"""

import math

import numpy as np
from scipy import linalg as scipy_linalg

from keras_sam._validation import is_integer


def lanczos(matvec, dim, num_iterations, rng, return_vectors=False):
    """Ritz values of a symmetric operator after `num_iterations` products.

    Lanczos with full reorthogonalization (twice, classical Gram-Schmidt)
    in float64 (see `_lanczos_tridiagonal`).

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
    if return_vectors:
        values, vectors, _ = lanczos_ritz_pairs(
            matvec, dim, num_iterations, rng
        )
        return values, vectors
    alphas, betas, _ = _lanczos_tridiagonal(matvec, dim, num_iterations, rng)
    return scipy_linalg.eigh_tridiagonal(alphas, betas, eigvals_only=True)


def lanczos_ritz_pairs(matvec, dim, num_iterations, rng, start=None):
    """Ritz values, Ritz vectors and the tridiagonal's eigenvectors.

    Returns `(values, vectors, eigenvectors)`: `values` ascending,
    `vectors[:, i]` the unit Ritz vector of `values[i]` (the Lanczos
    basis times the tridiagonal's `i`-th eigenvector) and `eigenvectors`
    those of the tridiagonal `T = Q diag(values) Q^T`, whose first row
    gives the Gauss quadrature weights `Q[0, :]^2` of the start vector.
    """
    alphas, betas, basis = _lanczos_tridiagonal(
        matvec, dim, num_iterations, rng, start
    )
    values, eigenvectors = scipy_linalg.eigh_tridiagonal(alphas, betas)
    return values, basis.T @ eigenvectors, eigenvectors


def _lanczos_tridiagonal(matvec, dim, num_iterations, rng, start=None):
    """The Lanczos tridiagonal of a symmetric operator and its basis.

    Lanczos with full reorthogonalization (twice, classical Gram-Schmidt)
    in float64. On an invariant subspace it restarts with a random vector
    orthogonal to the basis (the off-diagonal entry is then 0), so
    repeated eigenvalues are found too.

    Args:
        matvec: A function mapping a float64 vector of length `dim` to
            the operator applied to it.
        dim: The dimension of the operator.
        num_iterations: The number of products (capped at `dim`).
        rng: A `numpy.random.Generator` for the start vectors.
        start: The first basis vector (normalized here), or `None` for a
            random unit Gaussian vector drawn from `rng`.

    Returns:
        `(alphas, betas, basis)`: the diagonal and off-diagonal of the
        tridiagonal `T`, and the orthonormal basis, one vector per row.
    """
    steps = min(num_iterations, dim)
    basis = np.zeros((steps, dim))
    alphas = np.zeros(steps)
    betas = np.zeros(max(steps - 1, 0))
    if start is None:
        vector = _random_unit(rng, dim, basis[:0])
    else:
        vector = np.asarray(start, np.float64) / np.linalg.norm(start)
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
    return alphas, betas, basis


def _random_unit(rng, dim, basis):
    vector = rng.standard_normal(dim)
    for _ in range(2):
        vector -= basis.T @ (basis @ vector)
    return vector / np.linalg.norm(vector)


def make_rng(seed):
    """A `numpy.random.Generator` from an integer seed or `None`; raises
    `ValueError` naming `seed` for anything else."""
    if seed is not None and not is_integer(seed):
        raise ValueError(
            f"Argument `seed` must be None or an integer. Received: "
            f"seed={seed!r}."
        )
    return np.random.default_rng(seed)


def hutchinson(curvature, num_samples, rng, blocks=None):
    """Hutchinson's trace and Frobenius norm; per block if `blocks`.

    `blocks`: `{name: flat indices}`; block `B`'s estimate is
    `z_B . (H z)_B` for the same Rademacher `z`, so the block estimates
    sum to `z^T H z`, the whole trace's estimate.
    """
    quadratic = np.zeros(num_samples)
    squared_norms = np.zeros(num_samples)
    block_quadratic = {name: np.zeros(num_samples) for name in blocks or {}}
    for i in range(num_samples):
        z = rng.choice([-1.0, 1.0], size=curvature.dim)
        product = curvature.hvp(z)
        quadratic[i] = z @ product
        squared_norms[i] = product @ product
        for name, indices in (blocks or {}).items():
            block_quadratic[name][i] = z[indices] @ product[indices]
    result = {
        "trace": float(np.mean(quadratic)),
        "trace_stderr": standard_error(quadratic),
        "frobenius_norm": float(math.sqrt(np.mean(squared_norms))),
    }
    if blocks is not None:
        result["per_layer"] = {
            name: {
                "trace": float(np.mean(values)),
                "trace_stderr": standard_error(values),
            }
            for name, values in block_quadratic.items()
        }
    return result


def hutch_plus_plus(curvature, num_samples, rng):
    """Hutch++ (Meyer et al., 2021) with `num_samples` products.

    `k = num_samples // 3` products `H S` with a Rademacher sketch `S`,
    `k` products `H Q` with the orthonormal basis `Q` of `H S`, and the
    remaining `num_samples - 2k` Rademacher vectors projected off `Q` for
    Hutchinson on `(I - Q Q^T) H (I - Q Q^T)`. Returns the dict of
    `hutchinson` (no blocks): `trace_stderr` is the residual part's
    standard error, `frobenius_norm` the estimate `mean |H s|^2` over the
    sketch's columns.
    """
    dim = curvature.dim
    sketch_size = min(num_samples // 3, dim)
    residual_size = num_samples - 2 * sketch_size
    sketch = rng.choice([-1.0, 1.0], size=(dim, sketch_size))
    sketched = np.stack(
        [curvature.hvp(sketch[:, j]) for j in range(sketch_size)], axis=1
    )
    basis, _ = np.linalg.qr(sketched)
    low_rank = sum(
        basis[:, j] @ curvature.hvp(basis[:, j]) for j in range(sketch_size)
    )
    quadratic = np.zeros(residual_size)
    for i in range(residual_size):
        z = rng.choice([-1.0, 1.0], size=dim)
        z -= basis @ (basis.T @ z)
        quadratic[i] = z @ curvature.hvp(z)
    squared_norms = np.sum(sketched**2, axis=0)
    return {
        "trace": float(low_rank + np.mean(quadratic)),
        "trace_stderr": standard_error(quadratic),
        "frobenius_norm": float(math.sqrt(np.mean(squared_norms))),
    }


def standard_error(samples):
    """The standard error of the mean of `samples` (NaN for one)."""
    if len(samples) < 2:
        return float("nan")
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
