"""SAMModel against an independent NumPy implementation of SAM."""

import keras
import numpy as np
import pytest
import sam_reference as ref
from keras import ops

import keras_sam

multi_backend = pytest.mark.multi_backend


@keras.saving.register_keras_serializable(package="keras_sam_tests")
class SquarePenalty(keras.layers.Layer):
    """Adds `coefficient * mean(x^2)` with `add_loss`; returns `x`."""

    def __init__(self, coefficient, **kwargs):
        super().__init__(**kwargs)
        self.coefficient = coefficient

    def call(self, x):
        self.add_loss(self.coefficient * ops.mean(ops.square(x)))
        return x

    def get_config(self):
        return {**super().get_config(), "coefficient": self.coefficient}


def make_problem(n=12, d=3, hidden=5, out=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, out)).astype("float32")
    params = [
        rng.normal(scale=0.7, size=(d, hidden)),
        rng.normal(scale=0.1, size=(hidden,)),
        rng.normal(scale=0.7, size=(hidden, out)),
        rng.normal(scale=0.1, size=(out,)),
    ]
    params = [p.astype("float32") for p in params]
    return x, y, params


def make_mlp(params, l2=0.0, penalty=0.0):
    d, hidden = params[0].shape
    inputs = keras.Input((d,))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    h = keras.layers.Dense(
        hidden, activation="tanh", kernel_regularizer=regularizer
    )(inputs)
    if penalty:
        h = SquarePenalty(penalty)(h)
    outputs = keras.layers.Dense(params[2].shape[1])(h)
    model = keras.Model(inputs, outputs)
    model.set_weights(params)
    return model


def reference_run(params, x, y, optimizer, steps, **sam_kwargs):
    params = [p.astype("float64") for p in params]
    x64, y64 = x.astype("float64"), y.astype("float64")
    logs = []
    for _ in range(steps):
        grads, clean, perturbed, norm = ref.sam_gradient(
            params, x64, y64, **sam_kwargs
        )
        params = optimizer.apply(params, grads)
        logs.append((clean, perturbed - clean, norm))
    return params, logs


def keras_run(params, x, y, optimizer, steps, batch_size=None,
              sample_weight=None, l2=0.0, penalty=0.0, **kwargs):
    sam = keras_sam.SAMModel(make_mlp(params, l2, penalty), **kwargs)
    sam.compile(optimizer=optimizer, loss="mse")
    history = sam.fit(
        x, y, sample_weight=sample_weight, batch_size=batch_size or len(x),
        epochs=steps, shuffle=False, verbose=0,
    )
    return sam, history.history


def assert_weights_close(model, expected, rtol=2e-5, atol=2e-6):
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


OPTIMIZERS = {
    "sgd": (lambda: keras.optimizers.SGD(0.1), lambda: ref.SGD(0.1)),
    "momentum": (
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: ref.SGD(0.1, momentum=0.9),
    ),
    "adam": (lambda: keras.optimizers.Adam(0.01), lambda: ref.Adam(0.01)),
}


@multi_backend
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 3])
def test_sam_steps_match_numpy(optimizer, steps):
    x, y, params = make_problem()
    make_keras, make_ref = OPTIMIZERS[optimizer]
    expected, logs = reference_run(params, x, y, make_ref(), steps, rho=0.1)
    sam, history = keras_run(params, x, y, make_keras(), steps, rho=0.1)
    assert_weights_close(sam, expected)
    clean, sharpness, norm = np.array(logs).T
    np.testing.assert_allclose(history["loss"], clean, rtol=1e-5)
    np.testing.assert_allclose(history["sam_sharpness"], sharpness,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history["grad_norm"], norm, rtol=1e-5)


@multi_backend
@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5])
def test_asam_matches_numpy(eta):
    x, y, params = make_problem(seed=1)
    expected, _ = reference_run(
        params, x, y, ref.SGD(0.1, momentum=0.9), 3,
        rho=0.5, adaptive=True, eta=eta,
    )
    sam, _ = keras_run(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), 3,
        rho=0.5, adaptive=True, eta=eta,
    )
    assert_weights_close(sam, expected)


