"""Curvature of the training loss: Hessian-vector products, top eigenvalues,
the trace, and the linear stability of GD and SGD at the current weights.

Every function takes a compiled Keras model (a plain `keras.Model` or a
`keras_sam.SAMModel`) and probe data, and measures the loss that `fit`
minimizes: the compiled loss plus the regularization losses (weight
regularizers and `add_loss` terms), averaged over the probe data. The loss
is evaluated in inference mode (`training=False`: BatchNorm uses its moving
statistics, dropout is off) through `stateless_call`, so nothing is
updated: weights, BatchNorm statistics, seeds and metrics stay as they
were. Probe data is split into microbatches of `probe_batch_size` samples;
microbatch results are weighted by their size, so every product is the
one of the whole probe set's loss (exact for losses reduced with Keras's
default `"sum_over_batch_size"`).

Hessian-vector products are exact (double backpropagation on TensorFlow
and PyTorch, forward-over-reverse on JAX), computed in the model's variable
dtype, and accumulated in float64; the Lanczos recurrence runs in float64.
Measure in float32 or float64: under a float16 or bfloat16 policy the
products carry that precision.

BatchNorm. Training steps normalize with batch statistics, these
measurements with the moving statistics. While the moving statistics lag
(early in training; Keras's BatchNorm momentum is 0.99) the two losses
and their Hessians can differ widely: on a small CNN trained 3 epochs on
the CIFAR-10 sample with SGD (learning rate 0.05, momentum 0.9), the
inference-mode sharpness was 130, a GD stability ratio of 1.7, while
training went on without diverging. For BatchNorm networks read the
numbers as properties of the inference-mode loss.

Conventions. `H` is the Hessian of the probe loss, `H_i` that of sample
`i`'s loss (with the regularization, so `H = mean_i H_i`), and
`Sigma = mean_i H_i^2 - H^2` their variance. Keras's `"mse"` has no `1/2`:
its Hessians are twice those of half the squared error.

References:
    - Wu, Ma & E, 2018. How SGD Selects the Global Minima in
      Over-parameterized Learning: A Dynamical Stability Perspective.
      https://papers.nips.cc/paper/8049
    - Wu, Wang & Su, 2022. The alignment property of SGD noise and how it
      helps select flat minima: A stability analysis.
      https://arxiv.org/abs/2207.02628
    - Hutchinson, 1989. A stochastic estimator of the trace of the
      influence matrix for Laplacian smoothing splines.
      https://doi.org/10.1080/03610918908812806
    - Yao et al., 2020. PyHessian: Neural Networks Through the Lens of the
      Hessian. https://arxiv.org/abs/1912.07145
"""

import inspect
import math
import numbers
import weakref

import keras
import numpy as np
from scipy import linalg as scipy_linalg

__all__ = [
    "ProbeSet",
    "as_probe_set",
    "gd_stability_threshold",
    "hessian_trace",
    "hessian_vector_product",
    "linear_stability",
    "noise_alignment",
    "top_eigenvalues",
]

# Default size of the microbatches the probe data is split into.
DEFAULT_PROBE_BATCH_SIZE = 128
# Probe sets up to this size use exact per-sample products in
# `linear_stability` and `noise_alignment`.
DEFAULT_MAX_EXACT_SAMPLES = 64
# `sgd_stable` is `sgd_growth <= DEFAULT_STABILITY_TOLERANCE`.
DEFAULT_STABILITY_TOLERANCE = 1e-3


# Probe data ----------------------------------------------------------------


class ProbeSet:
    """Probe data held in host memory as NumPy arrays.

    Built once from arrays, a tuple or a finite dataset (see
    `as_probe_set`); the functions of this module accept it wherever they
    take `data`, which saves reading a dataset again on every call.
    """

    def __init__(self, x, y, sample_weight, num_samples):
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.num_samples = num_samples

    def take(self, indices):
        """The arrays `(x, y, sample_weight)` of the samples `indices`."""
        return tuple(
            _map(lambda a: a[indices], part)
            for part in (self.x, self.y, self.sample_weight)
        )


