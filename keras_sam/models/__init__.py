"""Architectures of the SAM paper's CIFAR and ImageNet tables, as Keras
functional models.

Every builder returns a built functional `keras.Model` made of standard
Keras layers only (backend-neutral: TensorFlow, JAX and PyTorch), with
BatchNorm and an optional coupled L2 `weight_decay`. `get_model` builds one
by its short name.
"""

import re

from keras_sam.models.imagenet_resnet import imagenet_resnet
from keras_sam.models.preact_resnet import preact_resnet
from keras_sam.models.pyramidnet import pyramidnet
from keras_sam.models.resnet import resnet
from keras_sam.models.shake_shake import shake_shake
from keras_sam.models.small_cnn import small_cnn
from keras_sam.models.stochastic import ShakeDrop, ShakeShake
from keras_sam.models.wide_resnet import wide_resnet

MODEL_NAMES = (
    "small-cnn",
    "resnet-20",
    "resnet-56",
    "wrn-16-4",
    "wrn-16-8",
    "wrn-28-10",
    "preact-resnet-18",
    "shake-shake-26-2x96d",
    "pyramidnet-272-200",
    "pyramidnet-272-200-shakedrop",
    "resnet-50",
    "resnet-101",
    "resnet-152",
)
"""The names of the SAM paper's architectures that `get_model` builds
(it also takes the patterns its docstring lists)."""

# `resnet-<depth>` with these depths is the ImageNet bottleneck ResNet.
_IMAGENET_RESNET_DEPTHS = (50, 101, 152)

_DEFAULTS = {
    "input_shape": (32, 32, 3),
    "num_classes": 10,
    "weight_decay": 0.0,
    "classifier_activation": "softmax",
    "name": None,
}


def _parse_name(name):
    """Maps a model name to `(builder, arguments fixed by the name,
    overridable arguments, default model name)`."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a model name, got {name!r}.")
    key = name.strip().lower().replace("_", "-")
    if key == "small-cnn":
        return small_cnn, {}, {"width": 16}, "small_cnn"
    match = re.fullmatch(r"pre-?act-resnet-?(\d+)", key)
    if match:
        depth = int(match.group(1))
        return preact_resnet, {"depth": depth}, {}, f"preact_resnet_{depth}"
    match = re.fullmatch(r"shake-shake-?(\d+)-2x(\d+)d", key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        return (
            shake_shake,
            {"depth": depth, "width": width},
            {"seed": None},
            f"shake_shake_{depth}_2x{width}d",
        )
    key = {
        "pyramidnet": "pyramidnet-272-200",
        "pyramidnet-shakedrop": "pyramidnet-272-200-shakedrop",
    }.get(key, key)
    match = re.fullmatch(r"pyramidnet-?(\d+)-(\d+)(-shakedrop)?", key)
    if match:
        depth, alpha = int(match.group(1)), int(match.group(2))
        shakedrop = bool(match.group(3))
        overridable = {"seed": None}
        if shakedrop:
            overridable["final_drop_rate"] = 0.5
        return (
            pyramidnet,
            {"depth": depth, "alpha": alpha, "shakedrop": shakedrop},
            overridable,
            f"pyramidnet_{depth}_{alpha}" + ("_shakedrop" if shakedrop else ""),
        )
    match = re.fullmatch(r"resnet-?(\d+)", key)
    if match:
        depth = int(match.group(1))
        # 50, 101 and 152 are the ImageNet bottleneck ResNets (50 and 152
        # are 6n+2 too, but the ImageNet meaning takes precedence).
        if depth in _IMAGENET_RESNET_DEPTHS:
            return (
                imagenet_resnet,
                {"depth": depth},
                {},
                f"imagenet_resnet_{depth}",
            )
        return resnet, {"depth": depth}, {}, f"resnet_{depth}"
    match = re.fullmatch(r"(?:wrn|wide-resnet)-?(\d+)-(\d+)", key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        fixed = {"depth": depth, "width": width}
        return (
            wide_resnet,
            fixed,
            {"dropout_rate": 0.0},
            f"wrn_{depth}_{width}",
        )
    raise ValueError(
        f"Unknown model name={name!r}. Known names: {list(MODEL_NAMES)}; "
        "also 'resnet-<50|101|152>' (ImageNet bottleneck ResNets), "
        "'resnet-<6n+2>' (CIFAR ResNets, other depths), 'wrn-<6n+4>-<k>', "
        "'preact-resnet-<18|34>', "
        "'shake-shake-<6n+2>-2x<width>d', 'pyramidnet-<9n+2>-<alpha>' "
        "(+ '-shakedrop'), and 'pyramidnet' for 'pyramidnet-272-200'."
    )


def check_model_name(name):
    """Checks a model name without building the model.

    Args:
        name: a name `get_model` accepts (case-insensitive).

    Returns:
        The name of the model `get_model(name)` builds, e.g. `"wrn_28_10"`
        for `"wrn-28-10"`.

    Raises:
        ValueError: for a name `get_model` does not know; the message
            lists the known names and patterns.

    Example:

    >>> keras_sam.models.check_model_name("WRN-28-10")
    'wrn_28_10'
    """
    return _parse_name(name)[3]


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
    builder, fixed, overridable, default_name = _parse_name(name)
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
