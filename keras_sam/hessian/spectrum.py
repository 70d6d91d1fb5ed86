"""Hessian-vector products (and those of the Gauss-Newton and Fisher
matrices), the top eigenvalues and the trace."""


import numpy as np

from keras_sam._validation import check_bool, check_choice, check_int
from keras_sam.hessian.linalg import (
    hutch_plus_plus,
    hutchinson,
    lanczos,
    lanczos_ritz_pairs,
    make_rng,
)
from keras_sam.hessian.operators import prepare_operator
from keras_sam.hessian.probe import DEFAULT_PROBE_BATCH_SIZE, to_numpy


def hessian_vector_product(
    model, data, vector, probe_batch_size=DEFAULT_PROBE_BATCH_SIZE
):
    """Computes the Hessian of the training loss times a vector, exactly.

    The loss is the model's compiled loss plus its regularization losses,
    averaged over `data`, in inference mode (see the module docstring).
    The product is computed by double backpropagation (TensorFlow,
    PyTorch) or forward-over-reverse differentiation (JAX) on microbatches
    of `probe_batch_size` samples, weighted by their size. Nothing in the
    model is updated.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data: `x`, a tuple `(x, y)` or `(x, y, sample_weight)`,
            a finite batched `tf.data.Dataset`, a `keras.utils.PyDataset`,
            or a `ProbeSet`.
        vector: The direction: a list of arrays shaped like
            `model.trainable_variables`, or one flat array of all their
            entries in that order.
        probe_batch_size: Integer, the number of samples per microbatch.
            Defaults to `128`.

    Returns:
        `H @ vector` as NumPy float64: a flat array if `vector` was flat,
        else a list of arrays shaped like the trainable variables.

    Example:

    >>> model.compile(optimizer="sgd", loss="mse")
    >>> v = [np.ones(w.shape) for w in model.trainable_variables]
    >>> hv = keras_sam.hessian.hessian_vector_product(model, (x, y), v)
    """
    return curvature_vector_product(
        model, data, vector, probe_batch_size=probe_batch_size
    )


