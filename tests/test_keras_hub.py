"""SAMModel around KerasHub task models, against the backend's autodiff.

The task models are built from tiny backbones with random weights (the
presets need a download). The first SAM step is checked against a SAM
step written out here with the backend's own autodiff (`jax.grad`,
`tf.GradientTape`, `torch.autograd`) on the task's `stateless_call`:
`g` at `w`, `eps = rho g / ||g||` (over the perturbed variables), `g_s`
at `w + eps`, `w - lr g_s`. Dropout is off, so both passes agree.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam

keras_hub = pytest.importorskip("keras_hub")

pytestmark = pytest.mark.multi_backend

VOCABULARY = 100
LEARNING_RATE = 0.1
RHO = 0.05
CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------------ the models


def vit(preprocessor=None):
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
        hidden_dim=32, mlp_dim=64,
    )
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=10, preprocessor=preprocessor,
    )


def bert(lora_rank=None):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8, dropout=0.0,
    )
    if lora_rank:
        backbone.enable_lora(lora_rank)
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=0.0,
    )


def gpt2():
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8, dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def gemma():
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
        head_dim=8,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def image_batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, 10, n), None


def token_batch(seed=0, n=8, length=8, segments=True, lm_targets=False,
                repeated=False):
    """Token ids with padding (the last two positions of every other row),
    its mask, and class labels or next-token targets weighted by the mask.

    The ids are distinct within the batch unless `repeated` (then drawn
    from 1 to 4): see `test_repeated_tokens_give_the_dense_gradient_norm`.
    """
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), bool)
    mask[::2, length - 2:] = False
    if repeated:
        ids = rng.integers(1, 5, (n, length))
    else:
        ids = rng.permutation(np.arange(1, VOCABULARY))[:n * length]
    token_ids = np.where(mask, ids.reshape(n, length), 0)
    x = {"token_ids": token_ids.astype("int32"), "padding_mask": mask}
    if segments:
        x["segment_ids"] = np.zeros((n, length), "int32")
    if lm_targets:
        targets = rng.integers(1, VOCABULARY, (n, length))
        return x, targets, mask.astype("float32")
    return x, rng.integers(0, 3, n), None


TASKS = {
    "vit": (vit, image_batch),
    "bert": (bert, token_batch),
    "gpt2": (gpt2, lambda: token_batch(segments=False, lm_targets=True)),
}


# ------------------------------------------- the independent SAM step


def autodiff_loss_and_gradient(task, values, x, y, sample_weight):
    """The loss of `task` at trainable `values` and its gradient, by the
    backend's own autodiff on `stateless_call` in training mode."""
    non_trainable = [v.value for v in task.non_trainable_variables]
    x = keras.tree.map_structure(ops.convert_to_tensor, x)
    weight = None if sample_weight is None else ops.convert_to_tensor(
        sample_weight)

    def loss_of(trainable):
        logits, _ = task.stateless_call(
            trainable, non_trainable, x, training=True
        )
        return CROSS_ENTROPY(y, logits, sample_weight=weight)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        # Compiled: op-by-op JAX is slower than one compilation here.
        loss, grads = jax.jit(jax.value_and_grad(loss_of))(
            [ops.convert_to_tensor(v) for v in values]
        )
    elif backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(v) for v in values]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = loss_of(tensors)
        grads = tape.gradient(loss, tensors)
    else:
        import torch

        tensors = [torch.tensor(v, requires_grad=True) for v in values]
        loss = loss_of(tensors)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = [
        np.zeros_like(v) if g is None else ops.convert_to_numpy(g)
        for v, g in zip(values, grads)
    ]
    return float(ops.convert_to_numpy(loss)), [
        g.astype("float64") for g in grads
    ]


def reference_sam_step(task, x, y, sample_weight, perturbed=None, rho=RHO):
    """One SAM step with plain SGD, computed here: returns the new
    trainable weights, the clean loss and the loss at `w + eps`.

    `perturbed`: one boolean per trainable variable (default: all); the
    ascent and its norm cover those only.
    """
    weights = [ops.convert_to_numpy(v) for v in task.trainable_variables]
    perturbed = perturbed or [True] * len(weights)
    loss, grads = autodiff_loss_and_gradient(task, weights, x, y,
                                             sample_weight)
    norm = np.sqrt(sum(np.sum(g**2) for g, p in zip(grads, perturbed) if p))
    shifted = [
        (w + rho * g / norm).astype("float32") if p else w
        for w, g, p in zip(weights, grads, perturbed)
    ]
    loss_at_eps, grads_at_eps = autodiff_loss_and_gradient(
        task, shifted, x, y, sample_weight
    )
    new = [w - LEARNING_RATE * g for w, g in zip(weights, grads_at_eps)]
    plain = [w - LEARNING_RATE * g for w, g in zip(weights, grads)]
    return new, plain, loss, loss_at_eps


