"""SAF and MESA (`keras_sam.rules`, the trajectory-loss rules) against the
NumPy float64 reference in tests/sam_reference.py: a linear softmax model,
whose gradient is closed-form."""

import keras
import numpy as np
import pytest
import sam_reference as ref

import keras_sam
from keras_sam import rules

multi_backend = pytest.mark.multi_backend

NUM, FEATURES, CLASSES, BATCH = 12, 4, 3, 4
STEPS_PER_EPOCH = NUM // BATCH
LEARNING_RATE = 0.5


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM, FEATURES)).astype("float32")
    labels = rng.integers(0, CLASSES, NUM)
    index = rng.permutation(NUM)  # the rows' sample indices
    kernel = rng.normal(scale=0.5, size=(FEATURES, CLASSES)).astype("float32")
    bias = rng.normal(scale=0.1, size=(CLASSES,)).astype("float32")
    return x, labels, index, kernel, bias


def make_model(kernel, bias, rule, **kwargs):
    inner = keras.Sequential([keras.Input((FEATURES,)),
                              keras.layers.Dense(CLASSES)])
    inner.set_weights([kernel, bias])
    sam = keras_sam.SAMModel(inner, rule=rule, **kwargs)
    sam.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return sam


class StepRecord(keras.callbacks.Callback):
    """Each step's loss (from the epoch's running mean) and weights."""

    def on_train_begin(self, logs=None):
        self.losses, self.weights, self._mean = [], [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._count, self._mean = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._count += 1
        mean = float(logs["loss"])
        self.losses.append(self._count * mean - (self._count - 1) * self._mean)
        self._mean = mean
        self.weights.append(self.model.get_weights())


def saf_rule(**kwargs):
    arguments = {"num_samples": NUM, "num_classes": CLASSES,
                 "steps_per_epoch": STEPS_PER_EPOCH, "epochs_back": 2,
                 "weight": 0.7, "temperature": 2.0, "start_epoch": 2}
    arguments.update(kwargs)
    return rules.SAF(**arguments)


def mesa_rule(**kwargs):
    arguments = {"start_step": 2, "decay": 0.6, "weight": 0.7,
                 "temperature": 2.0}
    arguments.update(kwargs)
    return rules.MESA(**arguments)


def fit(sam, x, labels, index, epochs, **kwargs):
    record = StepRecord()
    sam.fit({"inputs": x, "sample_index": index}, labels, batch_size=BATCH,
            epochs=epochs, shuffle=False, verbose=0,
            callbacks=[record, *kwargs.pop("callbacks", [])], **kwargs)
    return record


def assert_matches(record, steps):
    assert len(record.weights) == len(steps)
    for (loss, grads, kernel, bias), got_loss, got, before in zip(
        steps, record.losses, record.weights,
        [None] + record.weights[:-1],
    ):
        np.testing.assert_allclose(got_loss, loss, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(got[0], kernel, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got[1], bias, rtol=2e-5, atol=2e-6)
        if before is not None:  # the applied gradient: -(w' - w) / lr
            applied = [(b - a) / LEARNING_RATE for a, b in zip(got, before)]
            np.testing.assert_allclose(applied[0], grads[0], rtol=1e-3,
                                       atol=2e-5)
            np.testing.assert_allclose(applied[1], grads[1], rtol=1e-3,
                                       atol=2e-5)


def saf_reference(x, labels, index, kernel, bias, epochs):
    return ref.saf_run(kernel, bias, x, labels, index, BATCH, epochs,
                       epochs_back=2, weight=0.7, tau=2.0, start_epoch=2,
                       learning_rate=LEARNING_RATE)


def mesa_reference(x, labels, kernel, bias, epochs):
    return ref.mesa_run(kernel, bias, x, labels, BATCH,
                        epochs * STEPS_PER_EPOCH, decay=0.6, weight=0.7,
                        tau=2.0, start_step=2, learning_rate=LEARNING_RATE)


SPLITS = [{}, {"num_batch_splits": 2},
          {"num_batch_splits": 2, "split_perturbation": "shared"}]


@multi_backend
@pytest.mark.parametrize("splits", SPLITS)
def test_saf_matches_numpy_loss_and_gradient(splits):
    x, labels, index, kernel, bias = make_problem(seed=1)
    steps, _ = saf_reference(x, labels, index, kernel, bias, epochs=5)
    # The trajectory loss is on from epoch 2 and changes the steps.
    plain, _ = ref.saf_run(kernel, bias, x, labels, index, BATCH, 5, 2,
                           0.0, 2.0, 2, LEARNING_RATE)
    assert abs(steps[-1][0] - plain[-1][0]) > 1e-3
    sam = make_model(kernel, bias, saf_rule(), **splits)
    assert_matches(fit(sam, x, labels, index, epochs=5), steps)


@multi_backend
@pytest.mark.parametrize("splits", SPLITS)
def test_mesa_matches_numpy_loss_and_gradient(splits):
    x, labels, index, kernel, bias = make_problem(seed=2)
    steps, _ = mesa_reference(x, labels, kernel, bias, epochs=3)
    sam = make_model(kernel, bias, mesa_rule(), **splits)
    record = fit(sam, x, labels, index, epochs=3)
    assert_matches(record, steps)
    # MESA reads no index: plain inputs train identically.
    plain = make_model(kernel, bias, mesa_rule(), **splits)
    plain.fit(x, labels, batch_size=BATCH, epochs=3, shuffle=False,
              verbose=0)
    for got, want in zip(plain.get_weights(), record.weights[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_saf_with_sample_weights_weights_the_compiled_loss_only():
    x, labels, index, kernel, bias = make_problem(seed=9)
    sample_weight = np.random.default_rng(9).uniform(0.2, 2.0, NUM)
    steps, _ = ref.saf_run(kernel, bias, x, labels, index, BATCH, 4, 2, 0.7,
                           2.0, 2, LEARNING_RATE, sample_weight=sample_weight)
    sam = make_model(kernel, bias, saf_rule())
    record = fit(sam, x, labels, index, epochs=4,
                 sample_weight=sample_weight.astype("float32"))
    assert_matches(record, steps)


def rule_state(sam):
    return [keras.ops.convert_to_numpy(v) for v in sam.rule_state.variables]


def test_saf_stores_the_outputs_of_each_epoch_like_numpy():
    x, labels, index, kernel, bias = make_problem(seed=3)
    _, stored = saf_reference(x, labels, index, kernel, bias, epochs=3)
    sam = make_model(kernel, bias, saf_rule())
    fit(sam, x, labels, index, epochs=3)
    stamps, table = rule_state(sam)
    for epoch in (1, 2):  # slot epoch % 2 holds epoch `epoch`
        rows = slice((epoch % 2) * NUM, (epoch % 2 + 1) * NUM)
        np.testing.assert_array_equal(stamps[rows], epoch + 1)
        want = np.stack([stored[(epoch, i)] for i in range(NUM)])
        np.testing.assert_allclose(table[rows], want, rtol=2e-5, atol=2e-6)


def test_mesa_average_is_numpy_ema():
    x, labels, index, kernel, bias = make_problem(seed=4)
    _, average = mesa_reference(x, labels, kernel, bias, epochs=2)
    sam = make_model(kernel, bias, mesa_rule())
    fit(sam, x, labels, index, epochs=2)
    updated, *got = rule_state(sam)
    assert updated == 2 * STEPS_PER_EPOCH
    for g, w in zip(got, average, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


MAKERS = {"saf": saf_rule, "mesa": mesa_rule}


@multi_backend
@pytest.mark.parametrize("rule", sorted(MAKERS))
def test_save_load_and_resume_equal_the_uninterrupted_run(rule, tmp_path):
    x, labels, index, kernel, bias = make_problem(seed=5)
    make = MAKERS[rule]
    straight = make_model(kernel, bias, make())
    fit(straight, x, labels, index, epochs=5)
    # Save after 3 epochs, load, train 2 more.
    first = make_model(kernel, bias, make())
    fit(first, x, labels, index, epochs=3)
    path = tmp_path / f"{rule}.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.rule == first.rule
    for got, want in zip(rule_state(loaded), rule_state(first), strict=True):
        np.testing.assert_array_equal(got, want)
    fit(loaded, x, labels, index, epochs=5, initial_epoch=3)
    # Interrupted after epoch 2, resumed by BackupAndRestore.

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("killed")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="killed"):
        fit(make_model(kernel, bias, make()), x, labels, index, epochs=5,
            callbacks=[backup, Interrupt()])
    resumed = make_model(kernel, bias, make())
    record = fit(resumed, x, labels, index, epochs=5, callbacks=[backup])
    assert len(record.weights) == 2 * STEPS_PER_EPOCH
    for other in (loaded, resumed):
        for got, want in zip(other.weights, straight.weights, strict=True):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(got),
                keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-7,
                err_msg=got.path,
            )


def test_saf_without_sample_index_says_what_is_missing():
    x, labels, _, kernel, bias = make_problem()
    sam = make_model(kernel, bias, saf_rule())
    with pytest.raises(ValueError, match="give x as {'inputs': x, "
                       "'sample_index': index}"):
        sam.fit(x, labels, batch_size=BATCH, epochs=1, verbose=0)


def test_trajectory_rules_need_one_class_score_output():
    x, labels, index, _, _ = make_problem()
    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, [keras.layers.Dense(CLASSES)(inputs)] * 2)
    sam = keras_sam.SAMModel(model, rule=mesa_rule())
    sam.compile(optimizer="sgd", loss=["mse", "mse"])
    with pytest.raises(ValueError, match="one output of shape"):
        sam.fit(x, [np.zeros((NUM, CLASSES))] * 2, batch_size=BATCH,
                verbose=0)


def test_evaluate_and_predict_take_plain_or_indexed_inputs():
    x, labels, index, kernel, bias = make_problem()
    sam = make_model(kernel, bias, saf_rule())
    plain = sam.predict(x, verbose=0)
    indexed = sam.predict({"inputs": x, "sample_index": index}, verbose=0)
    np.testing.assert_array_equal(plain, indexed)
    np.testing.assert_allclose(plain, x @ kernel + bias, rtol=1e-5,
                               atol=1e-6)
    sam.evaluate({"inputs": x, "sample_index": index}, labels, verbose=0)


@pytest.mark.parametrize("make,message", [
    (lambda: saf_rule(num_samples=0), "Received: num_samples=0"),
    (lambda: saf_rule(num_classes=1.5), "Received: num_classes=1.5"),
    (lambda: saf_rule(steps_per_epoch=-1), "Received: steps_per_epoch=-1"),
    (lambda: saf_rule(epochs_back=0), "Received: epochs_back=0"),
    (lambda: saf_rule(weight=-0.1), "Received: weight=-0.1"),
    (lambda: saf_rule(temperature=0.0), "Received: temperature=0.0"),
    (lambda: saf_rule(start_epoch=-1), "Received: start_epoch=-1"),
    (lambda: saf_rule(from_logits="yes"), "Received: from_logits='yes'"),
    (lambda: mesa_rule(start_step=-3), "Received: start_step=-3"),
    (lambda: mesa_rule(decay=1.0), "Received: decay=1.0"),
    (lambda: mesa_rule(temperature=-2), "Received: temperature=-2"),
])
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("rule", [saf_rule(), mesa_rule()])
def test_config_round_trip(rule):
    config = keras.saving.serialize_keras_object(rule)
    assert keras.saving.deserialize_keras_object(config) == rule


@pytest.mark.parametrize("rule", sorted(MAKERS))
def test_mixed_precision_follows_the_float32_run(rule):
    x, labels, index, kernel, bias = make_problem(seed=8)
    full = make_model(kernel, bias, MAKERS[rule]())
    fit(full, x, labels, index, epochs=4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = make_model(kernel, bias, MAKERS[rule]())
        record = fit(mixed, x, labels, index, epochs=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert type(mixed.optimizer).__name__ == "LossScaleOptimizer"
    assert np.all(np.isfinite(record.losses))
    for got, want in zip(mixed.get_weights(), full.get_weights()):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
