"""The model names `keras_sam.models.get_model` accepts (private).

Kept apart from the builders, and free of Keras, so that the `keras-sam`
command line checks `--model` before Keras is imported.
"""

import re

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


def parse_model_name(name):
    """Maps a model name to `(builder name, arguments fixed by the name,
    overridable arguments, default model name)`."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a model name, got {name!r}.")
    key = name.strip().lower().replace("_", "-")
    if key == "small-cnn":
        return "small_cnn", {}, {"width": 16}, "small_cnn"
    match = re.fullmatch(r"pre-?act-resnet-?(\d+)", key)
    if match:
        depth = int(match.group(1))
        return "preact_resnet", {"depth": depth}, {}, f"preact_resnet_{depth}"
    match = re.fullmatch(r"shake-shake-?(\d+)-2x(\d+)d", key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        return (
            "shake_shake",
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
            "pyramidnet",
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
                "imagenet_resnet",
                {"depth": depth},
                {},
                f"imagenet_resnet_{depth}",
            )
        return "resnet", {"depth": depth}, {}, f"resnet_{depth}"
    match = re.fullmatch(r"(?:wrn|wide-resnet)-?(\d+)-(\d+)", key)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        fixed = {"depth": depth, "width": width}
        return (
            "wide_resnet",
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
    return parse_model_name(name)[3]
