"""KerasTuner sweeps over SAM's `rho` and the batch size.

`SAMHyperModel` builds the paper's CIFAR training run for one value of
each hyperparameter: `rho` (`0` meaning the plain Keras model, the SGD
baseline), the batch size (applied in `HyperModel.fit`, which rebuilds the
input pipeline), and optionally the learning rate and weight decay.
`make_tuner` wraps it in a grid, random or Bayesian search whose objective
is the validation accuracy on the held-out split, as in the paper, and
which trains every trial once per seed. `export_results` writes the
compact outcome: one CSV row per trial and seed, and the best
configuration as JSON.

Resuming and distribution are KerasTuner's own: a search started again
with the same `directory` and `project_name` reloads the oracle and runs
again the trials that were running when it stopped (each trial ends up
in the results exactly once), and with `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set, one chief process
serves the oracle and worker processes run the trials.
"""

import csv
import dataclasses
import json
import math
import os
import pathlib
import time

import keras
import keras_tuner

from keras_sam.experiments import _kerastuner_compat, data_pipeline, training
from keras_sam.experiments.config import PAPER_RHO_GRID, RunConfig

TUNERS = ("grid", "random", "bayesian")
OBJECTIVE = "val_accuracy"
RESULT_FIELDS = (
    "trial_id",
    "status",
    "seed",
    "rho",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "epochs",
    "steps_per_epoch",
    "val_accuracy",
    "best_val_accuracy",
    "test_accuracy",
    "test_error",
    "loss",
    "accuracy",
    "seconds",
    "score",
    "tuner_id",
)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The values a sweep searches; `None` fixes one at the config's.

    Args:
        rho_values: values of `rho` (`0`: the plain model). Defaults to
            `0` and the paper's grid `(0.01, 0.02, 0.05, 0.1, 0.2, 0.5)`.
        batch_sizes: values of the batch size, or `None` for the
            config's `batch_size` only. Defaults to `None`.
        learning_rates: values of the peak learning rate, or `None` for
            the config's `learning_rate`. Defaults to `None`.
        weight_decays: values of the coupled L2 coefficient, or `None`
            for the config's `weight_decay`. Defaults to `None`.
    """

    rho_values: tuple = (0.0, *PAPER_RHO_GRID)
    batch_sizes: tuple | None = None
    learning_rates: tuple | None = None
    weight_decays: tuple | None = None

    def values(self, config):
        """`{hyperparameter: checked tuple of values}` for `config`."""

        def searched(values, fixed):
            return (fixed,) if values is None else values

        return {
            "rho": _check_values("rho_values", self.rho_values, float, 0.0),
            "batch_size": _check_values(
                "batch_sizes",
                searched(self.batch_sizes, config.batch_size),
                int,
                1,
            ),
            "learning_rate": _check_values(
                "learning_rates",
                searched(self.learning_rates, config.learning_rate),
                float,
                0.0,
            ),
            "weight_decay": _check_values(
                "weight_decays",
                searched(self.weight_decays, config.weight_decay),
                float,
                0.0,
            ),
        }


class SAMHyperModel(keras_tuner.HyperModel):
    """The paper's CIFAR training run as a KerasTuner `HyperModel`.

    Hyperparameters (one `hp.Choice` each; `hp.Fixed` when a single value
    is given, so that it is recorded but not searched): `rho`,
    `batch_size`, `learning_rate`, `weight_decay`. `build` makes the
    network (`SAMModel` when `rho > 0`, the plain model when `rho == 0`)
    and compiles it with SGD, Nesterov momentum and a cosine schedule over
    the whole run. `fit` builds the input pipelines for the trial's batch
    size and seed, trains with the held-out split as validation data (the
    objective `val_accuracy`), optionally measures the test split, and
    writes one JSON record per trial and seed into `record_dir`.

    Args:
        splits: a `experiments.datasets.CifarSplits` with a validation split.
        config: a `keras_sam.experiments.config.RunConfig`: the `model`,
            the `epochs` of every trial, the `augment`ation, `momentum`,
            `nesterov`, and the `batch_size`, `learning_rate` and
            `weight_decay` that `space` does not search. Defaults to
            `None` (`RunConfig()`).
        space: a `SearchSpace`. Defaults to `None` (`SearchSpace()`:
            `rho` over 0 and the paper's grid).
        baseline_epoch_multiplier: epochs of `rho = 0` trials are
            `epochs` times this (the paper gives SGD twice the epochs).
            Defaults to `1` (equal epochs, to compare along `rho`).
        evaluate_test: whether to measure the test split after training
            (recorded, never used by the search). Defaults to `True`.
        record_dir: folder for the per-seed JSON records; `make_tuner`
            sets it inside the tuner's project folder. Defaults to `None`.

    Example:

    ```python
    splits = keras_sam.experiments.datasets.load_splits("cifar10", data_dir=...)
    hypermodel = keras_sam.experiments.tuning.SAMHyperModel(
        splits,
        RunConfig(model="wrn-16-8", epochs=100),
        SearchSpace(rho_values=(0.0, 0.05, 0.1)),
    )
    tuner = keras_sam.experiments.tuning.make_tuner(
        hypermodel, "grid", directory="sweeps", seeds=(0, 1))
    tuner.search(verbose=1)
    keras_sam.experiments.tuning.export_results(
        tuner, "trials.csv", "best.json")
    ```
    """

    def __init__(
        self,
        splits,
        config=None,
        space=None,
        baseline_epoch_multiplier=1,
        evaluate_test=True,
        record_dir=None,
    ):
        super().__init__(name="sam_cifar")
        if not len(splits.y_validation):
            raise ValueError(
                "`splits` has no validation split: the objective is the "
                "held-out accuracy. Load it with validation_fraction > 0."
            )
        config = RunConfig() if config is None else config
        space = SearchSpace() if space is None else space
        self.splits = splits
        self.model_name = config.model
        self.values = space.values(config)
        self.epochs = _check_positive("epochs", config.epochs)
        self.baseline_epoch_multiplier = _check_positive(
            "baseline_epoch_multiplier", baseline_epoch_multiplier
        )
        self.augment = data_pipeline.check_augment(config.augment)
        self.momentum = config.momentum
        self.nesterov = config.nesterov
        self.evaluate_test = evaluate_test
        self.record_dir = record_dir

    def declare_hyperparameters(self, hp):
        self._hyperparameters(hp)

    def _hyperparameters(self, hp):
        chosen = {}
        for name, values in self.values.items():
            if len(values) == 1:
                chosen[name] = hp.Fixed(name, values[0])
            else:
                chosen[name] = hp.Choice(name, list(values), ordered=True)
        return chosen

    def epochs_for(self, rho):
        """Training epochs of a trial with this `rho`."""
        if rho == 0:
            return self.epochs * self.baseline_epoch_multiplier
        return self.epochs

    def build(self, hp):
        values = self._hyperparameters(hp)
        model = training.build_model(
            self.model_name,
            values["rho"],
            num_classes=self.splits.num_classes,
            weight_decay=values["weight_decay"],
            input_shape=self.splits.x_train.shape[1:],
        )
        steps = training.steps_per_epoch(
            len(self.splits.y_train), values["batch_size"]
        )
        return training.compile_model(
            model,
            self.epochs_for(values["rho"]) * steps,
            learning_rate=values["learning_rate"],
            momentum=self.momentum,
            nesterov=self.nesterov,
        )

    def fit(self, hp, model, *args, seed=0, trial_id=None, **kwargs):
        """Trains `model` for one trial and seed; forwards `**kwargs`
        (KerasTuner's callbacks, `verbose`) to `model.fit`.

        Returns:
            `{"val_accuracy": ...}`, the held-out accuracy after the last
            epoch (the model the run produces, not its best epoch): the
            objective. KerasTuner averages it over the seeds.
        """
        if args:
            raise ValueError(
                "SAMHyperModel reads its data from `splits`: call "
                "`tuner.search()` without data arguments, got "
                f"{len(args)} positional argument(s)."
            )
        values = {name: hp.get(name) for name in self.values}
        pipelines = data_pipeline.make_pipelines(
            self.splits,
            batch_size=values["batch_size"],
            augment=self.augment,
            seed=seed,
        )
        callbacks = [
            training.DataEpoch(pipelines),
            *kwargs.pop("callbacks", []),
        ]
        epochs = self.epochs_for(values["rho"])
        kwargs.setdefault("shuffle", False)  # the pipeline shuffles
        start = time.perf_counter()
        history = model.fit(
            pipelines.train,
            validation_data=pipelines.validation,
            epochs=epochs,
            callbacks=callbacks,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        logs = history.history
        record = {
            "trial_id": trial_id,
            "seed": seed,
            **values,
            "epochs": epochs,
            "steps_per_epoch": pipelines.steps_per_epoch,
            "val_accuracy": logs[OBJECTIVE][-1],
            "best_val_accuracy": max(logs[OBJECTIVE]),
            "loss": logs["loss"][-1],
            "accuracy": logs["accuracy"][-1],
            "seconds": seconds,
            "tuner_id": os.environ.get("KERASTUNER_TUNER_ID", "tuner0"),
        }
        if self.evaluate_test:
            _, accuracy = model.evaluate(pipelines.test, verbose=0)
            record["test_accuracy"] = float(accuracy)
            record["test_error"] = 100.0 * (1.0 - float(accuracy))
        if self.record_dir is not None and trial_id is not None:
            _write_record(self.record_dir, record)
        return {OBJECTIVE: record["val_accuracy"]}


def _check_values(argument, values, kind, minimum):
    values = tuple(values)
    if not values:
        raise ValueError(
            f"Argument `{argument}` must not be empty. Received: "
            f"{argument}={values!r}."
        )
    checked = []
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < minimum
            or (kind is int and value != int(value))
        ):
            raise ValueError(
                f"Argument `{argument}` must hold numbers >= {minimum}"
                f"{' (integers)' if kind is int else ''}. Received: "
                f"{argument}={values!r}."
            )
        checked.append(kind(value))
    if len(set(checked)) != len(checked):
        raise ValueError(
            f"Argument `{argument}` must not have repeated values. "
            f"Received: {argument}={values!r}."
        )
    return tuple(checked)


def _check_positive(argument, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Argument `{argument}` must be a positive integer. Received: "
            f"{argument}={value!r}."
        )
    return value


def _record_path(record_dir, trial_id, seed):
    return pathlib.Path(record_dir) / f"trial_{trial_id}_seed_{seed}.json"


def _write_record(record_dir, record):
    """Writes atomically, so a kill never leaves half a record."""
    path = _record_path(record_dir, record["trial_id"], record["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, path)


class _SeededTrials(_kerastuner_compat.ExecutionHook):
    """Mixin for KerasTuner tuners: one execution per seed.

    Execution `i` of a trial uses `seeds[i]`: Keras is seeded with it
    before the model is built (initial weights) and `HyperModel.fit`
    receives it (data order and augmentation) together with the trial id.
    The objective of a trial is KerasTuner's average over its executions.
    """

    def __init__(self, *args, seeds=(0,), **kwargs):
        seeds = tuple(int(seed) for seed in seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"`seeds` must be distinct integers: {seeds!r}.")
        self.seeds = seeds
        self._executions = {}
        super().__init__(*args, executions_per_trial=len(seeds), **kwargs)

    def on_trial_begin(self, trial):
        # KerasTuner numbers trials from 1 ("Running Trial #1") and names
        # them from "0000"; records and trials.csv use the name.
        super().on_trial_begin(trial)
        if self.oracle.verbose >= 1:
            print(
                f"Trial id {trial.trial_id} (the trial_id column of "
                f"trials.csv), seeds {list(self.seeds)}",
                flush=True,
            )

    def run_trial(self, trial, *args, **kwargs):
        self._executions[trial.trial_id] = 0
        return super().run_trial(trial, *args, **kwargs)

    def before_execution(self, trial):
        index = self._executions.get(trial.trial_id, 0)
        self._executions[trial.trial_id] = index + 1
        seed = self.seeds[index % len(self.seeds)]
        keras.utils.set_random_seed(seed)
        return {"seed": seed, "trial_id": trial.trial_id}


class ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """`GridSearchOracle` that can be reloaded in a new process.

    KerasTuner 1.4.8 does not save the grid oracle's ordering of tried
    combinations, so a grid search reloaded after its process died fails
    with a `KeyError` as soon as a trial ends (keras-team/keras-tuner
    issue 1055). After reloading, this oracle rebuilds that ordering from
    the reloaded trials (sorted by their values, as the grid visits them)
    and queues every ended trial to propose its successor; the search then
    goes on with the untried combinations.
    """

    def set_state(self, state):
        super().set_state(state)
        _kerastuner_compat.rebuild_grid_order(self)


class SeededTuner(_SeededTrials, keras_tuner.Tuner):
    """`keras_tuner.Tuner` training every trial once per seed."""


_ORACLES = {
    "grid": ResumableGridSearchOracle,
    "random": keras_tuner.oracles.RandomSearchOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
}


def make_tuner(
    hypermodel,
    tuner="grid",
    directory="keras_sam_runs/sweep",
    project_name="tuner",
    max_trials=None,
    seeds=(0,),
    overwrite=False,
    search_seed=0,
):
    """A KerasTuner search over `hypermodel`, one execution per seed.

    The objective is `val_accuracy` (maximized): the accuracy on the
    held-out split at the end of training, averaged over the seeds.
    Running the same call again continues the search in
    `directory/project_name` (unless `overwrite`); the trials that were
    running when the previous process stopped are run again.

    Args:
        hypermodel: a `SAMHyperModel`; its `record_dir` is set to
            `directory/project_name/records`.
        tuner: `"grid"`, `"random"` or `"bayesian"`. Defaults to
            `"grid"`.
        directory: folder of the tuner's state. Defaults to
            `"keras_sam_runs/sweep"`.
        project_name: subfolder of `directory`. Defaults to `"tuner"`.
        max_trials: maximum number of trials; `None` runs the whole grid
            (grid search only; required by random and Bayesian search).
            Defaults to `None`.
        seeds: seeds of each trial's executions. Defaults to `(0,)`.
        overwrite: whether to start afresh. Defaults to `False`.
        search_seed: seed of the random and Bayesian search. Defaults to
            `0`.

    Returns:
        A `SeededTuner` (a `keras_tuner.Tuner`) with a
        `ResumableGridSearchOracle`, `RandomSearchOracle` or
        `BayesianOptimizationOracle`; call `tuner.search(verbose=...)`.
    """
    if tuner not in _ORACLES:
        raise ValueError(
            f"Unknown tuner={tuner!r}; expected one of {list(TUNERS)}."
        )
    if tuner != "grid" and max_trials is None:
        raise ValueError(f"tuner={tuner!r} needs `max_trials`.")
    if tuner == "bayesian":
        try:
            import sklearn  # noqa: F401
        except ImportError as error:
            raise ValueError(
                "tuner='bayesian' needs scikit-learn (pip install "
                "scikit-learn)."
            ) from error
    hypermodel.record_dir = pathlib.Path(directory) / project_name / "records"
    oracle_options = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "max_trials": max_trials,
    }
    if tuner != "grid":
        oracle_options["seed"] = search_seed
    return SeededTuner(
        _ORACLES[tuner](**oracle_options),
        hypermodel=hypermodel,
        directory=str(directory),
        project_name=project_name,
        overwrite=overwrite,
        seeds=seeds,
    )


def is_chief_or_single():
    """Whether this process should export results: the chief of a
    distributed search, or the only process of a local one."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return True
    return "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


def export_results(tuner, csv_path, best_path=None):
    """Writes one CSV row per trial and seed, and the best configuration.

    Completed trials give one row per seed (from the records written by
    `SAMHyperModel.fit`), with the trial's `score` (the objective averaged
    over seeds); other trials give one row with their status. `test_error`
    is in percent; accuracies are fractions. Rows are
    sorted by trial id and seed.

    Args:
        tuner: a tuner from `make_tuner` (after `search`).
        csv_path: where to write the CSV (columns `RESULT_FIELDS`).
        best_path: where to write the best configuration as JSON, or
            `None`. Defaults to `None`.

    Returns:
        The rows, as a list of dicts.
    """
    record_dir = tuner.hypermodel.record_dir
    rows = []
    trials = tuner.oracle.trials
    for trial_id in sorted(trials):
        trial = trials[trial_id]
        values = dict(trial.hyperparameters.values)
        status = str(trial.status)
        records = []
        if status == "COMPLETED":
            for seed in tuner.seeds:
                path = _record_path(record_dir, trial_id, seed)
                if path.is_file():
                    records.append(json.loads(path.read_text()))
        if not records:
            records = [{"seed": "", **values}]
        for record in records:
            row = {field: record.get(field, "") for field in RESULT_FIELDS}
            row.update(trial_id=trial_id, status=status)
            row["score"] = "" if trial.score is None else trial.score
            rows.append(row)
    csv_path = pathlib.Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    if best_path is not None:
        best = best_configuration(tuner)
        pathlib.Path(best_path).write_text(json.dumps(best, indent=2) + "\n")
    return rows


def best_configuration(tuner):
    """The best completed trial's hyperparameters and mean objective.

    Args:
        tuner: a tuner from `make_tuner`.

    Returns:
        A dict with `trial_id`, `hyperparameters`, `objective` (its name),
        `score` (KerasTuner's objective: the mean over seeds of the final
        `val_accuracy`), `seed_scores` (that `val_accuracy` per seed, as
        `{seed: value}`, the values `score` averages) and `seeds`; `None`
        when no trial completed.
    """
    best = tuner.oracle.get_best_trials(1)
    if not best:
        return None
    trial = best[0]
    seed_scores = {}
    for seed in tuner.seeds:
        path = _record_path(tuner.hypermodel.record_dir, trial.trial_id, seed)
        if path.is_file():
            seed_scores[str(seed)] = json.loads(path.read_text())[
                "val_accuracy"
            ]
    return {
        "trial_id": trial.trial_id,
        "hyperparameters": dict(trial.hyperparameters.values),
        "objective": OBJECTIVE,
        "score": trial.score,
        "seed_scores": seed_scores,
        "seeds": list(tuner.seeds),
    }
