"""Pre-activation ResNet-18 for CIFAR (He et al., 2016b)."""

import keras

from keras_sam.models import _common

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def preact_resnet(
    depth=18,
    input_shape=(32, 32, 3),
    num_classes=10,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """Pre-activation ResNet-18 (or -34) for 32x32 images.

    The ImageNet ResNet-18 layout adapted to CIFAR as is usual: a 3x3
    convolution with 64 filters (no pooling), four stages of pre-activation
    basic blocks (BatchNorm, ReLU, 3x3 convolution, BatchNorm, ReLU, 3x3
    convolution) with 64, 128, 256 and 512 filters, the last three
    starting with stride 2, then BatchNorm, ReLU, global average pooling
    and a dense classifier. Where a block changes the shape, its shortcut
    is a 1x1 convolution of the pre-activated input. PreAct ResNet-18 has
    11.2M parameters.

    Args:
        depth: `18` (2 blocks per stage) or `34` (3, 4, 6, 3 blocks).
            Defaults to `18`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        weight_decay: coupled L2 coefficient of every convolution and
            dense kernel (see `keras_sam.models.resnet`). Defaults to
            `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        name: model name. Defaults to `"preact_resnet_<depth>"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.preact_resnet(18, num_classes=100)

    References:
        - [He et al., 2016. Identity Mappings in Deep Residual Networks](
          https://arxiv.org/abs/1603.05027)
    """
    if depth not in _BLOCKS:
        raise ValueError(
            f"`depth` must be one of {sorted(_BLOCKS)}, got {depth!r}."
        )
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )

    inputs, x = _common.stem(input_shape, 64, weight_decay)
    for stage, prefix, strides in _common.residual_blocks(
        _BLOCKS[depth], strides=(1, 2, 2, 2)
    ):
        filters = 64 * 2**stage
        x = _common.preact_block(x, filters, strides, weight_decay, prefix)
    x = _common.bn_relu(x, "final_bn", "final_relu")
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    return keras.Model(inputs, outputs, name=name or f"preact_resnet_{depth}")
