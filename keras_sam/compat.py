"""Drop-in replacements for the SAM of tf-keras (Keras 2).

tf-keras had `tf.keras.models.experimental.SharpnessAwareMinimization`;
Keras 3 has no SAM. `SharpnessAwareMinimization` here takes the same
arguments and trains with `keras_sam.SAMModel`'s step, so migrating is
one changed import:

```python
# tf-keras:
# model = tf.keras.models.experimental.SharpnessAwareMinimization(inner)
model = keras_sam.compat.SharpnessAwareMinimization(inner)
```
"""

import warnings

import keras

from keras_sam.sam_model import SAMModel

_SPLIT_SCALE_WARNED = False


def _warn_split_scale(num_batch_splits):
    """Warns, once per process, that split gradients are averaged."""
    global _SPLIT_SCALE_WARNED
    if _SPLIT_SCALE_WARNED:
        return
    _SPLIT_SCALE_WARNED = True
    warnings.warn(
        "tf-keras's SharpnessAwareMinimization summed the gradients of the "
        "`num_batch_splits` chunks; keras-sam averages them (weighted by "
        "chunk size), so the applied gradient is 1/num_batch_splits of "
        f"tf-keras's (here 1/{num_batch_splits}). With SGD, multiply the "
        "learning rate by num_batch_splits to take tf-keras's steps; "
        "optimizers that normalize the gradient (Adam) are nearly "
        "unaffected. This warning is shown once.",
        UserWarning,
        stacklevel=3,
    )


@keras.saving.register_keras_serializable(package="keras_sam")
class SharpnessAwareMinimization(SAMModel):
    """tf-keras's `SharpnessAwareMinimization`, trained by `SAMModel`.

    The signature of `tf.keras.models.experimental.SharpnessAwareMinimization`
    (tf-keras 2.x). Training is `keras_sam.SAMModel`'s (see there): the
    ascent `eps = rho * g / ||g||` from the clean gradient, the descent
    gradient taken at `w + eps` without moving the weights, BatchNorm
    statistics updated once per step, and it runs on every Keras 3
    backend. `fit` logs `sam_sharpness` and `grad_norm` besides the
    compiled metrics.

    One difference in the numbers: with `num_batch_splits=k`, tf-keras
    applied the sum of the `k` chunks' gradients, keras-sam applies their
    average, so the applied gradient is `1/k` of tf-keras's (a warning
    says so, once). With plain SGD, `learning_rate * k` takes tf-keras's
    steps. A batch need not be divisible by `k` (tf-keras required it).

    Args:
        model: A `keras.Model`, the inner model that does the forward and
            backward passes.
        rho: Non-negative float, the radius of the ascent step. Defaults
            to `0.05`.
        num_batch_splits: `None` or a positive integer, the number of
            chunks each batch is split into, each with its own ascent
            step (m-sharpness). Defaults to `None` (one chunk).
        name: The model's name. Defaults to `None`.
        **kwargs: further `keras_sam.SAMModel` arguments (`variant`,
            `perturb`, ...) and `keras.Model` ones (`trainable`); saved
            with the model.

    Example:

    >>> inner = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model = keras_sam.compat.SharpnessAwareMinimization(inner, rho=0.05)
    >>> model.compile(optimizer="adam", loss="mse")
    >>> model.fit(x, y)

    References:
        - [Foret et al., 2020](https://arxiv.org/abs/2010.01412)
    """

    def __init__(
        self, model, rho=0.05, num_batch_splits=None, name=None, **kwargs
    ):
        super().__init__(
            model,
            rho=rho,
            num_batch_splits=num_batch_splits,
            name=name,
            **kwargs,
        )
        if self.num_batch_splits is not None and self.num_batch_splits > 1:
            _warn_split_scale(self.num_batch_splits)
