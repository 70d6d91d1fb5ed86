"""The private KerasTuner internals the sweep relies on, in one place.

Checked against KerasTuner 1.4.8; each use says why. `check()` raises an
error naming the installed version if an upgrade removed one
(`tests/test_tuning.py` calls it).
"""

import functools

import keras_tuner

# `ExecutionHook` overrides this `Tuner` method: it is the one place per
# execution where the seed can be set before the model is built (no
# public hook runs there).
TUNER_METHODS = ("_build_and_fit_model",)
# The grid oracle's ordering of tried combinations, rebuilt on reload.
GRID_ORACLE_ATTRIBUTES = ("_compare", "_ordered_ids", "_populate_next")


class ExecutionHook:
    """Mixin for a `keras_tuner.Tuner`: a hook before each execution.

    Calls `self.before_execution(trial)` before KerasTuner builds and fits
    the model of each execution of a trial, and passes the dict it returns
    as extra keyword arguments to `HyperModel.fit` (through KerasTuner's
    private `Tuner._build_and_fit_model`, see `TUNER_METHODS`). Put it
    before `keras_tuner.Tuner` in the bases.
    """

    def before_execution(self, trial):
        """Returns the extra `fit` keyword arguments of the next execution
        of `trial`. Defaults to none."""
        return {}

    def _build_and_fit_model(self, trial, *args, **kwargs):
        extra = self.before_execution(trial)
        return super()._build_and_fit_model(trial, *args, **extra, **kwargs)


def rebuild_grid_order(oracle):
    """Rebuilds a reloaded `GridSearchOracle`'s ordering of tried trials.

    KerasTuner 1.4.8 does not save it (keras-team/keras-tuner issue 1055),
    so a reloaded grid search fails with a `KeyError` when a trial ends.
    The order is the trials sorted by their values, as the grid visits
    them; every ended trial is queued to propose its successor.
    """
    order = sorted(
        oracle.trials,
        key=functools.cmp_to_key(
            lambda a, b: oracle._compare(
                oracle.trials[a].hyperparameters.values,
                oracle.trials[b].hyperparameters.values,
            )
        ),
    )
    oracle._ordered_ids = type(oracle._ordered_ids)()
    for trial_id in order:
        oracle._ordered_ids.insert(trial_id)
    oracle._populate_next = list(oracle.end_order)


def check():
    """Raises `ImportError` naming the KerasTuner version if an internal
    the sweep uses is gone."""
    missing = [
        f"Tuner.{name}"
        for name in TUNER_METHODS
        if not hasattr(keras_tuner.Tuner, name)
    ]
    oracle = keras_tuner.oracles.GridSearchOracle(
        objective="loss", max_trials=1
    )
    missing += [
        f"GridSearchOracle.{name}"
        for name in GRID_ORACLE_ATTRIBUTES
        if not hasattr(oracle, name)
    ]
    if missing:
        raise ImportError(
            "keras-sam's sweep needs KerasTuner internals that KerasTuner "
            f"{keras_tuner.__version__} no longer has: {', '.join(missing)}. "
            "Install keras-tuner 1.4.x (tested with 1.4.8) or update "
            "keras_sam/experiments/_kerastuner_compat.py."
        )
