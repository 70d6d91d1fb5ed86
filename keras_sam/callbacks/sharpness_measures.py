"""`SharpnessMeasures`: Keskar and adaptive sharpness, in `logs`."""

from keras_sam import _validation, hessian
from keras_sam.callbacks._probe_callback import ProbeCallback

# Measure name -> the name it is logged under.
MEASURES = {
    "keskar": "keskar_sharpness",
    "adaptive_worst": "adaptive_worst_sharpness",
    "adaptive_average": "adaptive_average_sharpness",
}


class SharpnessMeasures(ProbeCallback):
    """Logs several sharpness measures side by side.

    No single sharpness number predicts generalization reliably
    (Andriushchenko et al., 2023), so this callback logs the chosen ones
    together, for correlating across runs with test error afterwards:

    - `"keskar"`: Keskar et al.'s epsilon-sharpness, logged as
      `keskar_sharpness` (`hessian.keskar_sharpness`);
    - `"adaptive_worst"`: adaptive worst-case sharpness in the `norm`
      ball of radius `rho`, logged as `adaptive_worst_sharpness`;
    - `"adaptive_average"`: adaptive average-case sharpness (Gaussian
      perturbations of scale `rho`), logged as
      `adaptive_average_sharpness` (both `hessian.adaptive_sharpness`).

    The top eigenvalue and the trace have their own callbacks
    (`Sharpness`, `HessianTrace`). The model is not changed. Put this
    callback before `CSVLogger` or `TensorBoard`. See `ProbeCallback`
    for `freq`, `freq_unit` and `max_overhead`.

    Args:
        probe_data: Samples to measure on: `(x, y)`, `(x, y,
            sample_weight)`, or a finite batched `tf.data.Dataset`.
        measures: Tuple of names from `"keskar"`, `"adaptive_worst"`,
            `"adaptive_average"`. Defaults to `("keskar",)`.
        epsilon: Positive float, Keskar's box size. Defaults to `1e-3`.
        rho: Positive float, the adaptive measures' radius; needed when
            one of them is chosen (its scale depends on `norm`).
            Defaults to `None`.
        norm: `"linf"` or `"l2"`, the worst case's ball. Defaults to
            `"linf"`.
        max_iterations: Integer, Keskar's L-BFGS-B iterations. Defaults
            to `10`.
        num_steps: Integer, the worst case's ascent steps. Defaults to
            `20`.
        num_samples: Integer, the average case's Gaussian draws.
            Defaults to `32`.
        freq: Integer, measure every `freq` epochs (or steps). Defaults to
            `1`.
        freq_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        max_overhead: Float or `None`, the largest fraction of training
            wall time this callback may take; `None` for no limit. The
            first and the last epoch are measured regardless. Defaults to
            `0.05`.
        probe_batch_size: Integer, samples per microbatch. Defaults to
            `128`.
        seed: Integer or `None`, seeds the start points and draws.
            Defaults to `None`.

    Example:

    ```python
    measures = keras_sam.callbacks.SharpnessMeasures(
        (x_train[:512], y_train[:512]),
        measures=("keskar", "adaptive_worst"), rho=0.002)
    model.fit(x_train, y_train, epochs=10, callbacks=[measures])
    ```

    References:
        - Keskar et al., 2017. On Large-Batch Training for Deep Learning:
          Generalization Gap and Sharp Minima.
          https://arxiv.org/abs/1609.04836
        - Andriushchenko et al., 2023. A Modern Look at the Relationship
          between Sharpness and Generalization.
          https://arxiv.org/abs/2302.07011
    """

    def __init__(
        self,
        probe_data,
        measures=("keskar",),
        epsilon=1e-3,
        rho=None,
        norm="linf",
        max_iterations=10,
        num_steps=20,
        num_samples=32,
        freq=1,
        freq_unit="epoch",
        max_overhead=0.05,
        probe_batch_size=hessian.DEFAULT_PROBE_BATCH_SIZE,
        seed=None,
    ):
        measures = _check_measures(measures)
        adaptive = [m for m in measures if m.startswith("adaptive")]
        if adaptive and (not _validation.is_real(rho) or not rho > 0):
            raise ValueError(
                f"Argument `rho` must be a positive number for the measures "
                f"{adaptive}. Received: rho={rho!r}."
            )
        if not _validation.is_real(epsilon) or not epsilon > 0:
            raise ValueError(
                "Argument `epsilon` must be a positive number. Received: "
                f"epsilon={epsilon!r}."
            )
        _validation.check_choice("norm", norm, hessian.SHARPNESS_NORMS)
        super().__init__(
            probe_data, freq, freq_unit, max_overhead, probe_batch_size, seed
        )
        self.measures = measures
        self.log_names = tuple(MEASURES[m] for m in measures)
        self.epsilon = float(epsilon)
        self.rho = rho
        self.norm = norm
        self.max_iterations = _validation.check_int(
            "max_iterations", max_iterations
        )
        self.num_steps = _validation.check_int("num_steps", num_steps)
        self.num_samples = _validation.check_int("num_samples", num_samples)

    def measure(self):
        values = {}
        common = {"probe_batch_size": self.probe_batch_size}
        if "keskar" in self.measures:
            values["keskar_sharpness"] = hessian.keskar_sharpness(
                self.model, self.probe, epsilon=self.epsilon,
                max_iterations=self.max_iterations, seed=self.next_seed(),
                **common,
            )["sharpness"]
        for kind in ("worst", "average"):
            if f"adaptive_{kind}" not in self.measures:
                continue
            values[f"adaptive_{kind}_sharpness"] = hessian.adaptive_sharpness(
                self.model, self.probe, rho=self.rho, kind=kind,
                norm=self.norm, num_steps=self.num_steps,
                num_samples=self.num_samples, seed=self.next_seed(),
                **common,
            )["sharpness"]
        return values

    def cost(self):
        # In Hessian-vector products over the probe set: a loss and its
        # gradient cost about half of one, a loss alone about a quarter;
        # an L-BFGS-B iteration about two loss-and-gradient evaluations.
        passes = 0.0
        if "keskar" in self.measures:
            passes += self.max_iterations
        if "adaptive_worst" in self.measures:
            passes += 0.5 * self.num_steps
        if "adaptive_average" in self.measures:
            passes += 0.25 * self.num_samples
        return passes, 0


def _check_measures(measures):
    names = (measures,) if isinstance(measures, str) else measures
    try:
        names = tuple(names)
    except TypeError:
        names = ()
    if (
        not names
        or len(set(names)) != len(names)
        or any(name not in MEASURES for name in names)
    ):
        raise ValueError(
            "Argument `measures` must be distinct names from "
            f"{tuple(MEASURES)}. Received: measures={measures!r}."
        )
    return names
