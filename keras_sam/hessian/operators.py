"""Curvature operators other than the Hessian: the generalized Gauss-Newton
matrix and the Fisher (true and empirical), as products with flat vectors,
optionally restricted to a block of variables.

Each is `J^T M J` summed over the loss elements, `J` the Jacobian of the
model's output with respect to the trainable variables (one Jacobian-vector
and one vector-Jacobian product per microbatch, `keras_sam.backend.
linearize`) and `M` a small matrix per loss element in closed form (see
`curvature_operator_product` in `spectrum.py` for the definitions).

Internal to `keras_sam.hessian`: `OPERATORS`, `prepare_operator` and
`Operator` are shared with `spectrum.py` and `density.py`; none is part
of the package's API.
"""

import keras
import numpy as np
from keras import ops

from keras_sam import backend as sam_backend
from keras_sam import perturbed_subset
from keras_sam._validation import check_choice, short_repr
from keras_sam.hessian.curvature import compiled_for, prepare_curvature

OPERATORS = ("hessian", "ggn", "fisher", "empirical_fisher")

_MSE = "mean_squared_error"
_CE = "categorical_crossentropy"
_SPARSE_CE = "sparse_categorical_crossentropy"
_LOSS_NAMES = {
    "mse": _MSE,
    _MSE: _MSE,
    _CE: _CE,
    _SPARSE_CE: _SPARSE_CE,
}


class LossSpec:
    """What the output curvature needs to know of the compiled loss."""

    def __init__(self, kind, from_logits):
        self.kind = kind
        self.from_logits = from_logits


def loss_spec(model, operator):
    """The `LossSpec` of `model`'s compiled loss; `ValueError` naming the
    loss where `operator` is not defined for it."""
    loss = model.loss
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    elif isinstance(loss, dict) and len(loss) == 1:
        loss = next(iter(loss.values()))
    kind, config = None, {}
    if isinstance(loss, str):
        kind = _LOSS_NAMES.get(loss)
    elif isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        function = getattr(loss, "fn", None)
        kind = _LOSS_NAMES.get(getattr(function, "__name__", None))
    elif callable(loss):
        name = getattr(loss, "__name__", None)
        if _LOSS_NAMES.get(name) and keras.losses.get(name) is loss:
            kind = _LOSS_NAMES[name]
    reduction = config.get("reduction", "sum_over_batch_size")
    unsupported = (
        kind is None
        or reduction != "sum_over_batch_size"
        or config.get("ignore_class") is not None
    )
    if unsupported:
        raise ValueError(
            f"Argument `operator={operator!r}` needs a compiled loss of "
            "mean squared error or (sparse) categorical cross-entropy with "
            "the default reduction; the model's loss is "
            f"{short_repr(model.loss)}."
        )
    return LossSpec(kind, bool(config.get("from_logits", False)))


