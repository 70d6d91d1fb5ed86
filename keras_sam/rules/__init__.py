"""The SAM family as small rule objects: how the ascent point is chosen
and which gradient the optimizer applies.

A rule is given to `SAMModel(model, rho, rule=...)`. Each training
step (per chunk with `num_batch_splits`) runs:

1. the clean pass at `w` (or at `rule.first_point(...)` for a rule
   whose `first_direction` reads the optimizer: MomentumSAM): the loss
   and the gradient `g`;
2. `rule.ascent_point(g, w, rho, state)`: the ascent point `w + eps`;
3. the perturbed pass at `w + eps` (on the rows
   `rule.descent_batch(...)` selects: all but for ESAM): the gradient
   `g_p`;
4. `rule.descent(g, g_p, state)`: the gradient the optimizer applies
   at `w`.

The step that calls them is `keras_sam.backend.trainer.SAMTrainerBase`
(`_first_point`, `_sam_or_plain_step`, `_ascend`, `_perturbed_pass`).

A cheaper rule skips steps 2-3 on some steps: `rule.ascends_at(step,
state)` is `True` (every step) or a boolean tensor decided inside the
compiled step (`keras.ops.cond`), and on the other steps the optimizer
applies `rule.between(g, state)`, one pass. A rule that decides from
the gradient (AE-SAM) first records `||g||` in its state with
`rule.observe(||g||, state)`.

A rule may also add a term to the training loss instead of (or besides)
the ascent (SAF, MESA: `adds_loss = True`): `rule.loss_term(...)` is
added to the compiled loss in every pass, and after the clean pass
`rule.record(...)` updates its state from the pass's predictions. The
wrapped model receives `rule.model_inputs(x)` (SAF: `x` also carries
each sample's index).

Rules are pure functions of tensors written in `keras.ops`, the same on
every backend. A rule with state (Friendly-SAM's moving average) declares
it in `state_shapes`; `SAMModel` keeps it in non-trainable Keras
variables, saved with the model and by `BackupAndRestore`, and averaged
over replicas under `tf.distribute` like BatchNorm statistics, so every
replica holds the same values.

Gradients arrive as the backend computes them: scaled by a mixed-precision
loss scale and, under `tf.distribute`, by `1 / num_replicas`. A rule that
only normalizes or projects is invariant to that scale; one that keeps
gradients across steps converts them with `gradient_scale` (true gradient
`= gradient_scale * g`).
"""

import keras

from keras_sam import _validation
from keras_sam.rules.base import Rule
from keras_sam.rules.cheaper import (
    AESAM,
    ESAM,
    LateSAM,
    LookSAM,
    MomentumSAM,
    RandomizedSAM,
    weight_masks,
)
from keras_sam.rules.sam import ASAM, GSAM, SAM, FriendlySAM
from keras_sam.rules.trajectory import MESA, SAF

__all__ = [
    "AESAM",
    "ASAM",
    "ESAM",
    "GSAM",
    "SAM",
    "FriendlySAM",
    "LateSAM",
    "LookSAM",
    "MESA",
    "MomentumSAM",
    "RandomizedSAM",
    "Rule",
    "SAF",
    "get",
    "weight_masks",
]

def get(rule, adaptive=False, eta=0.01):
    """The rule for `SAMModel`'s arguments: `rule`, else `ASAM(eta)` with
    `adaptive=True`, else `SAM()`."""
    if isinstance(rule, dict):
        rule = keras.saving.deserialize_keras_object(rule)
    if rule is None:
        return ASAM(eta) if adaptive else SAM()
    if not isinstance(rule, Rule):
        raise ValueError(
            "Argument `rule` must be a rule from `keras_sam.rules` "
            "(e.g. `keras_sam.rules.GSAM(alpha=0.1)`) or None. "
            f"Received: rule={_validation.short_repr(rule)} of type "
            f"{type(rule).__name__}."
        )
    if adaptive:
        raise ValueError(
            "Pass either `adaptive=True` (shorthand for "
            "`rule=keras_sam.rules.ASAM(eta)`) or `rule`, not both. "
            f"Received: adaptive=True, rule={rule!r}."
        )
    return rule
