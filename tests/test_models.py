"""Tests for `keras_sam.models`: parameter counts against the published
numbers, hand formulas and `keras.applications`, the option A shortcut,
coupled L2, the registry and argument errors."""

import math

import keras
import numpy as np
import pytest

from keras_sam import models


def _trainable_count(model):
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def _resnet_formula(depth, classes=10):
    """Trainable parameters of He et al.'s CIFAR ResNet, option A."""
    n = (depth - 2) // 6
    convs = 3 * 16 * 9
    convs += 2 * n * 16 * 16 * 9
    convs += 16 * 32 * 9 + (2 * n - 1) * 32 * 32 * 9
    convs += 32 * 64 * 9 + (2 * n - 1) * 64 * 64 * 9
    batch_norm = 2 * (16 + 2 * n * (16 + 32 + 64))
    return convs + batch_norm + 64 * classes + classes


def _wrn_formula(depth, width, classes=10):
    """Trainable parameters of WRN-depth-width (pre-activation blocks,
    1x1 convolution shortcuts where the shape changes)."""
    n = (depth - 4) // 6
    total = 3 * 16 * 9
    in_channels = 16
    for base in (16, 32, 64):
        out = base * width
        for block in range(n):
            changes = block == 0 and (base != 16 or in_channels != out)
            total += 2 * in_channels  # BatchNorm before conv1
            total += in_channels * out * 9 + 2 * out + out * out * 9
            if changes:
                total += in_channels * out
            in_channels = out
    total += 2 * in_channels  # final BatchNorm
    return total + in_channels * classes + classes


def _small_cnn_formula(width, classes=10):
    w = width
    convs = 9 * (3 * w + w * w + w * 2 * w + 4 * w * w + 2 * w * 4 * w)
    convs += 9 * 16 * w * w
    batch_norm = 2 * (2 * w + 2 * 2 * w + 2 * 4 * w)
    return convs + batch_norm + 4 * w * classes + classes


_built = {}


def _get(name, **kwargs):
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _built:
        _built[key] = models.get_model(name, **kwargs)
    return _built[key]


@pytest.mark.parametrize(
    "name, depth, published_millions",
    [("resnet-20", 20, 0.27), ("resnet-56", 56, 0.85)],
)
def test_resnet_parameter_counts(name, depth, published_millions):
    model = _get(name)
    assert _trainable_count(model) == _resnet_formula(depth)
    # He et al. (2016), Table 6: 0.27M and 0.85M.
    assert round(_trainable_count(model) / 1e6, 2) == published_millions


@pytest.mark.parametrize(
    "name, depth, width, published_millions",
    [
        ("wrn-16-4", 16, 4, 2.7),
        ("wrn-16-8", 16, 8, 11.0),
        ("wrn-28-10", 28, 10, 36.5),
    ],
)
def test_wide_resnet_parameter_counts(name, depth, width, published_millions):
    model = _get(name)
    assert _trainable_count(model) == _wrn_formula(depth, width)
    # Zagoruyko & Komodakis (2016), Tables 1-4: 2.7M, 11.0M, 36.5M.
    assert round(_trainable_count(model) / 1e6, 1) == published_millions


def test_small_cnn_parameter_count_and_outputs():
    model = models.small_cnn()
    assert _trainable_count(model) == _small_cnn_formula(16)
    assert _trainable_count(models.small_cnn(width=8)) == _small_cnn_formula(8)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3))
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_registry_names_and_overrides():
    assert models.MODEL_NAMES == (
        "small-cnn",
        "resnet-20",
        "resnet-56",
        "wrn-16-4",
        "wrn-16-8",
        "wrn-28-10",
        "preact-resnet-18",
        "shake-shake-26-2x96d",
        "pyramidnet-272-200",
        "pyramidnet-272-200-shakedrop",
        "resnet-50",
        "resnet-101",
        "resnet-152",
    )
    model = models.get_model(
        "resnet-32", num_classes=100, input_shape=(16, 16, 3)
    )
    assert model.name == "resnet_32"
    assert model.output_shape == (None, 100)
    assert _trainable_count(model) == _resnet_formula(32, classes=100)
    wrn = models.get_model("WRN-10-1", classifier_activation=None)
    assert _trainable_count(wrn) == _wrn_formula(10, 1)
    assert wrn.get_layer("predictions").get_config()["activation"] == "linear"
    # The architecture's name is positional, so the model's can be given.
    assert models.get_model("resnet-8", name="mine").name == "mine"


