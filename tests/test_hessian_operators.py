"""The Gauss-Newton and Fisher operators, Hutch++ and blocks of
keras_sam.hessian against dense NumPy matrices.

The references are built without the code under test: the Jacobian of a
one-hidden-layer tanh MLP's outputs is written out by hand in NumPy, the
GGN is `mean_i J_i^T H_out J_i` with the closed-form output Hessians, the
true Fisher is the expectation of per-sample gradient outer products over
the model's predicted classes (enumerated), the empirical Fisher the mean
of per-sample gradient outer products at the labels; a linear model with
mse has the closed-form Hessian `2/N X^T X`.
"""

import keras
import numpy as np
import pytest

from keras_sam import hessian

multi_backend = pytest.mark.multi_backend

INPUTS, HIDDEN, CLASSES, SAMPLES = 3, 4, 3, 5


def mlp(loss, probabilities=False, seed=0):
    """`Dense(4, tanh) -> Dense(3)` (softmax if `probabilities`)."""
    inputs = keras.Input((INPUTS,))
    hidden = keras.layers.Dense(HIDDEN, activation="tanh", name="hidden")(
        inputs
    )
    outputs = keras.layers.Dense(
        CLASSES, activation="softmax" if probabilities else None, name="out"
    )(hidden)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in model.weights]
    )
    model.compile(optimizer="sgd", loss=loss)
    return model


def mlp_data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, INPUTS)).astype("float32")
    labels = rng.integers(0, CLASSES, size=SAMPLES)
    targets = rng.normal(size=(SAMPLES, CLASSES)).astype("float32")
    return x, labels, targets


def numpy_jacobians(model, x):
    """Per-sample logits `(N, C)` and Jacobians `(N, C, P)` (P: all
    parameters, in the order of `model.trainable_variables`)."""
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in model.get_weights()]
    x = np.asarray(x, np.float64)
    h = np.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    jacobians = []
    for i in range(len(x)):
        slope = 1 - h[i] ** 2
        d_w1 = np.einsum("a,jc,j->caj", x[i], w2, slope)  # (C, in, hidden)
        d_b1 = (w2 * slope[:, None]).T  # (C, hidden)
        d_w2 = np.einsum("j,cd->cjd", h[i], np.eye(CLASSES))
        d_b2 = np.eye(CLASSES)
        jacobians.append(
            np.concatenate(
                [
                    d_w1.reshape(CLASSES, -1),
                    d_b1,
                    d_w2.reshape(CLASSES, -1),
                    d_b2,
                ],
                axis=1,
            )
        )
    return logits, np.array(jacobians)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dense_operator(model, data, operator, probe_batch_size=2):
    dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    columns = [
        hessian.curvature_vector_product(
            model, data, np.eye(dim)[j], operator=operator,
            probe_batch_size=probe_batch_size,
        )
        for j in range(dim)
    ]
    return np.array(columns).T


def assert_matrix_close(actual, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, atol=2e-5 * scale)


