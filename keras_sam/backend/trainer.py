"""`SAMTrainerBase`: what the three backends' SAM steps share, as methods.

As Keras's backend `Trainer`s share the methods of
`keras/src/trainers/trainer.py`, each backend's `SAMTrainer`
(`tensorflow.py`, `jax.py`, `torch.py` beside this file) writes its own
`train_step`, top to bottom, and calls these methods for the parts that do
not differ between backends:

1. `_pass`: the clean pass at `w` (the loss `L(w)` and its gradient `g`);
2. `_sam_or_plain_step`: where the rule ascends (every step for SAM),
   `_ascend`: the ascent point `w + eps` and
3. the perturbed pass there, whose gradient the rule turns into the one
   the optimizer applies; elsewhere the rule's one-pass step;
4. the descent, the optimizer's update of `w`, in `train_step` itself.

The values a step threads through its passes are named tuples: `Step`
(what every pass of the step reads), `PassOutput` (one forward and
backward pass) and `ChunkResult` (the outcome of steps 1-3 on one chunk
of the batch, see `keras_sam.backend.splits`).
"""

from typing import NamedTuple

import keras
from keras import ops

from keras_sam import (
    _keras_compat,
    _validation,
    ascent,
    rule_state,
    stateless,
)
from keras_sam.backend.splits import BatchSplits, first_leaf
from keras_sam.rho_schedules import Schedule

# Logged by `fit` only; `evaluate` has no ascent step.
SAM_LOG_NAMES = ("sam_sharpness", "grad_norm", "rho")


class Step(NamedTuple):
    """What every pass of one training step reads."""

    iterations: object
    """The optimizer's step counter before this step's update."""
    rho: object
    """The radius at this step (a float, or a float32 scalar tensor)."""
    loss_scale: object
    """The mixed-precision loss scale (1 without one), float32."""
    gradient_scale: object
    """`true gradient = gradient_scale * g` for the gradients the ascent
    reads (undoes the loss scale and, under `tf.distribute`, the
    `1 / num_replicas` factor)."""
    variables: stateless.ModelVariables
    """The model's variables."""
    rule_state_indices: list
    """Positions of the rule's state in `variables.non_trainable`."""
    weights: list
    """The trainable values `w`."""
    optimizer_values: object = None
    """The optimizer's variable values in a stateless step (JAX)."""


class PassOutput(NamedTuple):
    """One forward and backward pass at a point."""

    gradients: list
    """The (loss-scaled) gradient, one tensor per trainable variable."""
    non_trainable: list
    """The non-trainable values the pass would write."""
    metrics: list
    """The metrics values the pass would write."""
    y_pred: object
    """The predictions."""
    loss: object
    """The unscaled loss."""


class Outcome(NamedTuple):
    """Steps 2-3 of one chunk, or the rule's one-pass step instead."""

    applied: list
    """The gradient the optimizer applies."""
    sharpness: object
    """`L(w + eps) - L(w)` (0 without the ascent)."""
    ascended: object
    """1.0 where the ascent was made, 0.0 otherwise."""
    rule_state: list
    """The rule's new state."""


class ChunkResult(NamedTuple):
    """Steps 1-3 on one chunk of the batch (or on the whole batch)."""

    gradients: list
    non_trainable: list
    metrics: list
    y_pred: object
    loss: object
    sam_sharpness: object
    grad_norm: object
    ascended: object


