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
import numpy as np
from keras import ops

from keras_sam import _validation, ascent, stateless

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


class Rule:
    """Base class of a SAM rule: plain SAM's ascent and descent.

    Subclasses override `ascent_point` and/or `descent`, and
    `state_shapes` if they keep state.
    """

    # Whether the rule ever makes the ascent (and so logs sam_sharpness).
    measures_sharpness = True
    # Whether the rule adds `loss_term` to the loss and updates its state
    # with `record` after the clean pass.
    adds_loss = False
    # Whether the rule's state runs on from chunk to chunk under
    # `num_batch_splits` (each chunk's pass sees what the previous chunk
    # wrote) instead of each chunk starting from the step's state and the
    # chunks' new states being averaged.
    carries_state = False

    def state_shapes(self, perturbed, trainable):
        """Shapes of the float32 state the rule keeps, given the variables
        it perturbs and all trainable variables. Defaults to none."""
        return []

    def first_direction(self, optimizer, optimizer_values=None):
        """The direction along which the first pass's point moves from
        `w` (one tensor per trainable variable), read from the optimizer;
        `None` (the default): the first pass is the clean pass at `w`.

        Args:
            optimizer: The compiled optimizer (a `LossScaleOptimizer`
                wraps the one whose state is read).
            optimizer_values: The values of `optimizer.variables` in a
                stateless step (JAX), else `None` (read the variables).
        """
        return None

    def first_point(self, weights, rho, direction):
        """Where the first pass is taken, given the perturbed variables'
        values and `first_direction` on them (when it is not `None`)."""
        return weights

    def descent_batch(self, model, point, chunk, clean_predictions,
                      variables):
        """The rows of `chunk.batch` the perturbed pass runs on: all of
        them (the default).

        Args:
            model: The `SAMModel`.
            point: The ascent point `w + eps` (every trainable variable).
            chunk: The `keras_sam.backend.splits.Chunk` of the pass: the
                batch `(x, y, sample_weight)` and the state it starts from.
            clean_predictions: The clean pass's predictions on it.
            variables: The model's `keras_sam.stateless.ModelVariables`.
        """
        return chunk.batch

    def observe(self, gradient_norm, state):
        """The state after seeing this step's clean gradient norm `||g||`
        (true-gradient units, before the decision); unchanged by
        default."""
        return state

    def ascends_at(self, step, state):
        """Whether step `step` (the optimizer's `iterations` before the
        update) makes the ascent: `True`, or a boolean scalar tensor."""
        return True

    def between(self, gradients, state):
        """`(gradients to apply, new_state)` on a step without ascent;
        the clean gradient (the plain optimizer step)."""
        return gradients, state

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
        """Returns `(w + eps, new_state)` for the perturbed variables.

        Args:
            gradients: The clean gradients of the perturbed variables.
            weights: Their current values.
            rho: The radius, a float or a float32 scalar tensor.
            state: List of the state values (see `state_shapes`).
            gradient_scale: Scalar with `true gradient = scale * g`.
            gradient_norm: `||g||` over these gradients, if known.
        """
        raise NotImplementedError

    def descent(self, clean_gradients, perturbed_gradients, state):
        """Returns `(gradients to apply, new_state)`; SAM applies the
        perturbed gradient."""
        return perturbed_gradients, state

    def model_inputs(self, x):
        """The wrapped model's inputs in a batch's `x`: `x` itself (the
        default)."""
        return x

    def loss_term(self, model, predictions, chunk, state, step):
        """A term added to the training loss in every pass (called where
        `adds_loss` is `True`): a float32 scalar tensor.

        Args:
            model: The `SAMModel`.
            predictions: The pass's predictions (differentiated).
            chunk: The `keras_sam.backend.splits.Chunk` of the pass: the
                batch `(x, y, sample_weight)` and the state it starts from.
            state: List of the rule's state values.
            step: The `keras_sam.backend.trainer.Step` (its `iterations`,
                `weights` and `variables`).
        """
        raise NotImplementedError

    def record(self, model, predictions, chunk, state, step):
        """The state after the clean pass, given its predictions (called
        where `adds_loss` is `True`; arguments as `loss_term`'s)."""
        return state

    def get_config(self):
        """The rule's constructor arguments, as a JSON-able dict (saved
        with the `SAMModel` that uses it)."""
        return {}

    @classmethod
    def from_config(cls, config):
        """The rule that `get_config` describes."""
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
        coefficient = _safe_ratio(
            _dot(clean, perturbed), _dot(perturbed, perturbed)
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


@keras.saving.register_keras_serializable(package="keras_sam")
class LookSAM(SAM):
    """LookSAM (Liu et al., 2022, Algorithm 1): the SAM step every `every`
    steps, a one-pass step that reuses its direction in between.

    On a SAM step (`step % every == 0`) the optimizer applies `g_s = g_p`
    and the rule stores the part of `g_s` orthogonal to the clean `g`,
    `g_v = g_s - (<g, g_s> / ||g||^2) g`. On the other steps it applies
    `g + alpha * (||g|| / ||g_v||) * g_v` from the clean pass alone.
    Cost: `1 + 1 / every` passes per step.

    Args:
        every: Positive integer `k`, the period of the SAM steps.
            Defaults to `5`.
        alpha: Non-negative float, the weight of the reused component.
            Defaults to `0.7` (the paper's setting).

    Reference:
        Liu et al., 2022. Towards Efficient and Scalable Sharpness-Aware
        Minimization. CVPR. https://arxiv.org/abs/2203.02714
    """

    def __init__(self, every=5, alpha=0.7):
        self.every = _validation.check_int("every", every)
        self.alpha = _validation.check_non_negative_float("alpha", alpha)

    def state_shapes(self, perturbed, trainable):
        return [tuple(w.shape) for w in trainable]

    def ascends_at(self, step, state):
        return ops.equal(ops.mod(step, self.every), 0)

    def descent(self, clean_gradients, perturbed_gradients, state):
        clean = [ops.cast(g, "float32") for g in clean_gradients]
        perturbed = [ops.cast(g, "float32") for g in perturbed_gradients]
        coefficient = _safe_ratio(_dot(clean, perturbed), _dot(clean, clean))
        stored = [p - coefficient * g for g, p in zip(clean, perturbed)]
        return perturbed_gradients, stored

    def between(self, gradients, state):
        clean = [ops.cast(g, "float32") for g in gradients]
        scale = self.alpha * _safe_ratio(
            ops.sqrt(_dot(clean, clean)), ops.sqrt(_dot(state, state))
        )
        applied = [
            ops.cast(g + scale * v, like.dtype)
            for g, v, like in zip(clean, state, gradients)
        ]
        return applied, state

    def get_config(self):
        return {"every": self.every, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_sam")
class RandomizedSAM(SAM):
    """SAM on a random fraction of the steps, plain steps otherwise
    (randomized sharpness-aware training, Zhao et al., 2022).

    Each step makes the ascent with probability `probability`, decided in
    the compiled step from a table of uniform draws made once from
    `seed` with NumPy (`draws[step % period] < probability`), so the
    decisions are reproducible, identical on every replica and backend,
    and cost nothing to draw. Cost: `1 + probability` passes per step.

    Args:
        probability: Float in `[0, 1]`, the chance of a SAM step.
            Defaults to `0.5`.
        seed: Integer seed of the draws. Defaults to `0`.
        period: Positive integer, the length of the table (the decisions
            repeat after it). Defaults to `8192`.

    Reference:
        Zhao, Zhang and Hu, 2022. Randomized Sharpness-Aware Training for
        Boosting Computational Efficiency in Deep Learning.
        https://arxiv.org/abs/2203.09962
    """

    def __init__(self, probability=0.5, seed=0, period=8192):
        if not _validation.is_real(probability) or not (
            0.0 <= probability <= 1.0
        ):
            raise ValueError(
                "Argument `probability` must be a number in [0, 1]. "
                f"Received: probability={probability!r}."
            )
        self.probability = float(probability)
        self.seed = _validation.check_int("seed", seed, minimum=0)
        self.period = _validation.check_int("period", period)

    def draws(self):
        """The table of uniform draws in [0, 1), float32."""
        rng = np.random.default_rng(self.seed)
        return rng.random(self.period).astype("float32")

    def ascends_at(self, step, state):
        index = ops.mod(ops.cast(step, "int32"), self.period)
        draw = ops.take(ops.convert_to_tensor(self.draws()), index)
        return draw < self.probability

    def get_config(self):
        return {"probability": self.probability, "seed": self.seed,
                "period": self.period}


@keras.saving.register_keras_serializable(package="keras_sam")
class LateSAM(SAM):
    """Plain steps first, SAM from step `start_step` on (SAM in the late
    phase of training, Zhou et al., 2024, who find most of SAM's gain
    comes from its last epochs). For an epoch, pass
    `start_step = epoch * steps_per_epoch`.

    Args:
        start_step: Non-negative integer, the first step with the ascent.

    Reference:
        Zhou et al., 2024. Sharpness-Aware Minimization Efficiently
        Selects Flatter Minima Late in Training.
        https://arxiv.org/abs/2410.10373
    """

    def __init__(self, start_step):
        self.start_step = _validation.check_int(
            "start_step", start_step, minimum=0
        )

    def ascends_at(self, step, state):
        return ops.greater_equal(step, self.start_step)

    def get_config(self):
        return {"start_step": self.start_step}


@keras.saving.register_keras_serializable(package="keras_sam")
class AESAM(SAM):
    """SAM where the gradient is unusually large, plain steps elsewhere
    (AE-SAM, Jiang et al., 2023, Algorithm 1).

    With `n_t = ||g_t||^2` the squared norm of the step's clean gradient,
    the rule keeps its moving mean and variance,

        mu_t = delta mu_{t-1} + (1 - delta) n_t,
        s_t = delta s_{t-1} + (1 - delta) (n_t - mu_t)^2,

    from `mu_0 = s_0 = 0`, and makes the SAM step where
    `n_t >= mu_t + c_t sqrt(s_t)`, the plain step elsewhere. The
    coefficient `c_t` moves linearly from `lower` at step 0 to `upper` at
    `total_steps` (and stays there), so SAM steps grow rarer as training
    goes on. A non-finite norm leaves the statistics as they were and
    makes no ascent (a mixed-precision loss scale then skips the step).
    Cost:
    `1 + f` passes per step, `f` the fraction of SAM steps. With
    `num_batch_splits`, each chunk decides from its own gradient; under
    `tf.distribute` with `perturbation="replica"`, each replica decides
    from its own, as it perturbs with its own (`"global"` for one
    decision). The defaults `decay=0.9`, `lower=-1`, `upper=1` are this
    package's; the paper tunes `lower` and `upper` per task.

    Args:
        total_steps: Positive integer, the step at which `c_t` reaches
            `upper` (usually the training's number of steps).
        decay: Float in `[0, 1)`, `delta`. Defaults to `0.9`.
        lower: Float, `c_0`. Defaults to `-1.0`.
        upper: Float, `c_t` from `total_steps` on. Defaults to `1.0`.

    Reference:
        Jiang, Yang, Zhang and Kwok, 2023. An Adaptive Policy to Employ
        Sharpness-Aware Minimization. ICLR.
        https://arxiv.org/abs/2304.14647
    """

    def __init__(self, total_steps, decay=0.9, lower=-1.0, upper=1.0):
        self.total_steps = _validation.check_int("total_steps", total_steps)
        if not _validation.is_real(decay) or not 0.0 <= decay < 1.0:
            raise ValueError(
                "Argument `decay` must be a number in [0, 1). "
                f"Received: decay={decay!r}."
            )
        for name, value in (("lower", lower), ("upper", upper)):
            if not _validation.is_real(value) or not np.isfinite(value):
                raise ValueError(
                    f"Argument `{name}` must be a finite number. "
                    f"Received: {name}={value!r}."
                )
        self.decay = float(decay)
        self.lower = float(lower)
        self.upper = float(upper)

    def state_shapes(self, perturbed, trainable):
        # The moving mean and variance of n_t, and n_t itself.
        return [(), (), ()]

    def observe(self, gradient_norm, state):
        mean, variance, _ = state
        squared = ops.square(ops.cast(gradient_norm, "float32"))
        new_mean = self.decay * mean + (1.0 - self.decay) * squared
        new_variance = self.decay * variance + (1.0 - self.decay) * ops.square(
            squared - new_mean
        )
        finite = ops.isfinite(squared)
        return [
            ops.where(finite, new_mean, mean),
            ops.where(finite, new_variance, variance),
            squared,
        ]

    def coefficient(self, step):
        """`c_t`, linear from `lower` to `upper` over `total_steps`."""
        fraction = ops.minimum(
            ops.cast(step, "float32") / float(self.total_steps), 1.0
        )
        return self.lower + (self.upper - self.lower) * fraction

    def ascends_at(self, step, state):
        mean, variance, squared = state
        threshold = mean + self.coefficient(step) * ops.sqrt(variance)
        return ops.logical_and(
            ops.isfinite(squared), ops.greater_equal(squared, threshold)
        )

    def get_config(self):
        return {"total_steps": self.total_steps, "decay": self.decay,
                "lower": self.lower, "upper": self.upper}


@keras.saving.register_keras_serializable(package="keras_sam")
class ESAM(SAM):
    """Efficient SAM (Du et al., 2022): a random part of the weights
    perturbed, the descent taken on the samples most sensitive to it.

    Stochastic weight perturbation: `eps = (rho / beta) m * g / ||g||`,
    `m` a Bernoulli(`beta`) mask over the perturbed weights (`beta =
    weight_fraction`), the norm over all of `g`. The mask is drawn inside
    the compiled step from an integer hash of the weight's index, the
    step (a counter in the rule's state) and `seed`, so it is the same on
    every replica and backend and reproducible from the seed.
    Sharpness-sensitive data selection: the loss of each sample at `w`
    (from the clean pass) and at `w + eps` (one forward pass, no
    gradient) give its increase; the perturbed pass, forward and
    backward, runs on the `round(gamma B)` samples with the largest
    increase (`gamma = data_fraction`, at least one), whose mean loss
    gradient the optimizer applies. Sample weights do not enter the
    selection; they weight the selected samples' loss. The logged
    `sam_sharpness` is the selected samples' loss at `w + eps` minus the
    whole batch's at `w`. Cost: one pass, one forward pass and `gamma`
    of a pass. Needs one compiled loss (not a dict or list of losses)
    that Keras can evaluate per sample.

    Args:
        weight_fraction: Float in `(0, 1]`, `beta`. Defaults to `0.5`.
        data_fraction: Float in `(0, 1]`, `gamma`. Defaults to `0.5`.
        seed: Non-negative integer seed of the masks. Defaults to `0`.

    Reference:
        Du et al., 2022. Efficient Sharpness-aware Minimization for
        Improved Training of Neural Networks. ICLR.
        https://arxiv.org/abs/2110.03141
    """

    def __init__(self, weight_fraction=0.5, data_fraction=0.5, seed=0):
        for name, value in (("weight_fraction", weight_fraction),
                            ("data_fraction", data_fraction)):
            if not _validation.is_real(value) or not 0.0 < value <= 1.0:
                raise ValueError(
                    f"Argument `{name}` must be a number in (0, 1]. "
                    f"Received: {name}={value!r}."
                )
        self.weight_fraction = float(weight_fraction)
        self.data_fraction = float(data_fraction)
        self.seed = _validation.check_int("seed", seed, minimum=0)

    def state_shapes(self, perturbed, trainable):
        return [()]  # the step counter of the masks

    def observe(self, gradient_norm, state):
        return [state[0] + 1.0]

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
        eps = ascent.sam_perturbation(
            gradients, weights, rho, gradient_norm=gradient_norm
        )
        if self.weight_fraction < 1.0:
            masks = weight_masks(
                [tuple(w.shape) for w in weights], state[0], self.seed,
                self.weight_fraction,
            )
            eps = [
                ops.cast(ops.where(m, e / self.weight_fraction, 0.0),
                         e.dtype)
                for e, m in zip(eps, masks)
            ]
        return [w + e for w, e in zip(weights, eps)], state

    def descent_batch(self, model, point, chunk, clean_predictions,
                      variables):
        """The `round(data_fraction * B)` rows (at least one) whose loss
        rises most from `w` (the clean pass's predictions) to `w + eps`
        (one forward pass here, its state discarded)."""
        if self.data_fraction >= 1.0:
            return chunk.batch
        x, y, sample_weight = chunk.batch
        per_sample = _per_sample_loss(model.loss, self)
        _, (y_pred, _, _) = stateless.stateless_loss(
            model, point, chunk.non_trainable, chunk.metrics, x, y,
            sample_weight, training=True, variables=variables,
        )
        increase = per_sample(y, y_pred) - per_sample(y, clean_predictions)
        batch_size = ops.shape(increase)[0]
        if isinstance(batch_size, int):
            count = max(1, round(self.data_fraction * batch_size))
        else:  # a dynamic batch size (TensorFlow)
            count = ops.maximum(1, ops.cast(ops.round(
                self.data_fraction * ops.cast(batch_size, "float32")
            ), "int32"))
        _, indices = ops.top_k(increase, count)
        return keras.tree.map_structure(
            lambda t: None if t is None else ops.take(t, indices, axis=0),
            chunk.batch,
        )

    def get_config(self):
        return {"weight_fraction": self.weight_fraction,
                "data_fraction": self.data_fraction, "seed": self.seed}


def _per_sample_loss(loss, rule):
    """`(y, y_pred) -> per-sample loss` of the compiled `loss` (float32,
    averaged over any axes after the first)."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        function = loss.call
    elif callable(loss) and not isinstance(loss, (dict, list, tuple)):
        function = loss
    else:
        raise ValueError(
            f"{type(rule).__name__} selects samples by their loss "
            "and needs one compiled loss that Keras evaluates per sample. "
            f"Received: loss={loss!r}."
        )

    def per_sample(y, y_pred):
        values = ops.cast(function(y, y_pred), "float32")
        while len(values.shape) > 1:
            values = ops.mean(values, axis=-1)
        return values

    return per_sample


def weight_masks(shapes, step, seed, fraction):
    """Bernoulli(`fraction`) masks of the given shapes, a function of the
    entries' running index over all shapes, `step` and `seed` only:
    `hash(index, step, seed) / 2^24 < fraction`, with a 32-bit integer
    hash (xorshift-multiply rounds; int32 arithmetic wraps alike on every
    backend and in NumPy)."""
    step = ops.cast(step, "int32")
    masks, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        index = ops.arange(offset, offset + size, dtype="int32")
        offset += size
        bits = _hash32(index, step, seed)
        uniform = ops.cast(ops.bitwise_and(bits, 0xFFFFFF), "float32")
        masks.append(ops.reshape(uniform < fraction * 2.0**24, shape))
    return masks


def _hash32(index, step, seed):
    """A 32-bit mix of `index`, `step` and `seed` in int32 (lowbias32's
    rounds, with logical right shifts)."""
    x = index * 374761393 + step * 668265261 + (seed * 1274126177) % 2**31
    for shift, multiplier in ((16, 0x7FEB352D), (15, -2073254261)):
        x = ops.bitwise_xor(x, _logical_right_shift(x, shift))
        x = x * multiplier
    return ops.bitwise_xor(x, _logical_right_shift(x, 16))


def _logical_right_shift(x, shift):
    return ops.bitwise_and(
        ops.right_shift(x, shift), (1 << (32 - shift)) - 1
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class MomentumSAM(Rule):
    """Momentum-SAM (Becker et al., 2024): the perturbation along the
    optimizer's momentum, so one gradient per step.

    With Keras's SGD momentum buffer `m` (`m <- mu m - lr g`, the
    direction of the coming update), the step's only pass is at
    `w + rho m / ||m||` (the authors' `w - rho v / ||v||` for their
    `v <- mu v + g`); its gradient is applied at `w` and its BatchNorm
    updates are kept. `loss` is then the loss at that point; no sharpness
    is measured (`fit` logs no `sam_sharpness`). The paper uses a larger
    `rho` than SAM's (0.3 and up on CIFAR). Needs
    `keras.optimizers.SGD(momentum > 0)` (clear error otherwise); `m = 0`
    (the first step) gives the plain step.

    Reference:
        Becker, Altrock and Risse, 2024. Momentum-SAM: Sharpness Aware
        Minimization without Computational Overhead.
        https://arxiv.org/abs/2401.12033
    """

    measures_sharpness = False

    def first_direction(self, optimizer, optimizer_values=None):
        """The optimizer's momentum buffers `m`, one per trainable
        variable."""
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        buffers = getattr(inner, "momentums", None)
        if not isinstance(inner, keras.optimizers.SGD) or not buffers:
            raise ValueError(
                f"{type(self).__name__} perturbs along the momentum of "
                "`keras.optimizers.SGD(momentum > 0)`. Received: optimizer="
                f"{type(inner).__name__}"
                + (f" with momentum={inner.momentum}" if hasattr(
                    inner, "momentum") else "") + "."
            )
        if optimizer_values is None:
            return [buffer.value for buffer in buffers]
        index = {id(v): i for i, v in enumerate(optimizer.variables)}
        return [optimizer_values[index[id(buffer)]] for buffer in buffers]

    def first_point(self, weights, rho, direction):
        """`w + rho m / ||m||` (the `keras.ops` maths on every backend)."""
        eps = ascent.sam_perturbation(direction, weights, rho)
        return [w + e for w, e in zip(weights, eps)]

    def ascends_at(self, step, state):
        return False


# Sharpness-aware training for free: a trajectory loss, no ascent ---------


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
            batch * _num_replicas()
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
        if _num_replicas() > 1:  # every replica writes every replica's rows
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


def _safe_ratio(numerator, denominator):
    """`numerator / denominator`, 0 where the denominator is 0 or not
    finite."""
    usable = ops.logical_and(denominator > 0.0, ops.isfinite(denominator))
    safe = ops.where(usable, denominator, 1.0)
    return ops.where(usable, numerator / safe, 0.0)


def _dot(a, b):
    return ops.sum(ops.stack([ops.sum(x * y) for x, y in zip(a, b)]))


def _num_replicas():
    """The number of `tf.distribute` replicas (1 on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync
