"""The probe loss of a model and its derivatives, on flat vectors.

The loss is `keras_sam.stateless.stateless_loss` in inference mode; its
gradient and Hessian-vector products come from the backend's autodiff
(`keras_sam.backend`), compiled once per model.

Internal to `keras_sam.hessian` and `keras_sam.landscape`: its public
names (`prepare_curvature`, `Curvature`, `check_model`, ...) are what
those modules share; none is part of the package's API.
"""

import weakref

import keras
import numpy as np

from keras_sam import backend as sam_backend
from keras_sam import stateless
from keras_sam._validation import check_int, short_repr
from keras_sam.hessian.probe import as_probe_set, weighted_batches

# model -> compiled functions; the functions hold the model weakly.
_COMPILED = weakref.WeakKeyDictionary()


def compiled_for(model, name, build):
    """`build(weakref.ref(model))`, built once per model: the compiled
    functions of `model` cached under `name` (they hold it weakly)."""
    cache = _COMPILED.setdefault(model, {})
    if name not in cache:
        cache[name] = build(weakref.ref(model))
    return cache[name]


def probe_loss(model, state, batch):
    """The training loss of `batch` in inference mode, as a scalar tensor.

    `state = (trainable, non_trainable, metrics)` values; nothing is
    updated. Under a `tf.distribute` strategy Keras divides the compiled
    loss by the number of replicas; this undoes it.
    """
    x, y, sample_weight = batch
    loss, _ = stateless.stateless_loss(
        model, *state, x, y, sample_weight, training=False
    )
    return undo_replica_scaling(loss)


def undo_replica_scaling(loss):
    """`loss` times the number of replicas of the current `tf.distribute`
    strategy, which Keras divided the compiled loss by."""
    replicas = _num_replicas()
    return loss * replicas if replicas > 1 else loss


