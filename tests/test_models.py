"""Tests for `keras_sam.models`: parameter counts against the published
numbers and hand formulas, the option A shortcut, coupled L2, the registry
and argument errors."""

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


def _get(name):
    if name not in _built:
        _built[name] = models.get_model(name)
    return _built[name]


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


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    model = _get("resnet-20")
    probe = keras.Model(
        model.input,
        [
            model.get_layer("stage1_block3_out").output,
            model.get_layer("stage2_block1_to_hwc").output,
        ],
    )
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3))
    before, shortcut = (
        keras.ops.convert_to_numpy(t) for t in probe(x, training=False)
    )
    expected = np.pad(before[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (8, 8)))
    np.testing.assert_allclose(shortcut, expected, rtol=1e-6, atol=1e-6)


def test_weight_decay_is_coupled_l2_on_kernels_only():
    weight_decay = 5e-4
    model = models.get_model("resnet-20", weight_decay=weight_decay)
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
    assert len(kernels) == 20  # 19 convolutions and the classifier
    squares = sum(
        float(np.sum(k.numpy().astype("float64") ** 2))
        for k in kernels
    )
    # Gradient of (wd / 2) ||w||^2 is wd * w, as in the SAM paper's code.
    np.testing.assert_allclose(penalty, weight_decay / 2 * squares, rtol=1e-5)
    assert models.get_model("resnet-20").losses == []


def test_models_save_and_load(tmp_path):
    model = models.get_model("resnet-20", weight_decay=1e-4)
    path = tmp_path / "resnet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
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


def test_same_architecture_in_tf_keras():
    tf_keras = pytest.importorskip("tf_keras")
    model = models._build(tf_keras, "resnet-20")
    assert model.count_params() == _get("resnet-20").count_params()


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
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
