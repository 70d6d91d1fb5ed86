"""Pieces shared by the architectures in `keras_sam.models` (private).

Builders take `api`, the Keras module that makes the layers: `keras`
(Keras 3) for the public functions, `tf_keras` (Keras 2) only for the
benchmark that compares with tf-keras's own SAM. They use public layers
that exist in both.
"""

import math


def check_weight_decay(weight_decay):
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise ValueError(
            "`weight_decay` must be a finite number >= 0, got "
            f"{weight_decay!r}."
        )
    return float(weight_decay)


def check_input_shape(input_shape):
    shape = tuple(input_shape) if input_shape is not None else None
    if shape is None or len(shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels), got "
            f"{input_shape!r}."
        )
    return shape


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def kernel_regularizer(api, weight_decay):
    """Coupled L2 whose gradient is `weight_decay * kernel`, or None.

    Keras' `L2(l2)` adds `l2 * sum(kernel ** 2)` to the loss, whose gradient
    is `2 * l2 * kernel`; the SAM paper (and PyTorch's SGD `weight_decay`)
    add `weight_decay * kernel` to the gradient, hence `l2 = wd / 2`.
    """
    if not weight_decay:
        return None
    return api.regularizers.L2(weight_decay / 2.0)


def conv(api, filters, kernel_size, strides, weight_decay, name):
    return api.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=kernel_regularizer(api, weight_decay),
        name=name,
    )


def batch_norm(api, name):
    # Momentum 0.9 and epsilon 1e-5 as in the PyTorch and JAX references.
    return api.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def classifier(api, x, num_classes, weight_decay, classifier_activation):
    """Dense logits, then the activation computed in float32.

    The final activation layer has dtype float32 so that outputs are
    float32 under a mixed precision policy.
    """
    x = api.layers.Dense(
        num_classes,
        kernel_regularizer=kernel_regularizer(api, weight_decay),
        name="logits",
    )(x)
    return api.layers.Activation(
        classifier_activation or "linear", dtype="float32", name="predictions"
    )(x)
