"""What the measurement callbacks share: schedule, time budget, optimizer."""

import math
import time
import warnings

import keras

from keras_sam import _validation, hessian
from keras_sam.hessian import linalg, noise_batches

FREQ_UNITS = ("epoch", "step")


class ProbeCallback(keras.callbacks.Callback):
    """Base class of the callbacks that measure the loss landscape.

    Subclasses set `log_names` and implement `measure()` (a dict of
    floats, one per name) and `cost()` (the expected number of
    Hessian-vector products, see below). This class decides when to
    measure and writes the values into `logs`.

    Schedule. With `freq_unit="epoch"` a measurement runs at the end of
    every `freq`-th epoch; with `"step"`, after every `freq`-th training
    step (counted across epochs), its values written into that step's
    logs, and each epoch's logs then carry the latest values. Every
    epoch's logs have every name; an epoch without a measurement (not
    scheduled, or skipped for time) gets NaN, so `History`, `CSVLogger`
    and TensorBoard stay aligned with the epochs.

    First and last. Whatever `freq` and the budget say, the first epoch
    and the last epoch of `fit` (the one numbered `epochs`) are measured,
    so a run always logs where it started and where it ended; with
    `freq_unit="step"` the first scheduled step is measured, and the
    last epoch's logs get a measurement at its end unless its last step
    had one.

    Time budget. Between the first and the last measurement, the callback
    keeps its own wall time below `max_overhead` times the training time
    elapsed so far (both measured from `on_train_begin`): a measurement that
    would go over is skipped (one warning says so) and runs later, once
    training has earned the time. The two forced measurements count toward
    the budget but are never skipped. The cost of a measurement is taken to
    be that of the previous one; before the first, it is predicted from the
    training step time (see `_estimate_cost`). The first measurement also
    compiles the Hessian-vector product (`tf.function`, `jax.jit`), so it
    costs more than later ones, and the budget is conservative after it.
    """

    log_names = ()

    def __init__(
        self,
        probe_data,
        freq=1,
        freq_unit="epoch",
        max_overhead=0.05,
        probe_batch_size=hessian.DEFAULT_PROBE_BATCH_SIZE,
        seed=None,
    ):
        super().__init__()
        if not _validation.is_integer(freq) or freq < 1:
            raise ValueError(
                f"Argument `freq` must be an integer >= 1. Received: "
                f"freq={freq!r}."
            )
        if freq_unit not in FREQ_UNITS:
            raise ValueError(
                f"Argument `freq_unit` must be one of {FREQ_UNITS}. "
                f"Received: freq_unit={freq_unit!r}."
            )
        if max_overhead is not None and (
            not _validation.is_real(max_overhead) or not max_overhead > 0
        ):
            raise ValueError(
                "Argument `max_overhead` must be None or a positive number. "
                f"Received: max_overhead={max_overhead!r}."
            )
        self.probe = hessian.as_probe_set(probe_data)
        self.freq = int(freq)
        self.freq_unit = freq_unit
        self.max_overhead = max_overhead
        self.probe_batch_size = _validation.check_int(
            "probe_batch_size", probe_batch_size
        )
        self.seed = seed
        # With epoch measurements the batch hook only counts steps, so
        # Keras may keep dispatching batch ends asynchronously (no host
        # sync per step); step measurements must run in the train loop.
        self.async_safe = freq_unit == "epoch"
        self._rng = linalg.make_rng(seed)
        self._warned = False
        self._reset()

    # Subclass interface ----------------------------------------------------

    def measure(self):
        """Returns a dict `{name: float}` for every name in `log_names`."""
        raise NotImplementedError

    def cost(self):
        """The expected cost of `measure()`, as a pair: the number of
        Hessian-vector products over the whole probe set, and the number
        of single-sample ones."""
        raise NotImplementedError

    # Keras hooks -----------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._reset()
        self._check_probe_fits_model()
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self._measured_this_step = False
        if self.freq_unit == "step" and self._steps % self.freq == 0:
            values = self._measure_within_budget(force=self._latest is None)
            self._measured_this_step = values is not None
            if values is not None and logs is not None:
                logs.update(values)

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == (self.params or {}).get("epochs")
        values = None
        if self.freq_unit == "epoch":
            first = epoch == self._first_epoch
            if first or last:
                values = self._measure_within_budget(force=True)
            elif (epoch + 1) % self.freq == 0:
                values = self._measure_within_budget()
        else:
            if last and not self._measured_this_step:
                self._measure_within_budget(force=True)
            values = self._latest
        if logs is not None:
            logs.update(values or self._missing())

    # Helpers for subclasses ------------------------------------------------

    def next_seed(self):
        """A fresh integer seed for one measurement."""
        return int(self._rng.integers(2**31 - 1))

    def training_settings(self, learning_rate=None, momentum=None):
        """Returns `(learning_rate, momentum, nesterov)` of the optimizer.

        The learning rate is the optimizer's current one (a schedule is
        evaluated at `optimizer.iterations`). Momentum is the optimizer's
        `momentum` attribute where it has one (`SGD`, `RMSprop`), else 0
        (Adam and other adaptive optimizers, whose stability also depends
        on their preconditioner). A `LossScaleOptimizer` is looked
        through. `learning_rate` and `momentum`, when not `None`, replace
        the optimizer's values.
        """
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            if learning_rate is None:
                raise ValueError(
                    f"{type(self).__name__} reads the learning rate from "
                    "the model's optimizer, but the model has none. Compile "
                    "the model or pass `learning_rate`."
                )
            return learning_rate, momentum or 0.0, False
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if learning_rate is None:
            learning_rate = float(
                keras.ops.convert_to_numpy(optimizer.learning_rate)
            )
        if momentum is None:
            momentum = getattr(optimizer, "momentum", 0.0) or 0.0
            momentum = float(keras.ops.convert_to_numpy(momentum))
        nesterov = bool(getattr(optimizer, "nesterov", False))
        return learning_rate, momentum, nesterov

    # Internals -------------------------------------------------------------

    def _check_probe_fits_model(self):
        """Runs the model on one probe sample, so that probe data of the
        wrong shape, or without the targets the compiled loss needs,
        fails here with a clear message instead of inside a compiled
        Hessian-vector product."""
        name = type(self).__name__
        if self.probe.y is None and getattr(self.model, "loss", None):
            raise ValueError(
                f"{name}'s `probe_data` has no targets `y`, but the model's "
                f"compiled loss ({self.model.loss!r}) needs them: pass "
                "`(x, y)` or `(x, y, sample_weight)`."
            )
        x = self.probe.take(slice(0, 1))[0]
        try:
            self.model(x, training=False)
        except Exception as error:
            shapes = keras.tree.map_structure(
                lambda a: tuple(a.shape[1:]), self.probe.x
            )
            raise ValueError(
                f"{name}'s `probe_data` does not fit the model: its inputs "
                f"have per-sample shapes {shapes}, and calling the model on "
                f"one of them failed with {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}"
            ) from error

    def _reset(self):
        self._start = time.perf_counter()
        self._spent = 0.0
        self._last_cost = None
        self._steps = 0
        self._latest = None
        self._first_epoch = None
        self._measured_this_step = False

    def _missing(self):
        return {name: float("nan") for name in self.log_names}

    def _measure_within_budget(self, force=False):
        if self.max_overhead is not None and not force:
            training = time.perf_counter() - self._start - self._spent
            estimate = self._estimate_cost(training)
            if self._spent + estimate > self.max_overhead * training:
                self._warn_skipped(estimate, training)
                return None
        begin = time.perf_counter()
        values = self.measure()
        self._last_cost = time.perf_counter() - begin
        self._spent += self._last_cost
        self._latest = values
        return values

    def _estimate_cost(self, training):
        """The last measurement's cost; before the first, two training
        steps per Hessian-vector product on 128 samples (measured ratio
        1.1 to 1.7 for a small CNN and ResNet-20 at batch 128 on CPU,
        TensorFlow), a fifth of a step per single-sample product, and ten
        steps for compiling."""
        if self._last_cost is not None:
            return self._last_cost
        step_time = training / max(self._steps, 1)
        full, single = self.cost()
        passes = full * self.probe.num_samples / 128
        # Compiling the products (tf.function tracing) took 5 to 10 steps.
        compile_time = 10.0 * step_time
        return step_time * (2.0 * passes + 0.2 * single) + compile_time

    def _warn_skipped(self, estimate, training):
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"{type(self).__name__} skipped a measurement that would have "
            f"taken about {estimate:.3g} s, bringing its time to more than "
            f"max_overhead={self.max_overhead} of the {training:.3g} s of "
            "training so far. It measures again when the budget allows "
            "and always at the last epoch; skipped epochs log NaN. Raise "
            "`max_overhead` (or set it to None), `freq`, or use fewer "
            "probe samples. (Warned once.)",
            stacklevel=2,
        )


