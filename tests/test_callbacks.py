"""keras_sam.callbacks inside `fit`, against closed forms.

A linear least-squares model has a Hessian that does not depend on the
weights (per-sample Hessians 2 x x^T with Keras's "mse"), so the values
logged at every epoch have closed forms whatever training does.
"""

import csv
import warnings

import keras
import numpy as np
import pytest
from test_stability_theory import enumerated_growth

import keras_sam
from keras_sam import callbacks

multi_backend = pytest.mark.multi_backend

NUM_SAMPLES, DIM, BATCH_SIZE = 16, 3, 4
STEPS = NUM_SAMPLES // BATCH_SIZE


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_SAMPLES, DIM)).astype("float32")
    y = x @ np.array([1.0, -0.5, 0.2]) + 0.3 * rng.normal(size=NUM_SAMPLES)
    return x, y.astype("float32")[:, None]


def linear_model(optimizer):
    model = keras.Sequential(
        [keras.Input((DIM,)), keras.layers.Dense(1, use_bias=False)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def per_sample_hessians(x):
    return np.stack([2.0 * np.outer(r, r) for r in x.astype(np.float64)])


def top(matrix):
    return np.linalg.eigvalsh(matrix)[-1]


def fit(model, x, y, measurement_callbacks, epochs=2, extra=()):
    return model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[*measurement_callbacks, *extra],
    )


@multi_backend
def test_sharpness_reads_schedule_and_momentum():
    x, y = problem()
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.05, decay_steps=STEPS, decay_rate=0.5
    )
    model = linear_model(keras.optimizers.SGD(schedule, momentum=0.5))
    sharpness = callbacks.Sharpness(
        (x, y), num_iterations=DIM, max_overhead=None, seed=0
    )
    history = fit(model, x, y, [sharpness], epochs=3)
    a = top(per_sample_hessians(x).mean(axis=0))
    np.testing.assert_allclose(history.history["sharpness"], [a] * 3, 1e-5)
    # After epoch e the optimizer has made STEPS * (e + 1) steps.
    learning_rates = 0.05 * 0.5 ** np.arange(1, 4)
    np.testing.assert_allclose(
        history.history["gd_stability_ratio"],
        learning_rates * a / (2 * 1.5),
        rtol=1e-5,
    )


def test_sharpness_overrides_and_adam():
    x, y = problem()
    a = top(per_sample_hessians(x).mean(axis=0))
    model = linear_model(keras.optimizers.Adam(0.01))
    history = fit(
        model,
        x,
        y,
        [
            callbacks.Sharpness(
                (x, y), num_iterations=DIM, max_overhead=None, seed=0
            )
        ],
        epochs=1,
    )
    # Adam has no heavy-ball momentum: 0 is used.
    assert history.history["gd_stability_ratio"][0] == pytest.approx(
        0.01 * a / 2, rel=1e-5
    )
    override = callbacks.Sharpness(
        (x, y),
        num_iterations=DIM,
        learning_rate=0.2,
        momentum=0.9,
        max_overhead=None,
    )
    history = fit(model, x, y, [override], epochs=1)
    assert history.history["gd_stability_ratio"][0] == pytest.approx(
        0.2 * a / 3.8, rel=1e-5
    )


def test_hessian_trace():
    x, y = problem()
    h = per_sample_hessians(x).mean(axis=0)
    model = linear_model(keras.optimizers.SGD(0.05))
    num_samples = 100
    history = fit(
        model,
        x,
        y,
        [
            callbacks.HessianTrace(
                (x, y), num_samples=num_samples, max_overhead=None, seed=0
            )
        ],
    )
    spread = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)))
    for trace in history.history["hessian_trace"]:
        assert abs(trace - np.trace(h)) < 4 * spread / np.sqrt(num_samples)


def dense_growth(x, learning_rate, batch_size, dataset_size):
    hessians = per_sample_hessians(x)
    h = hessians.mean(axis=0)
    sigma = np.mean([hi @ hi for hi in hessians], axis=0) - h @ h
    factor = (dataset_size - batch_size) / (batch_size * (dataset_size - 1))
    step = np.eye(DIM) - learning_rate * h
    m = step @ step + learning_rate**2 * factor * sigma
    return top(h), np.sqrt(top(sigma)), top(m) - 1


