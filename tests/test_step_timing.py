"""Step timing: the rotation of the timed models and the file-name slug."""

import keras
import numpy as np

from keras_sam.experiments import _step_timing


class FakeTimed:
    def __init__(self, name, log):
        self.name, self.log, self.times = name, log, []

    def run(self, steps):
        self.log.append((self.name, steps))
        return float(steps)


def test_measure_warms_up_then_rotates_the_order(capsys):
    log = []
    timed = [FakeTimed(name, log) for name in "abc"]
    _step_timing.measure(timed, steps=4, warmup=2, repeats=4)
    assert log[:3] == [("a", 2), ("b", 2), ("c", 2)]
    order = [name for name, _ in log[3:]]
    assert order == list("abc" "bca" "cab" "abc")
    assert all(item.times == [4.0] * 4 for item in timed)
    assert "repeat 4/4 ms/step" in capsys.readouterr().out


def test_slug():
    assert _step_timing.slug("CPU: Intel(R) Xeon(R)") == "cpu-intel-r-xeon-r"
    assert len(_step_timing.slug("x" * 100)) == 40


def test_timed_model_divides_by_the_timed_steps():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((12, 2), "float32"), np.zeros((12, 1), "float32")
    for timer, untimed in (
        (_step_timing.epoch_timer_class(keras.callbacks.Callback), 0),
        (_step_timing.step_timer_class(keras.callbacks.Callback), 1),
    ):
        timed = _step_timing.TimedModel(
            "m", model, timer, x, y, batch_size=3, untimed_steps=untimed
        )
        seconds = timed.run(4)
        assert 0.0 < seconds < 10.0
