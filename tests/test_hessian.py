"""keras_sam.hessian against closed forms and dense Hessians.

Every expected value is computed independently of the code under test:
least-squares closed forms and dense NumPy matrices (Keras "mse" has no
1/2, so the per-sample Hessian of (x.w - y)^2 is 2 x x^T), Wu, Ma & E's
one-dimensional example, and, on TensorFlow, a dense Hessian of a small
MLP from nested gradient tapes.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam
from keras_sam import hessian

multi_backend = pytest.mark.multi_backend


# Models and closed forms ---------------------------------------------------


def least_squares_model(dim, l2=0.0, activity=0.0, weights=None):
    """`y = x . w` (no bias) compiled with "mse", optional regularizers."""
    inputs = keras.Input((dim,))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    outputs = keras.layers.Dense(
        1, use_bias=False, kernel_regularizer=regularizer
    )(inputs)
    if activity:
        outputs = keras.layers.ActivityRegularization(l2=activity)(outputs)
    model = keras.Model(inputs, outputs)
    if weights is not None:
        model.set_weights([np.asarray(weights, "float32").reshape(dim, 1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def least_squares_data(n=6, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def per_sample_hessians(x):
    x = x.astype(np.float64)
    return np.stack([2.0 * np.outer(row, row) for row in x])


def dense_stability(hessians, learning_rate, batch_size, dataset_size):
    """H, Sigma and M built densely from the per-sample Hessians."""
    h = hessians.mean(axis=0)
    sigma = np.mean([hi @ hi for hi in hessians], axis=0) - h @ h
    factor = (dataset_size - batch_size) / (batch_size * (dataset_size - 1))
    step = np.eye(len(h)) - learning_rate * h
    m = step @ step + learning_rate**2 * factor * sigma
    return h, sigma, m


def top(matrix):
    return np.linalg.eigvalsh(matrix)[-1]


class Scalar(keras.layers.Layer):
    """One trainable scalar `x`, broadcast to every sample."""

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def build(self, input_shape):
        self.x = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.value)
        )

    def call(self, inputs):
        return ops.zeros_like(inputs[:, :1]) + self.x


def wu_loss(coefficient, x):
    """`f_i(x) = min(x^2, c_i (x - 1)^2)`, `c_i` given as the target."""
    return ops.minimum(ops.square(x), coefficient * ops.square(x - 1.0))


def wu_model(x0):
    inputs = keras.Input((1,))
    model = keras.Model(inputs, Scalar(x0)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.7), loss=wu_loss)
    return model


def mlp_with_batchnorm(seed=0):
    """Dense-tanh-BatchNorm-Dropout-Dense with L2 and an activity loss,
    BatchNorm statistics moved away from their initial values."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(
        4, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)
    )(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.ActivityRegularization(l2=0.05)(h)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    batchnorm = model.layers[2]
    batchnorm.moving_mean.assign(rng.normal(size=4).astype("float32") * 0.1)
    batchnorm.moving_variance.assign(
        rng.uniform(0.5, 2.0, size=4).astype("float32")
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def mlp_data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    weights = rng.uniform(0.5, 2.0, size=n).astype("float32")
    return x, y, weights


def snapshot(model):
    return [np.array(ops.convert_to_numpy(v)) for v in model.variables]


# Hessian-vector products, eigenvalues, trace --------------------------------


@multi_backend
def test_least_squares_hvp_eigenvalues_and_trace():
    x, y = least_squares_data(n=7, dim=4)
    model = least_squares_model(4)
    h = per_sample_hessians(x).mean(axis=0)
    rng = np.random.default_rng(3)
    vector = rng.normal(size=4)

    flat = hessian.hessian_vector_product(model, (x, y), vector)
    np.testing.assert_allclose(flat, h @ vector, rtol=1e-5, atol=1e-6)
    as_list = hessian.hessian_vector_product(
        model, (x, y), [vector.reshape(4, 1)], probe_batch_size=3
    )
    np.testing.assert_allclose(
        as_list[0][:, 0], h @ vector, rtol=1e-5, atol=1e-6
    )

    eigenvalues = hessian.top_eigenvalues(
        model, (x, y), k=2, num_iterations=4, seed=0
    )
    np.testing.assert_allclose(
        eigenvalues, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-5
    )

    num_samples = 200
    result = hessian.hessian_trace(model, (x, y), num_samples, seed=0)
    # Var(z^T H z) = 2 sum_{i != j} H_ij^2 for Rademacher z.
    spread = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)))
    assert abs(result["trace"] - np.trace(h)) < 4 * spread / np.sqrt(
        num_samples
    )
    assert result["trace_stderr"] == pytest.approx(
        spread / np.sqrt(num_samples), rel=0.3
    )
    assert result["frobenius_norm"] == pytest.approx(np.linalg.norm(h), 0.1)


