"""The private Keras internals keras-sam uses still exist (a Keras
upgrade that removes one fails here, naming the version)."""

import keras
import pytest

from keras_sam import _keras_compat

pytestmark = pytest.mark.multi_backend


def test_every_internal_exists():
    _keras_compat.check()


def test_check_names_the_keras_version(monkeypatch):
    monkeypatch.setattr(
        _keras_compat, "MODEL_INTERNALS",
        (*_keras_compat.MODEL_INTERNALS, "_removed_in_a_future_keras"),
    )
    with pytest.raises(ImportError, match=keras.__version__) as error:
        _keras_compat.check()
    assert "_removed_in_a_future_keras" in str(error.value)


def test_fully_built_sees_nested_unbuilt_layers():
    inner = keras.Sequential([keras.layers.Dense(2)])
    outer = keras.Sequential([inner])
    outer.compile(loss="mse")
    assert not _keras_compat.fully_built(outer)
    outer.build((None, 3))
    outer.compile(loss="mse")
    outer.compute_loss(
        y=keras.ops.zeros((1, 2)), y_pred=keras.ops.zeros((1, 2))
    )
    assert _keras_compat.fully_built(outer)