def as_probe_set(data):
    """Reads probe data into a `ProbeSet` of NumPy arrays.

    Args:
        data: Arrays `x` (for models whose loss needs no targets), a tuple
            `(x, y)` or `(x, y, sample_weight)` (`x` itself may be an array,
            a list or a dict of arrays), a finite batched `tf.data.Dataset`
            or a `keras.utils.PyDataset` yielding such tuples, or a
            `ProbeSet` (returned as is).

    Returns:
        A `ProbeSet`. Float64 arrays are cast to `keras.config.floatx()`.
    """
    if isinstance(data, ProbeSet):
        return data
    if data is None:
        raise ValueError("Argument `data` must not be None.")
    if _is_tf_dataset(data):
        batches = _read_tf_dataset(data)
    elif isinstance(data, keras.utils.PyDataset):
        batches = [data[i] for i in range(len(data))]
    else:
        batches = [data]
    parts = [keras.utils.unpack_x_y_sample_weight(b) for b in batches]
    parts = [tuple(_map(_to_numpy, p) for p in part) for part in parts]
    if not parts:
        raise ValueError(
            f"Argument `data` is empty. Received: data={_short_repr(data)}"
        )
    x, y, sample_weight = (
        _map(lambda *a: np.concatenate(a, axis=0), *column)
        if len(parts) > 1
        else column[0]
        for column in zip(*parts)
    )
    num_samples = _num_samples(x, data)
    for name, part in (("y", y), ("sample_weight", sample_weight)):
        for leaf in _leaves(part):
            if leaf.shape[:1] != (num_samples,):
                raise ValueError(
                    f"In argument `data`, `{name}` has {leaf.shape[:1]} "
                    f"samples but `x` has {num_samples}."
                )
    return ProbeSet(x, y, sample_weight, num_samples)


def _is_tf_dataset(data):
    module = type(data).__module__
    return module.startswith("tensorflow") and hasattr(data, "cardinality")