@multi_backend
def test_sample_weights_microbatches_and_regularization():
    """Weighted loss, uneven microbatches, L2 and activity losses."""
    x, y = least_squares_data(n=10, dim=3, seed=2)
    weights = np.linspace(0.5, 2.0, 10).astype("float32")
    l2, activity = 0.03, 0.2
    model = least_squares_model(3, l2=l2, activity=activity)
    xd = x.astype(np.float64)
    # mean_i w_i (x_i.w - y_i)^2 + l2 |w|^2 + activity mean_i (x_i.w)^2
    h = (
        2 * (xd * weights[:, None]).T @ xd / 10
        + 2 * l2 * np.eye(3)
        + 2 * activity * xd.T @ xd / 10
    )
    vector = np.array([0.3, -1.0, 2.0])
    for probe_batch_size in (3, 10, 128):
        product = hessian.hessian_vector_product(
            model, (x, y, weights), vector, probe_batch_size
        )
        np.testing.assert_allclose(product, h @ vector, rtol=1e-5)


def test_dataset_and_probe_set_inputs():
    import tensorflow as tf

    x, y = least_squares_data(n=9, dim=3, seed=4)
    model = least_squares_model(3)
    h = per_sample_hessians(x).mean(axis=0)
    vector = np.array([1.0, 2.0, -1.0])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    for data in (dataset, hessian.as_probe_set((x, y))):
        product = hessian.hessian_vector_product(model, data, vector)
        np.testing.assert_allclose(product, h @ vector, rtol=1e-5)


@multi_backend
def test_model_is_not_changed_and_inference_mode():
    x, y, weights = mlp_data()
    model = mlp_with_batchnorm()
    before = snapshot(model)
    vector = np.random.default_rng(0).normal(
        size=sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    )
    first = hessian.hessian_vector_product(model, (x, y, weights), vector)
    hessian.top_eigenvalues(model, (x, y), num_iterations=5, seed=0)
    hessian.hessian_trace(model, (x, y), num_samples=2, seed=0)
    hessian.linear_stability(
        model, (x, y), 0.1, batch_size=4, num_iterations=3, seed=0
    )
    hessian.noise_alignment(model, (x, y), batch_size=4, num_samples=2)
    second = hessian.hessian_vector_product(model, (x, y, weights), vector)
    # Dropout off: the same product twice; nothing moved.
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


def dense_hessian_tf(model, x, y, sample_weight):
    """The dense Hessian of the weighted "mse" plus regularization losses
    in inference mode, from nested tapes (TensorFlow only)."""
    import tensorflow as tf

    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            prediction = model(x, training=False)
            per_sample = tf.reduce_mean(tf.square(prediction - y), axis=-1)
            loss = tf.reduce_mean(per_sample * sample_weight)
            loss += tf.add_n(model.losses)
        gradient = inner.gradient(loss, variables)
        flat = tf.concat([tf.reshape(g, [-1]) for g in gradient], axis=0)
    blocks = outer.jacobian(flat, variables)
    dim = int(flat.shape[0])
    return np.concatenate(
        [np.reshape(b.numpy(), (dim, -1)) for b in blocks], axis=1
    ).astype(np.float64)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="nested GradientTape"
)
def test_mlp_against_dense_hessian_from_nested_tapes():
    x, y, weights = mlp_data()
    model = mlp_with_batchnorm()
    before = snapshot(model)
    h = dense_hessian_tf(model, x, y, weights)
    h = (h + h.T) / 2
    dim = h.shape[0]
    data = (x, y, weights)
    vector = np.random.default_rng(5).normal(size=dim)
    product = hessian.hessian_vector_product(model, data, vector, 5)
    np.testing.assert_allclose(product, h @ vector, rtol=1e-4, atol=1e-5)

    exact = np.linalg.eigvalsh(h)[::-1]
    full = hessian.top_eigenvalues(model, data, k=3, num_iterations=dim, seed=0)
    np.testing.assert_allclose(full, exact[:3], rtol=1e-4, atol=1e-5)
    first = hessian.top_eigenvalues(model, data, num_iterations=20, seed=1)
    assert first[0] == pytest.approx(exact[0], rel=1e-3)

    result = hessian.hessian_trace(model, data, num_samples=100, seed=0)
    spread = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)))
    assert abs(result["trace"] - np.trace(h)) < 4 * spread / 10
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