@multi_backend
@pytest.mark.parametrize("learning_rate", [0.1, 0.45])
def test_linear_stability(learning_rate):
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(learning_rate))
    # The training set size is inferred: BATCH_SIZE * steps = 16.
    stability = callbacks.LinearStability(
        (x, y),
        batch_size=BATCH_SIZE,
        num_iterations=DIM,
        max_overhead=None,
        seed=0,
    )
    history = fit(model, x, y, [stability], epochs=1)
    a, s, growth = dense_growth(x, learning_rate, BATCH_SIZE, NUM_SAMPLES)
    logs = {k: v[0] for k, v in history.history.items()}
    assert logs["sharpness"] == pytest.approx(a, rel=1e-5)
    assert logs["non_uniformity"] == pytest.approx(s, rel=1e-5)
    assert logs["gd_stability_ratio"] == pytest.approx(
        learning_rate * a / 2, rel=1e-5
    )
    assert logs["sgd_growth"] == pytest.approx(growth, abs=1e-5)
    assert logs["sgd_stable"] == float(growth <= 1e-3)
    exact = enumerated_growth(per_sample_hessians(x), learning_rate, BATCH_SIZE)
    assert logs["sgd_growth_exact"] == pytest.approx(exact, abs=1e-5)
    assert exact <= growth + 1e-9


def test_linear_stability_batch_size_from_dataset_size():
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.3))
    stability = callbacks.LinearStability(
        (x, y), dataset_size=64, num_iterations=DIM, max_overhead=None
    )
    history = fit(model, x, y, [stability], epochs=1)
    # B = ceil(64 / STEPS) = 16.
    _, _, growth = dense_growth(x, 0.3, 16, 64)
    assert history.history["sgd_growth"][0] == pytest.approx(growth, abs=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_linear_stability_reads_momentum_from_the_optimizer(nesterov):
    x, y = problem()
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov)
    stability = callbacks.LinearStability(
        (x, y), batch_size=BATCH_SIZE, num_iterations=DIM, max_overhead=None
    )
    history = fit(linear_model(optimizer), x, y, [stability], epochs=1)
    growth = enumerated_growth(
        per_sample_hessians(x), 0.05, BATCH_SIZE, 0.9, nesterov
    )
    logs = {k: v[0] for k, v in history.history.items()}
    assert logs["sgd_growth_exact"] == pytest.approx(growth, abs=1e-5)
    assert logs["sgd_growth"] == logs["sgd_growth_exact"]
    assert logs["sgd_stable"] == float(growth <= 1e-3)


def test_stability_callbacks_without_sizes_fail_at_construction():
    x, y = problem()
    for callback in (callbacks.LinearStability, callbacks.NoiseAlignment):
        with pytest.raises(ValueError, match="batch_size=None, dataset_size"):
            callback((x, y))


def test_probe_data_that_does_not_fit_fails_at_train_begin():
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="has no targets `y`"):
        fit(model, x, y, [callbacks.Sharpness(x)], epochs=1)
    wrong = callbacks.HessianTrace((x[:, :2], y), max_overhead=None)
    with pytest.raises(ValueError, match=r"does not fit the model.*\(2,\)"):
        fit(model, x, y, [wrong], epochs=1)


@multi_backend
def test_noise_alignment_at_the_final_weights():
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.05))
    alignment = callbacks.NoiseAlignment(
        (x, y),
        batch_size=BATCH_SIZE,
        dataset_size=1000,
        num_samples=8,
        max_overhead=None,
        seed=0,
    )
    history = fit(model, x, y, [alignment], epochs=2)
    w = model.get_weights()[0][:, 0].astype(np.float64)
    xd = x.astype(np.float64)
    residual = xd @ w - y[:, 0]
    gradients = 2 * residual[:, None] * xd
    deviation = gradients - gradients.mean(axis=0)
    covariance = deviation.T @ deviation / NUM_SAMPLES
    h = 2 * xd.T @ xd / NUM_SAMPLES
    factor = (1000 - BATCH_SIZE) / (BATCH_SIZE * 999)
    assert history.history["noise_trace"][-1] == pytest.approx(
        factor * np.trace(h @ covariance), rel=1e-4
    )
    alignment_value = history.history["noise_alignment"][-1]
    expected = np.trace(h @ covariance) / (
        2 * np.mean(residual**2) * np.sum(h**2)
    )
    # |H|_F comes from 8 Hutchinson vectors: a loose check.
    assert alignment_value == pytest.approx(expected, rel=0.5)


class BatchRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batch_logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs or {}))