@multi_backend
@pytest.mark.parametrize("n,splits", [(12, 2), (10, 3), (12, 12), (3, 8)])
def test_batch_splits_average_per_chunk_gradients(n, splits):
    x, y, params = make_problem(n=n, seed=2)
    # Fewer rows than splits: one-row chunks.
    expected, logs = reference_run(
        params, x, y, ref.SGD(0.2), 2, rho=0.2, splits=min(splits, n)
    )
    sam, history = keras_run(
        params, x, y, keras.optimizers.SGD(0.2), 2, rho=0.2,
        num_batch_splits=splits,
    )
    assert_weights_close(sam, expected)
    np.testing.assert_allclose(history["loss"], np.array(logs)[:, 0],
                               rtol=1e-5)


@multi_backend
@pytest.mark.parametrize("n,splits", [(12, 3), (10, 4), (3, 8)])
def test_shared_split_perturbation_is_sam_on_the_whole_batch(n, splits):
    """Accumulating the chunks' gradients into one `eps` (and the
    perturbed ones into one descent) is SAM on the whole batch, sample
    weights and regularization included."""
    x, y, params = make_problem(n=n, seed=5)
    kwargs = {"l2": 0.05, "sample_weight": np.linspace(0.5, 1.5, n)}
    expected, logs = reference_run(
        params, x, y, ref.SGD(0.2, momentum=0.9), 2, rho=0.2, **kwargs
    )
    sam, history = keras_run(
        params, x, y, keras.optimizers.SGD(0.2, momentum=0.9), 2,
        rho=0.2, num_batch_splits=splits, split_perturbation="shared",
        **{**kwargs, "sample_weight": kwargs["sample_weight"].astype(
            "float32")},
    )
    assert_weights_close(sam, expected)
    for name, column in (("loss", 0), ("sam_sharpness", 1),
                         ("grad_norm", 2)):
        np.testing.assert_allclose(
            history[name], np.array(logs)[:, column], rtol=1e-4, atol=1e-6
        )
    # ... and differs from one `eps` per chunk.
    per_split, _ = reference_run(
        params, x, y, ref.SGD(0.2, momentum=0.9), 2, rho=0.2,
        splits=min(splits, n), **kwargs
    )
    assert not np.allclose(per_split[0], expected[0], rtol=1e-4)


def test_shared_split_perturbation_with_gsam_and_save(tmp_path):
    x, y, params = make_problem(n=12, seed=6)
    expected, _ = reference_run(params, x, y, ref.SGD(0.1), 2, rho=0.1,
                                alpha=0.3)
    sam, _ = keras_run(
        params, x, y, keras.optimizers.SGD(0.1), 2, rho=0.1,
        num_batch_splits=4, split_perturbation="shared",
        rule=keras_sam.rules.GSAM(alpha=0.3),
    )
    assert_weights_close(sam, expected)
    sam.save(tmp_path / "shared.keras")
    loaded = keras.models.load_model(tmp_path / "shared.keras")
    assert loaded.split_perturbation == "shared"
    with pytest.raises(ValueError, match="split_perturbation='global'"):
        keras_sam.SAMModel(make_mlp(params), split_perturbation="global")


@multi_backend
@multi_backend
def test_ragged_last_batch_smaller_than_the_splits_gets_one_row_chunks():
    """Batches of 8 and a last one of 2 rows, 4 splits: the 2-row batch is
    two one-row chunks (no NaN from empty chunks)."""
    x, y, params = make_problem(n=10, seed=16)
    optimizer = ref.SGD(0.1, momentum=0.9)
    expected = [p.astype("float64") for p in params]
    for _ in range(2):
        for start, stop in ((0, 8), (8, 10)):
            grads, *_ = ref.sam_gradient(
                expected, x[start:stop].astype("float64"),
                y[start:stop].astype("float64"), rho=0.1,
                splits=min(4, stop - start),
            )
            expected = optimizer.apply(expected, grads)
    sam, history = keras_run(params, x, y,
                             keras.optimizers.SGD(0.1, momentum=0.9), 2,
                             batch_size=8, rho=0.1, num_batch_splits=4)
    assert_weights_close(sam, expected)
    assert np.all(np.isfinite(history["loss"]))
    assert np.all(np.isfinite(history["sam_sharpness"]))


def test_regularizers_and_sample_weights_enter_both_passes():
    x, y, params = make_problem(seed=3)
    sample_weight = np.linspace(0.2, 2.0, len(x)).astype("float32")
    kwargs = {"l2": 0.05, "penalty": 0.3, "sample_weight": sample_weight}
    expected, logs = reference_run(
        params, x, y, ref.SGD(0.1), 2, rho=0.1, **kwargs
    )
    sam, history = keras_run(
        params, x, y, keras.optimizers.SGD(0.1), 2, rho=0.1, **kwargs
    )
    assert_weights_close(sam, expected)
    np.testing.assert_allclose(history["loss"], np.array(logs)[:, 0],
                               rtol=1e-5)