@multi_backend
def test_sam_model_measures_its_inner_model():
    x, y, _ = mlp_data()
    inner = mlp_with_batchnorm()
    sam = keras_sam.SAMModel(inner, rho=0.05)
    sam.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    vector = np.random.default_rng(0).normal(
        size=sum(int(np.prod(v.shape)) for v in inner.trainable_variables)
    )
    expected = hessian.hessian_vector_product(inner, (x, y), vector)
    before = snapshot(sam)
    product = hessian.hessian_vector_product(sam, (x, y), vector)
    np.testing.assert_allclose(product, expected, rtol=1e-5, atol=1e-6)
    for old, new in zip(before, snapshot(sam)):
        np.testing.assert_array_equal(old, new)


@multi_backend
def test_subclassed_model_without_training_argument():
    class Linear(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, use_bias=False)

        def call(self, inputs):
            return self.dense(inputs)

    x, y = least_squares_data(n=5, dim=2)
    model = Linear()
    model(x)
    model.compile(optimizer="sgd", loss="mse")
    h = per_sample_hessians(x).mean(axis=0)
    product = hessian.hessian_vector_product(model, (x, y), np.ones(2))
    np.testing.assert_allclose(product, h @ np.ones(2), rtol=1e-5)


def test_lanczos_finds_repeated_eigenvalues():
    matrix = np.diag([5.0, 5.0, 3.0, 1.0, -2.0, 0.0])
    ritz = hessian.linalg.lanczos(
        lambda v: matrix @ v, 6, 6, np.random.default_rng(0)
    )
    np.testing.assert_allclose(np.sort(ritz)[::-1][:3], [5.0, 5.0, 3.0])


# Linear stability -----------------------------------------------------------


@multi_backend
def test_linear_stability_commuting_closed_form():
    # Rows along the axes: the H_i = 2 s_i^2 e_k e_k^T commute, and every
    # quantity is per axis: H_kk = mean 2 s^2, Sigma_kk = mean 4 s^4 - H_kk^2.
    scales = np.array([1.0, 0.5, 2.0, 1.5, 0.8, 1.2])
    axes = np.array([0, 1, 2, 0, 1, 2])
    x = np.zeros((6, 3), "float32")
    x[np.arange(6), axes] = scales
    y = np.ones((6, 1), "float32")
    model = least_squares_model(3)
    learning_rate, batch_size, dataset_size = 0.4, 2, 100
    factor = (dataset_size - batch_size) / (batch_size * (dataset_size - 1))
    h = np.array([np.sum(2 * scales[axes == k] ** 2) / 6 for k in range(3)])
    sigma = (
        np.array([np.sum(4 * scales[axes == k] ** 4) / 6 for k in range(3)])
        - h**2
    )
    growth = (1 - learning_rate * h) ** 2 + learning_rate**2 * factor * sigma
    result = hessian.linear_stability(
        model,
        (x, y),
        learning_rate,
        batch_size,
        dataset_size=dataset_size,
        num_iterations=3,
        seed=0,
    )
    assert result["exact"]
    assert result["sharpness"] == pytest.approx(h.max(), rel=1e-5)
    assert result["non_uniformity"] == pytest.approx(
        np.sqrt(sigma.max()), rel=1e-5
    )
    assert result["gd_stability_ratio"] == pytest.approx(
        learning_rate * h.max() / 2, rel=1e-5
    )
    assert result["sgd_growth"] == pytest.approx(growth.max() - 1, abs=1e-5)
    assert result["sgd_stable"] == (growth.max() - 1 <= 1e-3)
    # Commuting Hessians: Wu et al.'s bound is the exact growth.
    assert result["sgd_growth_exact"] == pytest.approx(
        growth.max() - 1, abs=1e-5
    )
    # Momentum enters GD's threshold 2 (1 + beta) / lr.
    with_momentum = hessian.linear_stability(
        model,
        (x, y),
        learning_rate,
        batch_size,
        momentum=0.5,
        dataset_size=dataset_size,
        num_iterations=3,
        seed=0,
    )
    assert with_momentum["gd_stability_ratio"] == pytest.approx(
        learning_rate * h.max() / (2 * 1.5), rel=1e-5
    )


@multi_backend
def test_linear_stability_non_commuting_dense_numpy():
    x, y = least_squares_data(n=6, dim=3, seed=7)
    model = least_squares_model(3)
    hessians = per_sample_hessians(x)
    for learning_rate, batch_size in ((0.3, 2), (0.6, 1), (0.5, 6)):
        h, sigma, m = dense_stability(hessians, learning_rate, batch_size, 6)
        assert np.abs(h @ sigma - sigma @ h).max() > 0.1  # non-commuting
        result = hessian.linear_stability(
            model, (x, y), learning_rate, batch_size, num_iterations=3, seed=1
        )
        assert result["sharpness"] == pytest.approx(top(h), rel=1e-5)
        assert result["non_uniformity"] == pytest.approx(
            np.sqrt(top(sigma)), rel=1e-5
        )
        assert result["sgd_growth"] == pytest.approx(top(m) - 1, abs=1e-5)
        assert result["sgd_stable"] == (top(m) - 1 <= 1e-3)


