"""The library with only its own requirements: keras, numpy, scipy and a
backend (test_install.py runs it in a subprocess).

`python tests/library_only_job.py [--block] OUT_DIR`, with KERAS_BACKEND
set by the caller. `--block` makes the application's packages (Pillow,
matplotlib, KerasTuner, scikit-learn, tensorboard, tfds) and the other
backends unimportable first, as in an environment where they are not
installed; in a fresh virtual environment with only `keras`, `numpy`,
`scipy`, `jax` and `pip install --no-deps -e .` it runs as it is.

It imports `keras_sam`, trains a `SAMModel` with the callbacks, saves and
loads it, measures it with `keras_sam.hessian` and `keras_sam.landscape`,
checks the numbers against NumPy, and prints `ok` and the modules that
must not have been imported (none).
"""

import sys

# What `pip install keras-sam` does not bring (`import X` fails for these).
APPLICATION_PACKAGES = (
    "PIL",
    "matplotlib",
    "keras_tuner",
    "sklearn",
    "tensorboard",
    "tensorflow_datasets",
)
OTHER_BACKENDS = {
    "jax": ("tensorflow", "torch"),
    "tensorflow": ("jax", "torch"),
    "torch": ("tensorflow", "jax"),
}


def block(names):
    """Makes `import NAME` fail for `names`, as if not installed
    (`importlib.util.find_spec` returns `None` for them too)."""
    for name in names:
        sys.modules[name] = None


def main(out_dir):
    import keras
    import numpy as np

    import keras_sam
    from keras_sam import callbacks, hessian, landscape

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model = keras_sam.SAMModel(inner, rho=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(
        x, y, batch_size=8, epochs=2, verbose=0,
        callbacks=[callbacks.Sharpness((x, y), num_iterations=10,
                                       seed=0)],
    )
    assert "sam_sharpness" in history.history, history.history
    assert "sharpness" in history.history, history.history

    path = f"{out_dir}/model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)

    # A linear model under mse: the Hessian is 2 X^T X / n for the kernel
    # and the bias together, an independent answer.
    features = np.concatenate([x, np.ones((len(x), 1), "float32")], 1)
    dense_hessian = 2 * features.T.astype("float64") @ features / len(x)
    expected_top = np.linalg.eigvalsh(dense_hessian)[-1]
    top = hessian.top_eigenvalues(model, (x, y), k=1, num_iterations=4,
                                  seed=0)
    top = float(np.ravel(getattr(top, "values", top))[0])
    assert abs(top - expected_top) <= 1e-3 * expected_top, (
        top, expected_top)
    surface = landscape.loss_surface_1d(model, (x, y), num_points=3, seed=0)
    assert surface is not None

    unwanted = [name for name in APPLICATION_PACKAGES
                if sys.modules.get(name) is not None]
    print("ok", keras.backend.backend(), unwanted)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[0] == "--block":
        import os

        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        block(APPLICATION_PACKAGES + OTHER_BACKENDS[backend])
        arguments = arguments[1:]
    main(*arguments)