def _read_tf_dataset(dataset):
    if int(dataset.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise ValueError(
            "Argument `data` must be a finite dataset; received an infinite "
            f"one: data={dataset!r}. Use `dataset.take(n)`."
        )
    return list(dataset.as_numpy_iterator())


def _map(fn, *structures):
    """`keras.tree.map_structure` that keeps `None` (a missing part)."""
    if structures[0] is None:
        return None
    return keras.tree.map_structure(
        lambda *leaves: None if leaves[0] is None else fn(*leaves),
        *structures,
    )


def _leaves(structure):
    if structure is None:
        return []
    return [leaf for leaf in keras.tree.flatten(structure) if leaf is not None]


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == np.float64 and keras.config.floatx() != "float64":
        array = array.astype(keras.config.floatx())
    return array


def _num_samples(x, data):
    leaves = _leaves(x)
    if not leaves or leaves[0].ndim == 0 or leaves[0].shape[0] == 0:
        raise ValueError(
            "Argument `data` is empty: it must hold at least one sample. "
            f"Received: data={_short_repr(data)}"
        )
    return int(leaves[0].shape[0])


def _short_repr(value):
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _weighted_batches(probe, indices, probe_batch_size):
    """Splits the samples `indices` (or all) into microbatches of tensors.

    Returns a list of `(batch, weight)`, `batch = (x, y, sample_weight)`,
    with `weight` the microbatch's share of the samples.
    """
    if indices is None:
        indices = np.arange(probe.num_samples)
    total = len(indices)
    batches = []
    for start in range(0, total, probe_batch_size):
        chunk = indices[start : start + probe_batch_size]
        count = len(chunk)
        if np.array_equal(chunk, np.arange(chunk[0], chunk[0] + count)):
            chunk = slice(int(chunk[0]), int(chunk[0]) + count)
        batch = tuple(
            _map(keras.ops.convert_to_tensor, part)
            for part in probe.take(chunk)
        )
        batches.append((batch, count / total))
    return batches


# The loss and its derivatives, per backend -------------------------------


def _call_kwargs(model):
    """`{"training": False}` if the model's `call` takes `training`."""
    parameters = inspect.signature(model.call).parameters.values()
    if any(
        p.name == "training" or p.kind == inspect.Parameter.VAR_KEYWORD
        for p in parameters
    ):
        return {"training": False}
    return {}


def _probe_loss(model, state, batch):
    """The training loss of `batch` in inference mode, as a scalar tensor.

    `state = (trainable, non_trainable, metrics)` values. Nothing is
    updated: the state the stateless passes return is discarded.
    """
    trainable, non_trainable, metrics = state
    x, y, sample_weight = batch
    y_pred, _, call_losses = model.stateless_call(
        trainable, non_trainable, x, return_losses=True, **_call_kwargs(model)
    )
    loss, _ = model.stateless_compute_loss(
        trainable,
        non_trainable,
        metrics,
        x=x,
        y=y,
        y_pred=y_pred,
        sample_weight=sample_weight,
        training=False,
    )
    # `call_losses` holds the `add_loss` terms of this call and the weight
    # penalties; `loss` has the compiled loss and the weight penalties.
    mapping = list(zip(model.trainable_variables, trainable))
    with keras.StatelessScope(state_mapping=mapping):
        penalties = _sum_losses(model.losses, loss.dtype)
    call_terms = _sum_losses(call_losses, loss.dtype) - penalties
    replicas = _num_replicas()
    if replicas > 1:
        # In a tf.distribute strategy scope Keras divides the compiled
        # loss and the penalties by the number of replicas; undo it.
        loss = loss * replicas
    return loss + call_terms


def _sum_losses(losses, dtype):
    total = keras.ops.zeros((), dtype=dtype)
    for loss in losses or ():
        total = total + keras.ops.cast(keras.ops.sum(loss), dtype)
    return total


def _num_replicas():
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


# model -> {name: function}; functions hold the model weakly.
_COMPILED = weakref.WeakKeyDictionary()


def _functions(model):
    """The backend's `(value, gradient, hvp)` functions of the probe loss.

    `value(state, batch)` is the loss, `gradient(state, batch)` its
    gradient and `hvp(state, batch, vector)` the Hessian-vector product,
    all with respect to the trainable values `state[0]`, as lists of
    tensors. Compiled (`tf.function`, `jax.jit`) and cached per model.
    """
    cache = _COMPILED.setdefault(model, {})
    if "functions" not in cache:
        builder = _BUILDERS[keras.backend.backend()]
        cache["functions"] = builder(weakref.ref(model))
    return cache["functions"]


def _tensorflow_functions(model_ref):
    import tensorflow as tf

    zero = tf.UnconnectedGradients.ZERO

    def loss(state, batch):
        return _probe_loss(model_ref(), state, batch)

    @tf.function(reduce_retracing=True)
    def value(state, batch):
        return loss(state, batch)

    @tf.function(reduce_retracing=True)
    def gradient(state, batch):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(state[0])
            result = loss(state, batch)
        return tape.gradient(result, state[0], unconnected_gradients=zero)

    @tf.function(reduce_retracing=True)
    def hvp(state, batch, vector):
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(state[0])
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(state[0])
                result = loss(state, batch)
            grads = inner.gradient(result, state[0], unconnected_gradients=zero)
            dot = tf.add_n(
                [tf.reduce_sum(g * v) for g, v in zip(grads, vector)]
            )
        return outer.gradient(dot, state[0], unconnected_gradients=zero)

    return value, gradient, hvp


def _jax_functions(model_ref):
    import jax

    def loss(trainable, rest, batch):
        return _probe_loss(model_ref(), (trainable, *rest), batch)

    grad = jax.grad(loss)

    @jax.jit
    def value(state, batch):
        return loss(state[0], state[1:], batch)

    @jax.jit
    def gradient(state, batch):
        return grad(state[0], state[1:], batch)

    @jax.jit
    def hvp(state, batch, vector):
        def grad_at(trainable):
            return grad(trainable, state[1:], batch)

        return jax.jvp(grad_at, (state[0],), (vector,))[1]

    return value, gradient, hvp


def _torch_functions(model_ref):
    import torch

    def loss(state, batch):
        trainable = [t.detach().requires_grad_(True) for t in state[0]]
        return trainable, _probe_loss(
            model_ref(), (trainable, *state[1:]), batch
        )

    def _filled(tensors, like):
        return [
            torch.zeros_like(p) if t is None else t.detach()
            for t, p in zip(tensors, like)
        ]

    def value(state, batch):
        with torch.no_grad():
            return _probe_loss(model_ref(), state, batch)

    def gradient(state, batch):
        with torch.enable_grad():
            trainable, result = loss(state, batch)
            grads = torch.autograd.grad(result, trainable, allow_unused=True)
        return _filled(grads, trainable)

    def hvp(state, batch, vector):
        with torch.enable_grad():
            trainable, result = loss(state, batch)
            grads = torch.autograd.grad(
                result, trainable, create_graph=True, allow_unused=True
            )
            terms = [
                (g * v).sum() for g, v in zip(grads, vector) if g is not None
            ]
            if not terms or not any(t.requires_grad for t in terms):
                return [torch.zeros_like(p) for p in trainable]
            products = torch.autograd.grad(
                sum(terms), trainable, allow_unused=True
            )
        return _filled(products, trainable)

    return value, gradient, hvp


_BUILDERS = {
    "tensorflow": _tensorflow_functions,
    "jax": _jax_functions,
    "torch": _torch_functions,
}


class _Curvature:
    """The probe loss of `model` at its current weights, on flat vectors.

    Snapshots the variable values once; `hvp`, `gradient` and `loss` take
    and return flat float64 NumPy vectors (all trainable variables in the
    order of `model.trainable_variables`).
    """

    def __init__(self, model, probe, probe_batch_size):
        if keras.backend.backend() not in _BUILDERS:
            raise ValueError(
                "keras_sam.hessian supports the tensorflow, jax and torch "
                f"backends. Received: backend={keras.backend.backend()!r}."
            )
        self.probe = probe
        self.probe_batch_size = probe_batch_size
        self.state = (
            _snapshot(model.trainable_variables),
            _snapshot(model.non_trainable_variables),
            _snapshot(model.metrics_variables),
        )
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.dtypes = [
            keras.backend.standardize_dtype(v.dtype)
            for v in model.trainable_variables
        ]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.dim = int(sum(self.sizes))
        self._value, self._gradient, self._hvp = _functions(model)
        self._full = None

    def batches(self, indices=None):
        """Weighted microbatches of the samples `indices` (default all)."""
        if indices is None:
            if self._full is None:
                self._full = _weighted_batches(
                    self.probe, None, self.probe_batch_size
                )
            return self._full
        return _weighted_batches(self.probe, indices, self.probe_batch_size)

    def hvp(self, flat_vector, batches=None):
        """`H v` for the samples of `batches` (default: the probe set)."""
        vector = self.unflatten(flat_vector)
        total = np.zeros(self.dim)
        for batch, weight in batches or self.batches():
            total += weight * self.flatten(self._hvp(self.state, batch, vector))
        return total

    def gradient(self, batches=None):
        total = np.zeros(self.dim)
        for batch, weight in batches or self.batches():
            total += weight * self.flatten(self._gradient(self.state, batch))
        return total

    def loss(self):
        total = 0.0
        for batch, weight in self.batches():
            value = self._value(self.state, batch)
            total += weight * float(keras.ops.convert_to_numpy(value))
        return total

    def flatten(self, tensors):
        return np.concatenate(
            [
                np.asarray(keras.ops.convert_to_numpy(t), np.float64).ravel()
                for t in tensors
            ]
        )

    def unflatten(self, flat):
        flat = np.asarray(flat, dtype=np.float64)
        if flat.shape != (self.dim,):
            raise ValueError(
                f"Argument `vector` must have {self.dim} entries (the number "
                "of trainable parameters), or be a list of arrays shaped "
                f"like `model.trainable_variables`. Received shape "
                f"{flat.shape}."
            )
        tensors, start = [], 0
        for shape, dtype, size in zip(self.shapes, self.dtypes, self.sizes):
            part = flat[start : start + size].reshape(shape).astype(dtype)
            tensors.append(keras.ops.convert_to_tensor(part))
            start += size
        return tensors


def _snapshot(variables):
    values = [keras.ops.convert_to_tensor(v) for v in variables]
    if keras.backend.backend() == "torch":
        values = [v.detach() for v in values]
    return values


# Argument checks -----------------------------------------------------------


def _check_model(model):
    is_model = isinstance(model, keras.Model)
    if not is_model:
        raise ValueError(
            "Argument `model` must be a compiled `keras.Model`. Received: "
            f"model={_short_repr(model)} of type {type(model).__name__}."
        )
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"Argument `model` ({model.name!r}) is not compiled: call "
            "`model.compile(optimizer, loss=...)` first, so that its loss "
            "is defined."
        )
    if not model.built:
        raise ValueError(
            f"Argument `model` ({model.name!r}) is not built: call it on a "
            "batch or `model.build(input_shape)` first."
        )
    if not model.trainable_variables:
        raise ValueError(
            f"Argument `model` ({model.name!r}) has no trainable variables."
        )


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name, value, minimum=1):
    if not _is_integer(value) or value < minimum:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {minimum}. Received: "
            f"{name}={value!r}."
        )
    return int(value)