def curvature_vector_product(
    model,
    data,
    vector,
    operator="hessian",
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Computes a curvature matrix of the training loss times a vector.

    `operator` chooses the matrix; all are exact products over `data`,
    computed on microbatches of `probe_batch_size` samples weighted by
    their size, in inference mode, with nothing in the model updated:

    - `"hessian"`: `H`, as `hessian_vector_product`.
    - `"ggn"`: the generalized Gauss-Newton matrix `G = sum_e w_e J_e^T
      H_e J_e` over the loss elements `e` (samples, or positions of a
      sequence output), `J_e` the Jacobian of element `e`'s model output
      with respect to the trainable variables, `H_e` the Hessian of the
      element's loss with respect to that output and `w_e` the weight the
      compiled loss gives it (`sample_weight / number of elements` for
      Keras's default reduction). `H_e` is in closed form: `(2 / C) I`
      for `"mse"` over `C` outputs (Keras's mse has no `1/2`), `diag(p)
      - p p^T` for softmax cross-entropy from logits (`p` the softmax),
      and `diag(1 / p)` for cross-entropy from probabilities `p`, which
      is the same matrix as from the logits when `p` is a softmax (the
      split is at the logits). The regularization losses (weight
      regularizers, `add_loss`) enter with their exact Hessian. `G` is
      positive semi-definite; it is `H` without the term of the output's
      second derivatives, so for a model linear in its weights with
      mean squared error `G = H`.
    - `"fisher"`: the Fisher information of the model's predictive
      distribution (softmax categorical; a normal `N(f, C/2 I)` for mse,
      whose negative log-likelihood is Keras's mse up to a constant),
      `sum_e w_e E_{y ~ p(.|x_e)}[g_e(y) g_e(y)^T]` with `g_e(y)` the
      gradient of element `e`'s loss at label `y`, the expectation taken
      exactly. For these losses it equals the GGN (Martens, 2020,
      Section 9.2) and is computed as such.
    - `"empirical_fisher"`: `sum_e w_e g_e g_e^T` with `g_e` the gradient
      of element `e`'s loss at its given label (the uncentered
      second moment of the per-sample gradients, the gradient-noise
      covariance plus `g g^T`), computed as `J^T (r r^T) J` with `r_e`
      the gradient of the element's loss with respect to its output;
      `data` must include `y`. Regularization losses enter as for the GGN.

    Every operator but the Hessian needs a compiled loss of mean squared
    error, categorical or sparse categorical cross-entropy (from logits
    or probabilities) with the default reduction and one output tensor,
    and costs one Jacobian-vector and one vector-Jacobian product per
    microbatch (about one Hessian-vector product).

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        vector: The direction: a list of arrays shaped like
            `model.trainable_variables`, or one flat array of all their
            entries in that order.
        operator: One of `"hessian"`, `"ggn"`, `"fisher"`,
            `"empirical_fisher"`. Defaults to `"hessian"`.
        probe_batch_size: Integer, the number of samples per microbatch.
            Defaults to `128`.

    Returns:
        The product as NumPy float64: a flat array if `vector` was flat,
        else a list of arrays shaped like the trainable variables.

    Example:

    >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    >>> v = [np.ones(w.shape) for w in model.trainable_variables]
    >>> gv = keras_sam.hessian.curvature_vector_product(
    ...     model, (x, y), v, operator="ggn"
    ... )

    References:
        - Schraudolph, 2002. Fast Curvature Matrix-Vector Products for
          Second-Order Gradient Descent.
          https://doi.org/10.1162/08997660260028683
        - Martens, 2020. New Insights and Perspectives on the Natural
          Gradient Method. https://arxiv.org/abs/1412.1193
        - Kunstner, Hennig & Balles, 2019. Limitations of the empirical
          Fisher approximation for natural gradient descent.
          https://arxiv.org/abs/1905.12558
    """
    curvature_operator = prepare_operator(
        model, data, probe_batch_size, operator
    )
    curvature = curvature_operator.curvature
    as_list = isinstance(vector, (list, tuple))
    if as_list:
        if len(vector) != len(curvature.shapes):
            raise ValueError(
                "Argument `vector` must have one array per trainable "
                f"variable ({len(curvature.shapes)}). Received a list of "
                f"{len(vector)}."
            )
        for part, shape in zip(vector, curvature.shapes):
            if tuple(np.shape(part)) != shape:
                raise ValueError(
                    "Argument `vector` must be shaped like "
                    f"`model.trainable_variables` ({curvature.shapes}). "
                    f"Received shapes {[np.shape(p) for p in vector]}."
                )
        flat = np.concatenate(
            [np.asarray(to_numpy(p), np.float64).ravel() for p in vector]
        )
    else:
        flat = np.asarray(to_numpy(vector), np.float64)
    product = curvature_operator.hvp(flat)
    return curvature.split(product) if as_list else product


def top_eigenvalues(
    model,
    data,
    k=1,
    num_iterations=20,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
    return_eigenvectors=False,
    operator="hessian",
    layers=None,
):
    """Computes the `k` largest eigenvalues of the loss Hessian.

    With `operator` set, those of the Gauss-Newton or Fisher matrix
    instead (see `curvature_vector_product`); with `layers`, those of the
    diagonal block of the chosen layers' variables.

    Runs `num_iterations` steps of Lanczos with full reorthogonalization
    in float64, one Hessian-vector product over `data` per step, and
    returns the `k` largest (algebraic) Ritz values. Ritz values never
    exceed the true eigenvalues; the largest converges fastest. Measured
    on a small CNN (see `saved_results/measurement/`), 20 products reach a
    relative error below 1e-3 for the top eigenvalue. The largest
    eigenvalue is the sharpness `a`: gradient descent with learning rate
    `lr` is linearly stable at a minimum iff `lr * a <= 2`.

    With `return_eigenvectors=True` the Ritz vectors come too: unit
    vectors `v` (over all trainable parameters together) with
    `H v ~ lambda v`; the residual `|H v - lambda v|` shrinks as the Ritz
    value converges, so a vector is as accurate as its value's
    convergence allows. Their signs are arbitrary.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        k: Integer, the number of eigenvalues. Defaults to `1`.
        num_iterations: Integer >= `k`, the number of Lanczos steps, that
            is Hessian-vector products. Defaults to `20`.
        seed: Integer seed of the random start vector, or `None`.
            Defaults to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        return_eigenvectors: Boolean, whether to return the eigenvectors
            too. Defaults to `False`.
        operator: The curvature matrix: `"hessian"`, `"ggn"`, `"fisher"`
            or `"empirical_fisher"` (see `curvature_vector_product`).
            Defaults to `"hessian"`.
        layers: `None` for all trainable variables, or the block of the
            variables of the layers chosen as `SAMModel(perturb=...)`
            chooses them: a layer class, a tuple of layer classes or a
            callable `layer -> bool`. The operator is then the diagonal
            block of those variables (the others held fixed). Defaults to
            `None`.

    Returns:
        A float64 NumPy array of the `k` eigenvalues, largest first. With
        `return_eigenvectors=True`, a tuple `(eigenvalues, eigenvectors)`:
        `eigenvectors[i]` belongs to `eigenvalues[i]` and is a list of
        float64 arrays shaped like `model.trainable_variables` (zero
        outside the `layers` block).

    Example:

    >>> keras_sam.hessian.top_eigenvalues(model, (x, y), k=2, seed=0)
    array([31.72, 12.05])

    ```python
    values, vectors = keras_sam.hessian.top_eigenvalues(
        model, (x, y), seed=0, return_eigenvectors=True
    )
    top_vector = vectors[0]  # arrays shaped like the trainable variables
    # The top eigenvalue of the Gauss-Newton matrix of the Dense layers:
    keras_sam.hessian.top_eigenvalues(
        model, (x, y), operator="ggn", layers=keras.layers.Dense
    )
    ```

    References:
        - Lanczos, 1950. https://doi.org/10.6028/jres.045.026
        - Yao et al., 2020. PyHessian. https://arxiv.org/abs/1912.07145
    """
    k = check_int("k", k)
    num_iterations = check_int("num_iterations", num_iterations)
    return_eigenvectors = check_bool("return_eigenvectors", return_eigenvectors)
    _check_iterations_cover_k(num_iterations, k)
    rng = make_rng(seed)
    curvature = prepare_operator(
        model, data, probe_batch_size, operator, layers
    )
    if k > curvature.dim:
        raise ValueError(
            f"Argument `k` must be at most the number of parameters "
            f"({curvature.dim}). Received: k={k}."
        )
    if not return_eigenvectors:
        ritz = lanczos(curvature.hvp, curvature.dim, num_iterations, rng)
        return ritz[::-1][:k].copy()
    values, vectors, _ = lanczos_ritz_pairs(
        curvature.hvp, curvature.dim, num_iterations, rng
    )
    order = np.argsort(values)[::-1][:k]
    return values[order].copy(), [
        curvature.split(vectors[:, i]) for i in order
    ]


def layer_top_eigenvalues(
    model,
    data,
    k=1,
    num_iterations=20,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
    operator="hessian",
):
    """Computes the top eigenvalues of each layer's diagonal Hessian block.

    With `operator` set, of each layer's block of the Gauss-Newton or
    Fisher matrix instead (see `curvature_vector_product`).

    For each layer `L`, Lanczos (as in `top_eigenvalues`) on the block
    `H_LL`: the Hessian of the loss with respect to that layer's
    trainable variables alone, the others held fixed. Each Lanczos step
    is one Hessian-vector product over `data` (the whole Hessian times
    the layer's vector padded with zeros, restricted to the layer), so
    the cost is `num_iterations` products per layer. By the Cauchy
    interlacing theorem each block's top eigenvalue is at most the
    whole Hessian's.

    Layers are keyed by their path (see `keras_sam.hessian`): the
    variable's `path` without its last component, e.g. `"dense"` for
    `"dense/kernel"` and `"dense/bias"`.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        k: Integer, the number of eigenvalues per layer (fewer for a layer
            with fewer parameters). Defaults to `1`.
        num_iterations: Integer >= `k`, the number of Lanczos steps per
            layer. Defaults to `20`.
        seed: Integer seed of the random start vectors, or `None`.
            Defaults to `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        operator: The curvature matrix: `"hessian"`, `"ggn"`, `"fisher"`
            or `"empirical_fisher"` (see `curvature_vector_product`).
            Defaults to `"hessian"`.

    Returns:
        A dict `{layer_path: eigenvalues}`, each a float64 NumPy array,
        largest first, in the order the layers' variables appear in
        `model.trainable_variables`.

    Example:

    >>> keras_sam.hessian.layer_top_eigenvalues(model, (x, y), seed=0)
    {'dense': array([12.3]), 'dense_1': array([31.1])}

    References:
        - Yao et al., 2020. PyHessian. https://arxiv.org/abs/1912.07145
    """
    k = check_int("k", k)
    num_iterations = check_int("num_iterations", num_iterations)
    _check_iterations_cover_k(num_iterations, k)
    rng = make_rng(seed)
    curvature = prepare_operator(model, data, probe_batch_size, operator)
    result = {}
    for layer, indices in curvature.layer_blocks().items():
        block = _block_operator(curvature, indices)
        ritz = lanczos(block, len(indices), num_iterations, rng)
        result[layer] = ritz[::-1][:k].copy()
    return result


def _block_operator(curvature, indices):
    """`v -> (A v_padded)[indices]`: the diagonal block `A_LL` of the
    operator `A` of the `Operator` `curvature`."""

    def matvec(vector):
        padded = np.zeros(curvature.dim)
        padded[indices] = vector
        return curvature.full_product(padded)[indices]

    return matvec


def _check_iterations_cover_k(num_iterations, k):
    if num_iterations < k:
        raise ValueError(
            "Argument `num_iterations` must be at least `k`. Received: "
            f"num_iterations={num_iterations}, k={k}."
        )


_TRACE_METHODS = ("hutchinson", "hutch++")


def hessian_trace(
    model,
    data,
    num_samples=32,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
    per_layer=False,
    method="hutchinson",
    operator="hessian",
    layers=None,
):
    """Estimates the trace of the loss Hessian (Hutchinson or Hutch++).

    `method="hutchinson"`: with Rademacher vectors `z` (entries +-1),
    `E[z^T H z] = Tr(H)` and `E[|H z|^2] = Tr(H^2) = |H|_F^2`; both are
    averaged over `num_samples` vectors, one Hessian-vector product each.
    The standard error is the sample standard deviation over
    `sqrt(num_samples)`; the variance of one sample is `2 (|H|_F^2 -
    sum_i H_ii^2)`, so the estimate is exact for a diagonal `H`.

    `method="hutch++"` (Meyer et al., 2021) spends the `num_samples`
    products in three parts of `k = num_samples // 3`: `H S` for a
    Rademacher sketch `S` of `k` columns, whose orthonormal basis `Q`
    captures the top of the spectrum; `H Q`, giving `Tr(Q^T H Q)`
    exactly; and Hutchinson with the remaining `num_samples - 2k`
    Rademacher vectors projected off `Q`, for the trace of the rest
    `R = (I - Q Q^T) H (I - Q Q^T)`. The estimate is unbiased; its
    variance (given `Q`) is `2 (|R|_F^2 - sum_i R_ii^2) / (num_samples -
    2k)`. For a positive semi-definite `H`, with high probability the
    sketch makes `|R|_F` at most a constant times `|H - H_j|_F <= Tr(H) /
    sqrt(j)` (`H_j` the best rank-`j` approximation, `j` proportional to
    `k`), so the standard deviation is `O(Tr(H) / num_samples)` against
    Hutchinson's `O(|H|_F / sqrt(num_samples))` (Meyer et al., Theorem
    1): fewer products for the same relative error when the spectrum
    decays. It is exact when `H` has rank at most `k`. `trace_stderr`
    is the standard error of the residual part; `frobenius_norm` comes
    from the sketch's products.

    With `per_layer=True` (Hutchinson only) the trace of each layer's
    diagonal block `H_LL` is estimated from the same products, by
    `z_L^T (H z)_L` (`z_L`: the entries of `z` on layer `L`'s variables).
    It is unbiased (`E[z_L z_M^T] = 0` for `L != M`) and costs nothing
    more; its variance includes the off-diagonal blocks `H_LM`. The layer
    estimates sum to the whole trace's estimate exactly. Layers are keyed
    by their path (see `keras_sam.hessian`).

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        num_samples: Integer, the number of products (random vectors for
            Hutchinson; at least 3 for Hutch++). Defaults to `32`.
        seed: Integer seed of the random vectors, or `None`. Defaults to
            `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        per_layer: Boolean, whether to add the per-layer traces. Defaults
            to `False`.
        method: `"hutchinson"` or `"hutch++"`. Defaults to
            `"hutchinson"`.
        operator: The curvature matrix: `"hessian"`, `"ggn"`, `"fisher"`
            or `"empirical_fisher"` (see `curvature_vector_product`).
            Defaults to `"hessian"`.
        layers: `None` for all trainable variables, or the block of the
            variables of the layers chosen as `SAMModel(perturb=...)`
            chooses them (a layer class, a tuple of layer classes or a
            callable `layer -> bool`): the trace of that diagonal block.
            Defaults to `None`.

    Returns:
        A dict: floats `trace`, `trace_stderr` (NaN when `num_samples=1`)
        and `frobenius_norm` (the estimate of `|H|_F`); with
        `per_layer=True` also `per_layer`, a dict `{layer_path: {"trace":
        float, "trace_stderr": float}}` in the order the layers' variables
        appear in `model.trainable_variables`.

    Example:

    >>> keras_sam.hessian.hessian_trace(model, (x, y), seed=0)
    {'trace': 152.3, 'trace_stderr': 4.1, 'frobenius_norm': 40.2}

    ```python
    result = keras_sam.hessian.hessian_trace(
        model, (x, y), seed=0, per_layer=True
    )
    result["per_layer"]["dense"]  # {'trace': 40.5, 'trace_stderr': 1.9}
    keras_sam.hessian.hessian_trace(
        model, (x, y), num_samples=30, method="hutch++", operator="ggn"
    )
    ```

    References:
        - Hutchinson, 1989.
          https://doi.org/10.1080/03610918908812806
        - Meyer, Musco, Musco & Woodruff, 2021. Hutch++: Optimal
          Stochastic Trace Estimation. https://arxiv.org/abs/2010.09649
    """
    num_samples = check_int("num_samples", num_samples)
    per_layer = check_bool("per_layer", per_layer)
    method = check_choice("method", method, _TRACE_METHODS)
    if method == "hutch++" and num_samples < 3:
        raise ValueError(
            "Argument `num_samples` must be at least 3 with "
            f"method='hutch++'. Received: num_samples={num_samples}."
        )
    if method == "hutch++" and per_layer:
        raise ValueError(
            "Argument `per_layer` must be False with method='hutch++'. "
            f"Received: per_layer={per_layer}."
        )
    rng = make_rng(seed)
    curvature = prepare_operator(
        model, data, probe_batch_size, operator, layers
    )
    if method == "hutch++":
        return hutch_plus_plus(curvature, num_samples, rng)
    blocks = curvature.layer_blocks() if per_layer else None
    return hutchinson(curvature, num_samples, rng, blocks)
