"""The tf-keras twin of a `keras_sam.models` network computes what the
Keras 3 network does."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.experiments._tf_keras_twin import tf_keras_twin


@pytest.mark.parametrize("name", ["resnet-8", "wrn-10-1", "pyramidnet-11-8"])
def test_tf_keras_twin_computes_what_the_keras_model_does(name):
    tf_keras = pytest.importorskip("tf_keras")
    keras.utils.set_random_seed(0)
    model = keras_sam.models.get_model(
        name, weight_decay=5e-4, classifier_activation=None
    )
    twin = tf_keras_twin(model, tf_keras)
    assert [layer.name for layer in twin.layers] == [
        layer.name for layer in model.layers
    ]
    twin.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3))
    x = x.astype("float32")
    np.testing.assert_allclose(
        np.asarray(twin(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-5,
    )
    # Coupled L2: the same regularization loss at the same weights.
    np.testing.assert_allclose(
        float(sum(twin.losses)),
        float(sum(keras.ops.convert_to_numpy(v) for v in model.losses)),
        rtol=1e-5,
    )


def test_tf_keras_twin_refuses_custom_layers():
    tf_keras = pytest.importorskip("tf_keras")
    model = keras_sam.models.get_model("shake-shake-8-2x4d")
    with pytest.raises(ValueError, match="ShakeShake"):
        tf_keras_twin(model, tf_keras)
