"""`SAMModel.export` for every kind of wrapped model, reloaded and
compared with `predict` (TensorFlow and JAX; torch has no SavedModel
export)."""

import keras
import numpy as np
import pytest

import keras_sam

pytestmark = pytest.mark.multi_backend


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def _inner(kind):
    if kind == "sequential":
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    if kind == "functional":
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="Keras exports a TF SavedModel from TensorFlow and JAX only",
)
@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_export_reloads_with_predict_outputs(kind, tmp_path):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    model = keras_sam.SAMModel(_inner(kind), rho=0.05)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "exported"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(
        np.asarray(reloaded.serve(x)), expected, rtol=1e-6, atol=1e-6
    )
