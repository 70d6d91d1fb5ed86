"""`keras_sam.stateless.stateless_loss` against NumPy: the loss `fit`
minimizes at given values, regularization included, with no side effect."""

import keras
import numpy as np
import pytest

from keras_sam import stateless

pytestmark = pytest.mark.multi_backend


def _model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(
        4, kernel_regularizer=keras.regularizers.L2(0.1), name="hidden"
    )(inputs)
    hidden = keras.layers.BatchNormalization(momentum=0.5, name="norm")(hidden)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(loss="mse")
    return model


def _numpy_loss(values, x, y, training):
    """The model above in float64: MSE plus 0.1 * ||W_hidden||^2, and the
    BatchNorm moving statistics a training pass would write."""
    (w1, b1, gamma, beta, w2, b2), (mean, var) = values
    h = x @ w1 + b1
    if training:
        batch_mean, batch_var = h.mean(0), h.var(0)
        new_mean = 0.5 * mean + 0.5 * batch_mean
        new_var = 0.5 * var + 0.5 * batch_var
    else:
        batch_mean, batch_var, new_mean, new_var = mean, var, mean, var
    h = gamma * (h - batch_mean) / np.sqrt(batch_var + 1e-3) + beta
    out = h @ w2 + b2
    loss = np.mean((out - y) ** 2) + 0.1 * np.sum(w1 ** 2)
    return loss, (new_mean, new_var)


@pytest.mark.parametrize("training", [True, False])
def test_stateless_loss_matches_numpy_and_changes_nothing(training):
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    variables = stateless.variable_lists(model)
    # Values that differ from the variables' own, so the test sees that
    # the given values (not the variables) are used.
    trainable = [
        rng.normal(size=v.shape).astype("float32")
        for v in variables.trainable
    ]
    non_trainable = [
        np.abs(rng.normal(size=v.shape)).astype("float32") + 0.5
        for v in variables.non_trainable
    ]
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    as_tensors = lambda values: [  # noqa: E731
        keras.ops.convert_to_tensor(v) for v in values
    ]
    loss, (y_pred, new_state, _) = stateless.stateless_loss(
        model, as_tensors(trainable), as_tensors(non_trainable),
        [v.value for v in variables.metrics], x, y, training=training,
    )
    ordered = [
        np.asarray(trainable[[v.path for v in variables.trainable].index(p)],
                   "float64")
        for p in ("hidden/kernel", "hidden/bias", "norm/gamma", "norm/beta",
                  "out/kernel", "out/bias")
    ]
    stats = [
        np.asarray(non_trainable[[v.path for v in
                                  variables.non_trainable].index(p)],
                   "float64")
        for p in ("norm/moving_mean", "norm/moving_variance")
    ]
    expected_loss, (mean, var) = _numpy_loss(
        (ordered, stats), x.astype("float64"), y.astype("float64"), training
    )
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(loss)), expected_loss, rtol=2e-5
    )
    paths = [v.path for v in variables.non_trainable]
    state = {p: keras.ops.convert_to_numpy(s) for p, s in zip(paths, new_state)}
    np.testing.assert_allclose(state["norm/moving_mean"], mean, rtol=2e-5,
                               atol=1e-6)
    np.testing.assert_allclose(state["norm/moving_variance"], var,
                               rtol=2e-5, atol=1e-6)
    assert keras.ops.convert_to_numpy(y_pred).shape == (6, 2)
    # Nothing was assigned: every variable keeps its value.
    after = [keras.ops.convert_to_numpy(v) for v in model.weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
