"""Sharpness-aware training from the trajectory: SAF and MESA
(`keras_sam.rules`)."""

import keras
from keras import ops

from keras_sam import _validation, stateless
from keras_sam.rules._shared import num_replicas
from keras_sam.rules.base import Rule

SAMPLE_INDEX_KEYS = ("inputs", "sample_index")


class _TrajectoryLoss(Rule):
    """The part SAF and MESA share: no ascent, and the KL divergence

    `L_tra = weight * tau^2 * mean_i KL(softmax(r_i / tau) ||
    softmax(z_i / tau))`

    between a reference output `r_i` and the network's output `z_i`
    (logits, or log-probabilities with `from_logits=False`), added to the
    compiled loss. The batch mean is over every row of the chunk (a row
    without a reference counts 0); sample weights weight the compiled loss
    only."""

    measures_sharpness = False
    adds_loss = True
    carries_state = True

    def __init__(self, weight, temperature, from_logits):
        self.weight = _validation.check_non_negative_float("weight", weight)
        self.temperature = _validation.check_positive_float(
            "temperature", temperature
        )
        self.from_logits = _validation.check_bool("from_logits", from_logits)

    def ascends_at(self, step, state):
        return False

    def model_inputs(self, x):
        """`x["inputs"]` where `x` is `{"inputs": ..., "sample_index":
        ...}`, else `x`."""
        if isinstance(x, dict) and set(x) == set(SAMPLE_INDEX_KEYS):
            return x["inputs"]
        return x

    def _logits(self, predictions):
        if not isinstance(predictions, (list, tuple, dict)) and len(
            predictions.shape
        ) == 2:
            predictions = ops.cast(predictions, "float32")
            if self.from_logits:
                return predictions
            return ops.log(ops.clip(predictions, 1e-12, 1.0))
        raise ValueError(
            f"{type(self).__name__} compares class scores and needs a model "
            "with one output of shape (batch, num_classes). Received: "
            f"predictions={_validation.short_repr(predictions)}."
        )

    def _divergence(self, reference, logits, valid):
        """`weight * tau^2 * sum_i valid_i KL_i / batch`."""
        tau = self.temperature
        target = ops.softmax(ops.stop_gradient(reference) / tau, axis=-1)
        log_target = ops.log_softmax(
            ops.stop_gradient(reference) / tau, axis=-1
        )
        log_current = ops.log_softmax(logits / tau, axis=-1)
        per_sample = ops.sum(target * (log_target - log_current), axis=-1)
        per_sample = ops.where(valid, per_sample, 0.0)
        batch = ops.cast(ops.shape(logits)[0], "float32")
        # Divided by the replicas like Keras's compiled loss (whose
        # gradients `optimizer.apply` sums over replicas).
        return self.weight * tau**2 * ops.sum(per_sample) / (
            batch * num_replicas()
        )


