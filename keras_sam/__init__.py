"""keras-sam: Sharpness-Aware Minimization and stability measurement."""

from keras_sam import (
    accumulation,
    ascent,
    callbacks,
    compat,
    hessian,
    landscape,
    models,
    rho_schedules,
    rules,
    stateless,
)
from keras_sam._version import __version__ as __version__
from keras_sam.perturbed_subset import NORMALIZATION_LAYERS
from keras_sam.sam_model import SAMModel

# The experiment application (datasets, pipelines, the paper's recipe,
# tuning, reproduce, demo and the `keras-sam` command line) is the
# subpackage `keras_sam.experiments`, imported on demand.

__all__ = [
    "NORMALIZATION_LAYERS",
    "SAMModel",
    "accumulation",
    "ascent",
    "callbacks",
    "compat",
    "hessian",
    "landscape",
    "models",
    "rho_schedules",
    "rules",
    "stateless",
]


def __getattr__(name):
    # `keras_sam.variants`, the deprecated name of `keras_sam.rules`.
    if name == "variants":
        import importlib

        return importlib.import_module("keras_sam.variants")
    raise AttributeError(f"module 'keras_sam' has no attribute {name!r}")