def test_step_frequency_and_epoch_frequency():
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.05))
    recorder = BatchRecorder()
    per_step = callbacks.Sharpness(
        (x, y),
        num_iterations=DIM,
        freq=3,
        freq_unit="step",
        max_overhead=None,
    )
    history = fit(model, x, y, [per_step], epochs=2, extra=[recorder])
    assert not per_step.async_safe
    measured = ["sharpness" in logs for logs in recorder.batch_logs]
    # Steps counted across epochs: 3 and 6 of 8.
    assert measured == [False, False, True, False, False, True, False, False]
    assert np.all(np.isfinite(history.history["sharpness"]))

    every_other = callbacks.HessianTrace(
        (x, y), num_samples=2, freq=2, max_overhead=None
    )
    assert every_other.async_safe  # batch ends may stay asynchronous
    history = fit(model, x, y, [every_other], epochs=5)
    finite = np.isfinite(history.history["hessian_trace"])
    # Epochs 2 and 4, and the first and the last whatever `freq` says.
    np.testing.assert_array_equal(finite, [True, True, False, True, True])


def test_max_overhead_skips_and_warns_once(tmp_path):
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.05))
    tight = callbacks.Sharpness((x, y), num_iterations=DIM, max_overhead=1e-9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(model, x, y, [tight], epochs=3)
    skipped = [w for w in caught if "skipped a measurement" in str(w.message)]
    assert len(skipped) == 1
    # The first and the last epoch are measured whatever the budget says.
    finite = np.isfinite(history.history["sharpness"])
    np.testing.assert_array_equal(finite, [True, False, True])

    # A generous budget measures every epoch; CSVLogger sees the values.
    csv_path = tmp_path / "log.csv"
    roomy = callbacks.Sharpness((x, y), num_iterations=DIM, max_overhead=1e3)
    fit(
        model,
        x,
        y,
        [roomy],
        epochs=2,
        extra=[keras.callbacks.CSVLogger(str(csv_path))],
    )
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert all(np.isfinite(float(row["sharpness"])) for row in rows)


@multi_backend
def test_callbacks_with_sam_model():
    x, y = problem()
    inner = keras.Sequential(
        [keras.Input((DIM,)), keras.layers.Dense(1, use_bias=False)]
    )
    sam = keras_sam.SAMModel(inner, rho=0.05)
    sam.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse")
    measurement = [
        callbacks.Sharpness((x, y), num_iterations=DIM, max_overhead=None),
        callbacks.LinearStability(
            (x, y),
            batch_size=BATCH_SIZE,
            num_iterations=DIM,
            max_overhead=None,
        ),
    ]
    history = fit(sam, x, y, measurement, epochs=1)
    a, s, growth = dense_growth(x, 0.2, BATCH_SIZE, NUM_SAMPLES)
    assert history.history["sharpness"][0] == pytest.approx(a, rel=1e-5)
    assert history.history["non_uniformity"][0] == pytest.approx(s, rel=1e-5)
    assert history.history["sgd_growth"][0] == pytest.approx(growth, abs=1e-5)
    assert "sam_sharpness" in history.history


def test_bad_arguments():
    x, y = problem()
    data = (x, y)
    with pytest.raises(ValueError, match="freq=0"):
        callbacks.Sharpness(data, freq=0)
    with pytest.raises(ValueError, match="freq_unit='batch'"):
        callbacks.HessianTrace(data, freq_unit="batch")
    with pytest.raises(ValueError, match="max_overhead=0"):
        callbacks.Sharpness(data, max_overhead=0)
    with pytest.raises(ValueError, match="num_iterations=0"):
        callbacks.Sharpness(data, num_iterations=0)
    with pytest.raises(ValueError, match="learning_rate=-0.1"):
        callbacks.Sharpness(data, learning_rate=-0.1)
    with pytest.raises(ValueError, match="batch_size=0"):
        callbacks.LinearStability(data, batch_size=0)
    with pytest.raises(ValueError, match="num_samples=0"):
        callbacks.NoiseAlignment(data, batch_size=2, num_samples=0)
    with pytest.raises(ValueError, match="empty"):
        callbacks.Sharpness((x[:0], y[:0]))


MIRRORED_SCRIPT = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import keras
import keras_sam
from keras_sam import callbacks, hessian

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 3)).astype("float32")
y = rng.normal(size=(16, 1)).astype("float32")
xd = x.astype(float)
h = 2 * xd.T @ xd / 16 * 1.1 + 2 * 0.05 * np.eye(3)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inner = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(1, use_bias=False,
                           kernel_regularizer=keras.regularizers.L2(0.05)),
        keras.layers.ActivityRegularization(l2=0.1),
    ])
    model = keras_sam.SAMModel(inner)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    inside = hessian.hessian_vector_product(model, (x, y), np.ones(3))
