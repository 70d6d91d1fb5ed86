"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016)."""

import keras

from keras_sam.models import _common


def wide_resnet(
    depth=28,
    width=10,
    input_shape=(32, 32, 3),
    num_classes=10,
    dropout_rate=0.0,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """Wide ResNet WRN-`depth`-`width`, as used in the SAM paper's tables.

    A 3x3 convolution with 16 filters, then three groups of `n` pre-
    activation blocks (BatchNorm, ReLU, 3x3 convolution, BatchNorm, ReLU,
    optional dropout, 3x3 convolution) with `16 k`, `32 k` and `64 k`
    filters, the second and third group starting with stride 2, then
    BatchNorm, ReLU, global average pooling and a dense classifier:
    `depth = 6 n + 4`. Where a block changes the number of filters or the
    resolution, its shortcut is a 1x1 convolution of the pre-activated
    input, as in the authors' code. WRN-28-10 has 36.5M parameters,
    WRN-16-8 11.0M and WRN-16-4 2.7M, as published.

    Args:
        depth: number of convolution layers, `6 n + 4` with `n >= 1` (16,
            22, 28, 40, ...). Defaults to `28`.
        width: widening factor `k`. Defaults to `10`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        dropout_rate: dropout between the two convolutions of each block
            (0.3 in some of the WRN paper's runs; the SAM paper uses none).
            Defaults to `0.0` (no dropout layer).
        weight_decay: coupled L2 coefficient: adds `weight_decay * kernel`
            to the gradient of every convolution and dense kernel (a Keras
            `L2(weight_decay / 2)` regularizer), as in the SAM paper, whose
            WRN runs use 5e-4. BatchNorm parameters and biases are not
            decayed. `0` adds no regularizer. Defaults to `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        name: model name. Defaults to `"wrn_<depth>_<width>"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.wide_resnet(16, 8, weight_decay=5e-4)
    >>> round(model.count_params() / 1e6, 1)
    11.0

    References:
        - [Zagoruyko & Komodakis, 2016. Wide Residual Networks](
          https://arxiv.org/abs/1605.07146)
        - [Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
          Improving Generalization](https://arxiv.org/abs/2010.01412)
    """
    blocks_per_group = _common.check_depth(depth, 6, 4, "10, 16, 22, 28, 40")
    _common.check_positive_int("width", width)
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    if not _common.is_number(dropout_rate) or not 0 <= dropout_rate < 1:
        raise ValueError(
            f"`dropout_rate` must be in [0, 1), got {dropout_rate!r}."
        )

    inputs, x = _common.stem(input_shape, 16, weight_decay)
    for group, prefix, strides in _common.residual_blocks(
        3 * (blocks_per_group,), group="group"
    ):
        filters = 16 * 2**group * width
        x = _common.preact_block(
            x, filters, strides, weight_decay, prefix, dropout_rate
        )
    x = _common.bn_relu(x, "final_bn", "final_relu")
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{width}")
