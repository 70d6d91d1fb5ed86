"""The private Keras internals keras-sam relies on, each in one place.

Everything here has no public Keras API (checked against Keras 3.15.1);
each use says why. `check()` verifies that every one still exists and
raises an error naming the installed Keras version if an upgrade removed
one (`tests/test_keras_compat.py` calls it).
"""

import keras


def loss_tracker(model):
    """The `Mean` metric behind the `loss` log, or `None` before compile.

    `compute_metrics` does not update it (Keras's own `train_step` does),
    so a custom step must; Keras exposes it only as `_loss_tracker`.
    """
    return model._loss_tracker


def fully_built(model):
    """Whether every layer and the compiled loss and metrics are built.

    The stateless SAM passes cannot create variables, so a lazily built
    model must be built before them. `Model.built` is set by the outer
    layer alone; nested layers and the compiled loss/metrics containers
    are reachable only through `_flatten_layers`, `_compile_metrics` and
    `_compile_loss`.
    """
    unbuilt = [layer for layer in model._flatten_layers() if not layer.built]
    compiled = [model._compile_metrics, model._compile_loss]
    return not unbuilt and all(c is None or c.built for c in compiled)


def all_layers(model):
    """`model` and every layer nested in it, at any depth.

    `Model.layers` lists the top level only; layers nested in custom
    layers are reachable only through `_flatten_layers`.
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


def symbolic_build(model, data_batch):
    """Builds the model, its compiled loss and metrics from a batch's specs,
    as `fit` does on its first step (`Trainer._symbolic_build`)."""
    model._symbolic_build(data_batch=data_batch)


def filled_stateless_scope(mapping):
    """A loss-collecting `StatelessScope` whose mapping is filled directly.

    The public constructor converts and shape-checks every value, about
    1 ms per pass on torch for a WRN; the SAM passes map variables to
    their own tensors or same-shaped results, so the check is redundant.
    `state_mapping` is keyed by `id(variable)`.
    """
    scope = keras.StatelessScope(collect_losses=True)
    scope.state_mapping.update((id(k), v) for k, v in mapping)
    return scope


def input_signature(model):
    """The input signature `model.export` would infer for `model`.

    `SAMModel` is a subclassed model built when its inner model is, so
    Keras never records the call shapes its own inference needs; the inner
    model's signature (from its inputs, or its recorded build shapes) is
    the wrapper's. Keras exposes the inference only as
    `keras.src.export.export_utils.get_input_signature`.
    """
    from keras.src.export import export_utils

    return export_utils.get_input_signature(model)


class FitTargetsCheck:
    """Checks that `fit`'s first batch has targets, before Keras builds.

    `fit` on JAX and torch builds the compiled loss from the first batch in
    Keras's private `Trainer._symbolic_build` before the first step, and a
    batch without targets fails there deep inside the backend
    (`None is not a valid value for jnp.array`). This override looks at
    the batch first, while `self._checking_fit_batches` is set (by
    `SAMModel.fit`; `predict` batches have no targets), and raises the
    error of `keras_sam._validation.check_targets`.
    """

    _checking_fit_batches = False

    def _symbolic_build(self, iterator=None, data_batch=None):
        if self._checking_fit_batches:
            if data_batch is None and iterator is not None:
                # As Keras's own `_symbolic_build` takes the first batch.
                for _, _, data_or_iterator in iterator:
                    if isinstance(data_or_iterator, (list, tuple)):
                        data_batch = data_or_iterator[0]
                    else:
                        data_batch = next(data_or_iterator)
                    break
            if data_batch is not None:
                from keras_sam import _validation

                _, y, _ = keras.utils.unpack_x_y_sample_weight(data_batch)
                _validation.check_targets(y)
        return super()._symbolic_build(
            iterator=iterator, data_batch=data_batch
        )


class LocalBatchSymbolicBuild:
    """Builds from `self._first_local_batch(iterator)` where it is a batch.

    Overrides Keras's private `Trainer._maybe_symbolic_build` (the
    TensorFlow `SAMTrainer` mixes this in): under
    MultiWorkerMirroredStrategy Keras builds from a batch reduced across
    replicas, which fails (see
    `keras_sam.backend.tensorflow.first_local_batch`); one replica's
    batch has the shapes and dtypes the build needs.
    """

    def _first_local_batch(self, iterator):
        return None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        local_batch = self._first_local_batch(iterator)
        if local_batch is not None:
            iterator, data_batch = None, local_batch
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )


# `LocalBatchSymbolicBuild._maybe_symbolic_build` overrides the method of
# Keras's TensorFlow trainer.
_OVERRIDDEN = (
    ("_maybe_symbolic_build",)
    if keras.backend.backend() == "tensorflow" else ()
)
# The `keras.Model` attributes used above.
MODEL_INTERNALS = (
    "_loss_tracker", "_flatten_layers", "_compile_metrics", "_compile_loss",
    "_symbolic_build", *_OVERRIDDEN,
)


def check():
    """Raises `ImportError` naming the Keras version if an internal that
    keras-sam uses is gone."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    missing = [name for name in MODEL_INTERNALS if not hasattr(model, name)]
    try:
        from keras.src.export.export_utils import (  # noqa: F401
            get_input_signature,
        )
    except ImportError:
        missing.append("keras.src.export.export_utils.get_input_signature")
    scope = keras.StatelessScope()
    if not isinstance(getattr(scope, "state_mapping", None), dict):
        missing.append("StatelessScope.state_mapping")
    if missing:
        raise ImportError(
            f"keras-sam needs Keras internals that Keras {keras.__version__} "
            f"no longer has: {', '.join(missing)}. Install a Keras version "
            "keras-sam supports (tested with 3.15.1) or update "
            "keras_sam/_keras_compat.py."
        )