outside = hessian.hessian_vector_product(model, (x, y), np.ones(3))
np.testing.assert_allclose(inside, h @ np.ones(3), rtol=1e-5)
np.testing.assert_allclose(outside, h @ np.ones(3), rtol=1e-5)
a = np.linalg.eigvalsh(h)[-1]
for scope in (strategy.scope(), open(os.devnull)):
    with scope:
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                            callbacks=[callbacks.Sharpness(
                                (x, y), num_iterations=3, max_overhead=None)])
    np.testing.assert_allclose(history.history["sharpness"], [a], rtol=1e-5)
print("OK")
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute"
)
def test_mirrored_strategy_two_cpu_replicas(tmp_path):
    """Inside and outside a MirroredStrategy scope (two logical CPUs, set
    before TensorFlow starts, hence a subprocess): the same Hessian."""
    import os
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_default_budget_measures_a_short_run_at_both_ends():
    # The README's usage: `Sharpness(probe)` with its defaults on a run
    # far too short to earn a measurement within 5% of its time.
    x, y = problem()
    model = linear_model(keras.optimizers.SGD(0.05))
    sharpness = callbacks.Sharpness((x, y), num_iterations=DIM)
    history = fit(model, x, y, [sharpness], epochs=1)
    # A linear model's mse Hessian, 2 X^T X / n, at any weights.
    expected = top(per_sample_hessians(x).mean(axis=0))
    np.testing.assert_allclose(
        history.history["sharpness"], [expected], rtol=1e-4
    )


def test_sharpness_measures_at_a_diagonal_quadratic_minimum():
    # Rows along the axes, targets x . w*: at w* the loss is 0 and
    # L(w* + d) = sum_k H_kk d_k^2 / 2, H_kk = 2 mean_n x_nk^2.
    w_star = np.array([0.5, -1.5, 2.0, 1.0])
    scales = np.array([1.0, 0.5, 2.0, 1.5, 0.8, 1.2, 0.3, 1.7])
    x = np.zeros((8, 4), "float32")
    x[np.arange(8), np.arange(8) % 4] = scales
    y = (x.astype(np.float64) @ w_star)[:, None].astype("float32")
    diagonal = np.array([2 * np.mean(x[:, k].astype(np.float64) ** 2)
                         for k in range(4)])
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, use_bias=False)]
    )
    model.set_weights([w_star.astype("float32")[:, None]])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    epsilon, rho = 1e-2, 0.05
    measures = callbacks.SharpnessMeasures(
        (x, y), measures=("keskar", "adaptive_worst", "adaptive_average"),
        epsilon=epsilon, rho=rho, num_samples=64, seed=0,
    )
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                     callbacks=[measures]).history
    # Keskar: the box's corner |d_k| = epsilon (|w_k| + 1), phi = 100 max.
    keskar = np.sum(diagonal * (epsilon * (np.abs(w_star) + 1)) ** 2) / 2
    assert logs["keskar_sharpness"][0] == pytest.approx(100 * keskar, 1e-3)
    # Adaptive linf worst case: the corner |d_k| = rho |w_k|.
    scaled = diagonal * (rho * w_star) ** 2
    assert logs["adaptive_worst_sharpness"][0] == pytest.approx(
        np.sum(scaled) / 2, rel=1e-3)
    # Average case: E = sum_k H_kk rho^2 w_k^2 / 2, each draw's standard
    # deviation sqrt(sum_k scaled_k^2 / 2).
    stderr = np.sqrt(np.sum(scaled**2) / 2 / 64)
    assert abs(logs["adaptive_average_sharpness"][0]
               - np.sum(scaled) / 2) < 5 * stderr


@pytest.mark.parametrize("kwargs,message", [
    ({"measures": ("keskar", "hessian")}, r"Received: measures=\('keskar'"),
    ({"measures": ()}, r"Received: measures=\(\)"),
    ({"measures": ("adaptive_worst",)}, "Received: rho=None"),
    ({"measures": ("adaptive_average",), "rho": -1}, "Received: rho=-1"),
    ({"epsilon": 0}, "Received: epsilon=0"),
    ({"norm": "l1"}, "norm='l1'"),
])
def test_sharpness_measures_bad_arguments(kwargs, message):
    x, y = problem()
    with pytest.raises(ValueError, match=message):
        callbacks.SharpnessMeasures((x, y), **kwargs)
