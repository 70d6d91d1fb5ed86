"""keras-sam: Sharpness-Aware Minimization and stability measurement for Keras 3."""

from keras_sam import callbacks, hessian
from keras_sam.sam_model import SAMModel

__version__ = "0.1.0"

__all__ = [
    "SAMModel",
    "callbacks",
    "hessian",
]
