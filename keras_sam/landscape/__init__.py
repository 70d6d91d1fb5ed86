"""The loss landscape along lines and planes in weight space: linear
interpolation between two sets of weights (Goodfellow et al., 2015),
random filter-normalized directions, and the plane of a training
trajectory's principal directions (Li et al., 2018).

Every function evaluates the probe loss of `keras_sam.hessian` (the
compiled loss plus the regularization losses, averaged over the probe
data, in inference mode: BatchNorm uses its moving statistics, dropout is
off) and the model's compiled metrics, aggregated over the whole probe set
as `evaluate` aggregates them, at weights `w` given as NumPy arrays. The
passes are stateless (`stateless_call` inside a `keras.StatelessScope`):
no variable of the model is assigned, so its weights, BatchNorm
statistics, seeds and metrics stay bitwise as they were. Only the
trainable variables move; the non-trainable ones (BatchNorm moving
statistics) keep the model's current values at every point.

Results are dicts of float64 NumPy arrays: the coordinates, `loss`, and
one array per compiled metric under the name `evaluate` logs it with.

References:
    - Goodfellow, Vinyals & Saxe, 2015. Qualitatively characterizing
      neural network optimization problems.
      https://arxiv.org/abs/1412.6544
    - Li et al., 2018. Visualizing the Loss Landscape of Neural Nets.
      https://arxiv.org/abs/1712.09913
"""

from keras_sam.landscape.surfaces import (
    filter_normalized_direction,
    interpolate,
    loss_surface_1d,
    loss_surface_2d,
)
from keras_sam.landscape.trajectory import trajectory_plane

__all__ = [
    "filter_normalized_direction",
    "interpolate",
    "loss_surface_1d",
    "loss_surface_2d",
    "trajectory_plane",
]
