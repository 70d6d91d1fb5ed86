"""Deprecated alias of `keras_sam.rules` (the SAM rules were called
variants before 0.2). Importing it warns; every name is the same object
as in `keras_sam.rules`, so files saved with either load alike."""

import warnings

from keras_sam.rules import (  # noqa: F401
    AESAM,
    ASAM,
    ESAM,
    GSAM,
    MESA,
    SAF,
    SAM,
    FriendlySAM,
    LateSAM,
    LookSAM,
    MomentumSAM,
    RandomizedSAM,
    Rule,
    get,
    weight_masks,
)

Variant = Rule

warnings.warn(
    "`keras_sam.variants` is now `keras_sam.rules` (and `Variant` is "
    "`Rule`); the old names will be removed in a future version.",
    DeprecationWarning,
    stacklevel=2,
)
