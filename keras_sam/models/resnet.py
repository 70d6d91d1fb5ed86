"""CIFAR ResNets (He et al., 2016): ResNet-20, -32, -44, -56, -110."""

import keras

from keras_sam.models import _common


def resnet(
    depth=20,
    input_shape=(32, 32, 3),
    num_classes=10,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """The CIFAR ResNet of He et al. (2016), section 4.2.

    A 3x3 convolution with 16 filters, then three stages of `n` basic
    blocks (two 3x3 convolutions, each followed by BatchNorm, ReLU after
    the addition) with 16, 32 and 64 filters, the second and third stage
    starting with stride 2, then global average pooling and a dense
    classifier: `depth = 6 n + 2` weighted layers. Shortcuts are identities;
    where the shape changes, the shortcut subsamples with stride 2 and pads
    the new channels with zeros (the paper's option A, no parameters).
    ResNet-20 has 0.27M parameters and ResNet-56 0.85M, as published.

    Args:
        depth: number of weighted layers, `6 n + 2` with `n >= 1` (20, 32,
            44, 56, 110, ...). Defaults to `20`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        weight_decay: coupled L2 coefficient: adds `weight_decay * kernel`
            to the gradient of every convolution and dense kernel (a Keras
            `L2(weight_decay / 2)` regularizer), as in the SAM paper.
            BatchNorm parameters and biases are not decayed. `0` adds no
            regularizer. Defaults to `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        name: model name. Defaults to `"resnet_<depth>"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.resnet(20, weight_decay=5e-4)
    >>> model.count_params()
    271098

    References:
        - [He et al., 2016. Deep Residual Learning for Image Recognition](
          https://arxiv.org/abs/1512.03385)
    """
    blocks_per_stage = _common.check_depth(depth, 6, 2, "20, 32, 44, 56, 110")
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    layers = keras.layers

    inputs, x = _common.stem(input_shape, 16, weight_decay)
    x = _common.bn_relu(x, "stem_bn", "stem_relu")
    for stage, prefix, strides in _common.residual_blocks(
        3 * (blocks_per_stage,)
    ):
        filters = 16 * 2**stage
        shortcut = x
        if _common.changes_shape(x, filters, strides):
            shortcut = _zero_pad_shortcut(
                x, strides, filters - x.shape[-1], prefix
            )
        y = _common.conv(filters, 3, strides, weight_decay, f"{prefix}_conv1")(
            x
        )
        y = _common.bn_relu(y, f"{prefix}_bn1", f"{prefix}_relu1")
        y = _common.conv(filters, 3, 1, weight_decay, f"{prefix}_conv2")(y)
        y = _common.batch_norm(f"{prefix}_bn2")(y)
        x = layers.Add(name=f"{prefix}_add")([shortcut, y])
        x = layers.Activation("relu", name=f"{prefix}_out")(x)
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    return keras.Model(inputs, outputs, name=name or f"resnet_{depth}")


def _zero_pad_shortcut(x, strides, extra_channels, prefix):
    """Option A shortcut: `x[:, ::s, ::s, :]` with zero channels on both
    sides, built from standard layers only (no Lambda, no custom layer) so
    that the network serializes by its config alone."""
    if strides != 1:
        # A 1x1 pooling window with stride s keeps x[:, ::s, ::s, :].
        x = keras.layers.MaxPooling2D(
            pool_size=1, strides=strides, name=f"{prefix}_subsample"
        )(x)
    if extra_channels:
        before = extra_channels // 2
        x = _common.pad_channels(x, before, extra_channels - before, prefix)
    return x
