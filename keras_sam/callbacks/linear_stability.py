"""`LinearStability`: whether GD and SGD can stay at the weights, in `logs`."""

from keras_sam import _validation, hessian
from keras_sam.callbacks._probe_callback import (
    SGDNoiseCallback,
    gd_stability_ratio,
    optional_learning_rate,
    optional_momentum,
)


class LinearStability(SGDNoiseCallback):
    """Logs the linear stability of GD and SGD at the current weights.

    Writes into `logs`, by `hessian.linear_stability` (Wu, Ma & E, 2018):

    - `sharpness`: `a`, the largest eigenvalue of the loss Hessian `H`;
    - `non_uniformity`: `s = sqrt(lambda_max(Sigma))`, `Sigma` the
      variance of the per-sample Hessians;
    - `gd_stability_ratio`: `a` over GD's threshold
      `2 (1 + momentum) / learning_rate` (stable iff <= 1);
    - `sgd_growth`: without momentum, Wu et al.'s bound
      `lambda_max(M) - 1`, `M = (I - lr H)^2 + lr^2 (N - B) / (B (N - 1))
      Sigma`, on the per-step growth of the second moment of SGD's
      deviation; with momentum, `sgd_growth_exact`;
    - `sgd_growth_exact`: that growth itself, the spectral radius of the
      second-moment map of Keras's SGD (with its momentum and Nesterov
      setting) minus 1, in the top `num_directions` eigenvectors of `H`
      (see `hessian.linear_stability`); at most `sgd_growth` without
      momentum;
    - `sgd_stable`: `1.0` if `sgd_growth <= tolerance`, else `0.0`.

    The learning rate, momentum and `nesterov` flag are read from the
    model's optimizer at each measurement (see
    `ProbeCallback.training_settings`). The
    SGD batch size `B` and training set size `N` are not given to
    callbacks by Keras 3's `fit`: pass `batch_size` (or `dataset_size`,
    and `B = ceil(N / steps_per_epoch)` is used); a missing `N` is
    `B * steps_per_epoch`. With a learning rate of 0 the stability keys
    are NaN. The cost is roughly `5 * num_iterations` Hessian-vector
    products over `probe_data`, more with exact per-sample products (see
    `hessian.linear_stability`); the model is not changed. Put this
    callback before `CSVLogger` or `TensorBoard` in the `callbacks` list.
    See `ProbeCallback` for `freq`, `freq_unit` and `max_overhead`.

    Args:
        probe_data: Training samples to measure on: `(x, y)`, `(x, y,
            sample_weight)`, or a finite batched `tf.data.Dataset`.
        batch_size: Integer or `None`, the SGD batch size. Defaults to
            `None` (then `dataset_size` is required).
        dataset_size: Integer or `None`, the training set size. Defaults
            to `None`.
        learning_rate: Float or `None`, replaces the optimizer's. Defaults
            to `None`.
        momentum: Float or `None`, replaces the optimizer's. Defaults to
            `None`.
        num_iterations: Integer, Lanczos steps per eigenvalue. Defaults to
            `20`.
        num_directions: Integer, the dimension of the subspace of
            `sgd_growth_exact` (exact for models with at most this many
            parameters). Defaults to `8`.
        max_exact_samples: Integer, the largest probe set measured with
            exact per-sample products. Defaults to `64`.
        num_noise_batches: Integer or `None`, random batches when not
            exact. Defaults to `None`.
        tolerance: Float, the growth still called stable. Defaults to
            `1e-3`.
        freq: Integer, measure every `freq` epochs (or steps). Defaults to
            `1`.
        freq_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        max_overhead: Float or `None`, the largest fraction of training
            wall time this callback may take; `None` for no limit. The
            first and the last epoch are measured regardless. Defaults to
            `0.05`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        seed: Integer or `None`. Defaults to `None`.

    Example:

    ```python
    model.fit(x_train, y_train, batch_size=32, epochs=10, callbacks=[
        keras_sam.callbacks.LinearStability(
            (x_train[:64], y_train[:64]), batch_size=32)])
    ```

    References:
        - Wu, Ma & E, 2018. https://papers.nips.cc/paper/8049
    """

    log_names = (
        "sharpness",
        "non_uniformity",
        "gd_stability_ratio",
        "sgd_growth",
        "sgd_growth_exact",
        "sgd_stable",
    )

    def __init__(
        self,
        probe_data,
        batch_size=None,
        dataset_size=None,
        learning_rate=None,
        momentum=None,
        num_iterations=20,
        num_directions=hessian.DEFAULT_NUM_DIRECTIONS,
        max_exact_samples=hessian.DEFAULT_MAX_EXACT_SAMPLES,
        num_noise_batches=None,
        tolerance=hessian.DEFAULT_STABILITY_TOLERANCE,
        freq=1,
        freq_unit="epoch",
        max_overhead=0.05,
        probe_batch_size=hessian.DEFAULT_PROBE_BATCH_SIZE,
        seed=None,
    ):
        super().__init__(
            probe_data, batch_size, dataset_size, max_exact_samples,
            num_noise_batches, freq, freq_unit, max_overhead,
            probe_batch_size, seed,
        )
        self.learning_rate = optional_learning_rate(learning_rate)
        self.momentum = optional_momentum(momentum)
        self.num_iterations = _validation.check_int(
            "num_iterations", num_iterations
        )
        self.num_directions = _validation.check_int(
            "num_directions", num_directions
        )
        self.tolerance = _validation.check_non_negative_float(
            "tolerance", tolerance
        )

    def measure(self):
        learning_rate, momentum, nesterov = self.training_settings(
            self.learning_rate, self.momentum
        )
        if learning_rate <= 0:
            return self._missing()
        batch_size, dataset_size = self.training_sizes()
        result = hessian.linear_stability(
            self.model,
            self.probe,
            learning_rate=learning_rate,
            batch_size=batch_size,
            momentum=momentum,
            dataset_size=dataset_size,
            nesterov=nesterov,
            num_iterations=self.num_iterations,
            num_directions=self.num_directions,
            max_exact_samples=self.max_exact_samples,
            num_noise_batches=self.num_noise_batches,
            tolerance=self.tolerance,
            seed=self.next_seed(),
            probe_batch_size=self.probe_batch_size,
        )
        result["gd_stability_ratio"] = gd_stability_ratio(
            result["sharpness"], learning_rate, momentum, nesterov
        )
        result["sgd_stable"] = float(result["sgd_stable"])
        return {name: float(result[name]) for name in self.log_names}

    def cost(self):
        n = self.probe.num_samples
        m = self.num_iterations
        k = self.num_directions
        exact, size, count = self.noise_plan()
        # Wu's criterion is computed without momentum only; the projected
        # Hessians take k products per set of samples.
        wu = 1 if self._momentum() == 0.0 else 0
        if exact:
            return max(m, 2 * k) + m * (1 + wu), 2 * m * n * (1 + wu) + k * n
        sets = count * size / n
        full = max(m, 2 * k) + 2 * m * (1 + sets) * (1 + wu) + k * (1 + sets)
        return full, 0

    def _momentum(self):
        if self.momentum is not None:
            return self.momentum
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        return float(getattr(optimizer, "momentum", 0.0) or 0.0)
