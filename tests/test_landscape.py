"""keras_sam.landscape against closed forms and direct evaluation.

The least-squares model `y = x . w` ("mse": `mean (x . w - y)^2`, "mae":
`mean |x . w - y|`) gives every loss in closed form; a BatchNorm MLP is
checked against `evaluate` of a clone holding the interpolated weights.
"""

import keras
import numpy as np
import pytest
from keras import ops
from test_hessian import least_squares_data

from keras_sam import landscape

multi_backend = pytest.mark.multi_backend


def least_squares(dim=3, weights=None):
    model = keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(1, use_bias=False)]
    )
    if weights is not None:
        model.set_weights([np.asarray(weights, "float32").reshape(dim, 1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return model


def closed_form(x, y, w):
    residual = x.astype(np.float64) @ np.ravel(w) - y[:, 0]
    return np.mean(residual**2), np.mean(np.abs(residual))


def snapshot(model):
    return [np.array(ops.convert_to_numpy(v)) for v in model.variables]


def assert_unchanged(model, before):
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


@multi_backend
def test_interpolation_matches_closed_form_beyond_the_segment():
    x, y = least_squares_data(n=8)
    start = np.array([0.3, -1.0, 2.0])
    end = np.array([1.0, 0.5, -0.5])
    model = least_squares(weights=end)
    before = snapshot(model)
    line = landscape.interpolate(
        model,
        [start.reshape(3, 1)],
        model,
        (x, y),
        num_points=5,
        alpha_range=(-0.5, 1.5),
        probe_batch_size=3,
    )
    np.testing.assert_allclose(line["alpha"], [-0.5, 0.0, 0.5, 1.0, 1.5])
    for alpha, loss, mae in zip(line["alpha"], line["loss"], line["mae"]):
        expected = closed_form(x, y, (1 - alpha) * start + alpha * end)
        assert loss == pytest.approx(expected[0], rel=1e-5)
        assert mae == pytest.approx(expected[1], rel=1e-5)
    assert_unchanged(model, before)


def batchnorm_mlp():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(
        4, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.01)
    )(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    batchnorm = model.layers[2]
    rng = np.random.default_rng(0)
    batchnorm.moving_mean.assign(rng.normal(size=4).astype("float32"))
    batchnorm.moving_variance.assign(
        rng.uniform(0.5, 2.0, size=4).astype("float32")
    )
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return model


@multi_backend
def test_interpolation_matches_evaluate_at_the_interpolated_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3)).astype("float32")
    y = rng.normal(size=(12, 2)).astype("float32")
    sample_weight = rng.uniform(0.5, 2.0, size=12).astype("float32")
    model = batchnorm_mlp()
    start = [
        rng.normal(size=v.shape).astype("float32")
        for v in model.trainable_variables
    ]
    before = snapshot(model)
    line = landscape.interpolate(
        model, start, model, (x, y, sample_weight), num_points=3,
        probe_batch_size=5,
    )
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    end = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    for i, alpha in enumerate(line["alpha"]):
        for variable, a, b in zip(clone.trainable_variables, start, end):
            variable.assign((1 - alpha) * a + alpha * b)
        direct = clone.evaluate(
            x, y, sample_weight=sample_weight, batch_size=12, verbose=0,
            return_dict=True,
        )
        assert line["loss"][i] == pytest.approx(direct["loss"], rel=1e-5)
        assert line["mae"][i] == pytest.approx(direct["mae"], rel=1e-5)
    assert_unchanged(model, before)


def test_filter_normalized_direction_matches_each_filter_norm():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Conv2DTranspose(3, 2)(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    before = snapshot(model)
    direction = landscape.filter_normalized_direction(model, seed=0)
    again = landscape.filter_normalized_direction(model, seed=0)
    for variable, d, same in zip(model.trainable_variables, direction, again):
        w = ops.convert_to_numpy(variable).astype(np.float64)
        assert d.shape == w.shape
        np.testing.assert_array_equal(d, same)
        if w.ndim < 2:
            np.testing.assert_array_equal(d, 0.0)
            continue
        # The output axis: last for Conv2D and Dense, the third for
        # Conv2DTranspose's (kh, kw, filters, in_channels).
        axis = 2 if "conv2d_transpose" in variable.path else w.ndim - 1
        others = tuple(a for a in range(w.ndim) if a != axis)
        np.testing.assert_allclose(
            np.sqrt(np.sum(d**2, axis=others)),
            np.sqrt(np.sum(w**2, axis=others)),
            rtol=1e-10,
        )
        assert not np.allclose(d, w)
    other = landscape.filter_normalized_direction(model, seed=1)
    assert not np.allclose(other[0], direction[0])
    assert_unchanged(model, before)


def test_filter_normalized_direction_of_attention_per_output_unit():
    # MultiHeadAttention's projections are EinsumDense kernels: query,
    # key and value are (dim, heads, head_dim), one output unit per
    # (head, unit) pair; the output projection is (heads, head_dim, dim).
    # Their biases are 2-D (heads, head_dim) and still get no direction.
    inputs = keras.Input((5, 6))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    direction = landscape.filter_normalized_direction(model, seed=0)
    seen = set()
    for variable, d in zip(model.trainable_variables, direction):
        w = ops.convert_to_numpy(variable).astype(np.float64)
        name = variable.path.rsplit("/", 2)[-2:]
        if name[-1] == "bias":
            np.testing.assert_array_equal(d, 0.0)
            seen.add("bias" + str(w.ndim))
            continue
        if name[0] in ("query", "key", "value"):
            assert w.shape == (6, 2, 3)
            for head in range(2):
                for unit in range(3):
                    assert np.linalg.norm(d[:, head, unit]) == pytest.approx(
                        np.linalg.norm(w[:, head, unit]), rel=1e-10
                    )
            seen.add(name[0])
        else:  # attention_output (2, 3, 6) and the Dense (6, 2)
            for unit in range(w.shape[-1]):
                assert np.linalg.norm(d[..., unit]) == pytest.approx(
                    np.linalg.norm(w[..., unit]), rel=1e-10
                )
            seen.add(name[0])
    assert {"query", "key", "value", "attention_output", "bias1",
            "bias2"} <= seen


@multi_backend
def test_loss_surfaces_match_closed_form():
    x, y = least_squares_data(n=8, seed=2)
    w = np.array([0.5, -0.2, 1.0])
    model = least_squares(weights=w)
    before = snapshot(model)
    d1 = np.array([1.0, 0.0, -1.0])
    d2 = np.array([0.2, 0.7, 0.1])
    line = landscape.loss_surface_1d(
        model, (x, y), [d1.reshape(3, 1)], num_points=5, extent=2.0
    )
    np.testing.assert_allclose(line["alpha"], [-2, -1, 0, 1, 2])
    for alpha, loss, mae in zip(line["alpha"], line["loss"], line["mae"]):
        expected = closed_form(x, y, w + alpha * d1)
        assert loss == pytest.approx(expected[0], rel=1e-5)
        assert mae == pytest.approx(expected[1], rel=1e-5)

    plane = landscape.loss_surface_2d(
        model,
        (x, y),
        [[d1.reshape(3, 1)], [d2.reshape(3, 1)]],
        num_points=3,
        extent=0.5,
    )
    assert plane["loss"].shape == plane["mae"].shape == (3, 3)
    for i, alpha in enumerate(plane["alpha"]):
        for j, beta in enumerate(plane["beta"]):
            expected = closed_form(x, y, w + alpha * d1 + beta * d2)
            assert plane["loss"][i, j] == pytest.approx(expected[0], 1e-5)

    # A random direction of a one-unit Dense kernel has the norm of w.
    random_line = landscape.loss_surface_1d(
        model, (x, y), num_points=3, seed=0
    )
    direction = landscape.filter_normalized_direction(model, seed=0)[0]
    assert np.linalg.norm(direction) == pytest.approx(np.linalg.norm(w))
    for alpha, loss in zip(random_line["alpha"], random_line["loss"]):
        expected = closed_form(x, y, w + alpha * direction[:, 0])
        assert loss == pytest.approx(expected[0], rel=1e-5)
    random_plane = landscape.loss_surface_2d(
        model, (x, y), num_points=3, seed=0
    )
    assert random_plane["loss"][1, 1] == pytest.approx(
        closed_form(x, y, w)[0], rel=1e-6
    )
    assert_unchanged(model, before)


def test_bad_input_raises_value_error():
    x, y = least_squares_data(n=8)
    model = least_squares()
    weights = [np.zeros((3, 1))]

    def raises(match, function, *args, **kwargs):
        with pytest.raises(ValueError, match=match):
            function(*args, **kwargs)

    raises(
        "num_points=1", landscape.interpolate, model, weights, weights,
        (x, y), num_points=1,
    )
    raises(
        r"alpha_range.*\(1, 0\)", landscape.interpolate, model, weights,
        weights, (x, y), alpha_range=(1, 0),
    )
    raises(
        r"end_weights.*\[\(3,\)\]", landscape.interpolate, model, weights,
        [np.zeros(3)], (x, y),
    )
    raises(
        "extent=0", landscape.loss_surface_1d, model, (x, y), extent=0
    )
    raises(
        "directions", landscape.loss_surface_2d, model, (x, y), [weights]
    )
    raises("seed='a'", landscape.filter_normalized_direction, model, "a")
    raises("`model`", landscape.filter_normalized_direction, "model")
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    raises("not compiled", landscape.loss_surface_1d, uncompiled, (x, y))
