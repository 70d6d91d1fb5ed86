"""Runs 3 SAM steps on fixed data and weights; saves the weights.

Used by test_backends.py under each Keras backend (KERAS_BACKEND is set by
the caller): `python tests/backend_parity_run.py OUT.npz`.
"""

import sys

import keras
import numpy as np

import keras_sam


def main(path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    inputs = keras.Input((3,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(2)(h)
    inner = keras.Model(inputs, outputs)
    inner.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32")
         if i < 2 or i > 5 else w
         for i, w in enumerate(inner.get_weights())]
    )
    sam = keras_sam.SAMModel(inner, rho=0.1, adaptive=True,
                             num_batch_splits=2)
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse")
    history = sam.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                      verbose=0)
    np.savez(path, *sam.get_weights(),
             loss=np.array(history.history["loss"]),
             sharpness=np.array(history.history["sam_sharpness"]))


if __name__ == "__main__":
    main(sys.argv[1])