def test_linear_stability_sampled_estimate_is_close():
    """Random batches instead of per-sample products: unbiased M."""
    x, y = least_squares_data(n=6, dim=3, seed=7)
    model = least_squares_model(3)
    h, sigma, m = dense_stability(per_sample_hessians(x), 0.6, 2, 50)
    result = hessian.linear_stability(
        model,
        (x, y),
        0.6,
        2,
        dataset_size=50,
        num_iterations=3,
        max_exact_samples=0,
        num_noise_batches=120,
        seed=0,
    )
    assert not result["exact"]
    assert result["sharpness"] == pytest.approx(top(h), rel=1e-5)
    assert result["non_uniformity"] == pytest.approx(
        np.sqrt(top(sigma)), rel=0.1
    )
    assert result["sgd_growth"] == pytest.approx(top(m) - 1, abs=0.05)


@multi_backend
def test_wu_ma_e_one_dimensional_example():
    """f1 = min(x^2, 0.1 (x-1)^2), f2 = min(x^2, 1.9 (x-1)^2), lr = 0.7."""
    x = np.zeros((2, 1), "float32")
    coefficients = np.array([[0.1], [1.9]], "float32")
    # At x = 1: f1'' = 0.2, f2'' = 3.8, a = 2 < 2 / 0.7, s^2 = 3.24,
    # (1 - 0.7 * 2)^2 + 0.49 * 3.24 = 1.7476 > 1.
    result = hessian.linear_stability(
        wu_model(1.0), (x, coefficients), 0.7, batch_size=1
    )
    assert result["sharpness"] == pytest.approx(2.0, rel=1e-5)
    assert result["non_uniformity"] == pytest.approx(1.8, rel=1e-5)
    assert result["gd_stability_ratio"] == pytest.approx(0.7, rel=1e-5)
    assert result["sgd_growth"] == pytest.approx(0.7476, rel=1e-4)
    assert not result["sgd_stable"]
    full_batch = hessian.linear_stability(
        wu_model(1.0), (x, coefficients), 0.7, batch_size=2
    )
    assert full_batch["sgd_growth"] == pytest.approx(0.16 - 1, rel=1e-4)
    assert full_batch["sgd_stable"]
    # At x = 0 both f_i are x^2: a = 2, s = 0, growth 0.16 - 1.
    result = hessian.linear_stability(
        wu_model(0.0), (x, coefficients), 0.7, batch_size=1
    )
    assert result["sharpness"] == pytest.approx(2.0, rel=1e-5)
    assert result["non_uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert result["sgd_growth"] == pytest.approx(0.16 - 1, rel=1e-4)
    assert result["sgd_stable"]
    # Per-sample curvatures {0.4, 1.6}, lr = 1 (DESIGN.md): stable, though
    # "h <= 2 (1 - s) / lr" would say 1 > 0.8, unstable.
    result = hessian.linear_stability(
        wu_model(1.0), (x, np.array([[0.2], [0.8]], "float32")), 1.0, 1
    )
    assert result["sharpness"] == pytest.approx(1.0, rel=1e-5)
    assert result["non_uniformity"] == pytest.approx(0.6, rel=1e-5)
    assert result["sgd_growth"] == pytest.approx(0.36 - 1, rel=1e-4)
    assert result["sgd_stable"]


@pytest.mark.parametrize(
    "momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)]
)
def test_gd_threshold_matches_keras_sgd_on_a_quadratic(momentum, nesterov):
    """Keras SGD on sum_j a_j w_j^2 / 2 converges for a_j 5% below the
    threshold and diverges 5% above it."""
    threshold = hessian.gd_stability_threshold(0.1, momentum, nesterov)
    curvatures = np.array([0.95, 1.05], "float32") * threshold
    optimizer = keras.optimizers.SGD(0.1, momentum=momentum, nesterov=nesterov)
    w = keras.Variable(np.ones(2, "float32"))
    for _ in range(400):
        optimizer.apply([w * curvatures], [w])
    final = np.abs(ops.convert_to_numpy(w))
    assert final[0] < 1e-6
    assert not final[1] < 1e6  # large, inf or nan


# Noise alignment -------------------------------------------------------------


@multi_backend
def test_noise_alignment_least_squares():
    x, y = least_squares_data(n=8, dim=3, seed=9)
    w = np.array([0.5, -0.2, 0.1])
    model = least_squares_model(3, weights=w)
    xd = x.astype(np.float64)
    residual = xd @ w - y[:, 0]
    gradients = 2 * residual[:, None] * xd
    deviation = gradients - gradients.mean(axis=0)
    covariance = deviation.T @ deviation / 8
    h = 2 * xd.T @ xd / 8
    loss = np.mean(residual**2)
    batch_size, dataset_size = 2, 40
    factor = (dataset_size - batch_size) / (batch_size * (dataset_size - 1))
    result = hessian.noise_alignment(
        model, (x, y), batch_size, dataset_size, num_samples=64, seed=0
    )
    assert result["exact"]
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["noise_trace"] == pytest.approx(
        factor * np.trace(h @ covariance), rel=1e-4
    )
    assert result["gradient_noise"] == pytest.approx(
        factor * np.trace(covariance), rel=1e-4
    )
    assert result["frobenius_norm"] == pytest.approx(np.linalg.norm(h), 0.2)
    assert result["noise_alignment"] == pytest.approx(
        np.trace(h @ covariance) / (2 * loss * result["frobenius_norm"] ** 2),
        rel=1e-4,
    )


# Bad input --------------------------------------------------------------------


def raises(match, function, *args, **kwargs):
    """`function(*args, **kwargs)` raises a `ValueError` matching `match`."""
    with pytest.raises(ValueError, match=match):
        function(*args, **kwargs)


def test_bad_input_raises_value_error():
    x, y = least_squares_data()
    model = least_squares_model(3)
    data = (x, y)

    raises("empty", hessian.top_eigenvalues, model, (x[:0], y[:0]))
    raises("`k`.*k=0", hessian.top_eigenvalues, model, data, k=0)
    raises(
        "num_iterations.*num_iterations=2, k=3",
        hessian.top_eigenvalues,
        model,
        data,
        k=3,
        num_iterations=2,
    )
    raises(
        "`k`.*k=4", hessian.top_eigenvalues, model, data, k=4, num_iterations=4
    )
    raises("num_samples=0", hessian.hessian_trace, model, data, 0)
    raises("learning_rate=0.0", hessian.linear_stability, model, data, 0.0, 2)
    raises("learning_rate=-1", hessian.linear_stability, model, data, -1, 2)
    raises("batch_size=0", hessian.linear_stability, model, data, 0.1, 0)
    raises("batch_size=0", hessian.noise_alignment, model, data, 0)
    raises(
        "batch_size.*7.*6 probe samples",
        hessian.linear_stability,
        model,
        data,
        0.1,
        7,
    )
    raises(
        "batch_size=7, dataset_size=5",
        hessian.linear_stability,
        model,
        data,
        0.1,
        7,
        dataset_size=5,
    )
    raises(
        "momentum=1", hessian.linear_stability, model, data, 0.1, 2, momentum=1
    )
    raises(
        "probe_batch_size=0",
        hessian.hessian_vector_product,
        model,
        data,
        np.ones(3),
        probe_batch_size=0,
    )
    raises("3 entries", hessian.hessian_vector_product, model, data, np.ones(4))
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    raises("not compiled", hessian.top_eigenvalues, uncompiled, data)
    raises("`model` must be", hessian.hessian_trace, "model", data)
    raises("`data`", hessian.top_eigenvalues, model, None)


# Eigenvalue density, eigenvectors, per-layer curvature ------------------------


def axis_aligned_problem(w_star=(0.5, -1.5, 2.0, 0.0)):
    """Rows along the axes and targets `x . w_star`: the loss is 0 at
    `w_star`, with the diagonal Hessian `H_kk = 2 mean_n x_nk^2`."""
    scales = np.array([1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.3, 1.7])
    axes = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    dim = len(w_star)
    x = np.zeros((len(scales), dim), "float32")
    x[np.arange(len(scales)), axes] = scales
    w_star = np.asarray(w_star, np.float64)
    y = (x.astype(np.float64) @ w_star)[:, None].astype("float32")
    diagonal = np.array(
        [2 * np.sum(scales[axes == k] ** 2) / len(scales) for k in range(dim)]
    )
    return x, y, diagonal


@multi_backend
def test_eigenvalue_density_is_exact_for_a_diagonal_hessian():
    # A Rademacher start has (v . e_k)^2 = 1 / n: with n Lanczos steps the
    # quadrature puts mass 1 / n on each eigenvalue, so its first moment
    # is Tr(H) / n exactly.
    x, y, diagonal = axis_aligned_problem()
    model = least_squares_model(4, weights=[0.5, -1.5, 2.0, 0.0])
    density = hessian.eigenvalue_density(
        model, (x, y), num_steps=4, num_runs=3, seed=0
    )
    assert density["nodes"].shape == density["weights"].shape == (3, 4)
    for nodes, weights in zip(density["nodes"], density["weights"]):
        np.testing.assert_allclose(nodes, np.sort(diagonal), rtol=1e-5)
        np.testing.assert_allclose(weights, 0.25, rtol=1e-5)
        assert weights @ nodes == pytest.approx(np.mean(diagonal), rel=1e-5)


@multi_backend
def test_eigenvalue_density_moments_and_range():
    x, y = least_squares_data(n=7, dim=4)
    model = least_squares_model(4)
    h = per_sample_hessians(x).mean(axis=0)
    exact = np.linalg.eigvalsh(h)
    num_runs = 64
    density = hessian.eigenvalue_density(
        model, (x, y), num_steps=3, num_runs=num_runs, seed=1
    )
    np.testing.assert_allclose(density["weights"].sum(axis=1), 1.0, rtol=1e-9)
    assert density["nodes"].min() >= exact[0] * (1 - 1e-5) - 1e-6
    assert density["nodes"].max() <= exact[-1] * (1 + 1e-5)
    first_moments = np.sum(density["weights"] * density["nodes"], axis=1)
    # Per run v^T H v, v a unit Rademacher vector: mean Tr(H) / n and
    # variance 2 sum_{i != j} H_ij^2 / n^2.
    spread = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2))) / 4
    assert abs(first_moments.mean() - np.trace(h) / 4) < 4 * spread / np.sqrt(
        num_runs
    )


