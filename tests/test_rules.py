"""The SAM family (`keras_sam.rules`), rho schedules and `perturb=`
subsets against the NumPy float64 reference (tests/sam_reference.py)."""

import keras
import numpy as np
import pytest
import sam_reference as ref
from test_sam_model import OPTIMIZERS, make_mlp, make_problem

import keras_sam
from keras_sam import rules

multi_backend = pytest.mark.multi_backend


class WeightsPerEpoch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@keras.saving.register_keras_serializable(package="keras_sam_tests")
def second_dense_only(layer):
    return isinstance(layer, keras.layers.Dense) and layer.units == 2


def reference_steps(params, x, y, optimizer, steps, rho=0.1, rhos=None,
                    **kwargs):
    """Weights after each step and the per-step logs."""
    params = [p.astype("float64") for p in params]
    x64, y64 = x.astype("float64"), y.astype("float64")
    history, logs = [], []
    for step in range(steps):
        grads, clean, perturbed, norm = ref.sam_gradient(
            params, x64, y64, rhos[step] if rhos else rho, **kwargs
        )
        params = optimizer.apply(params, grads)
        history.append(params)
        logs.append((clean, perturbed - clean, norm))
    return history, logs


def keras_steps(params, x, y, optimizer, steps, splits=None, **kwargs):
    sam = keras_sam.SAMModel(make_mlp(params), num_batch_splits=splits,
                             **kwargs)
    sam.compile(optimizer=optimizer, loss="mse")
    record = WeightsPerEpoch()
    history = sam.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False,
                      verbose=0, callbacks=[record])
    return sam, record.weights, history.history


def assert_steps_close(got_steps, want_steps):
    for got_weights, want_weights in zip(got_steps, want_steps, strict=True):
        for got, want in zip(got_weights, want_weights):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


RULES = {
    "gsam": (lambda: rules.GSAM(alpha=0.4), lambda: {"alpha": 0.4}),
    "friendly": (
        lambda: rules.FriendlySAM(sigma=0.7, decay=0.6),
        lambda: {"friendly": ref.Friendly(0.7, 0.6)},
    ),
}


@multi_backend
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_rules_match_numpy_after_one_and_three_steps(rule, optimizer):
    x, y, params = make_problem(seed=3)
    make_rule, reference_kwargs = RULES[rule]
    make_keras, make_ref = OPTIMIZERS[optimizer]
    want, logs = reference_steps(params, x, y, make_ref(), 3,
                                 **reference_kwargs())
    _, got, history = keras_steps(params, x, y, make_keras(), 3,
                                  rho=0.1, rule=make_rule())
    assert_steps_close(got, want)
    clean, sharpness, norm = np.array(logs).T
    np.testing.assert_allclose(history["sam_sharpness"], sharpness,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history["grad_norm"], norm, rtol=1e-5)


@multi_backend
def test_rules_with_batch_splits_and_a_perturbed_subset():
    x, y, params = make_problem(n=12, seed=4)
    mask = [False, False, True, True]
    for rule in sorted(RULES):
        make_rule, reference_kwargs = RULES[rule]
        want, _ = reference_steps(
            params, x, y, ref.SGD(0.1, momentum=0.9), 3, splits=3,
            mask=mask, **reference_kwargs(),
        )
        _, got, _ = keras_steps(
            params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), 3,
            splits=3, rho=0.1, rule=make_rule(), perturb=second_dense_only,
        )
        assert_steps_close(got, want)


@multi_backend
def test_perturbed_subset_takes_the_norm_over_the_subset_only():
    x, y, params = make_problem(seed=5)
    want, _ = reference_steps(params, x, y, ref.Adam(0.01), 3,
                              mask=[False, False, True, True])
    _, got, _ = keras_steps(params, x, y, keras.optimizers.Adam(0.01), 3,
                            rho=0.1, perturb=second_dense_only)
    assert_steps_close(got, want)
    # The full-set run differs: the subset really changed the ascent.
    full, _ = reference_steps(params, x, y, ref.Adam(0.01), 3)
    assert np.abs(full[-1][0] - want[-1][0]).max() > 1e-5


@multi_backend
def test_rho_schedule_is_evaluated_at_the_optimizer_iterations():
    x, y, params = make_problem(seed=6)
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.2, decay_steps=1, decay_rate=0.5
    )
    rhos = [0.2, 0.1, 0.05]
    want, _ = reference_steps(params, x, y, ref.SGD(0.1, momentum=0.9), 3,
                              rhos=rhos)
    _, got, history = keras_steps(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), 3, rho=schedule
    )
    assert_steps_close(got, want)
    np.testing.assert_allclose(history["rho"], rhos, rtol=1e-6)


