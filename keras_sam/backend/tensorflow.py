"""SAM step for the TensorFlow backend (also under `tf.distribute`)."""

import keras
import tensorflow as tf

from keras_sam import _keras_compat, stateless
from keras_sam.backend.trainer import SAMTrainerBase, assign, without_sam_logs

_ZERO = tf.UnconnectedGradients.ZERO

_SUPPORTED_STRATEGIES = (
    "_DefaultDistributionStrategy",
    "OneDeviceStrategy",
    "MirroredStrategy",
    "MultiWorkerMirroredStrategy",
    "CollectiveAllReduceStrategy",
    "TPUStrategy",
)


def value_and_grad(fn):
    """`jax.value_and_grad(fn, has_aux=True)` with a `GradientTape`:
    `(trainable, *args) -> ((value, aux), gradients)`."""

    def wrapped(trainable_values, *args):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable_values)
            value, aux = fn(trainable_values, *args)
        gradients = tape.gradient(
            value, trainable_values, unconnected_gradients=_ZERO
        )
        return (value, aux), _dense(gradients)

    return wrapped


def grad(fn):
    """`(trainable, *args) -> gradients` of the scalar `fn`."""

    def wrapped(trainable, *args):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(trainable)
            value = fn(trainable, *args)
        return _dense(
            tape.gradient(value, trainable, unconnected_gradients=_ZERO)
        )

    return wrapped


def _dense(gradients):
    """Gradients with every `tf.IndexedSlices` (an embedding lookup's:
    one row per occurrence of an id) made dense, repeated rows summed, so
    that norms and inner products over them are those of the gradient."""
    return [
        tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
        for g in gradients
    ]


def hessian_vector_product(fn):
    """`(trainable, vector, *args) -> H v` of the scalar `fn` (double
    backpropagation)."""

    def hvp(trainable, vector, *args):
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(trainable)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(trainable)
                value = fn(trainable, *args)
            grads = inner.gradient(
                value, trainable, unconnected_gradients=_ZERO
            )
            dot = tf.add_n(
                [tf.reduce_sum(g * v) for g, v in zip(grads, vector)]
            )
        return _dense(
            outer.gradient(dot, trainable, unconnected_gradients=_ZERO)
        )

    return hvp


def linearize(fn):
    """`(trainable, vector, *args) -> (outputs, J v, vjp)` of the tensor
    `fn(trainable, *args)`: its value, its Jacobian times `vector` (the
    derivative of `J^T r` along `vector`, by double backpropagation) and
    `vjp(cotangent) -> J^T cotangent`, all from one forward pass."""

    def run(trainable, vector, *args):
        with tf.GradientTape(
            persistent=True, watch_accessed_variables=False
        ) as tape:
            tape.watch(trainable)
            outputs = fn(trainable, *args)
        dummy = tf.zeros_like(outputs)
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(dummy)
            pulled = tape.gradient(
                outputs, trainable, output_gradients=dummy,
                unconnected_gradients=_ZERO,
            )
            dot = tf.add_n(
                [tf.reduce_sum(g * v) for g, v in zip(pulled, vector)]
            )
        tangent = outer.gradient(dot, dummy, unconnected_gradients=_ZERO)

        def vjp(cotangent):
            return tape.gradient(
                outputs, trainable, output_gradients=cotangent,
                unconnected_gradients=_ZERO,
            )

        return outputs, tangent, vjp

    return run


def compile_function(fn):
    return tf.function(fn, reduce_retracing=True)


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


def all_gather(values):
    """Concatenates each tensor of a list along its first axis over the
    replicas (in replica order), through `merge_call` like `_all_reduce`;
    every replica receives the whole."""

    def merge_fn(strategy, *per_replica):
        return [strategy.gather(value, axis=0) for value in per_replica]

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


class SAMTrainer(_keras_compat.LocalBatchSymbolicBuild, SAMTrainerBase):
    """The SAM `train_step` on TensorFlow, also under `tf.distribute`.

    Gradients inside a replica's step are per-replica (Keras sums them in
    `optimizer.apply`), so each replica perturbs with its own gradient
    (`perturbation="replica"`, m-sharpness with m the per-replica batch)
    unless `perturbation="global"` all-reduces them first.
    """

    _value_and_grad = staticmethod(value_and_grad)

    def train_step(self, data):
        x, y, sample_weight = self._unpack(data)
        strategy = tf.distribute.get_strategy()
        _check_strategy(strategy)
        replicas = strategy.num_replicas_in_sync
        global_gradients = self.perturbation == "global" and replicas > 1
        variables = stateless.variable_lists(self)
        step = self._step(
            self.optimizer.iterations, variables,
            [v.value for v in variables.trainable],
            replica_factor=1.0 if global_gradients else replicas,
        )
        splits = self._splits(
            self._perturbation_splits(), step,
            [v.value for v in variables.non_trainable],
            [v.value for v in variables.metrics], (x, y, sample_weight),
        )
        for chunk in splits:  # the whole batch, or each m-sharpness chunk
            # 1. Clean pass at w: L(w) and g; its state updates are kept.
            # (MomentumSAM's only pass: at w moved along the momentum.)
            clean = self._pass(self._first_point(step), chunk, step)
            # The ascent's gradient: this replica's, or the global one.
            ascent_gradients = (
                _all_reduce_sum(clean.gradients) if global_gradients
                else clean.gradients
            )
            # 2-3. Where the rule ascends (every step for SAM): the ascent
            # to w + eps and the perturbed pass there (`_ascend`); else the
            # rule's one-pass step.
            splits.add(
                self._sam_or_plain_step(clean, ascent_gradients, chunk, step)
            )
        result = self._per_batch_scalars(splits.result(), replicas)
        non_trainable = result.non_trainable
        if replicas > 1:
            non_trainable = _synchronize_state(non_trainable)
        # 4. Descent: the optimizer applies the chosen gradient at w.
        self.optimizer.apply(result.gradients, variables.trainable)
        assign(variables.non_trainable, non_trainable)
        assign(variables.metrics, result.metrics)
        logs = self._update_sam_metrics(x, y, sample_weight, result, step.rho)
        return _logs_for_multi_worker(strategy, logs)

    def test_step(self, data):
        logs = without_sam_logs(keras.Model.test_step(self, data))
        return _logs_for_multi_worker(tf.distribute.get_strategy(), logs)

    def _first_local_batch(self, iterator):
        return first_local_batch(self, iterator)