def test_smoothed_density_is_a_normalized_gaussian_mixture():
    density = {
        "nodes": np.array([[0.0, 1.0, 4.0], [0.5, 2.0, 4.0]]),
        "weights": np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]),
    }
    curve = hessian.smoothed_density(density, num_points=4001, sigma=0.05)
    step = curve["grid"][1] - curve["grid"][0]
    assert curve["grid"][0] == pytest.approx(-0.25)
    assert curve["grid"][-1] == pytest.approx(4.25)
    assert np.sum(curve["density"]) * step == pytest.approx(1.0, rel=1e-6)
    # At t = 4 both runs have a node (mass (0.25 + 0.6) / 2), the others
    # are 40 sigma or more away.
    at_four = hessian.smoothed_density(density, grid=[4.0], sigma=0.05)
    peak = 0.425 / (0.05 * np.sqrt(2 * np.pi))
    assert at_four["density"][0] == pytest.approx(peak, rel=1e-9)


@multi_backend
def test_top_eigenvectors_are_eigenvectors():
    x, y = least_squares_data(n=7, dim=4)
    model = least_squares_model(4)
    h = per_sample_hessians(x).mean(axis=0)
    plain = hessian.top_eigenvalues(
        model, (x, y), k=2, num_iterations=4, seed=3
    )
    values, vectors = hessian.top_eigenvalues(
        model, (x, y), k=2, num_iterations=4, seed=3, return_eigenvectors=True
    )
    np.testing.assert_allclose(values, plain, rtol=1e-12)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(h)[::-1][:2], 1e-5)
    for value, vector in zip(values, vectors):
        assert [v.shape for v in vector] == [(4, 1)]
        flat = vector[0][:, 0]
        assert np.linalg.norm(flat) == pytest.approx(1.0, rel=1e-9)
        np.testing.assert_allclose(h @ flat, value * flat, atol=1e-5)


