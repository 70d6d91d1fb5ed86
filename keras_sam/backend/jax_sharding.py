"""Per-device SAM on JAX under `keras.distribution.DataParallel`.

Under `DataParallel` Keras's JAX step is one SPMD program over the whole
batch: every gradient in it is the global one. `perturbation="replica"`
asks for what the SAM paper ran on its accelerators (and what the
TensorFlow backend does under `tf.distribute`): each device takes `eps`
from the gradient of its own shard of the batch. `PerDevice` runs steps
1-3 of the SAM step (clean pass, ascent, perturbed pass) with
`jax.shard_map` over the mesh's batch axis, so that inside them each
device sees its own shard and its own gradients, and merges the devices'
results with collectives:

- the applied gradient: mean over devices (one all-reduce, the one of
  plain data-parallel training); the descent then runs on the merged,
  replicated gradient outside the map;
- float non-trainable state (BatchNorm moving statistics, the rule's
  state): mean over devices, as the TensorFlow backend averages it, so
  every device holds the same values; integer state (seed counters,
  step counters) moves identically on every device and is kept;
- metrics variables updated by the passes (Keras's per-output loss
  trackers): the value before the step plus the sum of the devices'
  increments (right for the additive `Mean` and `Sum` trackers);
- logged scalars (`loss`, `sam_sharpness`, `grad_norm`, the ascent flag):
  mean over devices; predictions: concatenated in device order.

Each device's BatchNorm normalizes with its own shard's statistics and
the dropout masks are drawn per shard from the same seed, as on a
`tf.distribute` replica.
"""

import jax
import keras
from jax.sharding import PartitionSpec
from keras import ops

from keras_sam.backend.splits import first_leaf
from keras_sam.backend.trainer import ChunkResult


def per_device_mesh(model):
    """`(mesh, batch_axis)` where `model`'s steps 1-3 run per device:
    `perturbation="replica"` under a `keras.distribution.DataParallel`
    over more than one device; `None` elsewhere (the steps then run on
    the whole batch: global `eps`)."""
    if model.perturbation != "replica":
        return None
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.DataParallel):
        return None
    device_mesh = distribution.device_mesh
    axis = distribution.batch_dim_name
    size = device_mesh.shape[list(device_mesh.axis_names).index(axis)]
    if size == 1:
        return None
    return device_mesh.backend_mesh, axis


class PerDevice:
    """Runs `fn(step, non_trainable, metrics, batch) -> ChunkResult` on
    each device's shard of `batch` and merges the results (see the
    module).

    Args:
        fn: steps 1-3 of the SAM step on a batch.
        mesh: the `jax.sharding.Mesh` of the `DataParallel`.
        axis: the name of its batch axis.
        is_float: one boolean per non-trainable variable.
    """

    def __init__(self, fn, mesh, axis, is_float):
        self.fn = fn
        self.mesh = mesh
        self.axis = axis
        self.is_float = is_float

    def __call__(self, step, non_trainable, metrics, batch):
        self._check_batch(batch)
        replicated = (step, non_trainable, metrics)
        leaves, treedef = jax.tree.flatten(
            replicated, is_leaf=lambda v: isinstance(v, keras.Variable)
        )
        arrays = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

        def on_one_device(values, shard):
            local = list(leaves)
            for i, value in zip(arrays, values):
                local[i] = value
            step, non_trainable, metrics = jax.tree.unflatten(treedef, local)
            result = self.fn(step, non_trainable, metrics, shard)
            return self._merged(result, non_trainable, metrics)

        batch_spec = PartitionSpec(self.axis)
        mapped = jax.shard_map(
            on_one_device,
            mesh=self.mesh,
            in_specs=(PartitionSpec(), batch_spec),
            out_specs=self._out_specs(),
            # Unchecked: with checking, JAX would sum the gradients of the
            # replicated weights over devices inside the map, and each
            # device's `eps` would be the global one again.
            check_vma=False,
        )
        return mapped([leaves[i] for i in arrays], batch)

    def _out_specs(self):
        """Predictions concatenated along the batch axis; the rest is
        merged, the same on every device."""
        return ChunkResult(**{
            name: PartitionSpec(self.axis) if name == "y_pred"
            else PartitionSpec()
            for name in ChunkResult._fields
        })

    def _merged(self, result, non_trainable_before, metrics_before):
        """The devices' results merged by collectives (see the module)."""
        axis = self.axis

        def mean(value):
            return jax.lax.pmean(value, axis)

        merged = {
            # The descent's one gradient all-reduce.
            "gradients": [mean(g) for g in result.gradients],
            "non_trainable": [
                mean(value) if float_ else value
                for value, float_ in zip(result.non_trainable, self.is_float)
            ],
            "metrics": [
                before + jax.lax.psum(value - before, axis)
                for value, before in zip(result.metrics, metrics_before)
            ],
        }
        for name in result._fields:
            if name not in ("gradients", "non_trainable", "metrics",
                            "y_pred"):
                merged[name] = mean(ops.convert_to_tensor(
                    getattr(result, name), "float32"
                ))
        return result._replace(**merged)

    def _check_batch(self, batch):
        size = ops.shape(first_leaf(batch[0]))[0]
        devices = self.mesh.shape[self.axis]
        if size % devices:
            raise ValueError(
                "With perturbation='replica' under DataParallel every device "
                f"needs an equal shard of the batch. Received: batch of "
                f"{size} rows for {devices} devices."
            )


def _is_array(value):
    return isinstance(value, jax.Array)
