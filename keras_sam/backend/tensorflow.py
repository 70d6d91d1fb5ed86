"""SAM step for the TensorFlow backend (also under `tf.distribute`)."""

import keras
import tensorflow as tf

from keras_sam.backend import common

_SUPPORTED_STRATEGIES = (
    "_DefaultDistributionStrategy",
    "OneDeviceStrategy",
    "MirroredStrategy",
    "MultiWorkerMirroredStrategy",
    "CollectiveAllReduceStrategy",
    "TPUStrategy",
)


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


def _all_reduce(reduce_op, values):
    """All-reduces a list of per-replica tensors across replicas.

    Goes through `merge_call`, like the Keras optimizer's own gradient
    all-reduce: a replica-context collective launched beside the
    optimizer's can be matched with the wrong peer (TensorFlow aborts with
    "Shape mismatch in the collective instance").
    """

    def merge_fn(strategy, *per_replica):
        return strategy.extended.batch_reduce_to(
            reduce_op, [(value, value) for value in per_replica]
        )

    context = tf.distribute.get_replica_context()
    return list(context.merge_call(merge_fn, args=tuple(values)))


def _all_reduce_sum(gradients):
    return _all_reduce(tf.distribute.ReduceOp.SUM, gradients)


def _synchronize_state(values):
    """Averages float state (BatchNorm statistics) over replicas.

    Keras 3 leaves each replica's copy of the moving statistics updated
    from its own batch, so the copies drift apart (checked with plain
    `fit` too). One all-reduce of these few small tensors keeps every copy
    bit-identical; the mean of the replicas' updates is the statistics'
    update from the whole batch (for the moving mean exactly).
    """
    floats = [i for i, v in enumerate(values) if v.dtype.is_floating]
    if not floats:
        return values
    reduced = _all_reduce(
        tf.distribute.ReduceOp.MEAN, [values[i] for i in floats]
    )
    values = list(values)
    for i, value in zip(floats, reduced):
        values[i] = value
    return values


def _check_strategy(strategy):
    names = {cls.__name__ for cls in type(strategy).__mro__}
    if not names.intersection(_SUPPORTED_STRATEGIES):
        raise ValueError(
            "SAMModel runs under the default strategy, OneDeviceStrategy, "
            "MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy, "
            "whose replicas each hold a full copy of the weights. Received: "
            f"strategy={type(strategy).__name__}, whose variable placement "
            "SAMModel has not been checked against."
        )


def train_step(model, data):
    x, y, sample_weight = common.unpack(model, data)
    strategy = tf.distribute.get_strategy()
    _check_strategy(strategy)
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
    non_trainable = result["non_trainable"]
    if num_replicas > 1:
        non_trainable = _synchronize_state(non_trainable)
    model.optimizer.apply(result["gradients"], model.trainable_variables)
    common.assign(model.non_trainable_variables, non_trainable)
    common.assign(model.metrics_variables, result["metrics"])
    return model.update_sam_metrics(x, y, sample_weight, result)


def test_step(model, data):
    return common.without_sam_logs(keras.Model.test_step(model, data))