def two_branch_model():
    """`y = (x . a + b) + x . c`: the Dense `branch/dense_a` (kernel `a`,
    bias `b`) inside a nested model, and `dense_c` (kernel `c`)."""
    inputs = keras.Input((3,))
    branch = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1, name="dense_a")],
        name="branch",
    )
    other = keras.layers.Dense(1, use_bias=False, name="dense_c")(inputs)
    outputs = keras.layers.Add()([branch(inputs), other])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model


@multi_backend
def test_per_layer_traces_and_top_eigenvalues():
    x, y = least_squares_data(n=9, dim=3, seed=5)
    model = two_branch_model()
    # Features of (a, b, c): (x, 1, x); H = 2 Phi^T Phi / n.
    phi = np.concatenate([x, np.ones((9, 1)), x], axis=1).astype(np.float64)
    h = 2 * phi.T @ phi / 9
    blocks = {"branch/dense_a": np.arange(4), "dense_c": np.arange(4, 7)}
    num_samples = 200
    result = hessian.hessian_trace(
        model, (x, y), num_samples, seed=0, per_layer=True
    )
    assert list(result["per_layer"]) == list(blocks)
    layer_sum = sum(r["trace"] for r in result["per_layer"].values())
    assert layer_sum == pytest.approx(result["trace"], rel=1e-12)
    plain = hessian.hessian_trace(model, (x, y), num_samples, seed=0)
    assert plain["trace"] == result["trace"]
    for name, indices in blocks.items():
        block = h[np.ix_(indices, indices)]
        # Var(z_L^T (H z)_L) = 2 sum over the off-diagonal entries of the
        # rows of L of H_ij^2, the diagonal block's counted twice.
        rows = h[indices]
        variance = 2 * (np.sum(rows**2) + np.sum(block**2)) - 4 * np.sum(
            np.diag(block) ** 2
        )
        estimate = result["per_layer"][name]
        assert abs(estimate["trace"] - np.trace(block)) < 4 * np.sqrt(
            variance / num_samples
        )
        assert estimate["trace_stderr"] > 0
    tops = hessian.layer_top_eigenvalues(
        model, (x, y), k=2, num_iterations=4, seed=0
    )
    assert list(tops) == list(blocks)
    for name, indices in blocks.items():
        exact = np.linalg.eigvalsh(h[np.ix_(indices, indices)])[::-1][:2]
        np.testing.assert_allclose(tops[name], exact, rtol=1e-5)


