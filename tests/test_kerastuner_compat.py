"""The private KerasTuner internals the sweep relies on."""

import keras_tuner
import pytest

from keras_sam.experiments import _kerastuner_compat


def test_kerastuner_internals_exist():
    _kerastuner_compat.check()


def test_kerastuner_check_names_the_version(monkeypatch):
    monkeypatch.setattr(
        _kerastuner_compat, "TUNER_METHODS", ("_gone_in_a_later_release",)
    )
    with pytest.raises(ImportError, match=keras_tuner.__version__):
        _kerastuner_compat.check()


def test_execution_hook_overrides_the_checked_tuner_method():
    for name in _kerastuner_compat.TUNER_METHODS:
        assert name in vars(_kerastuner_compat.ExecutionHook)
        assert callable(getattr(keras_tuner.Tuner, name))


def test_execution_hook_passes_its_arguments_to_the_tuner():
    calls = []

    class Tuner:
        def _build_and_fit_model(self, trial, *args, **kwargs):
            calls.append((trial, args, kwargs))
            return "history"

    class Hooked(_kerastuner_compat.ExecutionHook, Tuner):
        def before_execution(self, trial):
            return {"seed": len(calls), "trial_id": trial}

    tuner = Hooked()
    assert tuner._build_and_fit_model("0001", "x", epochs=2) == "history"
    tuner._build_and_fit_model("0001")
    assert calls == [
        ("0001", ("x",), {"seed": 0, "trial_id": "0001", "epochs": 2}),
        ("0001", (), {"seed": 1, "trial_id": "0001"}),
    ]