@keras.saving.register_keras_serializable(package="keras_sam")
class SAF(_TrajectoryLoss):
    """Sharpness-Aware training for Free (Du et al., 2022, SAF): SAM's
    ascent replaced by a trajectory loss on the outputs the network gave
    for the same samples `epochs_back` epochs earlier.

    With `z_i^(e)` the output (logits) for sample `i` in epoch `e`, the
    loss minimized in epoch `e >= start_epoch` is

    `L(w) + lambda * tau^2 / |B| * sum_{i in B}
    KL(softmax(z_i^(e - E) / tau) || softmax(z_i(w) / tau))`,

    `lambda = weight`, `tau = temperature`, `E = epochs_back`: a sudden
    drop of the training loss along the trajectory, which SAM's sharpness
    measure penalizes, shows as a large change of the outputs. No ascent,
    one pass per step: the cost of a plain step, plus the memory of the
    stored outputs, `epochs_back * num_samples * num_classes` floats (a
    ring of `E` tables; each step reads the rows of its samples written
    `E` epochs ago and overwrites them with this step's clean outputs).
    The `tau^2` factor follows the authors' implementation
    (https://github.com/AngusDujw/SAF); their ImageNet settings are
    `lambda = 0.3`, `tau = 5`, `E = 3` (`--minus_epoch 2` or 3 in their
    scripts) and the loss from epoch 5 on.

    What SAF needs from the data: each sample's index in `[0,
    num_samples)`, the same in every epoch, and each sample once per
    epoch of `steps_per_epoch` steps (epoch = `optimizer.iterations //
    steps_per_epoch`). Give `x` as a dict `{"inputs": x, "sample_index":
    index}`; the wrapped model receives `x["inputs"]` (`evaluate` and
    `predict` take plain inputs too), and sample weights stay the third
    element: `({"inputs": x, "sample_index": i}, y, sample_weight)`.
    A sample whose stored output is missing (not seen `E` epochs ago)
    contributes 0. The outputs are stored in float32 in the rule's Keras
    variables (saved in `.keras` files and by `BackupAndRestore`); under
    `tf.distribute` the replicas' rows and outputs are gathered (one
    all-gather of the batch's outputs per step), so every replica holds
    every sample's outputs.

    Args:
        num_samples: Positive integer, the number of training samples
            (indices run from 0 to `num_samples - 1`).
        num_classes: Positive integer, the width of the model's output.
        steps_per_epoch: Positive integer, the steps of one epoch.
        epochs_back: Positive integer `E`, how many epochs back the
            reference outputs are. Defaults to `3`.
        weight: Non-negative float `lambda`. Defaults to `0.3`.
        temperature: Positive float `tau`. Defaults to `5.0`.
        start_epoch: Non-negative integer, the first epoch (counted from
            0) with the trajectory loss (it needs `start_epoch >=
            epochs_back` to have references). Defaults to `5`.
        from_logits: Boolean, whether the model outputs logits (else
            probabilities, whose logarithms are used). Defaults to `True`.

    Example:

    ```python
    index = np.arange(len(x_train))
    sam = keras_sam.SAMModel(model, rule=keras_sam.rules.SAF(
        num_samples=len(x_train), num_classes=10,
        steps_per_epoch=math.ceil(len(x_train) / 128)))
    sam.compile(optimizer="sgd", loss=keras.losses.
                SparseCategoricalCrossentropy(from_logits=True))
    sam.fit({"inputs": x_train, "sample_index": index}, y_train,
            batch_size=128, epochs=200)
    ```

    Reference:
        Du, Zhou, Feng, Tan and Zhou, 2022. Sharpness-Aware Training for
        Free. NeurIPS. https://arxiv.org/abs/2205.14083
    """

    def __init__(self, num_samples, num_classes, steps_per_epoch,
                 epochs_back=3, weight=0.3, temperature=5.0, start_epoch=5,
                 from_logits=True):
        super().__init__(weight, temperature, from_logits)
        self.num_samples = _validation.check_int("num_samples", num_samples)
        self.num_classes = _validation.check_int("num_classes", num_classes)
        self.steps_per_epoch = _validation.check_int(
            "steps_per_epoch", steps_per_epoch
        )
        self.epochs_back = _validation.check_int("epochs_back", epochs_back)
        self.start_epoch = _validation.check_int(
            "start_epoch", start_epoch, minimum=0
        )

    def state_shapes(self, perturbed, trainable):
        # Per slot and sample: the epoch of the stored output plus one (0:
        # none), then the outputs.
        rows = self.epochs_back * self.num_samples
        return [(rows,), (rows, self.num_classes)]

    def sample_index(self, x):
        """The batch's sample indices, int32."""
        if not (isinstance(x, dict) and set(x) == set(SAMPLE_INDEX_KEYS)):
            raise ValueError(
                "SAF needs each training sample's index: give x as "
                "{'inputs': x, 'sample_index': index}. Received: x="
                f"{_validation.short_repr(x, 100)}."
            )
        return ops.reshape(ops.cast(x["sample_index"], "int32"), (-1,))

    def _rows(self, x, step):
        """The epoch, and the rows of this epoch's slot for the batch."""
        epoch = ops.floor_divide(
            ops.cast(step.iterations, "int32"), self.steps_per_epoch
        )
        slot = ops.mod(epoch, self.epochs_back)
        return epoch, slot * self.num_samples + self.sample_index(x)

    def loss_term(self, model, predictions, chunk, state, step):
        logits = self._logits(predictions)
        epoch, rows = self._rows(chunk.batch[0], step)
        stamps, table = state
        written = ops.take(stamps, rows, axis=0)
        reference = ops.take(table, rows, axis=0)
        due = ops.cast(epoch - self.epochs_back + 1, "float32")
        valid = ops.logical_and(
            ops.equal(written, due), epoch >= self.start_epoch
        )
        return self._divergence(reference, logits, valid)

    def record(self, model, predictions, chunk, state, step):
        logits = ops.stop_gradient(self._logits(predictions))
        epoch, rows = self._rows(chunk.batch[0], step)
        if num_replicas() > 1:  # every replica writes every replica's rows
            from keras_sam.backend import tensorflow as tf_backend

            rows, logits = tf_backend.all_gather([rows, logits])
        stamps, table = state
        indices = ops.expand_dims(rows, -1)
        stamp = ops.cast(epoch + 1, "float32") * ops.ones_like(
            ops.cast(rows, "float32")
        )
        return [ops.scatter_update(stamps, indices, stamp),
                ops.scatter_update(table, indices, logits)]

    def get_config(self):
        return {"num_samples": self.num_samples,
                "num_classes": self.num_classes,
                "steps_per_epoch": self.steps_per_epoch,
                "epochs_back": self.epochs_back, "weight": self.weight,
                "temperature": self.temperature,
                "start_epoch": self.start_epoch,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_sam")
class MESA(_TrajectoryLoss):
    """Memory-Efficient Sharpness-Aware training (Du et al., 2022, MESA):
    SAF's trajectory loss with the outputs of an exponential moving
    average of the weights as the reference, so no per-sample memory.

    With `v_t = decay * v_{t-1} + (1 - decay) * w_t` (`v_0 = w_0`, `w_t`
    the weights at step `t` before its update), the loss minimized from
    step `start_step` on is

    `L(w) + lambda * tau^2 / |B| * sum_{i in B}
    KL(softmax(f(x_i; v_t) / tau) || softmax(f(x_i; w) / tau))`,

    `lambda = weight`, `tau = temperature`. Cost: one pass and one forward
    pass (the teacher, at `v_t`, run on every step, also before
    `start_step`). The teacher runs in inference mode (no dropout;
    BatchNorm with the model's current moving statistics; the authors
    also average those) and its outputs are not differentiated. `v` is
    kept in float32 Keras variables (saved in `.keras` files and by
    `BackupAndRestore`, identical on every replica). The authors'
    ImageNet settings: `lambda = 0.8`, `tau = 5`, the loss from epoch 5
    on; the paper's EMA decay is 0.9995 (their script's default, timm's,
    is 0.9998).

    Args:
        start_step: Non-negative integer, the first step with the
            trajectory loss (for an epoch, `epoch * steps_per_epoch`).
        decay: Float in `[0, 1)`, the EMA decay. Defaults to `0.9995`.
        weight: Non-negative float `lambda`. Defaults to `0.8`.
        temperature: Positive float `tau`. Defaults to `5.0`.
        from_logits: Boolean, whether the model outputs logits (else
            probabilities, whose logarithms are used). Defaults to `True`.

    Reference:
        Du, Zhou, Feng, Tan and Zhou, 2022. Sharpness-Aware Training for
        Free. NeurIPS. https://arxiv.org/abs/2205.14083
    """

    def __init__(self, start_step, decay=0.9995, weight=0.8,
                 temperature=5.0, from_logits=True):
        super().__init__(weight, temperature, from_logits)
        self.start_step = _validation.check_int(
            "start_step", start_step, minimum=0
        )
        self.decay = _validation.check_unit_interval("decay", decay)

    def state_shapes(self, perturbed, trainable):
        # The step of the last update plus one (0: none), then v.
        return [()] + [tuple(w.shape) for w in trainable]

    def _average(self, state, step):
        """`v_t`: the average including this step's weights (updated once
        per step, whichever chunk comes first)."""
        updated, average = state[0], state[1:]
        now = ops.cast(step.iterations, "float32") + 1.0
        weights = [ops.cast(w, "float32") for w in step.weights]
        started, fresh = updated > 0.0, ops.equal(updated, now)
        return now, [
            ops.where(fresh, v, ops.where(
                started, self.decay * v + (1.0 - self.decay) * w, w
            ))
            for v, w in zip(average, weights)
        ]

    def loss_term(self, model, predictions, chunk, state, step):
        logits = self._logits(predictions)
        _, average = self._average(state, step)
        teacher_weights = [
            ops.cast(v, w.dtype) for v, w in zip(average, step.weights)
        ]
        teacher = stateless.stateless_predictions(
            model, teacher_weights, chunk.non_trainable, chunk.batch[0],
            variables=step.variables,
        )
        active = ops.greater_equal(step.iterations, self.start_step)
        valid = ops.logical_and(active, ops.ones_like(logits[:, 0]) > 0.0)
        return self._divergence(self._logits(teacher), logits, valid)

    def record(self, model, predictions, chunk, state, step):
        now, average = self._average(state, step)
        return [now, *average]

    def get_config(self):
        return {"start_step": self.start_step, "decay": self.decay,
                "weight": self.weight, "temperature": self.temperature,
                "from_logits": self.from_logits}
