"""The SAM step, one `SAMTrainer` per Keras backend, chosen at import.

As `keras/src/models/model.py` picks its backend `Trainer`: each of
`tensorflow.py`, `jax.py` and `torch.py` holds a `SAMTrainer` whose
`train_step` reads top to bottom as Foret et al.'s algorithm (clean pass,
ascent, perturbed pass, descent), and the backend's autodiff
(`value_and_grad`, `grad`, `hessian_vector_product`, `linearize`,
`compile_function`), shared with `keras_sam.hessian`. Backend-neutral
pieces live in `trainer.py` (`SAMTrainerBase`), the batch splits in
`splits.py`; the ascent maths in `keras_sam.ascent`.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_sam.backend import tensorflow as current
elif _BACKEND == "jax":
    from keras_sam.backend import jax as current
elif _BACKEND == "torch":
    from keras_sam.backend import torch as current
else:
    raise ImportError(
        "keras_sam supports the tensorflow, jax and torch backends of Keras "
        f"3. Received: KERAS_BACKEND={_BACKEND!r}."
    )

SAMTrainer = current.SAMTrainer
value_and_grad = current.value_and_grad
grad = current.grad
hessian_vector_product = current.hessian_vector_product
compile_function = current.compile_function
linearize = current.linearize
