"""`NoiseAlignment`: how SGD's gradient noise meets the curvature, in `logs`."""

from keras_sam import _validation, hessian
from keras_sam.callbacks._probe_callback import SGDNoiseCallback


class NoiseAlignment(SGDNoiseCallback):
    """Logs the curvature-weighted strength of SGD's gradient noise.

    Writes into `logs`, by `hessian.noise_alignment` (Wu, Wang & Su,
    2022):

    - `noise_trace`: `Tr(H C_B)`, with `C_B` the covariance of a batch
      gradient of `B` samples drawn without replacement from `N`; one SGD
      step raises the expected loss by `lr^2 / 2` times this;
    - `noise_alignment`: `mu = Tr(H C) / (2 L |H|_F^2)`, `C` the
      per-sample gradient covariance and `L` the loss; of order one when
      the noise concentrates in sharp directions in proportion to the
      loss, as the paper proves for the square loss near a minimum.

    Keras 3's `fit` does not tell callbacks the batch size: pass
    `batch_size` (or `dataset_size`, and `B = ceil(N / steps_per_epoch)`
    is used); a missing `N` is `B * steps_per_epoch`. The cost is
    `num_samples` Hessian-vector products over `probe_data` plus one per
    sample (probe sets of at most `max_exact_samples`) or per noise
    batch; the model is not changed. Put this callback before `CSVLogger`
    or `TensorBoard` in the `callbacks` list. See `ProbeCallback` for
    `freq`, `freq_unit` and `max_overhead`.

    Args:
        probe_data: Training samples to measure on: `(x, y)`, `(x, y,
            sample_weight)`, or a finite batched `tf.data.Dataset`.
        batch_size: Integer or `None`, the SGD batch size. Defaults to
            `None` (then `dataset_size` is required).
        dataset_size: Integer or `None`, the training set size. Defaults
            to `None`.
        num_samples: Integer, Hutchinson vectors for `|H|_F`. Defaults to
            `32`.
        max_exact_samples: Integer, the largest probe set measured with
            per-sample gradients. Defaults to `64`.
        num_noise_batches: Integer or `None`, random batches when not
            exact. Defaults to `None`.
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
        keras_sam.callbacks.NoiseAlignment(
            (x_train[:64], y_train[:64]), batch_size=32)])
    ```

    References:
        - Wu, Wang & Su, 2022. https://arxiv.org/abs/2207.02628
    """

    log_names = ("noise_trace", "noise_alignment")

    def __init__(
        self,
        probe_data,
        batch_size=None,
        dataset_size=None,
        num_samples=32,
        max_exact_samples=hessian.DEFAULT_MAX_EXACT_SAMPLES,
        num_noise_batches=None,
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
        self.num_samples = _validation.check_int("num_samples", num_samples)

    def measure(self):
        batch_size, dataset_size = self.training_sizes()
        result = hessian.noise_alignment(
            self.model,
            self.probe,
            batch_size=batch_size,
            dataset_size=dataset_size,
            num_samples=self.num_samples,
            max_exact_samples=self.max_exact_samples,
            num_noise_batches=self.num_noise_batches,
            seed=self.next_seed(),
            probe_batch_size=self.probe_batch_size,
        )
        return {name: float(result[name]) for name in self.log_names}

    def cost(self):
        n = self.probe.num_samples
        exact, size, count = self.noise_plan()
        if exact:
            return 2 + n + self.num_samples, n
        return 2 + count * (1 + size / n) + self.num_samples, 0