def test_follow_learning_rate_is_gsams_affine_map():
    lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
    rho = keras_sam.rho_schedules.FollowLearningRate(
        lr, rho_max=0.05, rho_min=0.01, lr_max=0.1
    )
    for step in (0, 3, 10):
        lr_t = 0.1 * 0.5 * (1 + np.cos(np.pi * step / 10))
        want = 0.01 + 0.04 * lr_t / 0.1
        np.testing.assert_allclose(float(rho(step)), want, rtol=1e-6)
    again = keras_sam.rho_schedules.FollowLearningRate.from_config(
        rho.get_config()
    )
    assert float(again(4)) == pytest.approx(float(rho(4)))


def test_normalization_layers_select_their_variables_only():
    inputs = keras.Input((4, 4, 3))
    h = keras.layers.Conv2D(2, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.LayerNormalization()(h)
    outputs = keras.layers.Dense(1)(h)
    sam = keras_sam.SAMModel(keras.Model(inputs, outputs),
                             perturb=keras_sam.NORMALIZATION_LAYERS)
    mask = keras_sam.rule_state.perturbed_mask(sam, sam.trainable_variables)
    names = [v.path for v, keep in zip(sam.trainable_variables, mask) if keep]
    assert sorted(name.split("/")[-1] for name in names) == [
        "beta", "beta", "gamma", "gamma"
    ]


def friendly_sam_model(params, **kwargs):
    sam = keras_sam.SAMModel(
        make_mlp(params), rho=keras.optimizers.schedules.PolynomialDecay(
            0.1, 10, 0.02),
        rule=rules.FriendlySAM(sigma=0.5, decay=0.8),
        perturb=(keras.layers.Dense,), **kwargs,
    )
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse")
    return sam


@multi_backend
def test_save_load_keeps_rule_state_and_training_continues_identically(
        tmp_path):
    x, y, params = make_problem(seed=7)
    straight = friendly_sam_model(params)
    straight.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    first = friendly_sam_model(params)
    first.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "friendly.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.rule == first.rule
    assert loaded.perturb == (keras.layers.Dense,)
    assert loaded.rho.get_config() == first.rho.get_config()
    state = [keras.ops.convert_to_numpy(v) for v in first.rule_state.variables]
    assert state and state[0] == 1.0
    for got, want in zip(loaded.rule_state.variables, state, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(loaded.get_weights(), straight.get_weights(),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", [
    rules.SAM(), rules.ASAM(eta=0.2), rules.GSAM(alpha=0.3),
    rules.FriendlySAM(sigma=0.4, decay=0.7),
    rules.LookSAM(every=3, alpha=0.5),
    rules.RandomizedSAM(probability=0.3, seed=4, period=100),
    rules.LateSAM(start_step=7), rules.MomentumSAM(),
    rules.AESAM(total_steps=50, decay=0.8, lower=-0.2, upper=2.0),
])
def test_every_rule_and_argument_survives_get_config(rule):
    _, _, params = make_problem()
    sam = keras_sam.SAMModel(make_mlp(params), rho=0.3, rule=rule,
                             perturb=second_dense_only)
    again = keras_sam.SAMModel.from_config(sam.get_config())
    assert again.rule == rule and again.rho == 0.3
    assert again.perturb is second_dense_only
    assert again.adaptive == isinstance(rule, rules.ASAM)


def test_adaptive_is_shorthand_for_asam():
    _, _, params = make_problem()
    sam = keras_sam.SAMModel(make_mlp(params), adaptive=True, eta=0.3)
    assert sam.rule == rules.ASAM(eta=0.3)
    assert keras_sam.SAMModel.from_config(sam.get_config()).eta == 0.3


@pytest.mark.parametrize("kwargs,message", [
    ({"rule": rules.GSAM(alpha=0.1), "adaptive": True},
     "either `adaptive=True`"),
    ({"rule": "gsam"}, "Received: rule='gsam'"),
    ({"perturb": ("BatchNormalization",)}, "are not layer classes"),
    ({"perturb": (int,)}, "are not layer classes"),
    ({"perturb": 3}, "Received: perturb=3"),
    ({"rho": "0.1"}, "Received: rho='0.1'"),
    ({"rho": -0.1}, "Received: rho=-0.1"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    _, _, params = make_problem()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        keras_sam.SAMModel(make_mlp(params), **kwargs)


@pytest.mark.parametrize("make,message", [
    (lambda: rules.GSAM(alpha=-0.1), "Received: alpha=-0.1"),
    (lambda: rules.FriendlySAM(decay=1.0), "Received: decay=1.0"),
    (lambda: rules.FriendlySAM(sigma=-1), "Received: sigma=-1"),
    (lambda: rules.ASAM(eta=-1), "Received: eta=-1"),
    (lambda: rules.AESAM(total_steps=0), "Received: total_steps=0"),
    (lambda: rules.AESAM(10, decay=1.0), "Received: decay=1.0"),
    (lambda: rules.AESAM(10, lower=float("nan")), "Received: lower=nan"),
])
def test_bad_rule_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_perturb_matching_no_variable_is_refused():
    _, _, params = make_problem()
    with pytest.raises(ValueError, match="selects no trainable variable"):
        keras_sam.SAMModel(make_mlp(params),
                           perturb=keras_sam.NORMALIZATION_LAYERS)


@multi_backend
def test_friendly_sam_keeps_its_average_in_true_gradient_units():
    """Under mixed precision the gradients carry the loss scale (2^15 at
    the start); the stored average must not."""
    x, y, params = make_problem(seed=8)
    _, want = ref.forward_backward([p.astype("float64") for p in params],
                                   x.astype("float64"), y.astype("float64"))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inner = make_mlp(params)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    sam = keras_sam.SAMModel(inner, rho=0.05,
                             rule=rules.FriendlySAM())
    sam.compile(optimizer=keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.0)), loss="mse")
    sam.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    started, *average = [keras.ops.convert_to_numpy(v)
                         for v in sam.rule_state.variables]
    assert started == 1.0
    for got, expected in zip(average, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-3)


def test_backup_and_restore_resumes_the_rule_state(tmp_path):
    x, y, params = make_problem(n=24, seed=9)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    reference = friendly_sam_model(params)
    reference.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    backup = str(tmp_path / "backup")
    interrupted = friendly_sam_model(params)
    with pytest.raises(RuntimeError, match="killed"):
        interrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False,
                        verbose=0, callbacks=[
                            keras.callbacks.BackupAndRestore(backup),
                            Interrupt()])
    resumed = friendly_sam_model(params)
    history = resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False,
                          verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [2, 3]
    for got, want in zip(resumed.weights, reference.weights, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                                   keras.ops.convert_to_numpy(want),
                                   rtol=1e-6, atol=1e-7, err_msg=got.path)


def cheap_reference(params, x, y, steps, decisions, looksam=None, rho=0.1):
    params = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    history, sharpness = [], []
    for step in range(steps):
        grads, gap = ref.cheap_sam_gradient(
            params, x.astype("float64"), y.astype("float64"), rho,
            decisions[step], looksam,
        )
        params = optimizer.apply(params, grads)
        history.append(params)
        sharpness.append(gap)
    return history, np.array(sharpness)


CHEAP = {
    "looksam": (lambda: rules.LookSAM(every=3, alpha=0.7),
                lambda step: step % 3 == 0),
    "randomized": (lambda: rules.RandomizedSAM(probability=0.5, seed=3),
                   lambda step: np.random.default_rng(3).random(8192)[step]
                   < 0.5),
    "late": (lambda: rules.LateSAM(start_step=3), lambda step: step >= 3),
}


@multi_backend
@pytest.mark.parametrize("rule", sorted(CHEAP))
def test_cheaper_rules_match_numpy_step_by_step(rule):
    x, y, params = make_problem(seed=10)
    make_rule, decide = CHEAP[rule]
    steps = 6
    decisions = [bool(decide(step)) for step in range(steps)]
    assert any(decisions) and not all(decisions)
    looksam = {"alpha": 0.7, "stored": None} if rule == "looksam" else None
    want, sharpness = cheap_reference(params, x, y, steps, decisions,
                                      looksam)
    _, got, history = keras_steps(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), steps,
        rho=0.1, rule=make_rule(),
    )
    assert_steps_close(got, want)
    # The decision was taken in the step: no ascent, no sharpness logged.
    logged = np.array(history["sam_sharpness"])
    np.testing.assert_array_equal(logged == 0.0, ~np.array(decisions))
    np.testing.assert_allclose(logged, sharpness, rtol=1e-4, atol=1e-6)


