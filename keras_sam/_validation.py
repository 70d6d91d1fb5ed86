"""Argument checks shared by the library, with Keras's message form:
"Argument `x` must be ... Received: x=...".

Every check returns the value converted to its canonical Python type.
"""

import math
import numbers
import re


def short_repr(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, minimum=1):
    """An integer `>= minimum` (booleans refused)."""
    if not is_integer(value) or value < minimum:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {minimum}. Received: "
            f"{name}={value!r}."
        )
    return int(value)


def check_optional_int(name, value, minimum=1):
    """`None` or an integer `>= minimum`."""
    if value is None:
        return None
    if not is_integer(value) or value < minimum:
        raise ValueError(
            f"Argument `{name}` must be None or an integer >= {minimum}. "
            f"Received: {name}={value!r}."
        )
    return int(value)


def check_positive_float(name, value):
    """A finite number `> 0`."""
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive finite number. "
            f"Received: {name}={value!r}."
        )
    return float(value)


def check_non_negative_float(name, value):
    """A finite number `>= 0`."""
    if not is_real(value):
        raise ValueError(
            f"Argument `{name}` must be a non-negative finite number. "
            f"Received: {name}={value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Argument `{name}` must be a non-negative finite number. "
            f"Received: {name}={value}."
        )
    return value


def check_unit_interval(name, value):
    """A number in `[0, 1)`, e.g. a momentum."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"Argument `{name}` must be a number in [0, 1). Received: "
            f"{name}={value!r}."
        )
    return float(value)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"Argument `{name}` must be a boolean. Received: {name}={value!r}."
        )
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Argument `{name}` must be one of {tuple(choices)}. "
            f"Received: {name}={value!r}."
        )
    return value


def unregistered_class_error(error):
    """The error to raise for `error`, a `TypeError` of Keras while
    loading a `SAMModel`'s inner model.

    Keras's "Could not locate class 'Name'" becomes a `ValueError` whose
    first line says the cause and the remedy (register the class); any
    other `TypeError` is returned as it is.
    """
    match = re.match(r"Could not locate (\w+) '([^']+)'", str(error))
    if match is None:
        return error
    kind, name = match.groups()
    python_name = name.split(">")[-1]
    return ValueError(
        f"Could not load the SAMModel: its inner model uses the {kind} "
        f"{name!r}, which Keras does not know; register it with "
        "`@keras.saving.register_keras_serializable()` on its definition "
        "and import that module before loading (or pass "
        f"`custom_objects={{{python_name!r}: {python_name}}}` to "
        "`keras.saving.load_model`)."
    )


def check_targets(y):
    """`y`, the targets of a training batch; a `ValueError` if `None`.

    A dataset or generator given to `fit` that yields inputs only (no
    targets) unpacks to `y=None`, which a SAM step cannot train on.

    Args:
        y: the targets `keras.utils.unpack_x_y_sample_weight` gave.

    Returns:
        `y`.
    """
    if y is None:
        raise ValueError(
            "A dataset or generator given to `fit` must yield `(x, y)` or "
            "`(x, y, sample_weight)`; it yielded inputs only (no targets, "
            "y=None), and a SAM step needs a loss of targets."
        )
    return y
