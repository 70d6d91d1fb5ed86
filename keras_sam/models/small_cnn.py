"""A small convolutional network for quick CIFAR-sized experiments."""

import keras

from keras_sam.models import _common


def small_cnn(
    input_shape=(32, 32, 3),
    num_classes=10,
    width=16,
    weight_decay=0.0,
    classifier_activation="softmax",
    name="small_cnn",
):
    """A small VGG-style CNN with BatchNorm, for demos and tests.

    Three stages of two 3x3 convolutions (each followed by BatchNorm and
    ReLU) with `width`, `2 * width` and `4 * width` filters, 2x2 max
    pooling after the first two stages, then global average pooling and a
    dense classifier. With the defaults it has 73k parameters and trains
    on 5,000 CIFAR images in about 5 seconds per epoch on two CPU cores;
    it is what `keras-sam demo` trains.

    Args:
        input_shape: shape of one input image `(height, width, channels)`.
            Defaults to `(32, 32, 3)`.
        num_classes: number of classes. Defaults to `10`.
        width: filters of the first stage. Defaults to `16`.
        weight_decay: coupled L2 coefficient: adds `weight_decay * kernel`
            to the gradient of every convolution and dense kernel (a Keras
            `L2(weight_decay / 2)` regularizer), as in the SAM paper.
            Biases and BatchNorm parameters are not decayed. `0` adds no
            regularizer. Defaults to `0.0`.
        classifier_activation: activation of the output layer, computed in
            float32; `None` returns logits. Defaults to `"softmax"`.
        name: model name. Defaults to `"small_cnn"`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.small_cnn()
    >>> model.output_shape
    (None, 10)
    """
    input_shape, weight_decay = _common.check_model_args(
        input_shape, num_classes, weight_decay
    )
    _common.check_positive_int("width", width)
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for index in range(2):
            prefix = f"stage{stage + 1}_conv{index + 1}"
            x = _common.conv(filters, 3, 1, weight_decay, prefix)(x)
            x = _common.bn_relu(x, f"{prefix}_bn", f"{prefix}_relu")
        if stage < 2:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage + 1}_pool")(x)
    outputs = _common.classifier(
        x, num_classes, weight_decay, classifier_activation
    )
    return keras.Model(inputs, outputs, name=name)
