"""Bottleneck PyramidNets for CIFAR (Han et al., 2017), with ShakeDrop."""

import keras

from keras_sam.models import _common
from keras_sam.models.stochastic import ShakeDrop


def pyramidnet(
    depth=272,
    alpha=200,
    input_shape=(32, 32, 3),
    num_classes=10,
    shakedrop=False,
    final_drop_rate=0.5,
    weight_decay=0.0,
    classifier_activation="softmax",
    seed=None,
    name=None,
):
    """PyramidNet-`depth` (bottleneck, widening `alpha`), optionally with
    ShakeDrop: the SAM paper's PyramidNet rows (272, alpha 200).

    A 3x3 convolution with 16 filters and BatchNorm, then `3 n` bottleneck
    blocks in three stages of `n` (the second and third starting with
    stride 2): `depth = 9 n + 2`. The width grows by `alpha / (3 n)` per
    block: block `k` (1-based) has `round(16 + alpha k / (3 n))` bottleneck
    filters and four times as many outputs. Each block is BatchNorm, 1x1
    convolution, BatchNorm, ReLU, 3x3 convolution, BatchNorm, ReLU, 1x1
    convolution, BatchNorm (optionally `ShakeDrop`), added to a shortcut
    that is 2x2 average pooling where the resolution halves and zero
    channels appended where the width grows (no parameters). Then
    BatchNorm, ReLU, global average pooling and a dense classifier.
    PyramidNet-272 (alpha 200) has 26.2M trainable parameters, as Cubuk
    et al. (2019) report for PyramidNet+ShakeDrop; Han et al. (2017)
    report 26.0M, which is what rounding the widths down instead of to
    the nearest integer gives.

    Args:
        depth: `9 n + 2` with `n >= 1` (110, 164, 200, 272, ...).
            Defaults to `272`.
        alpha: total widening over the network. Defaults to `200`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        shakedrop: whether to add ShakeDrop to every block, with drop rate
            `final_drop_rate * k / (3 n)` in block `k`. Defaults to
            `False`.
        final_drop_rate: ShakeDrop's drop rate in the last block.
            Defaults to `0.5`.
        weight_decay: coupled L2 coefficient of every convolution and
            dense kernel (see `keras_sam.models.resnet`). Defaults to
            `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        seed: seed of the `ShakeDrop` layers' draws (layer `k` gets
            `seed + k`), or `None`. Defaults to `None`.
        name: model name. Defaults to `"pyramidnet_<depth>_<alpha>"`, with
            `"_shakedrop"` appended when used.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.pyramidnet(272, 200, shakedrop=True)
    >>> import math
    >>> trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    >>> round(trainable / 1e6, 1)
    26.2

    References:
        - [Han et al., 2017. Deep Pyramidal Residual Networks](
          https://arxiv.org/abs/1610.02915)
        - [Yamada et al., 2018. ShakeDrop Regularization for Deep Residual
          Learning](https://arxiv.org/abs/1802.02375)
        - [Cubuk et al., 2019. AutoAugment: Learning Augmentation
          Strategies from Data](https://arxiv.org/abs/1805.09501)
    """
    blocks_per_stage = _check_depth(depth)
    if not _common.is_number(alpha) or alpha < 0:
        raise ValueError(f"`alpha` must be a number >= 0, got {alpha!r}.")
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    layers = keras.layers
    widths = bottleneck_widths(depth, alpha)

    inputs, x = _common.stem(input_shape, 16, weight_decay)
    x = _common.batch_norm("stem_bn")(x)
    for index, (_, prefix, strides) in enumerate(
        _common.residual_blocks(3 * (blocks_per_stage,))
    ):
        planes = widths[index]
        y = _common.batch_norm(f"{prefix}_bn1")(x)
        y = _common.conv(planes, 1, 1, weight_decay, f"{prefix}_conv1")(y)
        y = _common.bn_relu(y, f"{prefix}_bn2", f"{prefix}_relu1")
        y = _common.conv(planes, 3, strides, weight_decay, f"{prefix}_conv2")(y)
        y = _common.bn_relu(y, f"{prefix}_bn3", f"{prefix}_relu2")
        y = _common.conv(4 * planes, 1, 1, weight_decay, f"{prefix}_conv3")(y)
        y = _common.batch_norm(f"{prefix}_bn4")(y)
        if shakedrop:
            drop_rate = final_drop_rate * (index + 1) / len(widths)
            layer_seed = None if seed is None else seed + index
            y = ShakeDrop(drop_rate, seed=layer_seed, name=f"{prefix}_drop")(y)
        shortcut = x
        if strides != 1:
            shortcut = layers.AveragePooling2D(
                2, strides=2, padding="same", name=f"{prefix}_pool"
            )(shortcut)
        if 4 * planes != x.shape[-1]:
            shortcut = _common.pad_channels(
                shortcut, 0, 4 * planes - x.shape[-1], prefix
            )
        x = layers.Add(name=f"{prefix}_add")([shortcut, y])
    x = _common.bn_relu(x, "final_bn", "final_relu")
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    default_name = f"pyramidnet_{depth}_{alpha:g}"
    if shakedrop:
        default_name += "_shakedrop"
    return keras.Model(inputs, outputs, name=name or default_name)


def _check_depth(depth):
    return _common.check_depth(depth, 9, 2, "11, 110, 164, 272")


def bottleneck_widths(depth, alpha):
    """Bottleneck filters of every block of a PyramidNet, in order.

    Args:
        depth: `9 n + 2`.
        alpha: total widening.

    Returns:
        A list of `3 n` integers; block outputs are four times these.
    """
    total = 3 * _check_depth(depth)
    return [int(round(16 + alpha * k / total)) for k in range(1, total + 1)]