class CountTrainingPasses(keras.layers.Layer):
    calls = 0

    def call(self, inputs, training=None):
        if training:
            CountTrainingPasses.calls += 1
        return inputs


@multi_backend
@pytest.mark.skipif(keras.backend.backend() == "jax",
                    reason="jit traces both branches; counts Python calls")
def test_a_skipped_ascent_costs_one_pass():
    x, y, params = make_problem(seed=11)
    inputs = keras.Input((x.shape[1],))
    inner = make_mlp(params)
    model = keras.Model(inputs, inner(CountTrainingPasses()(inputs)))
    sam = keras_sam.SAMModel(model, rho=0.1,
                             rule=rules.LookSAM(every=4))
    sam.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    CountTrainingPasses.calls = 0
    sam.fit(x, y, batch_size=len(x), epochs=8, shuffle=False, verbose=0)
    # 8 clean passes + perturbed passes on steps 0 and 4 only.
    assert CountTrainingPasses.calls == 8 + 2


@multi_backend
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's cond")
def test_jax_cond_selects_on_cpu_and_returns_the_taken_branch():
    import jax

    from keras_sam.backend import jax as jax_backend

    def step(pred, x):
        return jax_backend.cond(
            pred, lambda: ([x * 2.0], x.sum()), lambda: ([x - 1.0], x.max())
        )

    x = np.arange(6.0, dtype="float32").reshape(2, 3)
    compiled = jax.jit(step)
    for pred, want in ((True, ([x * 2.0], x.sum())),
                       (False, ([x - 1.0], x.max()))):
        got = compiled(np.bool_(pred), x)
        np.testing.assert_array_equal(got[0][0], want[0][0])
        np.testing.assert_array_equal(got[1], want[1])
    # On XLA:CPU no conditional reaches the compiled program (its branches'
    # backward convolutions would run unoptimized).
    hlo = compiled.lower(np.bool_(True), x).compile().as_text()
    assert ("conditional(" in hlo) == (jax.default_backend() != "cpu")


