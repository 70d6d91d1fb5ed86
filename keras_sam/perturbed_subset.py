"""Which variables SAM's ascent moves: `SAMModel(perturb=...)`.

`None` perturbs every trainable variable; a tuple of layer classes
perturbs the variables of the layers of those classes (with
`NORMALIZATION_LAYERS`: SAM-ON, Mueller et al., 2023, which perturbs the
normalization layers only); a callable `layer -> bool` chooses layers
itself. The norm in `eps = rho g / ||g||` is over the perturbed variables
only; the descent gradient covers every trainable variable.

Reference:
    Mueller et al., 2023. Normalization Layers Are All That
    Sharpness-Aware Minimization Needs. https://arxiv.org/abs/2306.04226
"""

import importlib

import keras

from keras_sam import _keras_compat, _validation

NORMALIZATION_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in ("BatchNormalization", "LayerNormalization",
                 "GroupNormalization", "RMSNormalization")
    if hasattr(keras.layers, name)
)
"""The normalization layer classes of the installed Keras
(`BatchNormalization`, `LayerNormalization`, `GroupNormalization`,
`RMSNormalization`, those it has): `SAMModel(perturb=NORMALIZATION_LAYERS)`
is SAM-ON, the ascent on the normalization layers only."""


def check_perturb(perturb):
    """`None`, a tuple of `keras.layers.Layer` subclasses, or a callable."""
    if isinstance(perturb, dict):
        return _deserialize(perturb)
    if perturb is None:
        return None
    if isinstance(perturb, type):
        perturb = (perturb,)
    if isinstance(perturb, (tuple, list)):
        bad = [c for c in perturb if not _is_layer_class(c)]
        if bad or not perturb:
            raise ValueError(
                "Argument `perturb` must be None, a non-empty tuple of "
                "`keras.layers.Layer` subclasses (e.g. "
                "`keras_sam.NORMALIZATION_LAYERS`) or a callable "
                f"`layer -> bool`. Received: perturb={perturb!r}"
                + (f", whose entries {bad!r} are not layer classes." if bad
                   else ".")
            )
        return tuple(perturb)
    if callable(perturb):
        return perturb
    raise ValueError(
        "Argument `perturb` must be None, a tuple of `keras.layers.Layer` "
        "subclasses or a callable `layer -> bool`. Received: "
        f"perturb={_validation.short_repr(perturb)} of type "
        f"{type(perturb).__name__}."
    )


def perturbed_mask(perturb, model, trainable_variables):
    """One boolean per trainable variable: whether the ascent moves it.

    Raises `ValueError` if `perturb` selects no trainable variable.
    """
    if perturb is None:
        return [True] * len(trainable_variables)
    chooses = (
        (lambda layer: isinstance(layer, perturb))
        if isinstance(perturb, tuple) else perturb
    )
    chosen = set()
    for layer in _keras_compat.all_layers(model):
        if chooses(layer):
            chosen.update(id(v) for v in layer.trainable_variables)
    mask = [id(v) in chosen for v in trainable_variables]
    if not any(mask):
        raise ValueError(
            f"Argument `perturb` selects no trainable variable of the model "
            f"{model.name!r}. Received: perturb={perturb!r}."
        )
    return mask


def serialize_perturb(perturb):
    """The JSON-able config of a `perturb` value, for `get_config`.

    Args:
        perturb: A value `check_perturb` accepts.

    Returns:
        `None` for `None`, `{"layer_classes": [names]}` for a tuple of
        layer classes, else `{"function": serialized callable}`;
        `check_perturb` turns each back into the value. A class's name is
        its registered name, or, for a class that is neither registered
        nor the `keras.layers` class of its name (Gemma's own
        `RMSNormalization` in KerasHub), `"module:QualifiedName"`.
    """
    if perturb is None:
        return None
    if isinstance(perturb, tuple):
        return {"layer_classes": [_class_name(c) for c in perturb]}
    return {"function": keras.saving.serialize_keras_object(perturb)}


def _class_name(cls):
    name = keras.saving.get_registered_name(cls)
    if keras.saving.get_registered_object(name) is cls:
        return name
    if getattr(keras.layers, name, None) is cls:
        return name
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(name):
    module, _, qualified_name = name.partition(":")
    value = importlib.import_module(module)
    for part in qualified_name.split("."):
        value = getattr(value, part)
    return value


def _deserialize(config):
    if "function" in config:
        return keras.saving.deserialize_keras_object(config["function"])
    classes = []
    for name in config["layer_classes"]:
        if ":" in name:
            classes.append(_import_class(name))
            continue
        cls = keras.saving.get_registered_object(name)
        if cls is None:
            cls = getattr(keras.layers, name, None)
        if cls is None:
            raise ValueError(
                f"Argument `perturb` names the layer class {name!r}, which "
                "is neither a `keras.layers` class nor registered with "
                "`keras.saving.register_keras_serializable`."
            )
        classes.append(cls)
    return check_perturb(tuple(classes))


def _is_layer_class(value):
    return isinstance(value, type) and issubclass(value, keras.layers.Layer)
