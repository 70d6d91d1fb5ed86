"""Gradient accumulation against full-batch NumPy gradient descent."""

import keras
import numpy as np
import pytest
import sam_reference as ref
from test_sam_model import make_mlp, make_problem

import keras_sam
from keras_sam import accumulation

multi_backend = pytest.mark.multi_backend


def numpy_full_batch_run(params, x, y, learning_rates, momentum=0.0,
                         global_clipnorm=None, rho=0.0, splits=1):
    """Full-batch GD (or SAM with `splits` m-sharpness chunks) in float64,
    one update per entry of `learning_rates`."""
    params = [p.astype("float64") for p in params]
    x64, y64 = x.astype("float64"), y.astype("float64")
    velocity = [np.zeros_like(p) for p in params]
    for learning_rate in learning_rates:
        if rho:
            grads = ref.sam_gradient(params, x64, y64, rho, splits=splits)[0]
        else:
            grads = ref.forward_backward(params, x64, y64)[1]
        if global_clipnorm is not None:
            norm = np.sqrt(sum(np.sum(g**2) for g in grads))
            grads = [g * global_clipnorm / max(norm, global_clipnorm)
                     for g in grads]
        velocity = [momentum * v - learning_rate * g
                    for v, g in zip(velocity, grads)]
        params = [p + v for p, v in zip(params, velocity)]
    return params


def assert_weights_close(model, expected):
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@multi_backend
@pytest.mark.parametrize("clip", [None, 0.5])
def test_full_batch_steps_match_numpy_gradient_descent(clip):
    x, y, params = make_problem(n=12)
    model = make_mlp(params)
    optimizer = accumulation.full_batch_optimizer(
        keras.optimizers.SGD(0.1, momentum=0.9, global_clipnorm=clip),
        dataset_size=12, batch_size=4,
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=3, shuffle=True, verbose=0)
    expected = numpy_full_batch_run(
        params, x, y, [0.1] * 3, momentum=0.9, global_clipnorm=clip
    )
    assert_weights_close(model, expected)
    assert int(model.optimizer.iterations) == 3


@multi_backend
def test_clipping_acts_on_the_full_batch_gradient_not_microbatches():
    # The full-batch gradient norm is about 1.4; a clip of 0.5 rescales
    # it. Clipping each microbatch before averaging would give another
    # step, so agreement with the NumPy run checks the order.
    x, y, params = make_problem(n=12)
    norm = np.sqrt(sum(
        np.sum(g**2) for g in ref.forward_backward(
            [p.astype("float64") for p in params], x.astype("float64"),
            y.astype("float64"))[1]
    ))
    assert norm > 0.5
    model = make_mlp(params)
    model.compile(
        optimizer=accumulation.full_batch_optimizer(
            keras.optimizers.SGD(0.1, global_clipnorm=0.5), 12, 3
        ),
        loss="mse",
    )
    model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    expected = numpy_full_batch_run(params, x, y, [0.1], global_clipnorm=0.5)
    assert_weights_close(model, expected)


@multi_backend
def test_sam_model_accumulates_one_perturbation_per_microbatch():
    x, y, params = make_problem(n=12)
    sam = keras_sam.SAMModel(make_mlp(params), rho=0.1)
    sam.compile(
        optimizer=accumulation.full_batch_optimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), 12, 4
        ),
        loss="mse",
    )
    sam.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    # m-sharpness with m = 4 over the full batch of 12: three chunks.
    expected = numpy_full_batch_run(
        params, x, y, [0.1] * 2, momentum=0.9, rho=0.1, splits=3
    )
    assert_weights_close(sam, expected)


@multi_backend
def test_schedule_counts_updates_not_microbatches():
    x, y, params = make_problem(n=12)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.2, decay_steps=1, decay_rate=0.5
    )
    model = make_mlp(params)
    model.compile(
        optimizer=accumulation.full_batch_optimizer(
            keras.optimizers.SGD(schedule), 12, 3
        ),
        loss="mse",
    )
    model.fit(x, y, batch_size=3, epochs=3, shuffle=False, verbose=0)
    expected = numpy_full_batch_run(params, x, y, [0.2, 0.1, 0.05])
    assert_weights_close(model, expected)


def test_accumulation_steps():
    assert accumulation.accumulation_steps(5000, 500) == 10
    assert accumulation.accumulation_steps(64, 64) == 1


@pytest.mark.parametrize(
    "dataset_size, batch_size, message",
    [
        (100, 30, "must divide"),
        (10, 20, "must divide"),
        (0, 1, "dataset_size"),
        (10, 2.0, "batch_size"),
        (10, True, "batch_size"),
    ],
)
def test_bad_sizes_raise_naming_the_argument(dataset_size, batch_size,
                                             message):
    with pytest.raises(ValueError, match=message):
        accumulation.accumulation_steps(dataset_size, batch_size)


def test_copy_leaves_the_original_alone():
    original = keras.optimizers.SGD(0.3, momentum=0.5, global_clipnorm=1.0)
    before = original.get_config()
    copy = accumulation.with_gradient_accumulation(original, 4)
    assert original.get_config() == before
    assert copy is not original
    assert copy.gradient_accumulation_steps == 4
    assert copy.global_clipnorm == 1.0 and copy.momentum == 0.5
    plain = accumulation.with_gradient_accumulation("sgd", 1)
    assert isinstance(plain, keras.optimizers.SGD)
    assert plain.gradient_accumulation_steps is None


def test_loss_scale_optimizer_is_refused():
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        accumulation.with_gradient_accumulation(scaled, 2)


def test_schedule_survives_save_and_load(tmp_path):
    x, y, params = make_problem(n=12)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 1, 0.5)
    model = keras_sam.SAMModel(make_mlp(params), rho=0.05)
    model.compile(
        optimizer=accumulation.full_batch_optimizer(
            keras.optimizers.SGD(schedule), 12, 4
        ),
        loss="mse",
    )
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    wrapped = loaded.optimizer.get_config()["learning_rate"]
    assert wrapped["class_name"] == "UpdateStepSchedule"
    assert loaded.optimizer.gradient_accumulation_steps == 3
    # Two updates made: the next one uses 0.2 * 0.5**2.
    np.testing.assert_allclose(
        float(loaded.optimizer.learning_rate), 0.05, rtol=1e-6
    )
    # Re-wrapping does not nest schedules.
    again = accumulation.with_gradient_accumulation(loaded.optimizer, 2)
    rewrapped = again.get_config()["learning_rate"]["config"]
    assert rewrapped["schedule"]["class_name"] == "ExponentialDecay"