def conv_bn_sam(rule):
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([
        keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3),
        keras.layers.BatchNormalization(), keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])
    sam = keras_sam.SAMModel(inner, rho=0.1, rule=rule)
    sam.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return sam


@multi_backend
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's CPU path")
@pytest.mark.parametrize("rule", sorted(CHEAP))
def test_jax_host_decision_equals_the_in_graph_select_bitwise(rule,
                                                             monkeypatch):
    import jax

    from keras_sam.backend import jax as jax_backend

    rng = np.random.default_rng(12)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 16)
    make_rule, decide = CHEAP[rule]
    host = conv_bn_sam(make_rule())
    host_logs = host.fit(x, y, batch_size=4, epochs=2, shuffle=False,
                         verbose=0).history
    assert host._decides_on_host() == (jax.default_backend() == "cpu")
    monkeypatch.setattr(jax_backend.SAMTrainer, "_decides_on_host",
                        lambda self: False)
    in_graph = conv_bn_sam(make_rule())
    in_graph_logs = in_graph.fit(x, y, batch_size=4, epochs=2,
                                 shuffle=False, verbose=0).history
    assert host_logs == in_graph_logs
    for got, want in zip(host.variables, in_graph.variables, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(want), err_msg=got.path,
        )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's CPU path")
def test_jax_decides_in_the_graph_where_the_decision_reads_the_gradient():
    # AE-SAM decides from this step's gradient norm; SAM always ascends.
    for rule in (rules.AESAM(total_steps=10), rules.SAM()):
        sam = conv_bn_sam(rule)
        sam.build((None, 6, 6, 2))
        sam.optimizer.build(sam.trainable_variables)
        assert not sam._decides_on_host()


@pytest.mark.parametrize("make,message", [
    (lambda: rules.LookSAM(every=0), "Received: every=0"),
    (lambda: rules.LookSAM(alpha=-1.0), "Received: alpha=-1.0"),
    (lambda: rules.RandomizedSAM(probability=1.5),
     "Received: probability=1.5"),
    (lambda: rules.RandomizedSAM(seed=-1), "Received: seed=-1"),
    (lambda: rules.LateSAM(start_step=-2), "Received: start_step=-2"),
])
def test_bad_cheaper_rule_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@multi_backend
def test_momentum_sam_matches_numpy_with_one_pass_per_step():
    x, y, params = make_problem(seed=12)
    want, losses = ref.momentum_sam_run(
        [p.astype("float64") for p in params], x.astype("float64"),
        y.astype("float64"), rho=0.3, learning_rate=0.1, momentum=0.9,
        steps=4,
    )
    _, got, history = keras_steps(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), 4,
        rho=0.3, rule=rules.MomentumSAM(),
    )
    assert_steps_close(got, want)
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-5)
    assert "sam_sharpness" not in history


