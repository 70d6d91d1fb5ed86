"""Shake-Shake ResNets for CIFAR (Gastaldi, 2017), e.g. 26 2x96d."""

import keras

from keras_sam.models import _common
from keras_sam.models.stochastic import ShakeShake


def shake_shake(
    depth=26,
    width=96,
    input_shape=(32, 32, 3),
    num_classes=10,
    weight_decay=0.0,
    classifier_activation="softmax",
    seed=None,
    name=None,
):
    """Shake-Shake `depth` 2x`width`d, as in the SAM paper's table.

    A 3x3 convolution with 16 filters and BatchNorm, then three stages of
    `n` residual blocks with `width`, `2 width` and `4 width` filters (the
    second and third starting with stride 2), then ReLU, global average
    pooling and a dense classifier: `depth = 6 n + 2`. Each block has two
    branches (ReLU, 3x3 convolution, BatchNorm, ReLU, 3x3 convolution,
    BatchNorm) combined by a `ShakeShake` layer and added to the shortcut.
    Where a block changes the shape, the shortcut is the paper's: ReLU,
    then two strided 1x1-average-pooled paths (the second shifted by one
    pixel), each a 1x1 convolution to half the filters, concatenated and
    batch-normalized. Shake-Shake 26 2x96d has 26.2M parameters.

    Args:
        depth: `6 n + 2` with `n >= 1`. Defaults to `26`.
        width: filters of the first stage. Defaults to `96`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        weight_decay: coupled L2 coefficient of every convolution and
            dense kernel (see `keras_sam.models.resnet`). Defaults to
            `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        seed: seed of the `ShakeShake` layers' draws (layer `i` gets
            `seed + i`), or `None`. Defaults to `None`.
        name: model name. Defaults to `"shake_shake_<depth>_2x<width>d"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.shake_shake(26, 96, weight_decay=5e-4)
    >>> import math
    >>> trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    >>> round(trainable / 1e6, 1)
    26.2

    References:
        - [Gastaldi, 2017. Shake-Shake regularization](
          https://arxiv.org/abs/1705.07485)
    """
    blocks_per_stage = _common.check_depth(depth, 6, 2, "8, 14, 20, 26")
    _common.check_positive_int("width", width)
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    layers = keras.layers

    inputs, x = _common.stem(input_shape, 16, weight_decay)
    x = _common.batch_norm("stem_bn")(x)
    for index, (stage, prefix, strides) in enumerate(
        _common.residual_blocks(3 * (blocks_per_stage,))
    ):
        filters = width * 2**stage
        relu = layers.Activation("relu", name=f"{prefix}_relu")(x)
        branches = [
            _branch(relu, filters, strides, weight_decay, prefix, b)
            for b in (1, 2)
        ]
        layer_seed = None if seed is None else seed + index
        shaken = ShakeShake(seed=layer_seed, name=f"{prefix}_shake")(branches)
        shortcut = x
        if _common.changes_shape(x, filters, strides):
            shortcut = _shortcut(relu, filters, strides, weight_decay, prefix)
        x = layers.Add(name=f"{prefix}_add")([shortcut, shaken])
    x = layers.Activation("relu", name="final_relu")(x)
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    default_name = f"shake_shake_{depth}_2x{width}d"
    return keras.Model(inputs, outputs, name=name or default_name)


def _branch(x, filters, strides, weight_decay, prefix, index):
    prefix = f"{prefix}_branch{index}"
    y = _common.conv(filters, 3, strides, weight_decay, f"{prefix}_conv1")(x)
    y = _common.bn_relu(y, f"{prefix}_bn1", f"{prefix}_relu")
    y = _common.conv(filters, 3, 1, weight_decay, f"{prefix}_conv2")(y)
    return _common.batch_norm(f"{prefix}_bn2")(y)


def _shortcut(x, filters, strides, weight_decay, prefix):
    """Two 1x1-convolved paths, the second shifted by one pixel."""
    layers = keras.layers
    half = filters // 2
    first = layers.AveragePooling2D(
        1, strides=strides, name=f"{prefix}_skip1_pool"
    )(x)
    first = _common.conv(half, 1, 1, weight_decay, f"{prefix}_skip1")(first)
    # x[:, 1:, 1:, :] padded back with zeros at the bottom and right.
    second = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{prefix}_pad")(x)
    second = layers.Cropping2D(((1, 0), (1, 0)), name=f"{prefix}_shift")(second)
    second = layers.AveragePooling2D(
        1, strides=strides, name=f"{prefix}_skip2_pool"
    )(second)
    second = _common.conv(
        filters - half, 1, 1, weight_decay, f"{prefix}_skip2"
    )(second)
    y = layers.Concatenate(name=f"{prefix}_skip_concat")([first, second])
    return _common.batch_norm(f"{prefix}_skip_bn")(y)
