"""The twin of a `keras_sam.models` network computes what the Keras 3
network does.

`tf_keras_twin` rebuilds a functional model layer by layer with the
classes of another Keras library. tf-keras cannot be installed beside
`tensorflow-cpu` without pulling the `tensorflow` distribution over it,
so the suite rebuilds with Keras 3 itself, which tests the reading of the
functional config, the wiring, the settings and the weight order;
`benchmarks/step_time.py` checks the tf-keras twin against the Keras 3
model (`twin_difference`) each time it builds one. Where tf-keras is
installed the tests run with it too.
"""

import importlib.util

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.experiments._tf_keras_twin import (
    tf_keras_twin,
    twin_difference,
)

LIBRARIES = ["keras"] + (
    ["tf_keras"] if importlib.util.find_spec("tf_keras") else []
)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("name", ["resnet-8", "wrn-10-1", "pyramidnet-11-8"])
def test_twin_computes_what_the_keras_model_does(name, library):
    layers_library = importlib.import_module(library)
    keras.utils.set_random_seed(0)
    model = keras_sam.models.get_model(
        name, weight_decay=5e-4, classifier_activation=None
    )
    twin = tf_keras_twin(model, layers_library)
    assert twin is not model
    assert [layer.name for layer in twin.layers] == [
        layer.name for layer in model.layers
    ]
    # Freshly initialized, then given the model's weights in its order.
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
        float(sum(np.asarray(v) for v in twin.losses)),
        float(sum(keras.ops.convert_to_numpy(v) for v in model.losses)),
        rtol=1e-5,
    )
    difference = twin_difference(model, twin, x)
    assert max(difference.values()) < 1e-5
    # A changed weight shows up in the difference the benchmark checks.
    weights = twin.get_weights()
    weights[0] = weights[0] + 0.1
    twin.set_weights(weights)
    assert twin_difference(model, twin, x)["outputs"] > 1e-3


@pytest.mark.parametrize("library", LIBRARIES)
def test_twin_refuses_custom_layers(library):
    layers_library = importlib.import_module(library)
    model = keras_sam.models.get_model("shake-shake-8-2x4d")
    with pytest.raises(ValueError, match="ShakeShake"):
        tf_keras_twin(model, layers_library)


def test_step_time_refuses_a_twin_that_computes_something_else():
    from types import SimpleNamespace

    from scripts import load_script

    step_time = load_script("benchmarks/step_time.py")
    args = SimpleNamespace(model="resnet-8", mixed_precision="none")
    details = {}
    step_time._check_twin(
        args, {"outputs": 2e-6, "regularization": 0.0}, details
    )
    assert details["tf_keras_twin_difference"]["outputs"] == 2e-6
    with pytest.raises(RuntimeError, match="resnet-8"):
        step_time._check_twin(
            args, {"outputs": 1e-3, "regularization": 0.0}, details
        )
