"""Jobs that test_backends.py runs in a subprocess under another backend.

`python tests/backend_jobs.py JOB ARGS...`, with KERAS_BACKEND set by the
caller (and XLA_FLAGS for `data_parallel`):

- `parity OUT.npz`: 3 SAM steps on fixed data and weights; saves weights.
- `resume IN.keras OUT.npz`: loads a saved SAMModel, trains one more
  epoch, saves the weights.
- `data_parallel OUT.npz`: JAX only; SAM on one device and global-mode
  SAM under `keras.distribution.DataParallel` on all devices; saves
  both.
"""

import sys

import keras
import numpy as np

import keras_sam


def fixed_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    return x, y, rng


def bn_model(rng):
    inputs = keras.Input((3,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    model.set_weights(
        [rng.normal(scale=0.5, size=w.shape).astype("float32")
         if i < 2 or i > 5 else w
         for i, w in enumerate(model.get_weights())]
    )
    return model


def compiled_sam(inner, **kwargs):
    sam = keras_sam.SAMModel(inner, **kwargs)
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse")
    return sam


def parity(out):
    x, y, rng = fixed_data()
    sam = compiled_sam(bn_model(rng), rho=0.1, adaptive=True,
                       num_batch_splits=2)
    history = sam.fit(x, y, batch_size=8, epochs=3, shuffle=False,
                      verbose=0)
    np.savez(out, *sam.get_weights(),
             loss=np.array(history.history["loss"]),
             sharpness=np.array(history.history["sam_sharpness"]))


def resume(path, out):
    x, y, _ = fixed_data()
    sam = keras.models.load_model(path)
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.savez(out, *sam.get_weights(),
             iterations=np.array(int(sam.optimizer.iterations.numpy())))


def data_parallel(out):
    import jax

    x, y, rng = fixed_data()
    start = bn_model(rng).get_weights()
    results = {}
    for mode in ("single", "data_parallel"):
        if mode == "data_parallel":
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=jax.devices())
            )
        inner = bn_model(np.random.default_rng(1))
        inner.set_weights(start)
        # Global mode: single-device SAM on the whole batch. (Replica mode,
        # one eps per device, is tested in test_jax_distribute.py.)
        sam = compiled_sam(inner, rho=0.1, perturbation="global")
        sam.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        results.update(
            {f"{mode}_{i}": w for i, w in enumerate(sam.get_weights())}
        )
    np.savez(out, num_devices=np.array(len(jax.devices())), **results)


if __name__ == "__main__":
    job, *args = sys.argv[1:]
    {"parity": parity, "resume": resume, "data_parallel": data_parallel}[
        job
    ](*args)