@multi_backend
def test_cross_entropy_ggn_fisher_and_empirical_fisher():
    x, labels, _ = mlp_data()
    one_hot = np.eye(CLASSES)[labels]
    model = mlp(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logits, jac = numpy_jacobians(model, x)
    p = softmax(logits)
    ggn = np.mean(
        [j.T @ (np.diag(q) - np.outer(q, q)) @ j for j, q in zip(jac, p)],
        axis=0,
    )
    fisher = np.mean(
        [
            sum(q[c] * np.outer(j.T @ (q - np.eye(CLASSES)[c]),
                                j.T @ (q - np.eye(CLASSES)[c]))
                for c in range(CLASSES))
            for j, q in zip(jac, p)
        ],
        axis=0,
    )
    gradients = [j.T @ (q - t) for j, q, t in zip(jac, p, one_hot)]
    empirical = np.mean([np.outer(g, g) for g in gradients], axis=0)
    data = (x, labels)
    assert_matrix_close(dense_operator(model, data, "ggn"), ggn)
    assert_matrix_close(dense_operator(model, data, "fisher"), fisher)
    assert_matrix_close(
        dense_operator(model, data, "empirical_fisher"), empirical
    )
    # Dense labels and a model that outputs probabilities: the same GGN
    # (split at the logits) and the same empirical Fisher.
    probability_model = mlp("categorical_crossentropy", probabilities=True)
    dense_data = (x, one_hot.astype("float32"))
    assert_matrix_close(dense_operator(probability_model, dense_data, "ggn"),
                        ggn)
    assert_matrix_close(
        dense_operator(probability_model, dense_data, "empirical_fisher"),
        empirical,
    )
    top = hessian.top_eigenvalues(
        model, data, k=2, num_iterations=28, seed=0, operator="ggn"
    )
    np.testing.assert_allclose(
        top, np.linalg.eigvalsh(ggn)[::-1][:2], rtol=1e-4
    )


@multi_backend
def test_mse_ggn_fisher_empirical_fisher_and_sample_weights():
    x, _, targets = mlp_data()
    weights = np.array([1.0, 0.5, 2.0, 0.0, 1.5], "float32")
    model = mlp("mse")
    outputs, jac = numpy_jacobians(model, x)
    # Keras mse: mean over the C outputs of (f - y)^2, no 1/2.
    ggn = np.mean(
        [s * 2.0 / CLASSES * j.T @ j for s, j in zip(weights, jac)], axis=0
    )
    residuals = 2.0 / CLASSES * (outputs - targets)
    empirical = np.mean(
        [s * np.outer(j.T @ r, j.T @ r)
         for s, j, r in zip(weights, jac, residuals)],
        axis=0,
    )
    data = (x, targets, weights)
    assert_matrix_close(dense_operator(model, data, "ggn"), ggn)
    assert_matrix_close(dense_operator(model, data, "fisher"), ggn)
    assert_matrix_close(
        dense_operator(model, data, "empirical_fisher"), empirical
    )


@multi_backend
def test_ggn_is_the_hessian_of_a_linear_model_with_mse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    # Parameters: kernel (4, 2) row-major, then bias (2,). Per output c,
    # f_c = x . W[:, c] + b_c; the loss mean_i mean_c (f_c - y_c)^2 has
    # Hessian (2 / (N C)) sum_i a_i a_i^T per output, a_i = (x_i, 1).
    augmented = np.hstack([x, np.ones((6, 1))]).astype(np.float64)
    per_output = 2.0 / (6 * 2) * augmented.T @ augmented
    expected = np.zeros((10, 10))
    for c in range(2):
        index = [2 * i + c for i in range(4)] + [8 + c]
        expected[np.ix_(index, index)] = per_output
    assert_matrix_close(dense_operator(model, (x, y), "ggn"), expected)
    assert_matrix_close(dense_operator(model, (x, y), "hessian"), expected)


@multi_backend
@pytest.mark.parametrize(
    "loss", ["mse", "sparse_categorical_crossentropy_from_logits"]
)
@pytest.mark.parametrize("weight_shape", [None, (5, 3)])
def test_ggn_is_the_hessian_of_a_linear_sequence_model(loss, weight_shape):
    # Outputs linear in the weights: the Hessian has no second-derivative
    # term of the network, so G = H for any loss, here with outputs of
    # shape (N, T, C) whose T positions are loss elements, and sample
    # weights as Keras applies them.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 4)).astype("float32")
    if loss == "mse":
        y = rng.normal(size=(5, 3, 2)).astype("float32")
        compiled_loss = "mse"
    else:
        y = rng.integers(0, 2, size=(5, 3))
        compiled_loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
    inputs = keras.Input((3, 4))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss=compiled_loss)
    data = (x, y)
    if weight_shape:
        weights = rng.uniform(0.5, 2.0, size=weight_shape)
        data = (x, y, weights.astype("float32"))
    hessian_matrix = dense_operator(model, data, "hessian")
    assert_matrix_close(dense_operator(model, data, "ggn"), hessian_matrix)


@multi_backend
def test_blocks_and_hutch_plus_plus_against_the_dense_sub_block():
    x, labels, _ = mlp_data()
    model = mlp("sparse_categorical_crossentropy", probabilities=True)
    logits, jac = numpy_jacobians(model, x)
    p = softmax(logits)
    ggn = np.mean(
        [j.T @ (np.diag(q) - np.outer(q, q)) @ j for j, q in zip(jac, p)],
        axis=0,
    )
    output_layer = slice(INPUTS * HIDDEN + HIDDEN, None)
    block = ggn[output_layer, output_layer]
    data = (x, labels)

    def chooses_output(layer):
        return layer.name == "out"

    top = hessian.top_eigenvalues(
        model, data, num_iterations=15, seed=0, operator="ggn",
        layers=chooses_output,
    )
    np.testing.assert_allclose(top, np.linalg.eigvalsh(block)[-1:],
                               rtol=1e-4)
    per_layer = hessian.layer_top_eigenvalues(
        model, data, num_iterations=15, seed=0, operator="ggn"
    )
    np.testing.assert_allclose(per_layer["out"], top, rtol=1e-4)
    # A sketch as large as the block (15 parameters): Hutch++ is exact.
    trace = hessian.hessian_trace(
        model, data, num_samples=45, seed=0, method="hutch++",
        operator="ggn", layers=chooses_output,
    )
    np.testing.assert_allclose(trace["trace"], np.trace(block), rtol=1e-4)
    # Layer classes select both Dense layers: the whole GGN.
    whole = hessian.top_eigenvalues(
        model, data, num_iterations=28, seed=0, operator="ggn",
        layers=(keras.layers.Dense,),
    )
    np.testing.assert_allclose(whole, np.linalg.eigvalsh(ggn)[-1:],
                               rtol=1e-4)
    density = hessian.eigenvalue_density(
        model, data, num_steps=15, num_runs=1, seed=0, operator="ggn",
        layers=chooses_output,
    )
    np.testing.assert_allclose(
        np.sort(density["nodes"][0]), np.linalg.eigvalsh(block), atol=1e-4
    )


