"""Architectures of the SAM paper's CIFAR tables, as Keras functional models.

Every builder returns a built functional `keras.Model` made of standard
Keras layers only (backend-neutral: TensorFlow, JAX and PyTorch), with
BatchNorm and an optional coupled L2 `weight_decay`. `get_model` builds one
by its short name.
"""

import re

import keras

from keras_sam.models.resnet import _resnet, resnet
from keras_sam.models.small_cnn import _small_cnn, small_cnn
from keras_sam.models.wide_resnet import _wide_resnet, wide_resnet

MODEL_NAMES = (
    "small-cnn",
    "resnet-20",
    "resnet-56",
    "wrn-16-4",
    "wrn-16-8",
    "wrn-28-10",
)

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
        return _small_cnn, {}, {"width": 16}, "small_cnn"
    match = re.fullmatch(r"resnet-?(\d+)", key)
    if match:
        depth = int(match.group(1))
        return _resnet, {"depth": depth}, {}, f"resnet_{depth}"
    match = re.fullmatch(r"(?:wrn|wide-resnet)-?(\d+)-(\d+)", key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        fixed = {"depth": depth, "width": width}
        return (
            _wide_resnet,
            fixed,
            {"dropout_rate": 0.0},
            f"wrn_{depth}_{width}",
        )
    raise ValueError(
        f"Unknown model name={name!r}. Known names: {list(MODEL_NAMES)}; "
        "also 'resnet-<6n+2>' and 'wrn-<6n+4>-<k>'."
    )


def get_model(name, **kwargs):
    """Builds an architecture by its short name.

    Names: `"small-cnn"`, `"resnet-20"`, `"resnet-56"`, `"wrn-16-4"`,
    `"wrn-16-8"`, `"wrn-28-10"` (listed in `MODEL_NAMES`), and more
    generally `"resnet-<depth>"` and `"wrn-<depth>-<width>"`.

    Args:
        name: the model's short name (case-insensitive).
        **kwargs: passed to the builder (`small_cnn`, `resnet` or
            `wide_resnet`), e.g. `input_shape`, `num_classes`,
            `weight_decay`, `classifier_activation`, `dropout_rate`.

    Returns:
        A built functional `keras.Model`.

    Example:

    >>> model = keras_sam.models.get_model(
    ...     "wrn-16-8", num_classes=100, weight_decay=5e-4)
    """
    return _build(keras, name, **kwargs)


def _build(api, name, **kwargs):
    """Builds `name` with the layers of `api` (`keras`, or `tf_keras` for
    the benchmark against tf-keras's SAM only)."""
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
    return builder(api, **options)


__all__ = [
    "MODEL_NAMES",
    "get_model",
    "resnet",
    "small_cnn",
    "wide_resnet",
]
