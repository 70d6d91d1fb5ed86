"""SAM and the rules that change its ascent or descent: ASAM, GSAM,
Friendly-SAM (`keras_sam.rules`)."""

import keras
from keras import ops

from keras_sam import _validation, ascent
from keras_sam.rules._shared import dot, safe_ratio
from keras_sam.rules.base import Rule


@keras.saving.register_keras_serializable(package="keras_sam")
class SAM(Rule):
    """Sharpness-Aware Minimization (Foret et al., 2020, eqs. 2-3).

    `eps = rho * g / ||g||`, the norm over all perturbed variables
    together; the optimizer applies `g_p = grad L(w + eps)` at `w`.

    Reference:
        Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
        Improving Generalization. https://arxiv.org/abs/2010.01412
    """

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
        point = ascent.perturbed_weights(
            gradients, weights, rho, gradient_norm=gradient_norm
        )
        return point, state


@keras.saving.register_keras_serializable(package="keras_sam")
class ASAM(Rule):
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

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
        point = ascent.perturbed_weights(
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
        coefficient = safe_ratio(
            dot(clean, perturbed), dot(perturbed, perturbed)
        )
        applied = [
            ops.cast(p - self.alpha * (g - coefficient * p), like.dtype)
            for g, p, like in zip(clean, perturbed, perturbed_gradients)
        ]
        return applied, state

    def get_config(self):
        return {"alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_sam")
class FriendlySAM(Rule):
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

    def state_shapes(self, perturbed, trainable):
        # A flag (0 before the first step), then `m` per variable.
        return [()] + [tuple(w.shape) for w in perturbed]

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
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
        point = ascent.perturbed_weights(directions, weights, rho)
        return point, [ops.ones_like(started), *average]

    def get_config(self):
        return {"sigma": self.sigma, "decay": self.decay}


# Cheaper SAM: the ascent on some steps only --------------------------------
