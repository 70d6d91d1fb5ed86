"""keras-sam: Sharpness-Aware Minimization and stability measurement."""

from keras_sam import accumulation, callbacks, datasets, hessian, models
from keras_sam.sam_model import SAMModel

__version__ = "0.1.0"

__all__ = [
    "SAMModel",
    "accumulation",
    "callbacks",
    "datasets",
    "hessian",
    "models",
]