class SAMTrainerBase(_keras_compat.FitTargetsCheck):
    """The methods every backend's `SAMTrainer.train_step` calls.

    Mixed into `keras_sam.SAMModel` through the backend's `SAMTrainer`;
    `self` is the `SAMModel`.
    """

    def _cond(self, pred, true_fn, false_fn):
        """`keras.ops.cond`; the JAX trainer selects on XLA:CPU."""
        return ops.cond(pred, true_fn, false_fn)

    # The step's inputs ---------------------------------------------------

    def _unpack(self, data):
        """Unpacks a batch and makes sure the model and its metrics are
        built.

        The SAM passes are stateless and need every variable to exist
        before they start, so a model wrapped unbuilt is built
        symbolically here, on the first trace, from the batch's shapes.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _validation.check_targets(y)
        if not _keras_compat.fully_built(self):
            _keras_compat.symbolic_build(self, data_batch=data)
        if not self.trainable_variables:
            raise ValueError(
                "SAMModel needs trainable weights to perturb, but the "
                f"wrapped model={self.model.name!r} has none (it has "
                f"{len(self.model.weights)} weights, all non-trainable)."
            )
        return x, y, sample_weight

    def _step(self, iterations, variables, weights, replica_factor=1.0,
              optimizer_values=None):
        """The `Step` of the optimizer's step `iterations` at the
        trainable values `weights` of the model's `variables` (listed
        once per step: on torch listing walks the layer tree);
        `replica_factor` is the factor by
        which the ascent's gradients are below the true gradient besides
        the loss scale (`num_replicas` under `tf.distribute`)."""
        loss_scale = ops.cast(
            self._scale_loss(ops.ones((), "float32"), optimizer_values),
            "float32",
        )
        if isinstance(self.rho, Schedule):
            rho = ops.cast(self.rho(iterations), "float32")
        else:
            rho = self.rho
        return Step(
            iterations=iterations,
            rho=rho,
            loss_scale=loss_scale,
            gradient_scale=replica_factor / loss_scale,
            variables=variables,
            rule_state_indices=rule_state.state_indices(
                self, variables.non_trainable
            ),
            weights=weights,
            optimizer_values=optimizer_values,
        )

    def _splits(self, num_splits, step, non_trainable, metrics, batch):
        """`BatchSplits` of `batch` from the given state values (the
        rule's state runs on from chunk to chunk where it
        `carries_state`)."""
        carried = step.rule_state_indices if self.rule.carries_state else ()
        return BatchSplits(
            num_splits, step.variables.non_trainable, non_trainable,
            metrics, batch, carried=carried,
        )

    def _perturbation_splits(self):
        """The number of chunks that get their own `eps`:
        `num_batch_splits` with `split_perturbation="per_split"`, else one
        (the whole batch)."""
        if self.split_perturbation == "shared":
            return 1
        return self.num_batch_splits or 1

    # Step 1 and the passes -----------------------------------------------

    def _first_point(self, step):
        """Step 1's point: `w`, or the rule's on the perturbed variables
        (MomentumSAM: `w` moved along the optimizer's momentum)."""
        direction = self.rule.first_direction(
            self.optimizer, step.optimizer_values
        )
        if direction is None:
            return step.weights
        mask = self._perturbed_mask()
        points = self.rule.first_point(
            _chosen(step.weights, mask), step.rho, _chosen(direction, mask)
        )
        return _merged(points, step.weights, mask)

    def _pass(self, point, chunk, step):
        """The forward and backward pass at `point` on `chunk`: on the
        chunk at once, or, with `split_perturbation="shared"` and
        `num_batch_splits=k`, accumulated over `k` sub-chunks, each a pass
        of its own (one `eps` from the whole batch's gradient, each pass
        holding one sub-chunk's activations)."""
        num_splits = self.num_batch_splits or 1
        if self.split_perturbation != "shared" or num_splits == 1:
            return self._single_pass(point, chunk, step)
        splits = self._splits(
            num_splits, step, chunk.non_trainable, chunk.metrics, chunk.batch
        )
        for part in splits:
            splits.add(self._single_pass(point, part, step))
        return splits.result()

    def _single_pass(self, point, chunk, step):
        (_, aux), gradients = self._value_and_grad(self._scaled_loss)(
            point, chunk, step
        )
        loss, y_pred, non_trainable, metrics = aux
        return PassOutput(gradients, non_trainable, metrics, y_pred, loss)

    def _scaled_loss(self, point, chunk, step):
        """The function both SAM passes differentiate: the training loss at
        `point` (`keras_sam.stateless.stateless_loss`), times the loss
        scale; returns `(scaled_loss, (loss, y_pred, non_trainable,
        metrics))`."""
        x, y, sample_weight = chunk.batch
        loss, (y_pred, non_trainable, metrics) = stateless.stateless_loss(
            self, point, chunk.non_trainable, chunk.metrics, x, y,
            sample_weight, training=True, variables=step.variables,
        )
        if self.rule.adds_loss:  # SAF, MESA: the trajectory loss
            loss = loss + ops.cast(self.rule.loss_term(
                self, y_pred, chunk,
                self._rule_state(chunk.non_trainable, step), step,
            ), loss.dtype)
        scaled = self._scale_loss(loss, step.optimizer_values)
        return scaled, (loss, y_pred, non_trainable, metrics)

    def _scale_loss(self, loss, optimizer_values=None):
        """`optimizer.scale_loss(loss)`, reading the optimizer's state from
        `optimizer_values` in a stateless step."""
        if optimizer_values is None:
            return self.optimizer.scale_loss(loss)
        mapping = list(zip(self.optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping):
            return self.optimizer.scale_loss(loss)

    # Steps 2-3 -----------------------------------------------------------

    def _sam_or_plain_step(self, clean, ascent_gradients, chunk, step):
        """Steps 2-3 where the rule ascends, else its one-pass step.

        The rule first observes `||g||` (true-gradient units up to a
        constant factor). Its decision is `True` (every step: no branch in
        the graph), `False`, or a boolean tensor (`_cond`: one branch
        runs, no retracing). Returns the chunk's `ChunkResult`.
        """
        norm = ascent.global_norm(ascent_gradients)
        grad_norm = norm / step.loss_scale
        state = self.rule.observe(
            grad_norm, self._rule_state(chunk.non_trainable, step)
        )
        if self.rule.adds_loss:  # SAF stores the clean outputs
            state = self.rule.record(self, clean.y_pred, chunk, state, step)

        def sam():
            return self._ascend(clean, ascent_gradients, norm, chunk, step,
                                state)

        def plain():
            applied, new_state = self.rule.between(clean.gradients, state)
            return Outcome(applied, ops.zeros(()), ops.zeros(()), new_state)

        decision = self._decision(step, state)
        if decision is True:
            outcome = sam()
        elif decision is False:
            outcome = plain()
        else:
            outcome = self._cond(decision, sam, plain)
        return ChunkResult(
            gradients=outcome.applied,
            non_trainable=self._with_rule_state(
                clean.non_trainable, outcome.rule_state, step
            ),
            metrics=clean.metrics,
            y_pred=clean.y_pred,
            loss=clean.loss,
            sam_sharpness=outcome.sharpness,
            grad_norm=grad_norm,
            ascended=outcome.ascended,
        )

    def _ascend(self, clean, gradients, norm, chunk, step, state):
        """Steps 2 and 3 on one chunk; `gradients` are the ascent's (this
        replica's or the all-reduced ones) and `norm` their norm."""
        # 2. Ascent: w + eps, eps = rho g / ||g|| (or the rule's), on the
        # perturbed variables (the norm over them); the others stay at w.
        mask = self._perturbed_mask()
        points, state = self.rule.ascent_point(
            _chosen(gradients, mask), _chosen(step.weights, mask), step.rho,
            state, step.gradient_scale, norm if all(mask) else None,
        )
        point = _merged(points, step.weights, mask)
        # 3. Perturbed pass at w + eps, from the pre-step state, its state
        # updates discarded (on the samples the rule selects: all but for
        # ESAM).
        perturbed = self._perturbed_pass(point, chunk, clean, step)
        # The gradient to apply: g_p for SAM, the rule's otherwise.
        applied, state = self.rule.descent(
            clean.gradients, perturbed.gradients, state
        )
        return Outcome(applied, perturbed.loss - clean.loss, ops.ones(()),
                       state)

    def _perturbed_pass(self, point, chunk, clean, step):
        """Step 3's pass at `point` on the rows the rule selects."""
        batch = self.rule.descent_batch(
            self, point, chunk, clean.y_pred, step.variables
        )
        return self._pass(point, chunk._replace(batch=batch), step)

    def _decision(self, step, state):
        """The rule's decision (`True` every step for SAM); `False` with
        `rho=0`, where the step is exactly the plain step, one pass."""
        if not (isinstance(self.rho, Schedule) or self.rho > 0.0):
            return False
        return self.rule.ascends_at(step.iterations, state)

    # The rule's state and the perturbed variables ------------------------

    def _perturbed_mask(self):
        """One boolean per trainable variable: whether the ascent moves
        it."""
        return rule_state.perturbed_mask(self, self.trainable_variables)

    def _rule_state(self, non_trainable, step):
        """The rule's state among the non-trainable values."""
        return [non_trainable[i] for i in step.rule_state_indices]

    def _with_rule_state(self, non_trainable, state, step):
        """`non_trainable` with the rule's entries set to `state`."""
        indices = step.rule_state_indices
        if not indices:
            return non_trainable
        values = list(non_trainable)
        for index, value in zip(indices, state):
            values[index] = value
        return values

    # After the descent ---------------------------------------------------

    def _per_batch_scalars(self, result, num_replicas=1):
        """Undoes the `1 / num_replicas` factor of distributed losses in the
        logged scalars (in global mode the all-reduced gradient is already
        the mean, so its norm needs no factor)."""
        replicas = float(num_replicas)
        norm_factor = 1.0 if self.perturbation == "global" else replicas
        return result._replace(
            loss=result.loss * replicas,
            sam_sharpness=result.sam_sharpness * replicas,
            grad_norm=result.grad_norm * norm_factor,
        )

    def _update_sam_metrics(self, x, y, sample_weight, result, rho):
        """Updates `loss`, the compiled metrics and the SAM logs; returns
        the logs, with `rho` when it follows a schedule. Runs statefully
        or inside a `StatelessScope` (JAX)."""
        batch_size = ops.shape(first_leaf(x))[0]
        tracker = _keras_compat.loss_tracker(self)
        if tracker is not None:
            tracker.update_state(result.loss, sample_weight=batch_size)
        # Averaged over the steps that made the ascent (and measured it).
        self.sharpness_tracker.update_state(
            result.sam_sharpness,
            sample_weight=ops.cast(batch_size, "float32") * result.ascended,
        )
        # A step a LossScaleOptimizer skips (non-finite gradient) is left
        # out of the average, as its sharpness is.
        finite = ops.isfinite(result.grad_norm)
        self.grad_norm_tracker.update_state(
            ops.where(finite, result.grad_norm, 0.0),
            sample_weight=ops.cast(batch_size, "float32")
            * ops.cast(finite, "float32"),
        )
        logs = self.compute_metrics(
            x, y, result.y_pred, sample_weight=sample_weight
        )
        if isinstance(self.rho, Schedule):
            logs["rho"] = rho
        if not self.rule.measures_sharpness:
            logs.pop("sam_sharpness", None)
        return logs


def assign(variables, values):
    """Assigns each value to its variable."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def without_sam_logs(logs):
    """Drops the training-only SAM entries from `evaluate`'s logs."""
    return {k: v for k, v in logs.items() if k not in SAM_LOG_NAMES}


def _chosen(values, mask):
    return [v for v, keep in zip(values, mask) if keep]


def _merged(points, weights, mask):
    """`points` for the masked entries, `weights` for the others."""
    points = iter(points)
    return [next(points) if keep else w for w, keep in zip(weights, mask)]