def _check_positive_float(name, value):
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive finite number. "
            f"Received: {name}={value!r}."
        )
    return float(value)


def _check_momentum(momentum):
    if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(
            "Argument `momentum` must be a number in [0, 1). Received: "
            f"momentum={momentum!r}."
        )
    return float(momentum)


def _check_tolerance(tolerance):
    if not _is_real(tolerance) or not tolerance >= 0:
        raise ValueError(
            "Argument `tolerance` must be a non-negative number. Received: "
            f"tolerance={tolerance!r}."
        )
    return float(tolerance)


def _prepare(model, data, probe_batch_size):
    _check_model(model)
    probe_batch_size = _check_int("probe_batch_size", probe_batch_size)
    return _Curvature(model, as_probe_set(data), probe_batch_size)


# Lanczos -------------------------------------------------------------------


def _lanczos(matvec, dim, num_iterations, rng):
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

    Returns:
        The Ritz values, a float64 NumPy array in ascending order.
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
    return scipy_linalg.eigh_tridiagonal(alphas, betas, eigvals_only=True)


def _random_unit(rng, dim, basis):
    vector = rng.standard_normal(dim)
    for _ in range(2):
        vector -= basis.T @ (basis @ vector)
    return vector / np.linalg.norm(vector)


def _rng(seed):
    if seed is not None and not _is_integer(seed):
        raise ValueError(
            f"Argument `seed` must be None or an integer. Received: "
            f"seed={seed!r}."
        )
    return np.random.default_rng(seed)


