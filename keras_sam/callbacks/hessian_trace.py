"""`HessianTrace`: Hutchinson's estimate of the Hessian trace, in `logs`."""

from keras_sam import _validation, hessian
from keras_sam.callbacks._probe_callback import ProbeCallback


class HessianTrace(ProbeCallback):
    """Logs the trace of the loss Hessian, the average curvature.

    Writes `hessian_trace` into `logs`: Hutchinson's estimate
    `mean(z^T H z)` over `num_samples` Rademacher vectors `z` of the
    Hessian of the training loss (compiled loss plus regularization,
    inference mode) on `probe_data`, by `hessian.hessian_trace`. Its
    standard error is about `sqrt(2 / num_samples) |H|_F`. Measuring costs
    `num_samples` Hessian-vector products over `probe_data`; the model is
    not changed. Put this callback before `CSVLogger` or `TensorBoard` in
    the `callbacks` list so they see the value. See `ProbeCallback` for
    `freq`, `freq_unit` and `max_overhead`.

    Args:
        probe_data: Samples to measure on: `(x, y)`, `(x, y,
            sample_weight)`, or a finite batched `tf.data.Dataset`.
        num_samples: Integer, the number of random vectors. Defaults to
            `32`.
        freq: Integer, measure every `freq` epochs (or steps). Defaults to
            `1`.
        freq_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        max_overhead: Float or `None`, the largest fraction of training
            wall time this callback may take; `None` for no limit. The
            first and the last epoch are measured regardless. Defaults to
            `0.05`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        seed: Integer or `None`, seeds the random vectors. Defaults to
            `None`.

    Example:

    ```python
    model.fit(x_train, y_train, epochs=10, callbacks=[
        keras_sam.callbacks.HessianTrace((x_train[:512], y_train[:512]))])
    ```

    References:
        - Hutchinson, 1989.
          https://doi.org/10.1080/03610918908812806
        - Yao et al., 2020. PyHessian. https://arxiv.org/abs/1912.07145
    """

    log_names = ("hessian_trace",)

    def __init__(
        self,
        probe_data,
        num_samples=32,
        freq=1,
        freq_unit="epoch",
        max_overhead=0.05,
        probe_batch_size=hessian.DEFAULT_PROBE_BATCH_SIZE,
        seed=None,
    ):
        super().__init__(
            probe_data, freq, freq_unit, max_overhead, probe_batch_size, seed
        )
        self.num_samples = _validation.check_int("num_samples", num_samples)

    def measure(self):
        result = hessian.hessian_trace(
            self.model,
            self.probe,
            num_samples=self.num_samples,
            seed=self.next_seed(),
            probe_batch_size=self.probe_batch_size,
        )
        return {"hessian_trace": result["trace"]}

    def cost(self):
        return self.num_samples, 0
