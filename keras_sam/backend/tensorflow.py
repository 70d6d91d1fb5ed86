"""SAM step for the TensorFlow backend (also under `tf.distribute`)."""

import keras
import tensorflow as tf

from keras_sam.backend import common


def value_and_grad(fn):
    """`jax.value_and_grad(fn, has_aux=True)` with a `GradientTape`."""

    def wrapped(trainable_values, *args):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable_values)
            value, aux = fn(trainable_values, *args)
        gradients = tape.gradient(
            value,
            trainable_values,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return (value, aux), gradients

    return wrapped


def _all_reduce_sum(gradients):
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)


def train_step(model, data):
    x, y, sample_weight = common.unpack(model, data)
    strategy = tf.distribute.get_strategy()
    num_replicas = strategy.num_replicas_in_sync
    reduce_gradients = None
    if model.perturbation == "global" and num_replicas > 1:
        reduce_gradients = _all_reduce_sum
    result = model.sam_gradients(
        value_and_grad,
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.metrics_variables],
        x,
        y,
        sample_weight,
        scale_loss=model.optimizer.scale_loss,
        reduce_gradients=reduce_gradients,
        num_replicas=num_replicas,
    )
    model.optimizer.apply(result["gradients"], model.trainable_variables)
    common.assign(model.non_trainable_variables, result["non_trainable"])
    common.assign(model.metrics_variables, result["metrics"])
    return model.update_sam_metrics(x, y, sample_weight, result)


def test_step(model, data):
    return common.without_sam_logs(keras.Model.test_step(model, data))