def sam_for(task, rho=RHO, **kwargs):
    sam = keras_sam.SAMModel(task, rho=rho, **kwargs)
    sam.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                loss=CROSS_ENTROPY)
    return sam


def check_first_step(task, batch, perturbed=None, rho=RHO, **sam_kwargs):
    """Trains `SAMModel(task)` one step and compares it with the
    reference; returns the compiled `SAMModel`."""
    x, y, sample_weight = batch
    before = [ops.convert_to_numpy(v) for v in task.trainable_variables]
    frozen = [ops.convert_to_numpy(v) for v in task.non_trainable_variables]
    want, plain, loss, loss_at_eps = reference_sam_step(
        task, x, y, sample_weight, perturbed, rho
    )
    sam = sam_for(task, rho=rho, **sam_kwargs)
    logs = sam.train_on_batch(x, y, sample_weight=sample_weight,
                              return_dict=True)
    got = [ops.convert_to_numpy(v) for v in task.trainable_variables]
    # The SAM update differs from the plain one by far more than the
    # tolerance, so a wrong `eps` cannot pass.
    gap = max(np.max(np.abs(s - p)) for s, p in zip(want, plain))
    assert gap > 2e-5, gap
    for g, w, b in zip(got, want, before):
        np.testing.assert_allclose(g - b, w - b, rtol=2e-3, atol=2e-6)
    for g, w in zip(task.non_trainable_variables, frozen):
        np.testing.assert_array_equal(ops.convert_to_numpy(g), w)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(
        logs["sam_sharpness"], loss_at_eps - loss, rtol=2e-3, atol=1e-6
    )
    return sam


def assert_round_trip(sam, batch, tmp_path, train=True):
    """Saved and loaded, the model predicts (and, with `train`, trains on)
    identically."""
    x, y, sample_weight = batch
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel)
    assert type(loaded.model) is type(sam.model)
    for got, want in zip(loaded.get_weights(), sam.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), sam.predict(x, verbose=0),
        rtol=1e-6, atol=1e-6,
    )
    if not train:
        return
    sam.train_on_batch(x, y, sample_weight=sample_weight)
    loaded.train_on_batch(x, y, sample_weight=sample_weight)
    for got, want in zip(loaded.get_weights(), sam.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ the tests


# On TensorFlow the gradient of an embedding lookup is a `tf.IndexedSlices`
# with one row per occurrence of an id; SAM's norm is wrong where ids
# repeat in a batch (BERT's segment ids always do).
@pytest.mark.parametrize("name", [
    "bert", "gpt2", "vit",
])
def test_task_sam_step_matches_autodiff_and_round_trips(name, tmp_path):
    make_task, make_batch = TASKS[name]
    task, batch = make_task(), make_batch()
    sam = check_first_step(task, batch)
    # Training on after loading compiles two more steps: one model is
    # enough to check that the optimizer state comes back.
    assert_round_trip(sam, batch, tmp_path, train=name == "vit")


@keras.saving.register_keras_serializable(package="keras_sam_tests")
def lora_layers(layer):
    """`perturb=`: the layers KerasHub's `enable_lora` made trainable."""
    return getattr(layer, "lora_enabled", False)


@pytest.mark.slow
def test_lora_backbone_perturbing_lora_layers_only(tmp_path):
    task = bert(lora_rank=2)
    paths = [v.path for v in task.trainable_variables]
    # Trainable: LoRA factors and biases of query/value, and the head.
    assert any("lora_kernel_a" in p for p in paths)
    assert not any(p.endswith("query/kernel") for p in paths)
    # Layer-level selection: a LoRA layer's bias is perturbed with its
    # two factors; the classification head is not.
    perturbed = [("/query/" in p or "/value/" in p) for p in paths]
    assert 0 < sum(perturbed) < len(paths)
    batch = token_batch(seed=3)
    # LoRA's B factor starts at zero, so g has no A component and only
    # a larger rho makes SAM's step differ clearly from the plain one.
    sam = check_first_step(task, batch, perturbed=perturbed, rho=0.5,
                           perturb=lora_layers)
    # A KerasHub backbone's config does not record `enable_lora`: a
    # `.keras` file reloads a backbone without LoRA, which this `perturb`
    # refuses. Weights files restore into the same construction.
    path = str(tmp_path / "sam.keras")
    sam.save(path)
    with pytest.raises(ValueError, match="selects no trainable variable"):
        keras.models.load_model(path)
    weights_path = str(tmp_path / "sam.weights.h5")
    sam.save_weights(weights_path)
    fresh = sam_for(bert(lora_rank=2), rho=0.5, perturb=lora_layers)
    fresh.load_weights(weights_path)
    x = batch[0]
    np.testing.assert_allclose(
        fresh.predict(x, verbose=0), sam.predict(x, verbose=0),
        rtol=1e-6, atol=1e-6,
    )


@pytest.mark.slow
def test_perturbing_normalization_layers_only():
    task = gpt2()
    perturbed = ["norm/" in v.path for v in task.trainable_variables]
    assert 0 < sum(perturbed) < len(perturbed)
    check_first_step(task, token_batch(seed=4, segments=False,
                                       lm_targets=True),
                     perturbed=perturbed,
                     perturb=keras_sam.NORMALIZATION_LAYERS)


@keras.saving.register_keras_serializable(package="keras_sam_tests")
def normalization_layers(layer):
    """`perturb=`: any layer whose class name ends in "Normalization"."""
    return type(layer).__name__.endswith("Normalization")


@pytest.mark.slow
def test_gemma_rms_norm_is_its_own_class_and_survives_saving():
    task = gemma()
    norm_class = next(
        type(layer) for layer in task._flatten_layers()
        if type(layer).__name__ == "RMSNormalization"
    )
    # Gemma normalizes with a class of its own, not Keras's: SAM-ON's
    # tuple finds nothing and says so.
    assert not issubclass(norm_class, keras_sam.NORMALIZATION_LAYERS)
    with pytest.raises(ValueError, match="selects no trainable variable"):
        keras_sam.SAMModel(task, perturb=keras_sam.NORMALIZATION_LAYERS)
    # Named explicitly, the class (unregistered) is saved by its import
    # path, not confused with `keras.layers.RMSNormalization`.
    sam = keras_sam.SAMModel(task, perturb=(norm_class,))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(sam)
    )
    assert restored.perturb == (norm_class,)
    # The guide's recipe, a callable matching by class name.
    task = gemma()
    perturbed = [v.path.endswith(("norm/scale", "normalization/scale"))
                 for v in task.trainable_variables]
    assert sum(perturbed) == 3  # two per decoder block, one final
    check_first_step(
        task, token_batch(seed=5, segments=False, lm_targets=True),
        perturbed=perturbed, perturb=normalization_layers,
    )