@multi_backend
def test_weight_decay_applied_once_by_optimizer():
    x, y, params = make_problem(seed=4)
    expected, _ = reference_run(
        params, x, y, ref.SGD(0.1, weight_decay=0.3), 2, rho=0.1
    )
    sam, _ = keras_run(
        params, x, y, keras.optimizers.SGD(0.1, weight_decay=0.3), 2,
        rho=0.1,
    )
    assert_weights_close(sam, expected)


@multi_backend
def test_rho_zero_is_the_plain_optimizer_step():
    x, y, params = make_problem(seed=5)
    sam, history = keras_run(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), 3, rho=0.0
    )
    plain = make_mlp(params)
    plain.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="mse")
    plain.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    for got, want in zip(sam.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert history["sam_sharpness"] == [0.0, 0.0, 0.0]


def bn_dropout_model(d=4, seed=0):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((d,))
    h = keras.layers.Dense(6, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(1, use_bias=False)(h)
    model = keras.Model(inputs, outputs)
    model.layers[1].set_weights([rng.normal(size=(d, 6)).astype("float32")])
    model.layers[-1].set_weights([rng.normal(size=(6, 1)).astype("float32")])
    return model


@multi_backend
def test_learning_rate_zero_leaves_weights_bit_identical():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model = bn_dropout_model()
    trainable_before = [v.numpy() if hasattr(v, "numpy") else
                        ops.convert_to_numpy(v)
                        for v in model.trainable_weights]
    sam = keras_sam.SAMModel(model, rho=0.5, adaptive=True)
    sam.compile(optimizer=keras.optimizers.SGD(0.0, momentum=0.9),
                loss="mse")
    sam.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for before, variable in zip(trainable_before, model.trainable_weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), before)


@multi_backend
@pytest.mark.parametrize("splits", [None, 2])
def test_batchnorm_statistics_updated_once_from_clean_pass(splits):
    rng = np.random.default_rng(7)
    x = rng.normal(loc=1.0, size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model = bn_dropout_model()
    kernel = ops.convert_to_numpy(model.layers[1].kernel).astype("float64")
    sam = keras_sam.SAMModel(model, rho=0.3, num_batch_splits=splits)
    sam.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    sam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    h = x.astype("float64") @ kernel
    # One update with the clean batch mean: 0.9 * 0 + 0.1 * mean(h).
    # With chunks, the mean of per-chunk updates, equal for the mean.
    expected_mean = 0.1 * h.mean(axis=0)
    if splits:
        chunk_vars = [h[:4].var(axis=0), h[4:].var(axis=0)]
        expected_var = 0.9 + 0.1 * np.mean(chunk_vars, axis=0)
    else:
        expected_var = 0.9 + 0.1 * h.var(axis=0)
    bn = model.layers[2]
    np.testing.assert_allclose(
        ops.convert_to_numpy(bn.moving_mean), expected_mean, rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(bn.moving_variance), expected_var, rtol=1e-5
    )


@multi_backend
def test_dropout_draws_the_same_mask_in_both_passes():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    # rho so small that w + eps == w in float32 (no bias is exactly zero):
    # the perturbed loss equals the clean loss only if dropout repeats
    # its mask (a fresh mask changes the loss by O(0.1)).
    sam = keras_sam.SAMModel(bn_dropout_model(), rho=1e-30)
    sam.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    history = sam.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert history.history["sam_sharpness"] == [0.0, 0.0]
    assert history.history["grad_norm"][0] > 0.0


@multi_backend
@pytest.mark.parametrize(
    "compile_kwargs", [{"jit_compile": True}, {"steps_per_execution": 2}]
)
def test_training_modes_match_numpy(compile_kwargs):
    if "steps_per_execution" in compile_kwargs and (
        keras.backend.backend() == "torch"
    ):
        pytest.skip("Keras requires steps_per_execution=1 on torch")
    x, y, params = make_problem(n=12, seed=9)
    expected, _ = reference_run(params, x[:6], y[:6], ref.SGD(0.1), 1,
                                rho=0.1)
    expected, _ = reference_run(expected, x[6:], y[6:], ref.SGD(0.1), 1,
                                rho=0.1)
    sam = keras_sam.SAMModel(make_mlp(params), rho=0.1)
    sam.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                **compile_kwargs)
    sam.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    assert_weights_close(sam, expected)


@multi_backend
def test_evaluate_and_predict_are_the_wrapped_models():
    x, y, params = make_problem(seed=10)
    inner = make_mlp(params)
    inner.compile(loss="mse", metrics=["mae"])
    sam = keras_sam.SAMModel(make_mlp(params))
    sam.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    want = inner.evaluate(x, y, verbose=0, return_dict=True)
    got = sam.evaluate(x, y, verbose=0, return_dict=True)
    assert set(got) == {"loss", "mae"}
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["mae"], want["mae"], rtol=1e-6)
    np.testing.assert_allclose(sam.predict(x, verbose=0),
                               inner.predict(x, verbose=0), rtol=1e-6)


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, inputs):
        return self.out(self.hidden(inputs))


