"""Errors that say the cause and the remedy first, in one line
(keras_sam/_validation.py): a SAMModel saved around an unregistered
class, and batches without targets."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import _validation


class UnregisteredInner(keras.Model):
    """A custom inner model that is not registered with Keras."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(inputs)


def _saved_sam(path):
    x = np.ones((4, 3), "float32")
    sam = keras_sam.SAMModel(UnregisteredInner(), rho=0.05)
    sam.compile(optimizer="sgd", loss="mse")
    sam.fit(x, np.ones((4, 1), "float32"), verbose=0)
    sam.save(path)
    return sam, x


def test_loading_around_an_unregistered_class_says_to_register_it(
    tmp_path
):
    path = tmp_path / "sam.keras"
    sam, x = _saved_sam(path)
    with pytest.raises(ValueError) as error:
        keras.saving.load_model(path)
    message = str(error.value)
    assert message == (
        "Could not load the SAMModel: its inner model uses the class "
        "'UnregisteredInner', which Keras does not know; register it with "
        "`@keras.saving.register_keras_serializable()` on its definition "
        "and import that module before loading (or pass "
        "`custom_objects={'UnregisteredInner': UnregisteredInner}` to "
        "`keras.saving.load_model`)."
    )
    # The remedy it names works.
    loaded = keras.saving.load_model(
        path, custom_objects={"UnregisteredInner": UnregisteredInner}
    )
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), sam.predict(x, verbose=0), rtol=1e-6
    )


def test_unregistered_class_error_names_a_registered_name():
    error = TypeError(
        "Could not locate class 'my_package>Block'. Make sure custom "
        "classes ... Full object config: {...}"
    )
    message = str(_validation.unregistered_class_error(error))
    assert message.startswith(
        "Could not load the SAMModel: its inner model uses the class "
        "'my_package>Block', which Keras does not know; register it with "
        "`@keras.saving.register_keras_serializable()`"
    )
    assert "custom_objects={'Block': Block}" in message
    assert "\n" not in message


def test_other_type_errors_pass_through():
    error = TypeError("__init__() got an unexpected keyword argument 'x'")
    assert _validation.unregistered_class_error(error) is error


def test_check_targets_refuses_batches_without_targets():
    with pytest.raises(ValueError) as error:
        _validation.check_targets(None)
    assert str(error.value) == (
        "A dataset or generator given to `fit` must yield `(x, y)` or "
        "`(x, y, sample_weight)`; it yielded inputs only (no targets, "
        "y=None), and a SAM step needs a loss of targets."
    )
    targets = np.zeros((2, 1))
    assert _validation.check_targets(targets) is targets


@pytest.mark.multi_backend
@pytest.mark.parametrize("source", ["tf.data", "generator"])
def test_fit_without_targets_says_what_a_dataset_must_yield(source):
    x = np.ones((8, 3), "float32")
    sam = keras_sam.SAMModel(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))
    sam.compile(optimizer="sgd", loss="mse")
    if source == "tf.data":
        tf = pytest.importorskip("tensorflow")
        data, steps = tf.data.Dataset.from_tensor_slices(x).batch(4), None
    else:
        def batches():
            while True:
                yield (x[:4],)
        data, steps = batches(), 2
    with pytest.raises(ValueError, match=r"^A dataset or generator given "
                       r"to `fit` must yield `\(x, y\)` or "
                       r"`\(x, y, sample_weight\)`"):
        sam.fit(data, steps_per_epoch=steps, verbose=0)