@multi_backend
def test_regularization_enters_the_ggn_with_its_hessian():
    # y = x . w with L2(0.1) on w: H = 2/N X^T X + 0.2 I, and so is G.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3)).astype("float32")
    y = rng.normal(size=(5, 1)).astype("float32")
    inputs = keras.Input((3,))
    layer = keras.layers.Dense(
        1, use_bias=False, kernel_regularizer=keras.regularizers.L2(0.1)
    )
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer="sgd", loss="mse")
    expected = 2.0 / 5 * x.T.astype(np.float64) @ x + 0.2 * np.eye(3)
    assert_matrix_close(dense_operator(model, (x, y), "ggn"), expected)
    empirical = dense_operator(model, (x, y), "empirical_fisher")
    residuals = 2.0 * (x @ model.get_weights()[0] - y).astype(np.float64)
    gradients = x.astype(np.float64) * residuals
    assert_matrix_close(
        empirical, gradients.T @ gradients / 5 + 0.2 * np.eye(3)
    )


def linear_mse_model(x):
    inputs = keras.Input((x.shape[1],))
    model = keras.Model(
        inputs, keras.layers.Dense(1, use_bias=False)(inputs)
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_hutchinson_is_exact_for_every_probe_on_a_diagonal_hessian():
    # x_i = a_i e_i: H = (2 / N) diag(a^2), and z^T H z = Tr(H) for every
    # Rademacher z; dropping one probe would give (n - 1) / n of it.
    scales = np.array([1.0, 2.0, 0.5, 3.0], "float32")
    x = np.diag(scales)
    y = np.ones((4, 1), "float32")
    model = linear_mse_model(x)
    for num_samples in (1, 3, 8):
        result = hessian.hessian_trace(
            model, (x, y), num_samples=num_samples, seed=num_samples
        )
        np.testing.assert_allclose(
            result["trace"], 2.0 / 4 * np.sum(scales**2), rtol=1e-6
        )
        if num_samples > 1:
            assert result["trace_stderr"] == pytest.approx(0.0, abs=1e-6)


def test_hutch_plus_plus_is_exact_on_a_low_rank_hessian():
    # Two samples in ten dimensions: H = (2 / N) X^T X has rank 2, and a
    # sketch of k = 2 columns (6 products) captures it.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 10)).astype("float32")
    y = np.ones((2, 1), "float32")
    model = linear_mse_model(x)
    expected = 2.0 / 2 * np.sum(x.astype(np.float64) ** 2)
    for seed in range(3):
        result = hessian.hessian_trace(
            model, (x, y), num_samples=6, seed=seed, method="hutch++"
        )
        np.testing.assert_allclose(result["trace"], expected, rtol=1e-5)
    hutchinson = [
        hessian.hessian_trace(model, (x, y), num_samples=6, seed=seed)
        ["trace"]
        for seed in range(3)
    ]
    assert np.max(np.abs(np.array(hutchinson) - expected)) > 1e-3 * expected


def test_operator_arguments_raise_one_line_value_errors():
    x, labels, _ = mlp_data()
    model = mlp("sparse_categorical_crossentropy")
    data = (x, labels)
    with pytest.raises(ValueError, match="operator"):
        hessian.top_eigenvalues(model, data, operator="gauss")
    with pytest.raises(ValueError, match="method"):
        hessian.hessian_trace(model, data, method="hutch")
    with pytest.raises(ValueError, match="per_layer"):
        hessian.hessian_trace(model, data, method="hutch++", per_layer=True)
    with pytest.raises(ValueError, match="num_samples"):
        hessian.hessian_trace(model, data, num_samples=2, method="hutch++")
    with pytest.raises(ValueError, match="layers"):
        hessian.top_eigenvalues(model, data, layers="dense")
    with pytest.raises(ValueError, match="layers"):
        hessian.top_eigenvalues(model, data, layers=keras.layers.Conv2D)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="binary_crossentropy"):
        hessian.hessian_trace(model, data, operator="ggn")