# Keskar and adaptive sharpness ----------------------------------------------


@multi_backend
def test_keskar_sharpness_at_a_diagonal_quadratic_minimum():
    # L(w* + y) = sum_k H_kk y_k^2 / 2: the box's maximum is at any
    # corner, |y_k| = epsilon (|w*_k| + 1).
    w_star = [0.5, -1.5, 2.0, 0.0]
    x, y, diagonal = axis_aligned_problem(w_star)
    model = least_squares_model(4, weights=w_star)
    before = snapshot(model)
    epsilon = 1e-2
    bounds = epsilon * (np.abs(w_star) + 1)
    maximum = np.sum(diagonal * bounds**2) / 2
    result = hessian.keskar_sharpness(model, (x, y), epsilon=epsilon, seed=0)
    assert result["loss"] == pytest.approx(0.0, abs=1e-10)
    assert result["max_loss"] == pytest.approx(maximum, rel=1e-3)
    assert result["sharpness"] == pytest.approx(100 * maximum, rel=1e-3)
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


@multi_backend
def test_adaptive_sharpness_at_a_diagonal_quadratic_minimum():
    w_star = np.array([0.5, -1.5, 2.0, 0.0])
    x, y, diagonal = axis_aligned_problem(w_star)
    model = least_squares_model(4, weights=w_star)
    before = snapshot(model)
    rho = 0.05
    # linf: the corner |delta_k| = rho |w*_k|.
    scaled = diagonal * (rho * w_star) ** 2
    worst = hessian.adaptive_sharpness(model, (x, y), rho, seed=0)
    assert worst["sharpness"] == pytest.approx(np.sum(scaled) / 2, rel=1e-3)
    # l2: rho^2 lambda_max(C H C) / 2, C = diag |w*|; with batches of 4
    # samples, each batch's own H, averaged.
    l2 = hessian.adaptive_sharpness(model, (x, y), rho, norm="l2", seed=0)
    assert l2["sharpness"] == pytest.approx(scaled.max() / 2, rel=1e-3)
    batched = hessian.adaptive_sharpness(
        model, (x, y), rho, norm="l2", batch_size=4, num_steps=30, seed=0
    )
    row_scales = x.max(axis=1).astype(np.float64)  # one row per axis
    per_batch = [
        np.max(2 * row_scales[rows] ** 2 / 4 * (rho * w_star) ** 2) / 2
        for rows in (np.arange(4), np.arange(4, 8))
    ]
    assert batched["sharpness"] == pytest.approx(np.mean(per_batch), 1e-3)
    # Average case: E[delta^T H delta / 2] = rho^2 sum_k H_kk w*_k^2 / 2,
    # the variance of one draw sum_k (H_kk rho^2 w*_k^2)^2 / 2.
    num_samples = 200
    average = hessian.adaptive_sharpness(
        model, (x, y), rho, kind="average", num_samples=num_samples, seed=0
    )
    spread = np.sqrt(np.sum(scaled**2) / 2 / num_samples)
    assert abs(average["sharpness"] - np.sum(scaled) / 2) < 4 * spread
    assert average["sharpness_stderr"] == pytest.approx(spread, rel=0.3)
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="nested GradientTape"
)
def test_mlp_density_eigenvectors_and_blocks_against_dense_hessian():
    x, y, weights = mlp_data()
    model = mlp_with_batchnorm()
    data = (x, y, weights)
    h = dense_hessian_tf(model, x, y, weights)
    h = (h + h.T) / 2
    exact = np.linalg.eigvalsh(h)
    density = hessian.eigenvalue_density(
        model, data, num_steps=20, num_runs=2, seed=0
    )
    tolerance = 1e-4 * np.abs(exact).max()
    assert density["nodes"].min() >= exact[0] - tolerance
    assert density["nodes"].max() <= exact[-1] + tolerance
    assert density["nodes"][:, -1] == pytest.approx(
        [exact[-1]] * 2, rel=1e-3
    )
    values, vectors = hessian.top_eigenvalues(
        model, data, k=2, num_iterations=h.shape[0], seed=0,
        return_eigenvectors=True,
    )
    for value, vector in zip(values, vectors):
        assert [v.shape for v in vector] == [
            tuple(v.shape) for v in model.trainable_variables
        ]
        flat = np.concatenate([v.ravel() for v in vector])
        np.testing.assert_allclose(
            h @ flat, value * flat, atol=1e-4 * abs(value)
        )
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    starts = np.cumsum([0] + sizes)
    blocks = {}
    for variable, start, size in zip(model.trainable_variables, starts, sizes):
        layer = variable.path.rsplit("/", 1)[0]
        blocks.setdefault(layer, []).extend(range(start, start + size))
    tops = hessian.layer_top_eigenvalues(
        model, data, num_iterations=20, seed=0
    )
    assert list(tops) == list(blocks)
    for layer, indices in blocks.items():
        block = h[np.ix_(indices, indices)]
        assert tops[layer][0] == pytest.approx(
            np.linalg.eigvalsh(block)[-1], rel=1e-4, abs=1e-6
        )


