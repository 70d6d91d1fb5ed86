"""Keras callbacks that measure the loss landscape during `fit`.

Each writes its values into `logs` (so `History`, `CSVLogger`,
`TensorBoard` and KerasTuner objectives see them), reads the learning rate
and momentum from the optimizer, and keeps within a wall-time budget.
The numbers come from `keras_sam.hessian`.

`WeightTrajectory` records the weights to disk for
`keras_sam.landscape.trajectory_plane`; it measures nothing.

Common arguments. Every measuring callback here takes these four after
its own (each class's docstring lists them too):

- `freq`: Integer, measure every `freq` epochs (or steps). Defaults to
  `1`.
- `freq_unit`: `"epoch"` or `"step"`. With `"step"`, a measurement runs
  after every `freq`-th training step (counted across epochs) and each
  epoch's logs carry the latest values. Defaults to `"epoch"`.
- `max_overhead`: Float or `None`, the largest fraction of training wall
  time the callback may take; `None` for no limit. A measurement that
  would go over is skipped (NaN in that epoch's logs, one warning) and
  runs later. The first and the last epoch are measured regardless.
  Defaults to `0.05`.
- `probe_batch_size`: Integer, samples per microbatch of the probe data.
  Defaults to `128`.
"""

from keras_sam.callbacks.hessian_trace import HessianTrace
from keras_sam.callbacks.linear_stability import LinearStability
from keras_sam.callbacks.noise_alignment import NoiseAlignment
from keras_sam.callbacks.sharpness import Sharpness
from keras_sam.callbacks.sharpness_measures import SharpnessMeasures
from keras_sam.callbacks.weight_trajectory import WeightTrajectory

__all__ = [
    "HessianTrace",
    "LinearStability",
    "NoiseAlignment",
    "Sharpness",
    "SharpnessMeasures",
    "WeightTrajectory",
]