def _num_replicas():
    """Replicas of the current `tf.distribute` strategy; 1 elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def _functions(model):
    """`(value, gradient, hvp)` of the probe loss, compiled, cached per model.

    `value(state, batch)` is the loss, `gradient(state, batch)` its
    gradient and `hvp(state, batch, vector)` the Hessian-vector product,
    all with respect to the trainable values `state[0]`, as lists of
    tensors.
    """
    return compiled_for(model, "functions", _build_functions)


def _build_functions(model_ref):
    def loss(trainable, rest, batch):
        return probe_loss(model_ref(), (trainable, *rest), batch)

    gradient = sam_backend.grad(loss)
    hvp = sam_backend.hessian_vector_product(loss)
    compile_function = sam_backend.compile_function
    return (
        compile_function(lambda state, batch: loss(state[0], state[1:], batch)),
        compile_function(
            lambda state, batch: gradient(state[0], state[1:], batch)
        ),
        compile_function(
            lambda state, batch, vector: hvp(
                state[0], vector, state[1:], batch
            )
        ),
    )


class Curvature:
    """The probe loss of `model` at its current weights, on flat vectors.

    Snapshots the variable values once; `hvp`, `gradient` and `loss` take
    and return flat float64 NumPy vectors (all trainable variables in the
    order of `model.trainable_variables`).
    """

    def __init__(self, model, probe, probe_batch_size):
        self.probe = probe
        self.probe_batch_size = probe_batch_size
        self.state = (
            snapshot(model.trainable_variables),
            snapshot(model.non_trainable_variables),
            snapshot(model.metrics_variables),
        )
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.dtypes = [
            keras.backend.standardize_dtype(v.dtype)
            for v in model.trainable_variables
        ]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.paths = [v.path for v in model.trainable_variables]
        self.dim = int(sum(self.sizes))
        self._value, self._gradient, self._hvp = _functions(model)
        self._full = None

    def batches(self, indices=None):
        """Weighted microbatches of the samples `indices` (default all)."""
        if indices is None:
            if self._full is None:
                self._full = weighted_batches(
                    self.probe, None, self.probe_batch_size
                )
            return self._full
        return weighted_batches(self.probe, indices, self.probe_batch_size)

    def hvp(self, flat_vector, batches=None):
        """`H v` for the samples of `batches` (default: the probe set)."""
        vector = self.unflatten(flat_vector)
        total = np.zeros(self.dim)
        for batch, weight in batches or self.batches():
            total += weight * self.flatten(self._hvp(self.state, batch, vector))
        return total

    def gradient(self, batches=None, weights=None):
        """The loss gradient at the snapshot, or at the flat `weights`."""
        state = self.state_at(weights)
        total = np.zeros(self.dim)
        for batch, weight in batches or self.batches():
            total += weight * self.flatten(self._gradient(state, batch))
        return total

    def loss(self, batches=None, weights=None):
        """The loss at the snapshot, or at the flat `weights`."""
        state = self.state_at(weights)
        total = 0.0
        for batch, weight in batches or self.batches():
            value = self._value(state, batch)
            total += weight * float(keras.ops.convert_to_numpy(value))
        return total

    def weights(self):
        """The snapshot's trainable values, one flat float64 vector."""
        return self.flatten(self.state[0])

    def state_at(self, weights=None):
        """The snapshot with the trainable values replaced by the flat
        `weights` (cast to the variables' dtypes); the snapshot if
        `None`."""
        if weights is None:
            return self.state
        return (self.unflatten(weights, "weights"), *self.state[1:])

    def layer_blocks(self):
        """The flat indices of each layer's trainable variables.

        Returns a dict `{layer_path: indices}` in the order the layers
        first appear in `model.trainable_variables`, `layer_path` being
        the variable's `path` without its last component (see
        `keras_sam.hessian`).
        """
        blocks, start = {}, 0
        for path, size in zip(self.paths, self.sizes):
            indices = np.arange(start, start + size)
            layer = _layer_path(path)
            blocks[layer] = np.concatenate(
                [blocks.get(layer, np.zeros(0, np.int64)), indices]
            )
            start += size
        return blocks

    def flatten(self, tensors):
        """Tensors shaped like the trainable variables, as one flat
        float64 vector."""
        return np.concatenate(
            [
                np.asarray(keras.ops.convert_to_numpy(t), np.float64).ravel()
                for t in tensors
            ]
        )

    def split(self, flat):
        """A flat float64 vector as NumPy arrays shaped like the variables."""
        parts = np.split(np.asarray(flat), np.cumsum(self.sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def unflatten(self, flat, name="vector"):
        """A flat vector of length `dim` as tensors shaped like the
        trainable variables; `ValueError` naming `name` otherwise."""
        flat = np.asarray(flat, dtype=np.float64)
        if flat.shape != (self.dim,):
            raise ValueError(
                f"Argument `{name}` must have {self.dim} entries (the number "
                "of trainable parameters), or be a list of arrays shaped "
                f"like `model.trainable_variables`. Received shape "
                f"{flat.shape}."
            )
        tensors, start = [], 0
        for shape, dtype, size in zip(self.shapes, self.dtypes, self.sizes):
            part = flat[start : start + size].reshape(shape).astype(dtype)
            tensors.append(keras.ops.convert_to_tensor(part))
            start += size
        return tensors


def _layer_path(variable_path):
    """`"outer/dense/kernel"` -> `"outer/dense"`: the owning layer's path."""
    layer, _, _ = variable_path.rpartition("/")
    return layer or variable_path


def snapshot(variables):
    """The current values of `variables`, as tensors (detached on
    torch)."""
    values = [keras.ops.convert_to_tensor(v) for v in variables]
    if keras.backend.backend() == "torch":
        values = [v.detach() for v in values]
    return values


def check_model(model):
    """Raises `ValueError` unless `model` is a built, compiled Keras model
    with trainable variables."""
    is_model = isinstance(model, keras.Model)
    if not is_model:
        raise ValueError(
            "Argument `model` must be a compiled `keras.Model`. Received: "
            f"model={short_repr(model)} of type {type(model).__name__}."
        )
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"Argument `model` ({model.name!r}) is not compiled: call "
            "`model.compile(optimizer, loss=...)` first, so that its loss "
            "is defined."
        )
    if not model.built:
        raise ValueError(
            f"Argument `model` ({model.name!r}) is not built: call it on a "
            "batch or `model.build(input_shape)` first."
        )
    if not model.trainable_variables:
        raise ValueError(
            f"Argument `model` ({model.name!r}) has no trainable variables."
        )


def prepare_curvature(model, data, probe_batch_size):
    """The `Curvature` of `model`'s probe loss on `data`, after checking
    the model and `probe_batch_size`."""
    check_model(model)
    probe_batch_size = check_int("probe_batch_size", probe_batch_size)
    return Curvature(model, as_probe_set(data), probe_batch_size)
