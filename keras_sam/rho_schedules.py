"""Schedules for SAM's radius `rho`.

`SAMModel(rho=...)` takes a float or any
`keras.optimizers.schedules.LearningRateSchedule`, evaluated at
`optimizer.iterations` each step (the value used is logged as `rho`).
A Keras schedule gives rho its own decay, e.g.
`rho=keras.optimizers.schedules.CosineDecay(0.05, decay_steps)`;
`FollowLearningRate` gives GSAM's rho, an affine function of the
learning rate.
"""

import keras

from keras_sam import _validation

Schedule = keras.optimizers.schedules.LearningRateSchedule
"""The base class of a `rho` schedule (an alias of
`keras.optimizers.schedules.LearningRateSchedule`)."""


@keras.saving.register_keras_serializable(package="keras_sam")
class FollowLearningRate(Schedule):
    """`rho` that moves with the learning rate (Zhuang et al., 2022, eq. 8):

    `rho_t = rho_min + (rho_max - rho_min) * (lr_t - lr_min)
    / (lr_max - lr_min)`.

    Example: with `lr = keras.optimizers.schedules.CosineDecay(0.1, steps)`,
    `FollowLearningRate(lr, rho_max=0.05, rho_min=0.01, lr_max=0.1)` goes
    from 0.05 to 0.01 as the learning rate goes from 0.1 to 0.

    Args:
        learning_rate: The optimizer's `LearningRateSchedule`.
        rho_max: Non-negative float, `rho` at `lr_max`.
        rho_min: Non-negative float, `rho` at `lr_min`. Defaults to `0.0`.
        lr_max: Positive float, the schedule's largest learning rate.
        lr_min: Non-negative float below `lr_max`, its smallest. Defaults
            to `0.0`.

    Reference:
        Zhuang et al., 2022. Surrogate Gap Minimization Improves
        Sharpness-Aware Training. https://arxiv.org/abs/2203.08065
    """

    def __init__(self, learning_rate, rho_max, rho_min=0.0, lr_max=None,
                 lr_min=0.0):
        if isinstance(learning_rate, dict):
            learning_rate = keras.saving.deserialize_keras_object(
                learning_rate
            )
        if not isinstance(learning_rate, Schedule):
            raise ValueError(
                "Argument `learning_rate` must be a "
                "`keras.optimizers.schedules.LearningRateSchedule`. "
                f"Received: learning_rate={learning_rate!r}."
            )
        self.learning_rate = learning_rate
        self.rho_max = _validation.check_non_negative_float("rho_max", rho_max)
        self.rho_min = _validation.check_non_negative_float("rho_min", rho_min)
        self.lr_max = _validation.check_positive_float("lr_max", lr_max)
        self.lr_min = _validation.check_non_negative_float("lr_min", lr_min)
        if self.lr_min >= self.lr_max:
            raise ValueError(
                "Argument `lr_min` must be below `lr_max`. Received: "
                f"lr_min={lr_min!r}, lr_max={lr_max!r}."
            )

    def __call__(self, step):
        lr = keras.ops.cast(self.learning_rate(step), "float32")
        fraction = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        return self.rho_min + (self.rho_max - self.rho_min) * fraction

    def get_config(self):
        return {
            "learning_rate": keras.saving.serialize_keras_object(
                self.learning_rate
            ),
            "rho_max": self.rho_max,
            "rho_min": self.rho_min,
            "lr_max": self.lr_max,
            "lr_min": self.lr_min,
        }


def check_rho(rho):
    """A non-negative float, or a `LearningRateSchedule` (or its config)."""
    if isinstance(rho, dict):
        rho = keras.saving.deserialize_keras_object(rho)
    if isinstance(rho, Schedule):
        return rho
    if not _validation.is_real(rho):
        raise ValueError(
            "Argument `rho` must be a non-negative finite number or a "
            "`keras.optimizers.schedules.LearningRateSchedule`. Received: "
            f"rho={_validation.short_repr(rho)} of type {type(rho).__name__}."
        )
    return _validation.check_non_negative_float("rho", rho)


def serialize_rho(rho):
    """The JSON-able config of a `rho` value, for `get_config`.

    Args:
        rho: A value `check_rho` accepts.

    Returns:
        A schedule's Keras serialization, or the float itself;
        `check_rho` turns either back into the value.
    """
    if isinstance(rho, Schedule):
        return keras.saving.serialize_keras_object(rho)
    return rho