def _output_product(spec, operator, outputs, tangent, y, sample_weight):
    """`M J v` for every loss element: `tangent = J v`, shaped like
    `outputs`; `M` per element weighted as the compiled loss weights it
    (`sample_weight / number of elements`)."""
    # At least float32 (a float16 output's curvature is computed in
    # float32), float64 kept.
    dtype = "float64" if _is_float64(outputs) else "float32"
    outputs = ops.cast(outputs, dtype)
    tangent = ops.cast(tangent, dtype)
    classes = outputs.shape[-1]
    if len(outputs.shape) < 2:
        raise ValueError(
            "Argument `operator` other than 'hessian' needs model outputs "
            "with a last axis of classes or outputs. Received output shape "
            f"{tuple(outputs.shape)}."
        )
    flat_outputs = ops.reshape(outputs, (-1, classes))
    flat_tangent = ops.reshape(tangent, (-1, classes))
    count = ops.shape(flat_outputs)[0]
    weights = ops.ones_like(flat_outputs[:, 0]) / ops.cast(count, dtype)
    if sample_weight is not None:
        batch_size = ops.shape(outputs)[0]
        element_weight = ops.reshape(
            ops.cast(sample_weight, dtype), (batch_size, -1)
        ) * ops.ones_like(ops.reshape(flat_outputs[:, 0], (batch_size, -1)))
        weights = weights * ops.reshape(element_weight, (-1,))
    targets = None
    if operator == "empirical_fisher":
        targets = _targets(spec, y, classes, dtype)
    if spec.kind == _MSE:
        if operator == "empirical_fisher":
            residual = 2.0 / classes * (flat_outputs - targets)
            product = _rank_one(residual, flat_tangent)
        else:  # the Hessian in the outputs; the Fisher of N(f, C/2 I)
            product = 2.0 / classes * flat_tangent
    elif spec.from_logits:
        probabilities = ops.softmax(flat_outputs, axis=-1)
        if operator == "empirical_fisher":
            total = ops.sum(targets, axis=-1, keepdims=True)
            residual = total * probabilities - targets
            product = _rank_one(residual, flat_tangent)
        else:  # (diag p - p p^T) J v
            product = probabilities * flat_tangent - probabilities * ops.sum(
                probabilities * flat_tangent, axis=-1, keepdims=True
            )
    else:
        probabilities = flat_outputs / ops.sum(
            flat_outputs, axis=-1, keepdims=True
        )
        probabilities = ops.clip(
            probabilities, keras.config.epsilon(), 1 - keras.config.epsilon()
        )
        if operator == "empirical_fisher":
            residual = -targets / probabilities + ops.sum(
                targets, axis=-1, keepdims=True
            ) / ops.sum(flat_outputs, axis=-1, keepdims=True)
            product = _rank_one(residual, flat_tangent)
        else:  # diag(1/p): the logits' (diag p - p p^T) in probabilities
            product = flat_tangent / probabilities
    product = product * weights[:, None]
    return ops.reshape(product, ops.shape(outputs))


def _rank_one(residual, tangent):
    """`r (r . u)` per loss element."""
    return residual * ops.sum(residual * tangent, axis=-1, keepdims=True)


def _is_float64(tensor):
    return keras.backend.standardize_dtype(tensor.dtype) == "float64"


def _targets(spec, y, classes, dtype):
    if y is None:
        raise ValueError(
            "Argument `operator='empirical_fisher'` needs targets: pass "
            "`data` as `(x, y)`."
        )
    if spec.kind == _SPARSE_CE:
        labels = ops.reshape(ops.cast(y, "int32"), (-1,))
        return ops.one_hot(labels, classes, dtype=dtype)
    return ops.reshape(ops.cast(y, dtype), (-1, classes))


def _build_product(model_ref, operator, spec):
    """`(state, batch, vector) -> operator @ vector` for one microbatch,
    compiled."""
    model = model_ref()
    variables = (model.trainable_variables, model.non_trainable_variables)
    del model

    def forward(trainable, non_trainable, x):
        mapping = list(zip(variables[0], trainable))
        mapping += zip(variables[1], non_trainable)
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            outputs = model_ref()(x, training=False)
        if not hasattr(outputs, "shape") or isinstance(outputs, (list, dict)):
            raise ValueError(
                f"Argument `operator={operator!r}` needs a model with one "
                f"output tensor. Received outputs {short_repr(outputs)}."
            )
        return outputs

    def regularization(trainable, non_trainable, x):
        mapping = list(zip(variables[0], trainable))
        mapping += zip(variables[1], non_trainable)
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            model = model_ref()
            model(x, training=False)
            losses = [ops.sum(ops.cast(v, "float32")) for v in model.losses]
        return ops.sum(ops.stack(losses)) if losses else None

    linearized = sam_backend.linearize(forward)
    regularization_hvp = sam_backend.hessian_vector_product(
        lambda t, n, x: regularization(t, n, x)
    )
    has_regularization = {}

    def product(state, batch, vector):
        x, y, sample_weight = batch
        trainable, non_trainable = state[0], state[1]
        outputs, tangent, vjp = linearized(
            trainable, vector, non_trainable, x
        )
        cotangent = _output_product(
            spec, operator, outputs, tangent, y, sample_weight
        )
        cotangent = ops.cast(cotangent, outputs.dtype)
        result = list(vjp(cotangent))
        if "value" not in has_regularization:
            has_regularization["value"] = (
                regularization(trainable, non_trainable, x) is not None
            )
        if has_regularization["value"]:
            extra = regularization_hvp(trainable, vector, non_trainable, x)
            result = [a + b for a, b in zip(result, extra)]
        return result

    return sam_backend.compile_function(product)


