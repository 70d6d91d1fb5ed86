"""Timing training steps through `fit` (private to the repository).

Shared by `benchmarks/step_time.py` and `benchmarks/distribute_step_time.py`:
a compiled model timed over one `fit` epoch of `steps` steps, the timer
callbacks, and the measurement loop that rotates the order of the timed
models from one repeat to the next (so that no model always runs first).
"""

import re
import time


def slug(text):
    """`text` in lower case with runs of other characters as `-`, at most
    40 characters: a piece of a file name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def epoch_timer_class(callback_base):
    """A callback class (for Keras 3 or tf-keras) timing one epoch.

    Args:
        callback_base: `keras.callbacks.Callback` or tf-keras's.

    Returns:
        A callback class whose instances hold `seconds`, the time from the
        start of the epoch to its end.
    """

    class EpochTimer(callback_base):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Reading a value waits for the device to finish the epoch.
            float(logs["loss"])
            self.seconds = time.perf_counter() - self.start

    return EpochTimer


def step_timer_class(callback_base):
    """A callback class timing an epoch from the end of its first step.

    Args:
        callback_base: `keras.callbacks.Callback` or tf-keras's.

    Returns:
        A callback class whose instances hold `seconds`; use it with a
        `TimedModel` whose `untimed_steps` is 1.
    """

    class StepTimer(callback_base):
        """Seconds from the end of the first step to the end of the epoch."""

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                # Reading a value waits for the step to finish.
                float(logs["loss"])
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            float(logs["loss"])
            self.seconds = time.perf_counter() - self.start

    return StepTimer


class TimedModel:
    """A compiled model and how to time `steps` steps of it.

    `run(steps)` returns seconds per step: the callback's time over
    `steps - untimed_steps` (a timer that starts after the first step sets
    `untimed_steps = 1`). `times` collects the results of `measure`.

    Args:
        name: The name the results are recorded under.
        model: A compiled model (Keras 3 or tf-keras).
        callback_class: A timer from `epoch_timer_class` or
            `step_timer_class`.
        x: Input array, at least `steps * batch_size` samples.
        y: Target array, as many samples.
        batch_size: Integer, samples per step.
        untimed_steps: Integer, the steps before the timer starts.
            Defaults to `0`.
    """

    def __init__(
        self, name, model, callback_class, x, y, batch_size, untimed_steps=0
    ):
        self.name = name
        self.model = model
        self.callback_class = callback_class
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.untimed_steps = untimed_steps
        self.times = []

    def run(self, steps):
        timer = self.callback_class()
        samples = steps * self.batch_size
        self.model.fit(
            self.x[:samples],
            self.y[:samples],
            batch_size=self.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        return timer.seconds / (steps - self.untimed_steps)


def measure(timed, steps, warmup, repeats):
    """Times every model `repeats` times, appending to its `times`.

    Each model first runs `warmup` steps untimed; repeat `r` starts with
    model `r mod len(timed)` and goes round, printing a line per repeat.

    Args:
        timed: List of objects with `name`, `times` and `run(steps)`
            (`TimedModel`s).
        steps: Integer, steps per timed run.
        warmup: Integer, steps of the untimed first run.
        repeats: Integer, timed runs of each model.
    """
    for item in timed:
        print(f"warm-up {item.name} ({warmup} steps)", flush=True)
        item.run(warmup)
    for repeat in range(repeats):
        shift = repeat % len(timed)
        for item in timed[shift:] + timed[:shift]:
            item.times.append(item.run(steps))
        line = ", ".join(f"{v.name} {1e3 * v.times[-1]:.1f}" for v in timed)
        print(f"repeat {repeat + 1}/{repeats} ms/step: {line}", flush=True)