# Public functions ----------------------------------------------------------


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
    curvature = _prepare(model, data, probe_batch_size)
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
            [np.asarray(_to_numpy(p), np.float64).ravel() for p in vector]
        )
    else:
        flat = np.asarray(_to_numpy(vector), np.float64)
    product = curvature.hvp(flat)
    if not as_list:
        return product
    parts = np.split(product, np.cumsum(curvature.sizes)[:-1])
    return [p.reshape(s) for p, s in zip(parts, curvature.shapes)]


def top_eigenvalues(
    model,
    data,
    k=1,
    num_iterations=20,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Computes the `k` largest eigenvalues of the loss Hessian.

    Runs `num_iterations` steps of Lanczos with full reorthogonalization
    in float64, one Hessian-vector product over `data` per step, and
    returns the `k` largest (algebraic) Ritz values. Ritz values never
    exceed the true eigenvalues; the largest converges fastest. Measured
    on a small CNN (see `saved_results/measurement/`), 20 products reach a
    relative error below 1e-3 for the top eigenvalue. The largest
    eigenvalue is the sharpness `a`: gradient descent with learning rate
    `lr` is linearly stable at a minimum iff `lr * a <= 2`.

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

    Returns:
        A float64 NumPy array of the `k` eigenvalues, largest first.

    Example:

    >>> keras_sam.hessian.top_eigenvalues(model, (x, y), k=2, seed=0)
    array([31.72, 12.05])

    References:
        - Lanczos, 1950. https://doi.org/10.6028/jres.045.026
        - Yao et al., 2020. PyHessian. https://arxiv.org/abs/1912.07145
    """
    k = _check_int("k", k)
    num_iterations = _check_int("num_iterations", num_iterations)
    if num_iterations < k:
        raise ValueError(
            "Argument `num_iterations` must be at least `k`. Received: "
            f"num_iterations={num_iterations}, k={k}."
        )
    rng = _rng(seed)
    curvature = _prepare(model, data, probe_batch_size)
    if k > curvature.dim:
        raise ValueError(
            f"Argument `k` must be at most the number of trainable "
            f"parameters ({curvature.dim}). Received: k={k}."
        )
    ritz = _lanczos(curvature.hvp, curvature.dim, num_iterations, rng)
    return ritz[::-1][:k].copy()


def hessian_trace(
    model,
    data,
    num_samples=32,
    seed=None,
    probe_batch_size=DEFAULT_PROBE_BATCH_SIZE,
):
    """Estimates the trace of the loss Hessian (Hutchinson's method).

    With Rademacher vectors `z` (entries +-1), `E[z^T H z] = Tr(H)` and
    `E[|H z|^2] = Tr(H^2) = |H|_F^2`; both are averaged over
    `num_samples` vectors, one Hessian-vector product each. The standard
    error is the sample standard deviation over `sqrt(num_samples)`.

    Args:
        model: A compiled and built `keras.Model` (or `SAMModel`).
        data: Probe data (see `hessian_vector_product`).
        num_samples: Integer, the number of random vectors. Defaults to
            `32`.
        seed: Integer seed of the random vectors, or `None`. Defaults to
            `None`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.

    Returns:
        A dict of floats: `trace`, `trace_stderr` (NaN when
        `num_samples=1`) and `frobenius_norm` (the estimate of `|H|_F`).

    Example:

    >>> keras_sam.hessian.hessian_trace(model, (x, y), seed=0)
    {'trace': 152.3, 'trace_stderr': 4.1, 'frobenius_norm': 40.2}

    References:
        - Hutchinson, 1989.
          https://doi.org/10.1080/03610918908812806
    """
    num_samples = _check_int("num_samples", num_samples)
    rng = _rng(seed)
    curvature = _prepare(model, data, probe_batch_size)
    return _hutchinson(curvature, num_samples, rng)


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
    learning_rate = _check_positive_float("learning_rate", learning_rate)
    momentum = _check_momentum(momentum)
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
        self.batches = [curvature.batches(s) for s in self.index_sets]


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
    learning_rate = _check_positive_float("learning_rate", learning_rate)
    batch_size = _check_int("batch_size", batch_size)
    momentum = _check_momentum(momentum)
    num_iterations = _check_int("num_iterations", num_iterations)
    max_exact_samples = _check_int("max_exact_samples", max_exact_samples, 0)
    if num_noise_batches is not None:
        num_noise_batches = _check_int("num_noise_batches", num_noise_batches)
    tolerance = _check_tolerance(tolerance)
    rng = _rng(seed)
    curvature = _prepare(model, data, probe_batch_size)
    population = _dataset_size(dataset_size, batch_size, curvature)
    train_factor = _finite_population_factor(population, batch_size)
    noise = _NoiseBatches(
        curvature, batch_size, max_exact_samples, num_noise_batches, rng
    )
    dim = curvature.dim

    def squared_terms(v):
        """Returns `(H v, H^2 v, mean over noise sets of H_b^2 v)`."""
        if noise.exact:
            singles = [curvature.hvp(v, b) for b in noise.batches]
            hv = np.mean(singles, axis=0)
            mean_square = np.mean(
                [curvature.hvp(u, b) for u, b in zip(singles, noise.batches)],
                axis=0,
            )
        else:
            hv = curvature.hvp(v)
            mean_square = np.mean(
                [curvature.hvp(curvature.hvp(v, b), b) for b in noise.batches],
                axis=0,
            )
        return hv, curvature.hvp(hv), mean_square

    def sigma(v):
        if noise.factor == 0.0:
            return np.zeros(dim)
        _, h2v, mean_square = squared_terms(v)
        return (mean_square - h2v) / noise.factor

    def growth_operator(v):
        """`(M - I) v = -2 lr H v + lr^2 (H^2 v + train_factor Sigma v)`."""
        if train_factor == 0.0 or noise.factor == 0.0:
            hv = curvature.hvp(v)
            second = curvature.hvp(hv)
        else:
            hv, h2v, mean_square = squared_terms(v)
            second = h2v + train_factor * (mean_square - h2v) / noise.factor
        return -2.0 * learning_rate * hv + learning_rate**2 * second

    sharpness = float(_lanczos(curvature.hvp, dim, num_iterations, rng)[-1])
    sigma_top = float(_lanczos(sigma, dim, num_iterations, rng)[-1])
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
    population = _check_int("dataset_size", dataset_size)
    if batch_size > population:
        raise ValueError(
            f"Argument `batch_size` must be at most `dataset_size`. "
            f"Received: batch_size={batch_size}, "
            f"dataset_size={population}."
        )
    return population


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
    batch_size = _check_int("batch_size", batch_size)
    num_samples = _check_int("num_samples", num_samples)
    max_exact_samples = _check_int("max_exact_samples", max_exact_samples, 0)
    if num_noise_batches is not None:
        num_noise_batches = _check_int("num_noise_batches", num_noise_batches)
    rng = _rng(seed)
    curvature = _prepare(model, data, probe_batch_size)
    population = _dataset_size(dataset_size, batch_size, curvature)
    train_factor = _finite_population_factor(population, batch_size)
    noise = _NoiseBatches(
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
    frobenius = _hutchinson(curvature, num_samples, rng)["frobenius_norm"]
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
