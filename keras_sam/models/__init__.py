"""Architectures of the SAM paper's CIFAR and ImageNet tables, as Keras
functional models.

Every builder returns a built functional `keras.Model` made of standard
Keras layers only (backend-neutral: TensorFlow, JAX and PyTorch), with
BatchNorm and an optional coupled L2 `weight_decay`. `get_model` builds one
by its short name.
"""

from keras_sam._model_names import (
    MODEL_NAMES,
    check_model_name,
    parse_model_name,
)
from keras_sam.models.imagenet_resnet import imagenet_resnet
from keras_sam.models.preact_resnet import preact_resnet
from keras_sam.models.pyramidnet import pyramidnet
from keras_sam.models.resnet import resnet
from keras_sam.models.shake_shake import shake_shake
from keras_sam.models.small_cnn import small_cnn
from keras_sam.models.stochastic import ShakeDrop, ShakeShake
from keras_sam.models.wide_resnet import wide_resnet

# The names and their parsing import no Keras (the command line checks
# `--model` with them before importing Keras).
_BUILDERS = {
    "imagenet_resnet": imagenet_resnet,
    "preact_resnet": preact_resnet,
    "pyramidnet": pyramidnet,
    "resnet": resnet,
    "shake_shake": shake_shake,
    "small_cnn": small_cnn,
    "wide_resnet": wide_resnet,
}

_DEFAULTS = {
    "input_shape": (32, 32, 3),
    "num_classes": 10,
    "weight_decay": 0.0,
    "classifier_activation": "softmax",
    "name": None,
}



def get_model(name, /, **kwargs):
    """Builds an architecture by its short name.

    Names (`MODEL_NAMES`): `"small-cnn"`, `"resnet-20"`, `"resnet-56"`,
    `"wrn-16-4"`, `"wrn-16-8"`, `"wrn-28-10"`, `"preact-resnet-18"`,
    `"shake-shake-26-2x96d"`, `"pyramidnet-272-200"` and
    `"pyramidnet-272-200-shakedrop"` (the SAM paper's PyramidNet rows;
    also `"pyramidnet"` and `"pyramidnet-shakedrop"`), and the ImageNet
    bottleneck ResNets `"resnet-50"`, `"resnet-101"` and `"resnet-152"`
    (`imagenet_resnet`); more generally `"resnet-<depth>"` (the CIFAR
    `resnet` for every depth but 50, 101 and 152: these three are always
    the ImageNet ones, although 50 and 152 are 6n+2 too),
    `"wrn-<depth>-<width>"`, `"preact-resnet-<18|34>"`,
    `"shake-shake-<depth>-2x<width>d"` and
    `"pyramidnet-<depth>-<alpha>[-shakedrop]"`.

    Args:
        name: the architecture's short name (case-insensitive),
            positional only.
        **kwargs: passed to the builder (`small_cnn`, `resnet`,
            `imagenet_resnet`, `wide_resnet`, `preact_resnet`,
            `shake_shake` or `pyramidnet`), e.g. `name` (the model's),
            `input_shape`, `num_classes`, `weight_decay`,
            `classifier_activation`, `dropout_rate` (WRN), `seed`
            (Shake-Shake, PyramidNet), `final_drop_rate` (ShakeDrop).
            `input_shape` defaults to `(32, 32, 3)` and `num_classes` to
            `10` for every name, the ImageNet ResNets included: pass
            e.g. `input_shape=(224, 224, 3), num_classes=1000` for those.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.get_model(
    ...     "wrn-16-8", num_classes=100, weight_decay=5e-4)
    """
    builder_name, fixed, overridable, default_name = parse_model_name(name)
    builder = _BUILDERS[builder_name]
    for key in fixed:
        if key in kwargs:
            raise ValueError(
                f"`{key}` is set by the model name {name!r}; got "
                f"{key}={kwargs[key]!r} too."
            )
    allowed = set(_DEFAULTS) | set(overridable)
    unknown = sorted(set(kwargs) - allowed - set(fixed))
    if unknown:
        raise ValueError(
            f"Unknown arguments {unknown} for model {name!r}; accepted: "
            f"{sorted(allowed)}."
        )
    options = {**_DEFAULTS, **overridable, **kwargs, **fixed}
    if options["name"] is None:
        options["name"] = default_name
    return builder(**options)


__all__ = [
    "MODEL_NAMES",
    "ShakeDrop",
    "ShakeShake",
    "check_model_name",
    "get_model",
    "imagenet_resnet",
    "preact_resnet",
    "pyramidnet",
    "resnet",
    "shake_shake",
    "small_cnn",
    "wide_resnet",
]
