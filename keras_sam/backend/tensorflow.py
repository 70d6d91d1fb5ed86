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


def _is_multi_worker(strategy):
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def _logs_for_multi_worker(strategy, logs):
    """Gives every log a leading replica axis of length 1 on several workers.

    Keras 3 (checked with 3.15.1) reduces a step's logs across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for the scalar
    logs of every model ("Invalid reduction dimension 0 for input with 0
    dimensions") and would average a vector metric over its own entries.
    With the extra axis that reduction is the mean over replicas, what
    Keras computes on one worker.
    """
    if not _is_multi_worker(strategy):
        return logs
    return keras.tree.map_structure(
        lambda value: tf.expand_dims(tf.convert_to_tensor(value), 0), logs
    )


def first_local_batch(model, iterator):
    """The first batch of `fit`'s data on this worker's first replica.

    Keras 3's TensorFlow trainer builds a model from a batch reduced with
    `strategy.reduce("MEAN", batch)`; MultiWorkerMirroredStrategy cannot
    reduce the nest `(x, y)` of per-replica values (checked with Keras
    3.15.1 and TensorFlow 2.21: "Attempt to convert a value (PerReplica
    ...)"), so `fit` fails for every model on several workers. Only shapes
    and dtypes are needed, which one replica's batch has. Returns `None`
    where Keras's own path works.
    """
    strategy = model.distribute_strategy
    if iterator is None or not _is_multi_worker(strategy):
        return None
    for _, _, batches in iterator:
        batch = next(batches)
        break
    return keras.tree.map_structure(
        lambda value: strategy.experimental_local_results(value)[0]
        if isinstance(value, tf.distribute.DistributedValues)
        else value,
        batch,
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
    logs = model.update_sam_metrics(x, y, sample_weight, result)
    return _logs_for_multi_worker(strategy, logs)


def test_step(model, data):
    logs = common.without_sam_logs(keras.Model.test_step(model, data))
    return _logs_for_multi_worker(tf.distribute.get_strategy(), logs)
