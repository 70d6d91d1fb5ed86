"""ImageNet bottleneck ResNets (He et al., 2016): ResNet-50, -101, -152."""

import keras

from keras_sam.models import _common

# Bottleneck blocks per stage, He et al. (2016), Table 1.
_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def imagenet_resnet(
    depth=50,
    input_shape=(224, 224, 3),
    num_classes=1000,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """The ImageNet ResNet-50, -101 or -152 of He et al. (2016), Table 1.

    A 7x7 convolution with 64 filters and stride 2, BatchNorm, ReLU and a
    3x3 max pooling with stride 2, then four stages of bottleneck blocks
    (1x1 convolution, BatchNorm, ReLU, 3x3 convolution, BatchNorm, ReLU,
    1x1 convolution to four times the filters, BatchNorm, added to the
    shortcut, then ReLU) with 64, 128, 256 and 512 filters (256, 512,
    1024 and 2048 outputs), then global average pooling and a dense
    classifier. The stages have 3, 4, 6, 3 blocks (ResNet-50), 3, 4, 23, 3
    (ResNet-101) or 3, 8, 36, 3 (ResNet-152). The first block of each
    stage has a projection shortcut (1x1 convolution and BatchNorm), the
    others identities. The first block of stages 2 to 4 has stride 2 on
    its 3x3 convolution ("ResNet v1.5", as in the TPU and Flax reference
    implementations) rather than on its first 1x1 convolution as in the
    paper; both have the same parameters. The convolutions have no biases
    (BatchNorm follows each): ResNet-50 has 25.6M trainable parameters,
    ResNet-101 44.5M and ResNet-152 60.2M, the numbers usually quoted.

    All layers are fully convolutional up to the global pooling, so
    inputs smaller than 224x224 (e.g. 32x32 or 64x64) work too.

    Args:
        depth: `50`, `101` or `152`. Defaults to `50`.
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(224, 224, 3)`.
        num_classes: number of classes. Defaults to `1000`.
        weight_decay: coupled L2 coefficient: adds `weight_decay * kernel`
            to the gradient of every convolution and dense kernel (a Keras
            `L2(weight_decay / 2)` regularizer), as in the SAM paper.
            BatchNorm parameters and biases are not decayed. `0` adds no
            regularizer. Defaults to `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        name: model name. Defaults to `"imagenet_resnet_<depth>"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.imagenet_resnet(50, weight_decay=1e-4)
    >>> import math
    >>> trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    >>> trainable
    25557032

    References:
        - [He et al., 2016. Deep Residual Learning for Image Recognition](
          https://arxiv.org/abs/1512.03385)
        - [Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
          Improving Generalization](https://arxiv.org/abs/2010.01412)
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth not in _BLOCKS
    ):
        raise ValueError(
            f"`depth` must be one of {sorted(_BLOCKS)}, got {depth!r}."
        )
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    layers = keras.layers

    inputs = keras.Input(shape=input_shape, name="images")
    x = _common.conv(64, 7, 2, weight_decay, "stem_conv")(inputs)
    x = _common.bn_relu(x, "stem_bn", "stem_relu")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, prefix, strides in _common.residual_blocks(
        _BLOCKS[depth], strides=(1, 2, 2, 2)
    ):
        filters = 64 * 2**stage
        shortcut = x
        if _common.changes_shape(x, 4 * filters, strides):
            # The first block of each stage: projection shortcut.
            shortcut = _common.conv(
                4 * filters, 1, strides, weight_decay, f"{prefix}_shortcut"
            )(x)
            shortcut = _common.batch_norm(f"{prefix}_shortcut_bn")(shortcut)
        y = _common.conv(filters, 1, 1, weight_decay, f"{prefix}_conv1")(x)
        y = _common.bn_relu(y, f"{prefix}_bn1", f"{prefix}_relu1")
        y = _common.conv(filters, 3, strides, weight_decay, f"{prefix}_conv2")(
            y
        )
        y = _common.bn_relu(y, f"{prefix}_bn2", f"{prefix}_relu2")
        y = _common.conv(4 * filters, 1, 1, weight_decay, f"{prefix}_conv3")(y)
        y = _common.batch_norm(f"{prefix}_bn3")(y)
        x = layers.Add(name=f"{prefix}_add")([shortcut, y])
        x = layers.Activation("relu", name=f"{prefix}_out")(x)
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    return keras.Model(inputs, outputs, name=name or f"imagenet_resnet_{depth}")
