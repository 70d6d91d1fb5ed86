"""`WeightTrajectory`: the trainable weights every `k` steps, on disk."""

import os
import re

import keras
import numpy as np

from keras_sam import _validation

_FILE = re.compile(r"^weights_step(\d+)\.npy$")


class WeightTrajectory(keras.callbacks.Callback):
    """Records the trainable weights every `every_n_steps` training steps.

    Each record is one file `weights_step{step:09d}.npy` in `directory`:
    all trainable variables (in the order of
    `model.trainable_variables`) flattened into one float32 vector. The
    step is the optimizer's iteration count, so a resumed `fit` (a
    model reloaded with its optimizer, or `fit` called again) goes on
    numbering where it stopped, and records already on disk are kept, not
    rewritten. The weights at the start of `fit` are recorded too (step
    0 on a fresh model). Memory stays bounded: one flat copy of the
    weights at a time; the disk holds `4 x parameters` bytes per record.
    `WeightTrajectory.load(directory)` reads them back and
    `keras_sam.landscape.trajectory_plane` draws the path over the loss
    contours. It writes nothing into `logs`.

    Args:
        directory: Path of the folder to write into (created if missing).
        every_n_steps: Integer, record after every `every_n_steps`-th
            training step (counted by the optimizer). Defaults to `10`.

    Example:

    ```python
    model.fit(x, y, epochs=20, callbacks=[
        keras_sam.callbacks.WeightTrajectory("run/trajectory", 50)
    ])
    steps, weights = keras_sam.callbacks.WeightTrajectory.load(
        "run/trajectory"
    )
    ```

    References:
        - Li et al., 2018. Visualizing the Loss Landscape of Neural Nets,
          Section 7. https://arxiv.org/abs/1712.09913
    """

    def __init__(self, directory, every_n_steps=10):
        super().__init__()
        if not isinstance(directory, (str, os.PathLike)):
            raise ValueError(
                "Argument `directory` must be a path. Received: "
                f"directory={_validation.short_repr(directory)}."
            )
        self.directory = os.fspath(directory)
        self.every_n_steps = _validation.check_int(
            "every_n_steps", every_n_steps
        )

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self._record(self._step())

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.every_n_steps == 0:
            self._record(step)

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _record(self, step):
        path = os.path.join(self.directory, f"weights_step{step:09d}.npy")
        if os.path.exists(path):
            return
        flat = np.concatenate(
            [
                np.asarray(keras.ops.convert_to_numpy(v), np.float32).ravel()
                for v in self.model.trainable_variables
            ]
        )
        partial = path + ".partial"
        with open(partial, "wb") as handle:
            np.save(handle, flat)
        os.replace(partial, path)

    @staticmethod
    def load(directory):
        """Reads the records of a `WeightTrajectory` folder.

        Args:
            directory: The folder the callback wrote into.

        Returns:
            A pair `(steps, weights)`: an int64 array of the recorded
            steps, ascending, and a float32 array of shape `(len(steps),
            parameters)`, one flat weight vector per step.
        """
        directory = os.fspath(directory)
        found = sorted(
            (int(match.group(1)), name)
            for name in os.listdir(directory)
            if (match := _FILE.match(name))
        )
        if not found:
            raise ValueError(
                "Argument `directory` holds no `weights_step*.npy` records. "
                f"Received: directory={directory!r}."
            )
        steps = np.array([step for step, _ in found], np.int64)
        weights = np.stack(
            [np.load(os.path.join(directory, name)) for _, name in found]
        )
        return steps, weights
