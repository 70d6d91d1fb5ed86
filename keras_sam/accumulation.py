"""Gradient accumulation: large-batch and full-batch steps from microbatches.

A Keras 3 optimizer built with `gradient_accumulation_steps=k` adds up the
gradients of `k` consecutive `apply` calls and updates the weights once,
with their mean; clipping (`clipnorm`, `global_clipnorm`) and weight decay
act on that mean, once per update. Every model's `train_step`, including
`keras_sam.SAMModel`'s (on TensorFlow, JAX and PyTorch), hands its
gradients to the optimizer, so accumulation works without changing the
model. This module adds what full-batch training needs on top of it:

- `full_batch_optimizer` makes one update per pass over the data: with a
  training set of `N` samples fed in microbatches of `B` (`N` divisible by
  `B`), it accumulates `N / B` microbatches, so each update uses the
  gradient of the whole training set (Geiping et al., 2021);
- learning-rate schedules count updates, not microbatches
  (`UpdateStepSchedule`; Keras evaluates a schedule at the microbatch
  counter).

What accumulating does not change: BatchNorm layers normalize each
microbatch with its own statistics and update their moving averages once
per microbatch ("ghost batch" normalization), and `SAMModel` computes one
perturbation per microbatch, `eps = rho g_b / ||g_b||` from the
microbatch's gradient `g_b`, then averages the perturbed gradients: SAM
with `m`-sharpness, `m = B` (the same as `SAMModel(num_batch_splits=k)` on
a batch of `k B` samples), not one `eps` from the full-batch gradient.

The other choice, one `eps` from the gradient of the whole (virtual)
batch, needs every microbatch's clean gradient before the first perturbed
pass, so it accumulates inside one step instead: feed batches of `k B`
samples to `SAMModel(num_batch_splits=k, split_perturbation="shared")`
with a plain optimizer. Its `k` clean passes give the batch's gradient,
one `eps` follows from it (`m = k B`), and its `k` perturbed passes give
the applied gradient. Both choices cost two passes per microbatch; the
accumulating optimizer holds one microbatch in memory per `train_step`,
the shared split one microbatch per pass.

References:
    - Geiping, Goldblum, Pope, Moeller & Goldstein, 2021. Stochastic
      Training is Not Necessary for Generalization.
      https://arxiv.org/abs/2109.14119
    - Foret et al., 2020, section 4.1 (m-sharpness).
      https://arxiv.org/abs/2010.01412
"""


import keras
from keras import ops

from keras_sam import _validation

__all__ = [
    "UpdateStepSchedule",
    "accumulation_steps",
    "full_batch_optimizer",
    "with_gradient_accumulation",
]