def dict_io_model():
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(4, activation="relu")(
        keras.layers.Concatenate()([a, b])
    )
    return keras.Model(
        {"a": a, "b": b},
        {"reg": keras.layers.Dense(1, name="reg")(h),
         "cls": keras.layers.Dense(3, name="cls")(h)},
    )


def _fit_pair(build, x, y, compile_kwargs, fit_kwargs):
    """Trains `build()` plainly and wrapped with rho=0, same init."""
    keras.utils.set_random_seed(0)
    plain = build()
    keras.utils.set_random_seed(0)
    wrapped = keras_sam.SAMModel(build(), rho=0.0)
    for model in (plain, wrapped):
        model.compile(optimizer=keras.optimizers.SGD(0.05), **compile_kwargs)
        model.fit(x, y, epochs=2, shuffle=False, verbose=0, **fit_kwargs)
    return plain, wrapped


@multi_backend
@pytest.mark.parametrize("kind", ["sequential", "subclassed", "dict_io"])
def test_model_kinds_rho_zero_equals_plain_keras(kind):
    rng = np.random.default_rng(11)
    if kind == "dict_io":
        x = {"a": rng.normal(size=(20, 3)).astype("float32"),
             "b": rng.normal(size=(20, 2)).astype("float32")}
        y = {"reg": rng.normal(size=(20, 1)).astype("float32"),
             "cls": rng.integers(0, 3, size=(20,))}
        build = dict_io_model
        compile_kwargs = {
            "loss": {"reg": "mse",
                     "cls": keras.losses.SparseCategoricalCrossentropy(
                         from_logits=True)},
            "metrics": {"cls": ["accuracy"]},
        }
        fit_kwargs = {"batch_size": 5}
    else:
        x = rng.normal(size=(20, 3)).astype("float32")
        y = rng.integers(0, 2, size=(20,))
        if kind == "sequential":
            # Unbuilt: no Input, built on the first batch.
            def build():
                return keras.Sequential(
                    [keras.layers.Dense(5, activation="tanh"),
                     keras.layers.Dense(2)]
                )
        else:
            build = Subclassed
        compile_kwargs = {
            "loss": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True),
            "metrics": ["accuracy"],
        }
        fit_kwargs = {"batch_size": 5, "class_weight": {0: 1.0, 1: 3.0}}
    plain, wrapped = _fit_pair(build, x, y, compile_kwargs, fit_kwargs)
    for got, want in zip(wrapped.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert wrapped.evaluate(x, y, verbose=0) == pytest.approx(
        plain.evaluate(x, y, verbose=0), rel=1e-6
    )


@multi_backend
def test_dict_io_model_trains_with_sam():
    rng = np.random.default_rng(12)
    x = {"a": rng.normal(size=(32, 3)).astype("float32"),
         "b": rng.normal(size=(32, 2)).astype("float32")}
    y = {"reg": rng.normal(size=(32, 1)).astype("float32"),
         "cls": rng.integers(0, 3, size=(32,))}
    sam = keras_sam.SAMModel(dict_io_model(), rho=0.1, num_batch_splits=2)
    sam.compile(optimizer=keras.optimizers.SGD(0.1),
                loss={"reg": "mse",
                      "cls": keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True)})
    history = sam.fit(x, y, batch_size=8, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert all(s > 0 for s in history["sam_sharpness"])


@multi_backend
def test_mixed_precision_and_overflowing_first_gradient():
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    inner = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(1, dtype="float32"),
    ])
    sam = keras_sam.SAMModel(inner, rho=0.05)
    sam.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    assert isinstance(sam.optimizer, keras.optimizers.LossScaleOptimizer)
    history = sam.fit(x, y, batch_size=8, epochs=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]
    # A batch whose float16 activations overflow: the first gradient is
    # not finite; the ascent must be skipped and the step dropped.
    before = sam.get_weights()
    scale_before = float(ops.convert_to_numpy(sam.optimizer.dynamic_scale))
    huge = np.full((8, 4), 6e4, dtype="float32")
    sam.train_on_batch(huge, np.full((8, 1), 6e4, dtype="float32"))
    for got, want in zip(sam.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    scale_after = float(ops.convert_to_numpy(sam.optimizer.dynamic_scale))
    assert scale_after < scale_before


@multi_backend
def test_save_and_load_round_trip_then_training_continues(tmp_path):
    x, y, params = make_problem(seed=14)
    sam = keras_sam.SAMModel(
        make_mlp(params, penalty=0.1), rho=0.07, adaptive=True, eta=0.02,
        num_batch_splits=2, perturbation="global", name="my_sam",
    )
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse", metrics=["mae"])
    sam.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel)
    for name in ("rho", "adaptive", "eta", "num_batch_splits",
                 "perturbation", "name"):
        assert getattr(loaded, name) == getattr(sam, name), name
    for got, want in zip(loaded.get_weights(), sam.get_weights()):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(loaded.optimizer.variables, sam.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(got),
                                      ops.convert_to_numpy(want))
    sam.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(loaded.get_weights(), sam.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@multi_backend
def test_keras_callbacks_work_and_backup_resumes(tmp_path):
    x, y, params = make_problem(n=24, seed=15)

    def fresh():
        sam = keras_sam.SAMModel(make_mlp(params), rho=0.1)
        sam.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    loss="mse")
        return sam

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    reference = fresh()
    reference.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="killed"):
        interrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False,
                        verbose=0, callbacks=[backup, Interrupt()])
    resumed = fresh()
    csv_path = tmp_path / "log.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"),
                                        monitor="loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="loss", patience=10),
        keras.callbacks.CSVLogger(str(csv_path)),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
    ]
    history = resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False,
                          verbose=0, callbacks=callbacks)
    # Epochs 0 and 1 were restored from the backup; only 2 and 3 ran.
    assert history.epoch == [2, 3]
    for got, want in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "sam_sharpness", "grad_norm"} <= set(header)
    best = keras.models.load_model(str(tmp_path / "best.keras"))
    assert isinstance(best, keras_sam.SAMModel)
    assert any((tmp_path / "tb").rglob("*tfevents*"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rho": -0.1}, "rho=-0.1"),
        ({"rho": float("nan")}, "rho=nan"),
        ({"rho": float("inf")}, "rho=inf"),
        ({"rho": "0.05"}, "rho='0.05'"),
        ({"rho": True}, "rho=True"),
        ({"eta": -1.0}, "eta=-1.0"),
        ({"adaptive": "yes"}, "adaptive='yes'"),
        ({"num_batch_splits": 0}, "num_batch_splits=0"),
        ({"num_batch_splits": 2.0}, "num_batch_splits=2.0"),
        ({"num_batch_splits": -3}, "num_batch_splits=-3"),
        ({"perturbation": "local"}, "perturbation='local'"),
    ],
)
def test_bad_arguments_raise_naming_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as err:
        keras_sam.SAMModel(keras.Sequential([keras.layers.Dense(1)]),
                           **kwargs)
    assert f"`{message.split('=')[0]}`" in str(err.value)


def test_a_sam_model_cannot_wrap_a_sam_model():
    inner = keras_sam.SAMModel(keras.Sequential([keras.layers.Dense(1)]))
    with pytest.raises(ValueError, match="already a SAMModel.*\\.model"):
        keras_sam.SAMModel(inner)


def test_model_argument_must_be_a_keras_model():
    with pytest.raises(ValueError, match="`model`.*Dense"):
        keras_sam.SAMModel(keras.layers.Dense(1))
    with pytest.raises(ValueError, match="`model`"):
        keras_sam.SAMModel("resnet")


def test_model_without_trainable_weights_fails_at_fit():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    inner.trainable = False
    sam = keras_sam.SAMModel(inner)
    sam.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no.*trainable|has none"):
        sam.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
