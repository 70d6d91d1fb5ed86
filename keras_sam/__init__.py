"""keras-sam: Sharpness-Aware Minimization and stability measurement."""

from keras_sam import (
    accumulation,
    ascent,
    callbacks,
    data_pipeline,
    datasets,
    hessian,
    models,
    paper_results,
    stateless,
    training,
)
from keras_sam.sam_model import SAMModel

# `keras_sam.tuning` (KerasTuner) and `keras_sam.reproduce` are imported on
# demand: `from keras_sam import tuning`.

__version__ = "0.1.0"

__all__ = [
    "SAMModel",
    "accumulation",
    "ascent",
    "callbacks",
    "data_pipeline",
    "datasets",
    "hessian",
    "models",
    "paper_results",
    "stateless",
    "training",
]
