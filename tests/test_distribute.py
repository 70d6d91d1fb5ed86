"""SAMModel under tf.distribute on two logical CPU devices (conftest)."""

import functools

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute is TensorFlow-only", allow_module_level=True)

import sam_reference as ref  # noqa: E402
import tensorflow as tf  # noqa: E402
from test_sam_model import (
    bn_dropout_model,  # noqa: E402
    make_mlp,  # noqa: E402
    make_problem,  # noqa: E402
)

import keras_sam  # noqa: E402


@functools.lru_cache(maxsize=None)
def mirrored():
    # One strategy per process: TensorFlow numbers collective instances
    # per strategy, and a second strategy's instance 100 can meet a stale
    # peer of the first's ("Shape mismatch in the collective instance").
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def fit_sam(strategy, params, x, y, batch_size, epochs, **kwargs):
    with strategy.scope():
        sam = keras_sam.SAMModel(make_mlp(params), **kwargs)
        sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                    loss="mse")
    history = sam.fit(x, y, batch_size=batch_size, epochs=epochs,
                      shuffle=False, verbose=0)
    return sam, history.history


def test_global_mode_equals_single_device_sam_on_whole_batch():
    x, y, params = make_problem(n=16, seed=20)
    single, single_logs = fit_sam(tf.distribute.get_strategy(), params, x,
                                  y, 16, 5, rho=0.1)
    both, both_logs = fit_sam(mirrored(), params, x, y, 16, 5, rho=0.1,
                              perturbation="global")
    for got, want in zip(both.get_weights(), single.get_weights()):
        assert np.abs(got - want).max() <= 1e-6
    for key in ("loss", "sam_sharpness", "grad_norm"):
        np.testing.assert_allclose(both_logs[key], single_logs[key],
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("splits", [None, 2])
def test_replica_mode_equals_per_half_batch_reference(splits):
    """Each replica perturbs with its own half batch (and its chunks)."""
    x, y, params = make_problem(n=16, seed=21)
    chunks = 2 * (splits or 1)
    expected = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    logs = []
    for _ in range(3):
        grads, clean, perturbed, norm = ref.sam_gradient(
            expected, x.astype("float64"), y.astype("float64"), rho=0.1,
            splits=chunks,
        )
        expected = optimizer.apply(expected, grads)
        logs.append((clean, perturbed - clean, norm))
    sam, history = fit_sam(mirrored(), params, x, y, 16, 3, rho=0.1,
                           num_batch_splits=splits)
    for got, want in zip(sam.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    clean, sharpness, norm = np.array(logs).T
    np.testing.assert_allclose(history["loss"], clean, rtol=1e-5)
    np.testing.assert_allclose(history["sam_sharpness"], sharpness,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history["grad_norm"], norm, rtol=1e-5)


@pytest.mark.parametrize("perturbation,rule", [
    ("replica", None), ("global", None),
    ("replica", keras_sam.rules.FriendlySAM()),
    ("global", keras_sam.rules.GSAM(alpha=0.2)),
    ("replica", keras_sam.rules.LookSAM(every=2)),
    ("global", keras_sam.rules.RandomizedSAM(probability=0.5)),
    # Each replica decides from its own gradient norm; the statistics are
    # averaged, so the replicas' state and weights stay equal.
    ("replica", keras_sam.rules.AESAM(total_steps=50)),
    ("global", keras_sam.rules.ESAM(0.5, 0.5)),
    ("replica", keras_sam.rules.MomentumSAM()),
])
def test_replicas_stay_bit_identical(perturbation, rule):
    rng = np.random.default_rng(22)
    x = rng.normal(size=(80, 4)).astype("float32")
    y = rng.normal(size=(80, 1)).astype("float32")
    with mirrored().scope():
        sam = keras_sam.SAMModel(bn_dropout_model(), rho=0.1,
                                 perturbation=perturbation, rule=rule)
        sam.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                    loss="mse")
    sam.fit(x, y, batch_size=16, epochs=10, verbose=0, shuffle=False)
    assert int(sam.optimizer.iterations.numpy()) == 50
    for variable in sam.variables:
        copies = [t.numpy() for t in variable.value.values] if hasattr(
            variable.value, "values") else None
        if copies is None:
            # Read the mirrored tf.Variable behind the Keras variable.
            copies = [c.numpy() for c in
                      tf.nest.flatten(variable._value.values)]
        assert len(copies) == 2, variable.path
        np.testing.assert_array_equal(copies[0], copies[1],
                                      err_msg=variable.path)


def test_global_mode_outside_a_strategy_is_plain_sam():
    x, y, params = make_problem(n=12, seed=23)
    a, _ = fit_sam(tf.distribute.get_strategy(), params, x, y, 12, 2,
                   rho=0.1, perturbation="global")
    b, _ = fit_sam(tf.distribute.get_strategy(), params, x, y, 12, 2,
                   rho=0.1, perturbation="replica")
    for got, want in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_unchecked_strategy_gives_a_clear_error():
    x, y, params = make_problem(n=8, seed=24)
    strategy = tf.distribute.experimental.CentralStorageStrategy(
        ["/cpu:0", "/cpu:1"]
    )
    with pytest.raises(ValueError, match="CentralStorageStrategy"):
        fit_sam(strategy, params, x, y, 8, 1, rho=0.1)


def test_one_device_strategy_equals_default():
    x, y, params = make_problem(n=12, seed=25)
    default, _ = fit_sam(tf.distribute.get_strategy(), params, x, y, 6, 2,
                         rho=0.1)
    one, _ = fit_sam(tf.distribute.OneDeviceStrategy("/cpu:0"), params, x,
                     y, 6, 2, rho=0.1, perturbation="global")
    for got, want in zip(one.get_weights(), default.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


RULES = {
    "gsam": (lambda: keras_sam.rules.GSAM(alpha=0.4), {"alpha": 0.4}),
    "friendly": (lambda: keras_sam.rules.FriendlySAM(sigma=0.7, decay=0.6),
                 None),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rules_in_replica_mode_equal_per_half_batch_reference(rule):
    """Each replica applies the rule to its own half batch; Friendly-SAM's
    average is the mean of the replicas' updates (the reference's
    size-weighted chunks)."""
    x, y, params = make_problem(n=16, seed=26)
    make_rule, kwargs = RULES[rule]
    kwargs = kwargs or {"friendly": ref.Friendly(0.7, 0.6)}
    expected = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    for _ in range(3):
        grads, *_ = ref.sam_gradient(
            expected, x.astype("float64"), y.astype("float64"), rho=0.1,
            splits=2, **kwargs,
        )
        expected = optimizer.apply(expected, grads)
    sam, _ = fit_sam(mirrored(), params, x, y, 16, 3, rho=0.1,
                     rule=make_rule())
    for got, want in zip(sam.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_global_mode_with_rho_zero_is_the_plain_step():
    x, y, params = make_problem(n=16, seed=27)
    single, _ = fit_sam(tf.distribute.get_strategy(), params, x, y, 16, 3,
                        rho=0.0)
    both, _ = fit_sam(mirrored(), params, x, y, 16, 3, rho=0.0,
                      perturbation="global")
    for got, want in zip(both.get_weights(), single.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["saf", "mesa"])
def test_trajectory_rules_on_two_replicas_equal_numpy(rule):
    """SAF gathers the replicas' outputs: both replicas hold every
    sample's; the steps are the single-device NumPy reference's."""
    import test_trajectory_rules as trajectory

    x, labels, index, kernel, bias = trajectory.make_problem(seed=6)
    if rule == "saf":
        steps, stored = trajectory.saf_reference(x, labels, index, kernel,
                                                 bias, epochs=4)
    else:
        steps, _ = trajectory.mesa_reference(x, labels, kernel, bias,
                                             epochs=4)
    with mirrored().scope():
        sam = trajectory.make_model(kernel, bias,
                                    trajectory.MAKERS[rule]())
    record = trajectory.fit(sam, x, labels, index, epochs=4)
    trajectory.assert_matches(record, steps)
    for variable in sam.rule_state.variables:
        copies = [c.numpy() for c in tf.nest.flatten(variable._value.values)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    if rule == "saf":
        table = tf.nest.flatten(sam.rule_state.variables[1]._value.values)
        want = np.stack([stored[(3, i)] for i in range(len(x))])
        rows = slice(len(x), 2 * len(x))  # epoch 3 in slot 3 % 2
        np.testing.assert_allclose(table[0].numpy()[rows], want, rtol=2e-5,
                                   atol=2e-6)