def test_bad_input_of_the_density_and_sharpness_functions():
    x, y = least_squares_data()
    model = least_squares_model(3)
    data = (x, y)

    raises("num_steps=0", hessian.eigenvalue_density, model, data, 0)
    raises("num_runs=0", hessian.eigenvalue_density, model, data, 3, 0)
    raises("seed=1.5", hessian.eigenvalue_density, model, data, seed=1.5)
    raises("`density`", hessian.smoothed_density, {"nodes": [1.0]})
    raises(
        "same shape", hessian.smoothed_density,
        {"nodes": [1.0, 2.0], "weights": [1.0]},
    )
    density = {"nodes": [1.0, 2.0], "weights": [0.5, 0.5]}
    raises("sigma=0", hessian.smoothed_density, density, sigma=0)
    raises("num_points=1", hessian.smoothed_density, density, num_points=1)
    raises("`grid`", hessian.smoothed_density, density, grid=[[1.0]])
    raises(
        "return_eigenvectors=1", hessian.top_eigenvalues, model, data,
        return_eigenvectors=1,
    )
    raises(
        "per_layer='yes'", hessian.hessian_trace, model, data, per_layer="yes"
    )
    raises(
        "num_iterations=1, k=2", hessian.layer_top_eigenvalues, model, data,
        k=2, num_iterations=1,
    )
    raises("epsilon=0", hessian.keskar_sharpness, model, data, epsilon=0)
    raises(
        "max_iterations=0", hessian.keskar_sharpness, model, data,
        max_iterations=0,
    )
    raises("rho=-1", hessian.adaptive_sharpness, model, data, -1)
    raises("kind='max'", hessian.adaptive_sharpness, model, data, 0.1, "max")
    raises(
        "norm='l1'", hessian.adaptive_sharpness, model, data, 0.1, norm="l1"
    )
    raises(
        "adaptive=None", hessian.adaptive_sharpness, model, data, 0.1,
        adaptive=None,
    )
    raises(
        "batch_size=0", hessian.adaptive_sharpness, model, data, 0.1,
        batch_size=0,
    )
    raises("not compiled", hessian.keskar_sharpness, keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1)]
    ), data)


@multi_backend
def test_new_measurements_leave_the_model_unchanged():
    x, y, weights = mlp_data()
    inner = mlp_with_batchnorm()
    sam = keras_sam.SAMModel(inner, rho=0.05)
    sam.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    data = (x, y, weights)
    before = snapshot(sam)
    hessian.eigenvalue_density(sam, data, num_steps=3, num_runs=1, seed=0)
    hessian.top_eigenvalues(
        sam, data, num_iterations=3, seed=0, return_eigenvectors=True
    )
    hessian.layer_top_eigenvalues(sam, data, num_iterations=2, seed=0)
    hessian.hessian_trace(sam, data, num_samples=1, seed=0, per_layer=True)
    hessian.keskar_sharpness(sam, data, max_iterations=2, seed=0)
    for kind in hessian.SHARPNESS_KINDS:
        hessian.adaptive_sharpness(
            sam, data, 0.01, kind, num_steps=2, num_samples=2, seed=0
        )
    keras_sam.landscape.loss_surface_1d(sam, data, num_points=2, seed=0)
    for old, new in zip(before, snapshot(sam)):
        np.testing.assert_array_equal(old, new)