def operator_product_function(model, operator):
    """The compiled microbatch product of `operator` on `model`."""
    spec = loss_spec(model, operator)
    return compiled_for(
        model,
        f"operator:{operator}",
        lambda model_ref: _build_product(model_ref, operator, spec),
    )


class Operator:
    """A curvature operator of the probe loss on flat float64 vectors,
    optionally restricted to a block of variables.

    `hvp(v)` is the product (`H`, GGN or Fisher) with a vector of `dim`
    entries (the block's, in the order of `model.trainable_variables`);
    `split(v)` pads a block vector with zeros and shapes it like the
    trainable variables; `layer_blocks()` is `Curvature.layer_blocks`
    restricted to the block and re-indexed.
    """

    def __init__(self, curvature, operator, product, indices):
        self.curvature = curvature
        self.operator = operator
        self._product = product
        self.indices = indices
        self.dim = curvature.dim if indices is None else len(indices)

    def full_product(self, flat_vector):
        """The operator times a vector over all trainable parameters."""
        if self._product is None:
            return self.curvature.hvp(flat_vector)
        curvature = self.curvature
        vector = curvature.unflatten(flat_vector)
        total = np.zeros(curvature.dim)
        for batch, weight in curvature.batches():
            total += weight * curvature.flatten(
                self._product(curvature.state, batch, vector)
            )
        return total

    def hvp(self, flat_vector):
        """The operator's block times a vector of `dim` entries."""
        if self.indices is None:
            return self.full_product(flat_vector)
        padded = np.zeros(self.curvature.dim)
        padded[self.indices] = flat_vector
        return self.full_product(padded)[self.indices]

    def pad(self, flat_vector):
        """A block vector padded with zeros to all trainable parameters."""
        if self.indices is None:
            return np.asarray(flat_vector, np.float64)
        padded = np.zeros(self.curvature.dim)
        padded[self.indices] = flat_vector
        return padded

    def split(self, flat_vector):
        """A block vector as arrays shaped like the trainable variables
        (zeros outside the block)."""
        return self.curvature.split(self.pad(flat_vector))

    def layer_blocks(self):
        """`Curvature.layer_blocks` restricted to the block, as indices
        into the block's vectors."""
        blocks = self.curvature.layer_blocks()
        if self.indices is None:
            return blocks
        position = np.full(self.curvature.dim, -1)
        position[self.indices] = np.arange(len(self.indices))
        restricted = {}
        for layer, indices in blocks.items():
            inside = position[indices]
            inside = inside[inside >= 0]
            if len(inside):
                restricted[layer] = inside
        return restricted


def prepare_operator(
    model, data, probe_batch_size, operator="hessian", layers=None
):
    """The `Operator` named `operator` of `model`'s probe loss on `data`,
    restricted to the variables of the layers `layers` selects."""
    operator = check_choice("operator", operator, OPERATORS)
    layers = _check_layers(layers)
    curvature = prepare_curvature(model, data, probe_batch_size)
    product = None
    if operator != "hessian":
        product = operator_product_function(model, operator)
    indices = None
    if layers is not None:
        mask = _layer_mask(layers, model)
        indices = np.concatenate(
            [
                np.arange(start, start + size)
                for start, size, chosen in zip(
                    np.cumsum([0] + curvature.sizes[:-1]),
                    curvature.sizes,
                    mask,
                )
                if chosen
            ]
        )
    return Operator(curvature, operator, product, indices)


def _layer_mask(layers, model):
    try:
        return perturbed_subset.perturbed_mask(
            layers, model, model.trainable_variables
        )
    except ValueError:
        raise ValueError(
            "Argument `layers` selects no trainable variable of the model "
            f"{model.name!r}. Received: layers={short_repr(layers)}."
        ) from None


def _check_layers(layers):
    """`perturb=`'s selector (layer classes or a callable), named
    `layers` in errors."""
    try:
        return perturbed_subset.check_perturb(layers)
    except ValueError:
        raise ValueError(
            "Argument `layers` must be None, a layer class, a tuple of "
            "`keras.layers.Layer` subclasses or a callable `layer -> bool`. "
            f"Received: layers={short_repr(layers)}."
        ) from None