@keras.saving.register_keras_serializable(package="keras_sam")
class UpdateStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule in updates, for an accumulating optimizer.

    Keras evaluates an optimizer's schedule at its microbatch counter
    (`optimizer._iterations`), which grows `steps` times per update when
    the optimizer accumulates `steps` gradients. This schedule evaluates
    the wrapped `schedule` at `microbatch // steps`, the number of updates
    made so far, so that the update number `u` (counted from 0) uses
    `schedule(u)`: a warm-up of 10 steps lasts 10 updates.

    Args:
        schedule: A `keras.optimizers.schedules.LearningRateSchedule` (or a
            callable of the step), written in updates.
        steps: Integer >= 1, the number of microbatches per update.

    Example:

    >>> cosine = keras.optimizers.schedules.CosineDecay(0.1, 100)
    >>> optimizer = keras.optimizers.SGD(         # 100 updates, 800 calls
    ...     UpdateStepSchedule(cosine, steps=8),
    ...     gradient_accumulation_steps=8)
    """

    def __init__(self, schedule, steps):
        if not callable(schedule):
            raise ValueError(
                "Argument `schedule` must be a LearningRateSchedule or a "
                f"callable of the step. Received: schedule={schedule!r}."
            )
        self.schedule = schedule
        self.steps = _validation.check_int("steps", steps)

    def __call__(self, step):
        return self.schedule(ops.floor_divide(step, self.steps))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "steps": self.steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(
            config["schedule"]
        )
        return cls(**config)


def accumulation_steps(dataset_size, batch_size):
    """The number of microbatches that make one pass over the data.

    Args:
        dataset_size: Integer >= 1, the number of training samples `N`.
        batch_size: Integer >= 1, the microbatch size `B`; must divide
            `dataset_size`, so that every microbatch has the same weight
            in the mean and every update starts a new pass.

    Returns:
        `N // B`, an integer.
    """
    dataset_size = _validation.check_int("dataset_size", dataset_size)
    batch_size = _validation.check_int("batch_size", batch_size)
    if batch_size > dataset_size or dataset_size % batch_size:
        raise ValueError(
            "Argument `batch_size` must divide `dataset_size`, so that each "
            "update averages whole, equally weighted microbatches. "
            f"Received: dataset_size={dataset_size}, "
            f"batch_size={batch_size}. Drop "
            f"{dataset_size % batch_size} samples or choose a divisor."
        )
    return dataset_size // batch_size


def with_gradient_accumulation(optimizer, steps):
    """Returns a copy of an optimizer that accumulates `steps` gradients.

    The copy is built from `optimizer.get_config()`, with Keras's
    `gradient_accumulation_steps=steps`: it updates the weights once every
    `steps` calls of `apply`, with the mean of the gradients of those
    calls, clipped (`clipnorm`, `global_clipnorm`, `clipvalue`) and
    weight-decayed after averaging. A learning-rate schedule is wrapped in
    `UpdateStepSchedule`, so it keeps counting updates. Use the copy with
    any model, `SAMModel` included (see the module docstring for what
    accumulation means for BatchNorm and for SAM's perturbation).

    Args:
        optimizer: A `keras.optimizers.Optimizer` or its name (`"sgd"`).
            Not modified. Its state (momentum, iterations) is not copied;
            `LossScaleOptimizer` is not supported (wrap the copy instead).
        steps: Integer >= 1, microbatches per update. `1` returns a plain
            copy (Keras accepts only `gradient_accumulation_steps >= 2`).

    Returns:
        A new, unbuilt optimizer of the same class.

    Example:

    ```python
    optimizer = keras_sam.accumulation.with_gradient_accumulation(
        keras.optimizers.SGD(0.1, momentum=0.9), steps=4)
    model = keras_sam.SAMModel(inner, rho=0.05)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=32)    # one update per 128 samples
    ```
    """
    steps = _validation.check_int("steps", steps)
    optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "Argument `optimizer` must not be a LossScaleOptimizer: make "
            "the accumulating copy of its inner optimizer and wrap that. "
            f"Received: optimizer={optimizer!r}."
        )
    config = optimizer.get_config()
    if isinstance(config["learning_rate"], dict):  # a serialized schedule
        schedule = keras.saving.deserialize_keras_object(
            config["learning_rate"]
        )
        if isinstance(schedule, UpdateStepSchedule):
            schedule = schedule.schedule
        if steps > 1:
            schedule = UpdateStepSchedule(schedule, steps)
        config["learning_rate"] = schedule
    config["gradient_accumulation_steps"] = steps if steps > 1 else None
    return type(optimizer).from_config(config)


def full_batch_optimizer(optimizer, dataset_size, batch_size):
    """Returns a copy of an optimizer that steps once per pass over the data.

    Full-batch gradient descent for data too large for one batch: the copy
    accumulates the `dataset_size // batch_size` microbatch gradients of
    each epoch of `fit(x, y, batch_size=batch_size)` and updates the
    weights once, with their mean, which is the gradient of the training
    loss over the whole training set (Keras losses average over the
    batch, and all microbatches have `batch_size` samples).
    `global_clipnorm` then clips the full-batch gradient. A
    learning-rate schedule counts full-batch steps.

    Args:
        optimizer: A `keras.optimizers.Optimizer` or its name. Not
            modified.
        dataset_size: Integer, the number of training samples.
        batch_size: Integer dividing `dataset_size`, the microbatch size
            passed to `fit`.

    Returns:
        A new, unbuilt optimizer (see `with_gradient_accumulation`).

    Example:

    ```python
    optimizer = keras_sam.accumulation.full_batch_optimizer(
        keras.optimizers.SGD(0.4, momentum=0.9, global_clipnorm=0.25),
        dataset_size=len(x_train), batch_size=500)
    model.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=500, epochs=100)  # 100 steps
    ```
    """
    steps = accumulation_steps(dataset_size, batch_size)
    return with_gradient_accumulation(optimizer, steps)
