"""`Sharpness`: the top Hessian eigenvalue and GD's stability, in `logs`."""

from keras_sam import _validation, hessian
from keras_sam.callbacks._probe_callback import (
    ProbeCallback,
    gd_stability_ratio,
    optional_learning_rate,
    optional_momentum,
)


class Sharpness(ProbeCallback):
    """Logs the sharpness and whether gradient descent is stable there.

    Writes into `logs`:

    - `sharpness`: `a`, the largest eigenvalue of the Hessian of the
      training loss (compiled loss plus regularization, inference mode) on
      `probe_data`, by `hessian.top_eigenvalues`;
    - `gd_stability_ratio`: `a` divided by the largest sharpness at which
      gradient descent at the current learning rate is linearly stable,
      `2 (1 + momentum) / learning_rate` (see
      `hessian.gd_stability_threshold`). Above 1, full-batch GD would be
      unstable at these weights ("edge of stability" when it hovers at 1).

    The learning rate is read from the model's optimizer at each
    measurement (schedules included), as is the momentum (`SGD` and
    `RMSprop` have one; Adam-type optimizers count as 0, and their ratio
    ignores their preconditioner). Measuring costs `num_iterations`
    Hessian-vector products over `probe_data`, each about four forward
    passes; the model is not changed. Put this callback before
    `CSVLogger` or `TensorBoard` in the `callbacks` list so they see the
    values. See `ProbeCallback` for `freq`, `freq_unit` and
    `max_overhead`.

    Args:
        probe_data: Samples to measure on: `(x, y)`, `(x, y,
            sample_weight)`, or a finite batched `tf.data.Dataset`. A few
            hundred training samples are typical.
        num_iterations: Integer, the number of Lanczos steps. Defaults to
            `20`.
        learning_rate: Float or `None`; if given, used instead of the
            optimizer's. Defaults to `None`.
        momentum: Float or `None`; if given, used instead of the
            optimizer's. Defaults to `None`.
        freq: Integer, measure every `freq` epochs (or steps). Defaults to
            `1`.
        freq_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        max_overhead: Float or `None`, the largest fraction of training
            wall time this callback may take; `None` for no limit. The
            first and the last epoch are measured regardless. Defaults to
            `0.05`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        seed: Integer or `None`, seeds the Lanczos start vectors. Defaults
            to `None`.

    Example:

    ```python
    probe = (x_train[:512], y_train[:512])
    history = model.fit(
        x_train, y_train, epochs=10,
        callbacks=[keras_sam.callbacks.Sharpness(probe)])
    history.history["sharpness"], history.history["gd_stability_ratio"]
    ```

    References:
        - Cohen et al., 2021. Gradient Descent on Neural Networks
          Typically Occurs at the Edge of Stability.
          https://arxiv.org/abs/2103.00065
        - Wu, Ma & E, 2018. https://papers.nips.cc/paper/8049
    """

    log_names = ("sharpness", "gd_stability_ratio")

    def __init__(
        self,
        probe_data,
        num_iterations=20,
        learning_rate=None,
        momentum=None,
        freq=1,
        freq_unit="epoch",
        max_overhead=0.05,
        probe_batch_size=hessian.DEFAULT_PROBE_BATCH_SIZE,
        seed=None,
    ):
        super().__init__(
            probe_data, freq, freq_unit, max_overhead, probe_batch_size, seed
        )
        self.num_iterations = _validation.check_int(
            "num_iterations", num_iterations
        )
        self.learning_rate = optional_learning_rate(learning_rate)
        self.momentum = optional_momentum(momentum)

    def measure(self):
        sharpness = hessian.top_eigenvalues(
            self.model,
            self.probe,
            k=1,
            num_iterations=self.num_iterations,
            seed=self.next_seed(),
            probe_batch_size=self.probe_batch_size,
        )[0]
        settings = self.training_settings(self.learning_rate, self.momentum)
        return {
            "sharpness": float(sharpness),
            "gd_stability_ratio": gd_stability_ratio(sharpness, *settings),
        }

    def cost(self):
        return self.num_iterations, 0
