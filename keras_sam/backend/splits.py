"""The chunks of a batch that get passes of their own (`num_batch_splits`).

`BatchSplits` cuts a batch into `k` chunks of nearly equal size, hands each
chunk the state its pass starts from, and merges the passes' results into
one for the whole batch. The SAM step uses it twice: for m-sharpness
(each chunk its own `eps`, `split_perturbation="per_split"`) and for
gradient accumulation inside a pass (`split_perturbation="shared"`).
"""

from typing import NamedTuple

import keras
from keras import ops

# The fields of a pass's result that are not scalars averaged over chunks.
STRUCTURED = ("gradients", "non_trainable", "metrics", "y_pred")


class Chunk(NamedTuple):
    """One chunk of a batch and the state its pass starts from."""

    batch: tuple
    """`(x, y, sample_weight)` of the chunk's rows."""
    non_trainable: list
    """Values of the model's non-trainable variables."""
    metrics: list
    """Values of the model's metrics variables."""


class BatchSplits:
    """Iterates over the chunks of a batch and merges their passes' results.

    With `num_splits=1` it yields the whole batch once and `result()` is
    that pass's result unchanged. With `k > 1`: every chunk starts from the
    pre-step float state (BatchNorm statistics), whose new value is the
    size-weighted mean of the chunks' updates; integer state (seed
    counters) and the `carried` entries run on from chunk to chunk, so
    that chunks draw different dropout masks; metrics run on too.
    Gradients and the scalar fields (losses, logged values) are
    size-weighted means; predictions are concatenated.

    A result is a `NamedTuple` with the fields `gradients`,
    `non_trainable`, `metrics`, `y_pred` and any scalar fields.

    Usage (each chunk's result is added before the next chunk is drawn):

    ```python
    splits = BatchSplits(k, non_trainable_variables, non_trainable,
                         metrics, batch)
    for chunk in splits:
        splits.add(run_pass(chunk))
    result = splits.result()
    ```
    """

    def __init__(self, num_splits, non_trainable_variables, non_trainable,
                 metrics, batch, carried=()):
        self.num_splits = num_splits
        # Averaged over chunks: float state, except the `carried` indices,
        # which run on from chunk to chunk like integer state.
        carried = set(carried)
        self.is_float = [
            _is_float(v) and index not in carried
            for index, v in enumerate(non_trainable_variables)
        ]
        self.non_trainable = non_trainable
        self.metrics = metrics
        self.batch = batch
        self.parts = []
        self.weights = []

    def __iter__(self):
        if self.num_splits == 1:
            yield Chunk(self.batch, self.non_trainable, self.metrics)
            return
        num_splits = self.num_splits
        batch_size = ops.shape(first_leaf(self.batch[0]))[0]
        counters, metrics = list(self.non_trainable), self.metrics
        for index in range(num_splits):
            start = (index * batch_size) // num_splits
            stop = ((index + 1) * batch_size) // num_splits
            if isinstance(stop, int) and stop == start:
                continue  # an empty chunk of a batch with fewer rows than k
            state = [
                snapshot if float_ else counter
                for snapshot, counter, float_ in zip(
                    self.non_trainable, counters, self.is_float
                )
            ]
            self._metrics_before = metrics
            self._weight = ops.cast(stop - start, "float32") / ops.cast(
                batch_size, "float32"
            )
            yield Chunk(_slice_batch(self.batch, start, stop), state, metrics)
            counters, metrics = (
                self.parts[-1].non_trainable, self.parts[-1].metrics
            )

    def add(self, part):
        """Records the result of the pass over the chunk just drawn."""
        if self.num_splits > 1:
            # With a dynamic batch size (TensorFlow), a batch with fewer
            # rows than chunks has empty chunks, whose mean loss is 0/0:
            # they count for nothing.
            part = _without_empty_chunk(
                part, self._weight > 0.0, self._metrics_before
            )
            self.weights.append(self._weight)
        self.parts.append(part)

    def result(self):
        """The whole batch's result, merged from the chunks'."""
        if self.num_splits == 1:
            return self.parts[0]
        weights, parts, last = self.weights, self.parts, self.parts[-1]

        def weighted_mean(values, like):
            total = sum(
                w * ops.cast(v, "float32") for w, v in zip(weights, values)
            )
            return ops.cast(total, like.dtype)

        merged = {
            "gradients": [
                weighted_mean([p.gradients[i] for p in parts], g)
                for i, g in enumerate(last.gradients)
            ],
            "non_trainable": [
                weighted_mean([p.non_trainable[i] for p in parts], v)
                if float_ else v
                for i, (v, float_) in enumerate(
                    zip(last.non_trainable, self.is_float)
                )
            ],
            "metrics": last.metrics,
            "y_pred": keras.tree.map_structure(
                lambda *chunks: ops.concatenate(chunks, axis=0),
                *[p.y_pred for p in parts],
            ),
        }
        for name in last._fields:
            if name not in STRUCTURED:
                merged[name] = sum(
                    w * getattr(p, name) for w, p in zip(weights, parts)
                )
        return type(last)(**merged)


def _without_empty_chunk(part, non_empty, previous_metrics):
    """`part` with every float value zeroed (metrics: kept as they were)
    where its chunk has no rows; exactly `part` otherwise."""

    def keep(value, fallback=None):
        if not hasattr(value, "dtype") or not _is_float(value):
            return value
        other = ops.zeros_like(value) if fallback is None else fallback
        return ops.where(non_empty, value, other)

    changed = {}
    for name in part._fields:
        if name not in STRUCTURED:
            # Keras's loss of an empty batch can have shape (0,): sum it.
            value = getattr(part, name)
            changed[name] = keep(
                ops.sum(value) if hasattr(value, "dtype") else value
            )
    changed["gradients"] = [keep(g) for g in part.gradients]
    changed["non_trainable"] = [keep(v) for v in part.non_trainable]
    changed["metrics"] = [
        keep(value, previous)
        for value, previous in zip(part.metrics, previous_metrics)
    ]
    return part._replace(**changed)


def first_leaf(structure):
    """The first tensor of a nest (skipping `None`)."""
    return next(
        leaf for leaf in keras.tree.flatten(structure) if leaf is not None
    )


def _is_float(variable):
    return "float" in str(variable.dtype)


def _slice_batch(structure, start, stop):
    return keras.tree.map_structure(
        lambda t: None if t is None else t[start:stop], structure
    )
