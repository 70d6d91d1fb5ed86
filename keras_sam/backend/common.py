"""Pieces of the SAM step shared by the backend modules."""

import keras

# Logged by `fit` only; `evaluate` has no ascent step.
SAM_LOG_NAMES = ("sam_sharpness", "grad_norm")


def unpack(model, data):
    """Unpacks a batch and makes sure the model and its metrics are built.

    The SAM passes are stateless and need every variable to exist before
    they start, so a model wrapped unbuilt is built symbolically here, on
    the first trace, from the batch's shapes.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not _fully_built(model):
        # Keras builds lazily on the first forward pass; the stateless
        # passes cannot create variables, so build from the batch's specs.
        model._symbolic_build(data_batch=data)
    model.check_trainable()
    return x, y, sample_weight


def _fully_built(model):
    unbuilt = [layer for layer in model._flatten_layers() if not layer.built]
    compiled = [model._compile_metrics, model._compile_loss]
    return not unbuilt and all(c is None or c.built for c in compiled)


def assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def without_sam_logs(logs):
    """Drops the training-only SAM entries from `evaluate`'s logs."""
    return {k: v for k, v in logs.items() if k not in SAM_LOG_NAMES}
