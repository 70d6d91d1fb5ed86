"""Tests for `keras_sam.compat`: tf-keras's SharpnessAwareMinimization
usage (its own test file's calls), ported to Keras 3, and its step
against NumPy."""

import warnings

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import compat


@pytest.fixture(autouse=True)
def _warn_again(monkeypatch):
    # The split warning is once per process: each test starts unwarned.
    monkeypatch.setattr(compat, "_SPLIT_SCALE_WARNED", False)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _two_layers():
    return keras.Sequential(
        [keras.Input([2, 2]), keras.layers.Dense(4), keras.layers.Dense(1)]
    )


def _data(rows, seed=0):
    data = np.random.default_rng(seed).uniform(size=(rows, 2, 2))
    label = (data[:, :, :1] > 0.5).astype("float32")
    return data.astype("float32"), label


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )


def test_call_is_the_inner_models():
    model = keras.Sequential([keras.Input([2, 2]), keras.layers.Dense(4)])
    sam_model = compat.SharpnessAwareMinimization(model)
    data, _ = _data(2)
    np.testing.assert_allclose(
        _numpy(model(data)), _numpy(sam_model(data)), rtol=1e-6
    )
    assert isinstance(sam_model, keras_sam.SAMModel)
    assert sam_model.rho == 0.05 and sam_model.num_batch_splits is None


def test_fit_without_a_warning():
    sam_model = compat.SharpnessAwareMinimization(_two_layers())
    _compile(sam_model)
    data, label = _data(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = sam_model.fit(data, label, steps_per_epoch=1, verbose=0)
    assert not [w for w in caught if "num_batch_splits" in str(w.message)]
    assert np.isfinite(history.history["loss"][0])
    assert history.history["sam_sharpness"][0] >= 0


def test_fit_with_sub_batch_warns_once_about_the_sum():
    with pytest.warns(UserWarning, match="summed.*averages.*1/4"):
        sam_model = compat.SharpnessAwareMinimization(
            _two_layers(), num_batch_splits=4
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.SharpnessAwareMinimization(_two_layers(), num_batch_splits=4)
    assert not [w for w in caught if "num_batch_splits" in str(w.message)]
    _compile(sam_model)
    data, label = _data(48)
    history = sam_model.fit(data, label, steps_per_epoch=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_save_and_load_keras_format(tmp_path):
    sam_model = compat.SharpnessAwareMinimization(
        _two_layers(), rho=0.1, num_batch_splits=2, name="sam"
    )
    _compile(sam_model)
    data, label = _data(4)
    sam_model.fit(data, label, verbose=0)
    path = tmp_path / "model.keras"
    sam_model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is compat.SharpnessAwareMinimization
    assert (loaded.name, loaded.rho, loaded.num_batch_splits) == (
        "sam",
        0.1,
        2,
    )
    np.testing.assert_allclose(
        _numpy(sam_model(data)), _numpy(loaded(data)), rtol=1e-6
    )
    loaded.fit(data, label, verbose=0)  # trains on after loading
    config = sam_model.get_config()
    rebuilt = compat.SharpnessAwareMinimization.from_config(config)
    assert rebuilt.get_config()["rho"] == 0.1


def test_weights_carry_over_between_two_instances(tmp_path):
    # tf-keras restored one from the other's tf.train.Checkpoint; the
    # Keras 3 form is save_weights / load_weights.
    sam_model_1 = compat.SharpnessAwareMinimization(_two_layers())
    sam_model_2 = compat.SharpnessAwareMinimization(_two_layers())
    _compile(sam_model_1)
    data, label = _data(1)
    sam_model_1.fit(data, label, verbose=0)
    path = tmp_path / "sam.weights.h5"
    sam_model_1.save_weights(path)
    sam_model_2.load_weights(path)
    np.testing.assert_allclose(
        _numpy(sam_model_1(data)), _numpy(sam_model_2(data))
    )


def _numpy_sam_gradient(w, x, y, rho):
    """SAM's descent gradient for `mean((x @ w - y)^2)` at `w`."""

    def gradient(weights):
        return 2.0 / len(x) * x.T @ (x @ weights - y)

    g = gradient(w)
    return gradient(w + rho * g / np.linalg.norm(g))


@pytest.mark.parametrize("num_batch_splits", [None, 2])
def test_one_sgd_step_against_tf_keras_summed_splits(num_batch_splits):
    # tf-keras's step with k splits: w - lr * (sum of the k chunks' SAM
    # gradients). keras-sam averages them, so SGD(lr * k) takes it.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 1))
    w = rng.normal(size=(3, 1))
    rho, lr = 0.05, 0.1
    k = num_batch_splits or 1
    chunks = zip(np.split(x, k), np.split(y, k))
    expected = w - lr * sum(
        _numpy_sam_gradient(w, xc, yc, rho) for xc, yc in chunks
    )

    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1, use_bias=False)]
    )
    inner.set_weights([w.astype("float32")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam_model = compat.SharpnessAwareMinimization(
            inner, rho=rho, num_batch_splits=num_batch_splits
        )
    sam_model.compile(optimizer=keras.optimizers.SGD(lr * k), loss="mse")
    sam_model.fit(
        x.astype("float32"),
        y.astype("float32"),
        batch_size=8,
        shuffle=False,
        verbose=0,
    )
    np.testing.assert_allclose(inner.get_weights()[0], expected, atol=1e-5)
