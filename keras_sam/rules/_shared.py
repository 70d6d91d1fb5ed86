"""Small helpers the rules share (internal to `keras_sam.rules`)."""

import keras
from keras import ops


def safe_ratio(numerator, denominator):
    """`numerator / denominator`, 0 where the denominator is 0 or not
    finite."""
    usable = ops.logical_and(denominator > 0.0, ops.isfinite(denominator))
    safe = ops.where(usable, denominator, 1.0)
    return ops.where(usable, numerator / safe, 0.0)


def dot(a, b):
    return ops.sum(ops.stack([ops.sum(x * y) for x, y in zip(a, b)]))


def num_replicas():
    """The number of `tf.distribute` replicas (1 on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync
