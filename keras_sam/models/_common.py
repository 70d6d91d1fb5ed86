"""Pieces shared by the architectures in `keras_sam.models` (private).

Every piece is made of standard Keras layers (no `Lambda`, no custom
layer), so the networks serialize by their config alone.
"""

import keras

from keras_sam import _validation

# Argument checks.


def is_number(value):
    """Whether `value` is an int or a float (booleans are not)."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_weight_decay(weight_decay):
    return _validation.check_non_negative_float("weight_decay", weight_decay)


def check_input_shape(input_shape):
    shape = tuple(input_shape) if input_shape is not None else None
    if shape is None or len(shape) != 3:
        raise ValueError(
            "Argument `input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}."
        )
    return shape


def check_positive_int(name, value):
    return _validation.check_int(name, value)


def check_model_args(input_shape, num_classes, weight_decay):
    """Checks the arguments that every builder takes.

    Returns:
        `(input_shape, weight_decay)` as a tuple and a float.
    """
    input_shape = check_input_shape(input_shape)
    check_positive_int("num_classes", num_classes)
    return input_shape, check_weight_decay(weight_decay)


def check_depth(depth, multiple, offset, examples):
    """Checks `depth = multiple * n + offset` with `n >= 1`; returns `n`.

    `examples` lists some valid depths for the error message.
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < multiple + offset
        or (depth - offset) % multiple
    ):
        raise ValueError(
            f"`depth` must be {multiple} n + {offset} for an integer n >= 1 "
            f"({examples}, ...), got {depth!r}."
        )
    return (depth - offset) // multiple


# Layers.


def kernel_regularizer(weight_decay):
    """Coupled L2 whose gradient is `weight_decay * kernel`, or None.

    Keras' `L2(l2)` adds `l2 * sum(kernel ** 2)` to the loss, whose gradient
    is `2 * l2 * kernel`; the SAM paper (and PyTorch's SGD `weight_decay`)
    add `weight_decay * kernel` to the gradient, hence `l2 = wd / 2`.
    """
    if not weight_decay:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


def conv(filters, kernel_size, strides, weight_decay, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=kernel_regularizer(weight_decay),
        name=name,
    )


def batch_norm(name):
    # Momentum 0.9 and epsilon 1e-5 as in the PyTorch and JAX references.
    return keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, name=name
    )


def bn_relu(x, bn_name, relu_name):
    """BatchNorm, then ReLU."""
    x = batch_norm(bn_name)(x)
    return keras.layers.Activation("relu", name=relu_name)(x)


def pad_channels(x, before, after, prefix):
    """Adds `before` and `after` zero channels on either side of `x`'s.

    Built from standard layers only (no Lambda, no custom layer) so that
    the network serializes by its config alone (and `benchmarks/` can
    rebuild it in tf-keras for a timing comparison).
    """
    layers = keras.layers
    # Swap width and channels, zero-pad the (new) width axis, swap back.
    x = layers.Permute((1, 3, 2), name=f"{prefix}_to_hcw")(x)
    x = layers.ZeroPadding2D(
        padding=((0, 0), (before, after)),
        data_format="channels_last",
        name=f"{prefix}_pad_channels",
    )(x)
    return layers.Permute((1, 3, 2), name=f"{prefix}_to_hwc")(x)


# Network parts.


def stem(input_shape, filters, weight_decay):
    """The `"images"` input and its 3x3 `"stem_conv"` convolution.

    Returns:
        `(inputs, x)`: the input tensor and the convolution's output.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(filters, 3, 1, weight_decay, "stem_conv")(inputs)
    return inputs, x


def residual_blocks(blocks, strides=(1, 2, 2), group="stage"):
    """Yields `(stage, prefix, strides)` for every residual block, in order.

    Args:
        blocks: number of blocks of each stage.
        strides: strides of the first block of each stage; the others have
            stride 1.
        group: what the layer names call a stage: block `b` of stage `s`
            (both 1-based) has the prefix `f"{group}{s}_block{b}"`.
    """
    for stage, (count, first_strides) in enumerate(zip(blocks, strides)):
        for block in range(count):
            prefix = f"{group}{stage + 1}_block{block + 1}"
            yield stage, prefix, first_strides if block == 0 else 1


def changes_shape(x, filters, strides):
    """Whether a block with `filters` outputs and `strides` changes the
    shape of its input `x`, so that the shortcut cannot be an identity."""
    return strides != 1 or x.shape[-1] != filters


def preact_block(x, filters, strides, weight_decay, prefix, dropout_rate=0.0):
    """Pre-activation basic block (WRN, PreAct ResNet).

    BatchNorm, ReLU, 3x3 convolution, BatchNorm, ReLU, optional dropout,
    3x3 convolution, added to the input, or where the shape changes to a
    1x1 convolution of the pre-activated input.
    """
    layers = keras.layers
    pre = bn_relu(x, f"{prefix}_bn1", f"{prefix}_relu1")
    shortcut = x
    if changes_shape(x, filters, strides):
        shortcut = conv(
            filters, 1, strides, weight_decay, f"{prefix}_shortcut"
        )(pre)
    y = conv(filters, 3, strides, weight_decay, f"{prefix}_conv1")(pre)
    y = bn_relu(y, f"{prefix}_bn2", f"{prefix}_relu2")
    if dropout_rate:
        y = layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(y)
    y = conv(filters, 3, 1, weight_decay, f"{prefix}_conv2")(y)
    return layers.Add(name=f"{prefix}_add")([shortcut, y])


def classifier(x, num_classes, weight_decay, classifier_activation):
    """Global average pooling, dense logits, then the activation computed
    in float32.

    The final activation layer has dtype float32 so that outputs are
    float32 under a mixed precision policy.
    """
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(
        num_classes,
        kernel_regularizer=kernel_regularizer(weight_decay),
        name="logits",
    )(x)
    return keras.layers.Activation(
        classifier_activation or "linear", dtype="float32", name="predictions"
    )(x)