def skip_float16_on_jax_cpu():
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() == "cpu":
            pytest.skip("XLA:CPU has no float16 dot_general with float32 "
                        "accumulation (plain Keras fails the same way)")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_vit_trains_with_float32_weights(policy):
    if policy == "mixed_float16":
        skip_float16_on_jax_cpu()
    keras.config.set_dtype_policy(policy)
    task = vit()
    sam = sam_for(task)
    before = [ops.convert_to_numpy(v) for v in task.trainable_variables]
    x, y, _ = image_batch(seed=6, n=8)
    # float16: the first steps overflow at the initial loss scale (2^15)
    # and are skipped, as in plain Keras, until the scale has come down.
    history = sam.fit(x, y, batch_size=2, epochs=1, shuffle=False,
                      verbose=0).history
    assert np.isfinite(history["loss"]).all()
    for variable in task.trainable_variables:
        assert variable.dtype == "float32"
        assert np.isfinite(ops.convert_to_numpy(variable)).all()
    assert any(
        not np.array_equal(ops.convert_to_numpy(v), old)
        for v, old in zip(task.trainable_variables, before)
    )


def test_mixed_float16_skipped_steps_keep_grad_norm_log_finite():
    skip_float16_on_jax_cpu()
    keras.config.set_dtype_policy("mixed_float16")
    sam = sam_for(vit())
    x, y, _ = image_batch(seed=6, n=8)
    # The initial loss scale (2^15) overflows the first gradients, so the
    # first steps are skipped, as plain Keras skips them.
    history = sam.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["grad_norm"]).all()


def vit_preprocessor():
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(32, 32), scale=1 / 255.0,
    )
    return keras_hub.models.ViTImageClassifierPreprocessor(
        image_converter=converter,
    )


def test_task_preprocessor_applied_by_the_user_matches_the_task():
    """The supported way today: preprocess the data with the task's own
    `preprocess_samples`, then wrap the task without its preprocessor."""
    task = vit(preprocessor=vit_preprocessor())
    pixels = np.random.default_rng(7).integers(
        0, 256, (4, 32, 32, 3)).astype("float32")
    expected = task.predict(pixels, verbose=0)
    preprocessor = task.preprocessor
    task.preprocessor = None
    sam = sam_for(task)
    np.testing.assert_allclose(
        sam.predict(preprocessor(pixels), verbose=0), expected,
        rtol=1e-5, atol=1e-6,
    )


def test_task_with_a_preprocessor_is_refused():
    with pytest.raises(ValueError, match="preprocessor"):
        keras_sam.SAMModel(vit(preprocessor=vit_preprocessor()))


def test_repeated_tokens_give_the_dense_gradient_norm():
    task = bert()
    x, y, _ = token_batch(seed=8, repeated=True)
    weights = [ops.convert_to_numpy(v) for v in task.trainable_variables]
    _, grads = autodiff_loss_and_gradient(task, weights, x, y, None)
    norm = np.sqrt(sum(np.sum(g**2) for g in grads))
    logs = sam_for(task).train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["grad_norm"], norm, rtol=1e-4)