class SGDNoiseCallback(ProbeCallback):
    """Base class of the callbacks that measure SGD's batch noise.

    Holds what `LinearStability` and `NoiseAlignment` share beyond the
    schedule: the SGD batch size `B` and training set size `N` (Keras does
    not pass the batch size to callbacks, so one of them is needed), and
    how many probe samples stand for SGD's batches (`max_exact_samples`,
    `num_noise_batches`, see `keras_sam.hessian.noise_batches`).
    """

    def __init__(
        self, probe_data, batch_size, dataset_size, max_exact_samples,
        num_noise_batches, freq, freq_unit, max_overhead, probe_batch_size,
        seed,
    ):
        super().__init__(
            probe_data, freq, freq_unit, max_overhead, probe_batch_size, seed
        )
        self.batch_size = optional_int("batch_size", batch_size)
        self.dataset_size = optional_int("dataset_size", dataset_size)
        if self.batch_size is None and self.dataset_size is None:
            raise ValueError(
                f"{type(self).__name__} needs the SGD batch size, which "
                "Keras does not pass to callbacks: give `batch_size` (or "
                "`dataset_size`, with `fit`'s steps per epoch known). "
                "Received: batch_size=None, dataset_size=None."
            )
        self.max_exact_samples = _validation.check_int(
            "max_exact_samples", max_exact_samples, 0
        )
        self.num_noise_batches = optional_int(
            "num_noise_batches", num_noise_batches
        )

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.training_sizes()

    def training_sizes(self):
        """Returns the SGD batch size `B` and training set size `N`.

        Keras 3's `fit` gives callbacks only `params["steps"]` (steps per
        epoch), so at least one of `batch_size` and `dataset_size` must be
        given: `B = ceil(N / steps)`, `N = B * steps` (or the probe set's
        size when the steps are unknown).
        """
        batch_size, dataset_size = self.batch_size, self.dataset_size
        steps = (self.params or {}).get("steps")
        if batch_size is None:
            if dataset_size is None or not steps:
                raise ValueError(
                    f"{type(self).__name__} needs the SGD batch size, "
                    "which Keras does not pass to callbacks: give "
                    "`batch_size` (or `dataset_size`, when the steps per "
                    "epoch are known). Received: batch_size=None, "
                    f"dataset_size={dataset_size}, steps per epoch={steps}."
                )
            batch_size = math.ceil(dataset_size / steps)
        if dataset_size is None:
            dataset_size = batch_size * steps if steps else None
        return batch_size, dataset_size

    def noise_plan(self):
        """`(exact, b, count)` of `noise_batches.noise_plan` for this
        training run: the probe-sample sets standing for SGD's batches."""
        batch_size, _ = self.training_sizes()
        return noise_batches.noise_plan(
            self.probe.num_samples,
            batch_size,
            self.max_exact_samples,
            self.num_noise_batches,
        )


def optional_learning_rate(learning_rate):
    """Checks a `learning_rate` override (`None` or positive)."""
    if learning_rate is None:
        return None
    return _validation.check_positive_float("learning_rate", learning_rate)


def optional_momentum(momentum):
    """Checks a `momentum` override (`None` or in [0, 1))."""
    if momentum is None:
        return None
    return _validation.check_unit_interval("momentum", momentum)


def gd_stability_ratio(sharpness, learning_rate, momentum, nesterov):
    """`sharpness` over `hessian.gd_stability_threshold`; 0 when the
    learning rate is 0 (the end of a decayed schedule)."""
    if learning_rate <= 0:
        return 0.0
    threshold = hessian.gd_stability_threshold(
        learning_rate, momentum, nesterov
    )
    return float(sharpness / threshold)


def optional_int(name, value):
    """Checks an optional integer argument (`None` or >= 1)."""
    if value is None:
        return None
    return _validation.check_int(name, value)
