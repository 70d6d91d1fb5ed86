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
    stateless,
    variants,
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
    "stateless",
    "variants",
]
