"""Probe data for the curvature measurements: read once into host
memory, split into size-weighted microbatches.

`ProbeSet`, `as_probe_set` and `DEFAULT_PROBE_BATCH_SIZE` are public
(`keras_sam.hessian`); `to_numpy` and `weighted_batches` are shared with
the other modules of `keras_sam.hessian` and `keras_sam.landscape` only.
"""


import keras
import numpy as np

from keras_sam._validation import short_repr

DEFAULT_PROBE_BATCH_SIZE = 128
"""Default size of the microbatches the probe data is split into."""


class ProbeSet:
    """Probe data held in host memory as NumPy arrays.

    Built once from arrays, a tuple or a finite dataset (see
    `as_probe_set`); the functions of this module accept it wherever they
    take `data`, which saves reading a dataset again on every call.
    """

    def __init__(self, x, y, sample_weight, num_samples):
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.num_samples = num_samples

    def take(self, indices):
        """The arrays `(x, y, sample_weight)` of the samples `indices`."""
        return tuple(
            _map(lambda a: a[indices], part)
            for part in (self.x, self.y, self.sample_weight)
        )


def as_probe_set(data):
    """Reads probe data into a `ProbeSet` of NumPy arrays.

    Args:
        data: Arrays `x` (for models whose loss needs no targets), a tuple
            `(x, y)` or `(x, y, sample_weight)` (`x` itself may be an array,
            a list or a dict of arrays), a finite batched `tf.data.Dataset`
            or a `keras.utils.PyDataset` yielding such tuples, or a
            `ProbeSet` (returned as is).

    Returns:
        A `ProbeSet`. Float64 arrays are cast to `keras.config.floatx()`.
    """
    if isinstance(data, ProbeSet):
        return data
    if data is None:
        raise ValueError("Argument `data` must not be None.")
    if _is_tf_dataset(data):
        batches = _read_tf_dataset(data)
    elif isinstance(data, keras.utils.PyDataset):
        batches = [data[i] for i in range(len(data))]
    else:
        batches = [data]
    parts = [keras.utils.unpack_x_y_sample_weight(b) for b in batches]
    parts = [tuple(_map(to_numpy, p) for p in part) for part in parts]
    if not parts:
        raise ValueError(
            f"Argument `data` is empty. Received: data={short_repr(data)}"
        )
    x, y, sample_weight = (
        _map(lambda *a: np.concatenate(a, axis=0), *column)
        if len(parts) > 1
        else column[0]
        for column in zip(*parts)
    )
    num_samples = _num_samples(x, data)
    for name, part in (("y", y), ("sample_weight", sample_weight)):
        for leaf in _leaves(part):
            if leaf.shape[:1] != (num_samples,):
                raise ValueError(
                    f"In argument `data`, `{name}` has {leaf.shape[:1]} "
                    f"samples but `x` has {num_samples}."
                )
    return ProbeSet(x, y, sample_weight, num_samples)


def _is_tf_dataset(data):
    module = type(data).__module__
    return module.startswith("tensorflow") and hasattr(data, "cardinality")


def _read_tf_dataset(dataset):
    if int(dataset.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise ValueError(
            "Argument `data` must be a finite dataset; received an infinite "
            f"one: data={dataset!r}. Use `dataset.take(n)`."
        )
    return list(dataset.as_numpy_iterator())


def _map(fn, *structures):
    """`keras.tree.map_structure` that keeps `None` (a missing part)."""
    if structures[0] is None:
        return None
    return keras.tree.map_structure(
        lambda *leaves: None if leaves[0] is None else fn(*leaves),
        *structures,
    )


def _leaves(structure):
    if structure is None:
        return []
    return [leaf for leaf in keras.tree.flatten(structure) if leaf is not None]


def to_numpy(value):
    """A tensor of any backend (or array-like) as a NumPy array; float64
    data is cast to `keras.config.floatx()` unless that is float64."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == np.float64 and keras.config.floatx() != "float64":
        array = array.astype(keras.config.floatx())
    return array


def _num_samples(x, data):
    leaves = _leaves(x)
    if not leaves or leaves[0].ndim == 0 or leaves[0].shape[0] == 0:
        raise ValueError(
            "Argument `data` is empty: it must hold at least one sample. "
            f"Received: data={short_repr(data)}"
        )
    return int(leaves[0].shape[0])


def weighted_batches(probe, indices, probe_batch_size):
    """Splits the samples `indices` (or all) into microbatches of tensors.

    Returns a list of `(batch, weight)`, `batch = (x, y, sample_weight)`,
    with `weight` the microbatch's share of the samples.
    """
    if indices is None:
        indices = np.arange(probe.num_samples)
    total = len(indices)
    batches = []
    for start in range(0, total, probe_batch_size):
        chunk = indices[start : start + probe_batch_size]
        count = len(chunk)
        if np.array_equal(chunk, np.arange(chunk[0], chunk[0] + count)):
            chunk = slice(int(chunk[0]), int(chunk[0]) + count)
        batch = tuple(
            _map(keras.ops.convert_to_tensor, part)
            for part in probe.take(chunk)
        )
        batches.append((batch, count / total))
    return batches