def _layer_outputs(model, *layer_names, seed):
    """The named layers' outputs (inference mode) on two N(0, 1) 32x32x3
    images drawn with `seed`, as NumPy arrays."""
    probe = keras.Model(
        model.input, [model.get_layer(name).output for name in layer_names]
    )
    x = np.random.default_rng(seed).normal(size=(2, 32, 32, 3))
    return [keras.ops.convert_to_numpy(t) for t in probe(x, training=False)]


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    before, shortcut = _layer_outputs(
        _get("resnet-20"), "stage1_block3_out", "stage2_block1_to_hwc", seed=1
    )
    expected = np.pad(before[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (8, 8)))
    np.testing.assert_allclose(shortcut, expected, rtol=1e-6, atol=1e-6)


def _check_coupled_l2(model, weight_decay, kernel_count):
    """Checks that `model.losses` sum to `weight_decay / 2` times the
    squared convolution and dense kernels, and nothing else."""
    # Large BatchNorm gammas: they must not be decayed.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(np.full(layer.gamma.shape, 3.0, "float32"))
    penalty = float(sum(keras.ops.convert_to_numpy(v) for v in model.losses))
    kernels = [
        layer.kernel
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(kernels) == kernel_count
    squares = sum(
        float(np.sum(keras.ops.convert_to_numpy(k).astype("float64") ** 2))
        for k in kernels
    )
    # Gradient of (wd / 2) ||w||^2 is wd * w, as in the SAM paper's code.
    np.testing.assert_allclose(penalty, weight_decay / 2 * squares, rtol=1e-5)


def test_weight_decay_is_coupled_l2_on_kernels_only():
    weight_decay = 5e-4
    model = models.get_model("resnet-20", weight_decay=weight_decay)
    # 19 convolutions and the classifier.
    _check_coupled_l2(model, weight_decay, kernel_count=20)
    assert models.get_model("resnet-20").losses == []


def test_models_save_and_load(tmp_path):
    model = models.get_model("resnet-20", weight_decay=1e-4)
    _check_reloads(model, tmp_path / "resnet.keras", atol=1e-6)


def _check_reloads(model, path, atol):
    """Saves `model` to `path` and checks that the loaded model gives the
    same inference outputs on two N(0, 1) 32x32x3 images."""
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=atol,
    )


