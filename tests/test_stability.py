"""`linear_stability` on Keras models against the second-moment map
built independently in `test_stability_theory` (by enumerating every
batch of a small least-squares problem)."""

import keras
import numpy as np
import pytest
from test_stability_theory import enumerated_growth, hessians_of, wu_growth

from keras_sam import hessian

multi_backend = pytest.mark.multi_backend


def least_squares(x, weights=None):
    dim = x.shape[1]
    inputs = keras.Input((dim,))
    outputs = keras.layers.Dense(1, use_bias=False)(inputs)
    model = keras.Model(inputs, outputs)
    if weights is not None:
        model.set_weights([np.asarray(weights, "float32").reshape(dim, 1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    y = np.random.default_rng(0).normal(size=(len(x), 1)).astype("float32")
    return model, (x.astype("float32"), y)


@multi_backend
def test_linear_stability_with_momentum_matches_enumeration():
    x = np.random.default_rng(7).normal(size=(6, 3)).astype("float32")
    hessians = hessians_of(x.astype(np.float64))
    model, data = least_squares(x)
    for momentum, nesterov, learning_rate, batch_size in (
        (0.0, False, 0.6, 1),
        (0.9, False, 0.05, 2),
        (0.9, True, 0.1, 3),
    ):
        result = hessian.linear_stability(
            model,
            data,
            learning_rate,
            batch_size,
            momentum=momentum,
            nesterov=nesterov,
            num_iterations=3,
            seed=0,
        )
        exact = enumerated_growth(
            hessians, learning_rate, batch_size, momentum, nesterov
        )
        assert result["exact"]
        assert result["growth_subspace_dim"] == 3
        assert result["sgd_growth_exact"] == pytest.approx(exact, abs=1e-5)
        if momentum == 0.0:
            # Today's criterion, unchanged; here it is strictly above.
            bound = wu_growth(hessians, learning_rate, batch_size)
            assert result["sgd_growth"] == pytest.approx(bound, abs=1e-5)
            assert bound > exact + 0.05
        else:
            assert result["sgd_growth"] == result["sgd_growth_exact"]
        assert result["sgd_stable"] == (result["sgd_growth"] <= 1e-3)


def test_linear_stability_top_subspace_matches_projected_enumeration():
    x = np.random.default_rng(4).normal(size=(6, 5)).astype("float32")
    hessians = hessians_of(x.astype(np.float64))
    model, data = least_squares(x)
    _, vectors = np.linalg.eigh(hessians.mean(axis=0))
    for num_directions in (1, 3):
        basis = vectors[:, -num_directions:]
        projected = np.einsum("ia,sij,jb->sab", basis, hessians, basis)
        result = hessian.linear_stability(
            model,
            data,
            0.05,
            2,
            momentum=0.9,
            num_directions=num_directions,
            seed=0,
        )
        assert result["growth_subspace_dim"] == num_directions
        expected = enumerated_growth(projected, 0.05, 2, 0.9, False)
        assert result["sgd_growth"] == pytest.approx(expected, abs=1e-5)
    full = hessian.linear_stability(
        model, data, 0.05, 2, momentum=0.9, num_directions=5, seed=0
    )
    assert full["growth_subspace_dim"] == 5
    assert full["sgd_growth"] == pytest.approx(
        enumerated_growth(hessians, 0.05, 2, 0.9, False), abs=1e-5
    )


def test_linear_stability_sampled_momentum_estimate_is_close():
    x = np.random.default_rng(7).normal(size=(6, 3)).astype("float32")
    hessians = hessians_of(x.astype(np.float64))
    model, data = least_squares(x)
    result = hessian.linear_stability(
        model,
        data,
        0.05,
        2,
        momentum=0.9,
        num_iterations=3,
        max_exact_samples=0,
        num_noise_batches=150,
        seed=0,
    )
    assert not result["exact"]
    expected = enumerated_growth(hessians, 0.05, 2, 0.9, False)
    assert result["sgd_growth"] == pytest.approx(expected, abs=0.03)


def test_linear_stability_num_directions_must_be_positive():
    model, data = least_squares(np.ones((4, 2)))
    with pytest.raises(ValueError, match="num_directions=0"):
        hessian.linear_stability(model, data, 0.1, 2, num_directions=0)
