"""Shake-Shake and ShakeDrop: stochastic residual layers (backend-neutral).

Both draw one random coefficient per example for the forward pass and an
independent one for the backward pass. The trick that makes this a plain
Keras layer on every backend: with forward coefficient `a` and backward
coefficient `b`, `out = b * x + stop_gradient((a - b) * x)` has the value
`a * x` and the gradient `b` with respect to `x`.

Random draws come from the layer's own `keras.random.SeedGenerator`, so
`SAMModel`'s perturbed pass, which replays the clean pass's non-trainable
state, draws the same coefficients in both passes.
"""

import keras
from keras import ops


def _per_example_shape(x):
    return (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)


@keras.saving.register_keras_serializable(package="keras_sam")
class ShakeShake(keras.layers.Layer):
    """Combines two residual branches with random per-example weights.

    In training, the output is `alpha * x1 + (1 - alpha) * x2` with
    `alpha ~ U[0, 1]` drawn per example ("Shake-Shake-Image"), and the
    gradient reaching the branches is `beta` and `1 - beta` with an
    independent `beta ~ U[0, 1]` ("Shake" forward, "Shake" backward). In
    inference the output is `(x1 + x2) / 2`.

    Args:
        seed: integer seed of the layer's random draws, or `None`.
            Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a list of the two branch tensors, of equal shape.
        training: whether to shake. Defaults to `None` (inference).

    References:
        - [Gastaldi, 2017. Shake-Shake regularization](
          https://arxiv.org/abs/1705.07485)
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        first, second = inputs
        if not training:
            return 0.5 * (first + second)
        shape = _per_example_shape(first)
        alpha = keras.random.uniform(
            shape, seed=self.seed_generator, dtype=first.dtype
        )
        beta = keras.random.uniform(
            shape, seed=self.seed_generator, dtype=first.dtype
        )
        backward = beta * first + (1.0 - beta) * second
        return backward + ops.stop_gradient((alpha - beta) * (first - second))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_sam")
class ShakeDrop(keras.layers.Layer):
    """Scales a residual branch by a random per-example coefficient.

    In training, each example's branch is kept (`b = 1`) with probability
    `1 - drop_rate`, else it is multiplied by `alpha ~ U[-1, 1]` in the
    forward pass and by `beta ~ U[0, 1]` in the backward pass: forward
    coefficient `b + alpha - b alpha`, backward `b + beta - b beta`. In
    inference the branch is multiplied by the expected forward coefficient,
    `1 - drop_rate`.

    Args:
        drop_rate: probability that the branch is shaken, in `[0, 1]`
            (PyramidNet+ShakeDrop uses `0.5 l / L` for block `l` of `L`).
        seed: integer seed of the layer's random draws, or `None`.
            Defaults to `None`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: the residual branch.
        training: whether to shake. Defaults to `None` (inference).

    References:
        - [Yamada et al., 2018. ShakeDrop Regularization for Deep Residual
          Learning](https://arxiv.org/abs/1802.02375)
    """

    def __init__(self, drop_rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(drop_rate, bool)
            or not isinstance(drop_rate, (int, float))
            or not 0 <= drop_rate <= 1
        ):
            raise ValueError(
                f"`drop_rate` must be in [0, 1], got {drop_rate!r}."
            )
        self.drop_rate = float(drop_rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return (1.0 - self.drop_rate) * inputs
        shape = _per_example_shape(inputs)
        dtype = inputs.dtype
        keep = ops.cast(
            keras.random.uniform(shape, seed=self.seed_generator)
            >= self.drop_rate,
            dtype,
        )
        alpha = keras.random.uniform(
            shape,
            minval=-1.0,
            maxval=1.0,
            seed=self.seed_generator,
            dtype=dtype,
        )
        beta = keras.random.uniform(
            shape, seed=self.seed_generator, dtype=dtype
        )
        forward = keep + alpha - keep * alpha
        backward = keep + beta - keep * beta
        return backward * inputs + ops.stop_gradient(
            (forward - backward) * inputs
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "drop_rate": self.drop_rate,
            "seed": self.seed,
        }