def test_wide_resnet_dropout_layers():
    model = models.wide_resnet(10, 2, dropout_rate=0.3)
    dropouts = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dropout)
    ]
    assert len(dropouts) == 3
    assert all(layer.rate == 0.3 for layer in dropouts)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: models.resnet(21), "depth"),
        (lambda: models.resnet(2), "depth"),
        (lambda: models.wide_resnet(27, 10), "depth"),
        (lambda: models.wide_resnet(28, 0), "width"),
        (lambda: models.small_cnn(num_classes=0), "num_classes"),
        (lambda: models.small_cnn(input_shape=(32, 32)), "input_shape"),
        (lambda: models.small_cnn(weight_decay=-1e-4), "weight_decay"),
        (lambda: models.small_cnn(weight_decay=float("nan")), "weight_decay"),
        (lambda: models.wide_resnet(16, 4, dropout_rate=1.0), "dropout_rate"),
        (lambda: models.get_model("resnet-50x"), "resnet-50x"),
        (lambda: models.get_model("resnet-20", depth=32), "depth"),
        (lambda: models.get_model("small-cnn", dropout_rate=0.1), "dropout"),
        (lambda: models.preact_resnet(20), "depth"),
        (lambda: models.shake_shake(27), "depth"),
        (lambda: models.pyramidnet(111), "depth"),
        (lambda: models.pyramidnet(11, alpha=-1), "alpha"),
        (lambda: models.ShakeDrop(1.5), "drop_rate"),
        (lambda: models.get_model("pyramidnet", final_drop_rate=0.1), "drop"),
        (lambda: models.imagenet_resnet(34), "depth"),
        (lambda: models.get_model("resnet-50", depth=101), "depth"),
        (lambda: models.imagenet_resnet(50, num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# PreAct ResNet-18, Shake-Shake 26 2x96d, PyramidNet-272 (+ShakeDrop) -------


def _preact_formula(classes=10):
    """Trainable parameters of PreAct ResNet-18 (1x1 projection
    shortcuts, final BatchNorm)."""
    total = 3 * 64 * 9
    in_channels = 64
    for filters in (64, 128, 256, 512):
        for _ in range(2):
            total += 2 * in_channels  # BatchNorm before conv1
            total += in_channels * filters * 9 + 2 * filters
            total += filters * filters * 9
            if in_channels != filters:
                total += in_channels * filters  # 1x1 shortcut
            in_channels = filters
    return total + 2 * 512 + 512 * classes + classes


def _shake_shake_formula(depth, width, classes=10):
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    in_channels = 16
    for stage in range(3):
        filters = width * 2**stage
        for _ in range(n):
            branch = in_channels * filters * 9 + filters * filters * 9
            total += 2 * (branch + 2 * 2 * filters)
            if in_channels != filters:
                # Two 1x1 convolutions to half the filters, then BatchNorm.
                total += in_channels * filters + 2 * filters
            in_channels = filters
    return total + in_channels * classes + classes


def _pyramidnet_formula(depth, alpha, round_width, classes=10):
    blocks = 3 * ((depth - 2) // 9)
    total = 3 * 16 * 9 + 2 * 16
    in_channels = 16
    for k in range(1, blocks + 1):
        p = round_width(16 + alpha * k / blocks)
        total += 2 * in_channels + in_channels * p + 2 * p  # BN, 1x1, BN
        total += 9 * p * p + 2 * p  # 3x3, BN
        total += p * 4 * p + 2 * 4 * p  # 1x1, BN
        in_channels = 4 * p
    return total + 2 * in_channels + in_channels * classes + classes


def test_preact_resnet_18_parameter_count():
    model = _get("preact-resnet-18")
    assert _trainable_count(model) == _preact_formula()
    # Usually quoted as 11.2M (e.g. Zhang et al., 2018, mixup).
    assert round(_trainable_count(model) / 1e6, 1) == 11.2
    assert model.name == "preact_resnet_18"


def test_shake_shake_26_2x96d_parameter_count():
    model = _get("shake-shake-26-2x96d")
    assert _trainable_count(model) == _shake_shake_formula(26, 96)
    # Gastaldi (2017), Table 1 and Cubuk et al. (2019), Table 2: 26.2M.
    assert round(_trainable_count(model) / 1e6, 1) == 26.2
    small = models.get_model("shake-shake-8-2x4d", num_classes=7)
    assert _trainable_count(small) == _shake_shake_formula(8, 4, classes=7)


def test_pyramidnet_272_parameter_count():
    model = _get("pyramidnet-272-200-shakedrop")
    assert _trainable_count(model) == _pyramidnet_formula(272, 200, round)
    # Cubuk et al. (2019), Table 2, PyramidNet+ShakeDrop: 26.2M.
    assert round(_trainable_count(model) / 1e6, 1) == 26.2
    # Han et al. (2017), Table 4, report 26.0M: widths rounded down.
    assert round(_pyramidnet_formula(272, 200, math.floor) / 1e6, 1) == 26.0
    shake_drops = [
        layer for layer in model.layers if isinstance(layer, models.ShakeDrop)
    ]
    assert len(shake_drops) == 90
    np.testing.assert_allclose(
        [layer.drop_rate for layer in shake_drops],
        0.5 * np.arange(1, 91) / 90,
    )
    plain = models.get_model("pyramidnet", classifier_activation=None)
    assert plain.name == "pyramidnet_272_200"
    assert _trainable_count(plain) == _trainable_count(model)
    assert not any(
        isinstance(layer, models.ShakeDrop) for layer in plain.layers
    )


def test_pyramidnet_widths_grow_linearly_and_shortcut_pads_zeros():
    from keras_sam.models.pyramidnet import bottleneck_widths

    assert bottleneck_widths(272, 200)[:3] == [18, 20, 23]
    assert bottleneck_widths(272, 200)[-1] == 216
    model = models.get_model("pyramidnet-11-6", classifier_activation=None)
    before, shortcut = _layer_outputs(
        model, "stem_bn", "stage1_block1_to_hwc", seed=3
    )
    # Block 1 has round(16 + 6 / 3) = 18 filters, 72 outputs.
    expected = np.pad(before, ((0, 0), (0, 0), (0, 0), (0, 72 - 16)))
    np.testing.assert_allclose(shortcut, expected, rtol=1e-6, atol=1e-6)


def _shake_shake_layer_outputs(seed=5):
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient check written with tf.GradientTape")
    rng = np.random.default_rng(seed)
    first = tf.constant(rng.normal(size=(64, 3, 3, 2)), tf.float32)
    second = tf.constant(rng.normal(size=(64, 3, 3, 2)), tf.float32)
    layer = models.ShakeShake(seed=seed)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([first, second])
        output = layer([first, second], training=True)
        total = tf.reduce_sum(output)
    gradients = [g.numpy() for g in tape.gradient(total, [first, second])]
    inference = layer([first, second], training=False).numpy()
    return first.numpy(), second.numpy(), output.numpy(), gradients, inference


def test_shake_shake_forward_alpha_backward_beta_per_example():
    first, second, output, (g1, g2), inference = _shake_shake_layer_outputs()
    np.testing.assert_allclose(inference, 0.5 * (first + second), atol=1e-6)
    # Forward: output = alpha x1 + (1 - alpha) x2, one alpha per example.
    difference = (first - second).reshape(64, -1)
    alpha = np.sum(
        (output.reshape(64, -1) - second.reshape(64, -1)) * difference, axis=1
    ) / np.sum(difference**2, axis=1)
    expected = (
        alpha[:, None, None, None] * first
        + (1 - alpha[:, None, None, None]) * second
    )
    np.testing.assert_allclose(output, expected, atol=1e-5)
    assert np.all((alpha >= 0) & (alpha <= 1)) and alpha.std() > 0.1
    # Backward: d/dx1 = beta, d/dx2 = 1 - beta, constant per example, and
    # beta is drawn independently of alpha.
    beta = g1.reshape(64, -1)
    np.testing.assert_allclose(beta, beta[:, :1] * np.ones_like(beta))
    np.testing.assert_allclose(g1 + g2, 1.0, atol=1e-6)
    assert np.all((beta >= 0) & (beta <= 1))
    assert np.abs(beta[:, 0] - alpha).max() > 0.1


def test_shake_drop_coefficients():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient check written with tf.GradientTape")
    x = tf.constant(
        np.random.default_rng(1).normal(size=(4000, 2, 2, 3)), tf.float32
    )
    layer = models.ShakeDrop(0.3, seed=11)
    np.testing.assert_allclose(
        layer(x, training=False).numpy(), 0.7 * x.numpy(), rtol=1e-6
    )
    with tf.GradientTape() as tape:
        tape.watch(x)
        output = layer(x, training=True)
    gradient = tape.gradient(output, x).numpy().reshape(4000, -1)
    forward = (output.numpy() / x.numpy()).reshape(4000, -1)
    # One coefficient per example, forward in [-1, 1], backward in [0, 1].
    np.testing.assert_allclose(
        forward, forward[:, :1] * np.ones((1, 12)), rtol=1e-4, atol=1e-5
    )
    forward, backward = forward[:, 0], gradient[:, 0]
    kept = np.isclose(forward, 1.0) & np.isclose(backward, 1.0)
    # Kept with probability 0.7: 2800 of 4000, binomial sd about 29.
    assert abs(kept.sum() - 2800) < 150
    assert np.all(np.abs(forward[~kept]) <= 1) and forward[~kept].min() < -0.5
    assert np.all((backward[~kept] >= 0) & (backward[~kept] <= 1))


def test_stochastic_models_save_and_load(tmp_path):
    for name in ("shake-shake-8-2x4d", "pyramidnet-11-6-shakedrop"):
        model = models.get_model(name, seed=3, classifier_activation=None)
        _check_reloads(model, tmp_path / f"{name}.keras", atol=1e-5)


# ImageNet ResNet-50, -101, -152 --------------------------------------------


def _applications_count_without_conv_biases(application):
    """`count_params()` of a `keras.applications` ResNet (an independent
    implementation, v1: stride on the first 1x1 convolution, same
    parameters) less its convolution biases, which ours do not have
    since BatchNorm follows every convolution."""
    reference = application(weights=None, input_shape=(32, 32, 3))
    biases = sum(
        math.prod(layer.bias.shape)
        for layer in reference.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias
    )
    return reference.count_params() - biases


def _check_imagenet_resnet_count(depth, application, trainable):
    # The body is fully convolutional, so the count does not depend on
    # the input size: build at get_model's default 32x32.
    model = _get(f"resnet-{depth}", num_classes=1000)
    assert model.name == f"imagenet_resnet_{depth}"
    assert model.count_params() == _applications_count_without_conv_biases(
        application
    )
    assert _trainable_count(model) == trainable


def test_imagenet_resnet_50_parameter_count():
    # 25.6M trainable parameters, as usually quoted for ResNet-50.
    _check_imagenet_resnet_count(50, keras.applications.ResNet50, 25_557_032)


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth, application_name, trainable",
    [(101, "ResNet101", 44_549_160), (152, "ResNet152", 60_192_808)],
)
def test_imagenet_resnet_101_152_parameter_counts(
    depth, application_name, trainable
):
    # 44.5M and 60.2M trainable parameters, as usually quoted.
    application = getattr(keras.applications, application_name)
    _check_imagenet_resnet_count(depth, application, trainable)


def test_imagenet_resnet_forward_strides_and_weight_decay():
    weight_decay = 1e-4
    model = models.get_model(
        "resnet-50", num_classes=7, weight_decay=weight_decay
    )
    x = np.random.default_rng(4).normal(size=(2, 32, 32, 3))
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    assert probabilities.shape == (2, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # 32x32 -> 16 (stem) -> 8 (pool) -> 8, 4, 2, 1 (stages).
    for stage, (blocks, size) in enumerate(zip((3, 4, 6, 3), (8, 4, 2, 1))):
        layer = model.get_layer(f"stage{stage + 1}_block{blocks}_out")
        assert layer.output.shape == (None, size, size, 256 * 2**stage)
    # v1.5: the stride is on the 3x3 convolution (and the projection).
    assert model.get_layer("stage2_block1_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)
    assert model.get_layer("stage2_block1_shortcut").strides == (2, 2)
    shortcuts = [
        layer.name for layer in model.layers if "shortcut" in layer.name
    ]
    assert shortcuts == [
        f"stage{s}_block1_shortcut{bn}"
        for s in range(1, 5)
        for bn in ("", "_bn")
    ]
    # 1 + 16 * 3 + 4 convolutions and the classifier.
    _check_coupled_l2(model, weight_decay, kernel_count=54)
    assert _get("resnet-50", num_classes=1000).losses == []


def test_resnet_names_imagenet_depths_take_precedence():
    # 56 = 6 * 9 + 2 stays the CIFAR ResNet; 50, 101 and 152 do not.
    cifar = _get("resnet-56")
    assert cifar.name == "resnet_56"
    assert round(_trainable_count(cifar) / 1e6, 2) == 0.85
    imagenet = _get("resnet-50", num_classes=1000)
    assert imagenet.name == "imagenet_resnet_50"
    bottleneck = imagenet.get_layer("stage1_block1_conv3")
    assert tuple(bottleneck.kernel.shape) == (1, 1, 64, 256)
    assert models.check_model_name("ResNet_152") == "imagenet_resnet_152"
    assert models.check_model_name("resnet101") == "imagenet_resnet_101"
    assert models.check_model_name("resnet-98") == "resnet_98"
    with pytest.raises(ValueError, match=r"resnet-<50\|101\|152>"):
        models.get_model("resnet-50x")


def test_imagenet_resnet_bad_depth_message_names_the_allowed_depths():
    for depth in (34, 50.0, True):
        with pytest.raises(ValueError) as info:
            models.imagenet_resnet(depth)
        message = str(info.value)
        assert "`depth`" in message and repr(depth) in message
        assert "[50, 101, 152]" in message
