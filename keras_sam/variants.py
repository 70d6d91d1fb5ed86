"""The SAM family as small rule objects: how the ascent point is chosen
and which gradient the optimizer applies.

A rule is given to `SAMModel(model, rho, variant=...)`. Each training
step (per chunk with `num_batch_splits`) runs:

1. the clean pass at `w`: the loss and the gradient `g`;
2. `variant.ascent(g, w, rho, state)`: the ascent point `w + eps`;
3. the perturbed pass at `w + eps`: the gradient `g_p`;
4. `variant.descent(g, g_p, state)`: the gradient the optimizer applies
   at `w`.

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
from keras import ops

from keras_sam import _validation
from keras_sam import ascent as ascent_maths


class Variant:
    """Base class of a SAM rule: plain SAM's ascent and descent.

    Subclasses override `ascent` and/or `descent`, and `state_shapes` if
    they keep state.
    """

    def state_shapes(self, weights):
        """Shapes of the float32 state the rule keeps, given the list of
        variables it perturbs. Defaults to none."""
        return []

    def ascent(self, gradients, weights, rho, state, gradient_scale=1.0,
               gradient_norm=None, maths=ascent_maths):
        """Returns `(w + eps, new_state)` for the perturbed variables.

        Args:
            gradients: The clean gradients of the perturbed variables.
            weights: Their current values.
            rho: The radius, a float or a float32 scalar tensor.
            state: List of the state values (see `state_shapes`).
            gradient_scale: Scalar with `true gradient = scale * g`.
            gradient_norm: `||g||` over these gradients, if known.
            maths: The module with `global_norm` and `perturbed_weights`
                (`keras_sam.ascent`, or the torch backend's multi-tensor
                version of it).
        """
        raise NotImplementedError

    def descent(self, clean_gradients, perturbed_gradients, state):
        """Returns `(gradients to apply, new_state)`; SAM applies the
        perturbed gradient."""
        return perturbed_gradients, state

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    __hash__ = object.__hash__


@keras.saving.register_keras_serializable(package="keras_sam")
class SAM(Variant):
    """Sharpness-Aware Minimization (Foret et al., 2020, eqs. 2-3).

    `eps = rho * g / ||g||`, the norm over all perturbed variables
    together; the optimizer applies `g_p = grad L(w + eps)` at `w`.

    Reference:
        Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
        Improving Generalization. https://arxiv.org/abs/2010.01412
    """

    def ascent(self, gradients, weights, rho, state, gradient_scale=1.0,
               gradient_norm=None, maths=ascent_maths):
        point = maths.perturbed_weights(
            gradients, weights, rho, gradient_norm=gradient_norm
        )
        return point, state


@keras.saving.register_keras_serializable(package="keras_sam")
class ASAM(Variant):
    """Adaptive SAM (Kwon et al., 2021, eq. 8, elementwise operator).

    `eps = rho * T^2 g / ||T g||` with `T = |w| + eta`, so the
    neighbourhood scales with the weights; use a larger `rho` than SAM's
    (the paper uses 0.5 to 2.0 on CIFAR).

    Args:
        eta: Non-negative float, the offset in `T = |w| + eta`. Defaults
            to `0.01`.

    Reference:
        Kwon et al., 2021. ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks.
        https://arxiv.org/abs/2102.11600
    """

    def __init__(self, eta=0.01):
        self.eta = _validation.check_non_negative_float("eta", eta)

    def ascent(self, gradients, weights, rho, state, gradient_scale=1.0,
               gradient_norm=None, maths=ascent_maths):
        point = maths.perturbed_weights(
            gradients, weights, rho, adaptive=True, eta=self.eta
        )
        return point, state

    def get_config(self):
        return {"eta": self.eta}


@keras.saving.register_keras_serializable(package="keras_sam")
class GSAM(SAM):
    """Surrogate-gap guided SAM (Zhuang et al., 2022, Algorithm 1).

    SAM's ascent; the descent direction is the perturbed gradient minus
    `alpha` times the part of the clean gradient orthogonal to it:

    `g_perp = g - (<g, g_p> / ||g_p||^2) g_p`, applied: `g_p - alpha g_perp`.

    Moving against `g_perp` lowers the surrogate gap `L(w + eps) - L(w)`
    without changing the perturbed loss to first order. The paper ties
    `rho` to the learning rate; pass
    `rho=keras_sam.rho_schedules.FollowLearningRate(...)` for that. Under
    `tf.distribute` each replica projects its own two gradients.

    Args:
        alpha: Non-negative float, the weight of the orthogonal step (the
            paper's `alpha`; `0` is SAM).

    Reference:
        Zhuang et al., 2022. Surrogate Gap Minimization Improves
        Sharpness-Aware Training. https://arxiv.org/abs/2203.08065
    """

    def __init__(self, alpha):
        self.alpha = _validation.check_non_negative_float("alpha", alpha)

    def descent(self, clean_gradients, perturbed_gradients, state):
        clean = [ops.cast(g, "float32") for g in clean_gradients]
        perturbed = [ops.cast(g, "float32") for g in perturbed_gradients]
        inner = _dot(clean, perturbed)
        squared = _dot(perturbed, perturbed)
        usable = ops.logical_and(squared > 0.0, ops.isfinite(squared))
        coefficient = ops.where(usable, inner / squared, 0.0)
        applied = [
            ops.cast(p - self.alpha * (g - coefficient * p), like.dtype)
            for g, p, like in zip(clean, perturbed, perturbed_gradients)
        ]
        return applied, state

    def get_config(self):
        return {"alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_sam")
class FriendlySAM(Variant):
    """Friendly SAM (Li et al., 2024): the ascent without the full-batch
    gradient component.

    An exponential moving average `m` of past gradients estimates the
    full gradient; the ascent uses the batch-specific rest:

    `d_t = g_t - sigma * m_{t-1}`, `eps = rho * d_t / ||d_t||`,
    `m_t = decay * m_{t-1} + (1 - decay) * g_t`,

    with `m` set to the first step's gradient (whose ascent is SAM's), as
    in the authors' implementation (https://github.com/nblt/F-SAM). `m`
    is kept in the true gradient's units (loss scale and replica factor
    removed), in Keras variables saved with the model.

    Args:
        sigma: Non-negative float, the weight of the removed component
            (the paper's `sigma`). Defaults to `1.0`.
        decay: Float in `[0, 1)`, the moving average's decay (the paper's
            `lambda`; the authors' run script uses 0.95). Defaults to
            `0.95`.

    Reference:
        Li et al., 2024. Friendly Sharpness-Aware Minimization. CVPR.
        https://arxiv.org/abs/2403.12350
    """

    def __init__(self, sigma=1.0, decay=0.95):
        self.sigma = _validation.check_non_negative_float("sigma", sigma)
        self.decay = _validation.check_unit_interval("decay", decay)

    def state_shapes(self, weights):
        # A flag (0 before the first step), then `m` per variable.
        return [()] + [tuple(w.shape) for w in weights]

    def ascent(self, gradients, weights, rho, state, gradient_scale=1.0,
               gradient_norm=None, maths=ascent_maths):
        started, average = state[0], state[1:]
        started_now = started > 0.0
        true = [ops.cast(g, "float32") * gradient_scale for g in gradients]
        directions = [
            ops.where(started_now, g - self.sigma * m, g)
            for g, m in zip(true, average)
        ]
        average = [
            ops.where(started_now, self.decay * m + (1.0 - self.decay) * g, g)
            for g, m in zip(true, average)
        ]
        point = maths.perturbed_weights(directions, weights, rho)
        return point, [ops.ones_like(started), *average]

    def get_config(self):
        return {"sigma": self.sigma, "decay": self.decay}


def get(variant, adaptive=False, eta=0.01):
    """The rule for `SAMModel`'s arguments: `variant`, else `ASAM(eta)`
    with `adaptive=True`, else `SAM()`."""
    if isinstance(variant, dict):
        variant = keras.saving.deserialize_keras_object(variant)
    if variant is None:
        return ASAM(eta) if adaptive else SAM()
    if not isinstance(variant, Variant):
        raise ValueError(
            "Argument `variant` must be a rule from `keras_sam.variants` "
            "(e.g. `keras_sam.variants.GSAM(alpha=0.1)`) or None. "
            f"Received: variant={_validation.short_repr(variant)} of type "
            f"{type(variant).__name__}."
        )
    if adaptive:
        raise ValueError(
            "Pass either `adaptive=True` (shorthand for "
            "`variant=keras_sam.variants.ASAM(eta)`) or `variant`, not both. "
            f"Received: adaptive=True, variant={variant!r}."
        )
    return variant


def _dot(a, b):
    return ops.sum(ops.stack([ops.sum(x * y) for x, y in zip(a, b)]))
