"""One short SAM `train_step` per Keras backend.

The maths of the step lives in `SAMModel.sam_gradients` (backend-neutral);
each backend module only supplies autodiff and applies the result: the
stateful TensorFlow and torch trainers assign variables, the stateless
JAX trainer returns the new state.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_sam.backend.tensorflow import (
        test_step,  # noqa: F401
        train_step,  # noqa: F401
    )
elif _BACKEND == "jax":
    from keras_sam.backend.jax import (
        test_step,  # noqa: F401
        train_step,  # noqa: F401
    )
elif _BACKEND == "torch":
    from keras_sam.backend.torch import (
        test_step,  # noqa: F401
        train_step,  # noqa: F401
    )
else:
    raise ImportError(
        "keras_sam supports the tensorflow, jax and torch backends of Keras "
        f"3. Received: KERAS_BACKEND={_BACKEND!r}."
    )