@pytest.mark.parametrize("optimizer,message", [
    (lambda: keras.optimizers.Adam(0.01), "Received: optimizer=Adam"),
    (lambda: keras.optimizers.SGD(0.1), "with momentum=0.0"),
])
def test_momentum_sam_needs_sgd_with_momentum(optimizer, message):
    x, y, params = make_problem(seed=13)
    sam = keras_sam.SAMModel(make_mlp(params), rho=0.3,
                             rule=rules.MomentumSAM())
    sam.compile(optimizer=optimizer(), loss="mse")
    with pytest.raises(ValueError, match=message):
        sam.fit(x, y, epochs=1, verbose=0)


@multi_backend
def test_aesam_decides_from_the_gradient_norm_like_numpy():
    x, y, params = make_problem(seed=10)
    steps = 8
    rule = {"total_steps": 8, "decay": 0.5, "lower": -0.5, "upper": 1.0}
    policy = ref.AESAMPolicy(**rule)
    weights = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    want, decisions = [], []
    for step in range(steps):
        _, grads = ref.forward_backward(
            weights, x.astype("float64"), y.astype("float64")
        )
        decision, margin = policy.decide(step, grads)
        assert margin > 1e-4  # float32 cannot flip the decision
        grads, _ = ref.cheap_sam_gradient(
            weights, x.astype("float64"), y.astype("float64"), 0.1, decision
        )
        weights = optimizer.apply(weights, grads)
        want.append(weights)
        decisions.append(bool(decision))
    assert any(decisions) and not all(decisions)
    model, got, history = keras_steps(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), steps,
        rho=0.1, rule=rules.AESAM(**rule),
    )
    assert_steps_close(got, want)
    logged = np.array(history["sam_sharpness"])
    np.testing.assert_array_equal(logged == 0.0, ~np.array(decisions))
    mean, variance, _ = [float(keras.ops.convert_to_numpy(v))
                         for v in model.rule_state.weights]
    np.testing.assert_allclose([mean, variance],
                               [policy.mean, policy.variance], rtol=1e-5)


def test_aesam_ignores_a_non_finite_gradient_norm():
    rule = rules.AESAM(total_steps=10)
    state = [keras.ops.convert_to_tensor(v) for v in (2.0, 0.5, 1.0)]
    kept = rule.observe(float("inf"), state)
    np.testing.assert_array_equal(
        [float(keras.ops.convert_to_numpy(v)) for v in kept[:2]], [2.0, 0.5]
    )
    assert not bool(keras.ops.convert_to_numpy(rule.ascends_at(3, kept)))


@multi_backend
def test_esam_masks_are_the_numpy_hash():
    shapes = [(3, 5), (5,), (5, 2), (2,)]
    for step, seed in ((0, 0), (7, 3), (123456, 99)):
        got = rules.weight_masks(shapes, float(step), seed, 0.3)
        sizes = [int(np.prod(s)) for s in shapes]
        index = np.arange(sum(sizes), dtype=np.int32)
        want = (ref.hash32(index, step, seed) & 0xFFFFFF) < 0.3 * 2.0**24
        flat = np.concatenate(
            [np.ravel(keras.ops.convert_to_numpy(m)) for m in got])
        np.testing.assert_array_equal(flat, want)
    # Bernoulli(0.3) over a larger index range, and fresh masks per step.
    big = [np.ravel(keras.ops.convert_to_numpy(
        rules.weight_masks([(4000,)], float(s), 1, 0.3)[0]))
        for s in (0, 1)]
    assert abs(big[0].mean() - 0.3) < 0.03 and (big[0] != big[1]).mean() > 0.3


@multi_backend
def test_esam_matches_numpy_step_by_step():
    x, y, params = make_problem(seed=10)
    steps, rule = 4, {"weight_fraction": 0.6, "data_fraction": 0.5, "seed": 3}
    weights = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    want, sharpness = [], []
    for step in range(steps):
        # The rule's counter is incremented before the ascent: step + 1.
        grads, gap, _, margin = ref.esam_gradient(
            weights, x.astype("float64"), y.astype("float64"), 0.1,
            step + 1, 3, 0.6, 0.5)
        assert margin > 1e-5  # float32 cannot change the selection
        weights = optimizer.apply(weights, grads)
        want.append(weights)
        sharpness.append(gap)
    model, got, history = keras_steps(
        params, x, y, keras.optimizers.SGD(0.1, momentum=0.9), steps,
        rho=0.1, rule=rules.ESAM(**rule),
    )
    assert_steps_close(got, want)
    np.testing.assert_allclose(history["sam_sharpness"], sharpness,
                               rtol=1e-4, atol=1e-6)
