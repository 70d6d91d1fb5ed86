"""The cheaper rules: the ascent on some steps only (LookSAM,
RandomizedSAM, LateSAM, AE-SAM), on part of the weights and data (ESAM),
or along the momentum (Momentum-SAM) (`keras_sam.rules`)."""

import keras
import numpy as np
from keras import ops

from keras_sam import _validation, ascent, stateless
from keras_sam.rules._shared import dot, safe_ratio
from keras_sam.rules.base import Rule
from keras_sam.rules.sam import SAM


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
        coefficient = safe_ratio(dot(clean, perturbed), dot(clean, clean))
        stored = [p - coefficient * g for g, p in zip(clean, perturbed)]
        return perturbed_gradients, stored

    def between(self, gradients, state):
        clean = [ops.cast(g, "float32") for g in gradients]
        scale = self.alpha * safe_ratio(
            ops.sqrt(dot(clean, clean)), ops.sqrt(dot(state, state))
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
