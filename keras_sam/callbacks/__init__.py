"""Keras callbacks that measure the loss landscape during `fit`.

Each writes its values into `logs` (so `History`, `CSVLogger`,
`TensorBoard` and KerasTuner objectives see them), reads the learning rate
and momentum from the optimizer, and keeps within a wall-time budget.
The numbers come from `keras_sam.hessian`.
"""

from keras_sam.callbacks.hessian_trace import HessianTrace
from keras_sam.callbacks.linear_stability import LinearStability
from keras_sam.callbacks.noise_alignment import NoiseAlignment
from keras_sam.callbacks.sharpness import Sharpness
from keras_sam.callbacks.sharpness_measures import SharpnessMeasures

__all__ = [
    "HessianTrace",
    "LinearStability",
    "NoiseAlignment",
    "Sharpness",
    "SharpnessMeasures",
]
