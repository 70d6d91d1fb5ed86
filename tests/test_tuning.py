"""Tests for `keras_sam.experiments.tuning`: the HyperModel's search space
and models, seeded executions, the CSV export checked against the trials,
resuming a sweep killed with SIGKILL, and a chief with two workers on
127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras_tuner
import numpy as np
import pytest
from scripts import run_ok

from keras_sam import SAMModel
from keras_sam.experiments import datasets, tuning
from keras_sam.experiments._run_records import read_csv
from keras_sam.experiments.config import RunConfig

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tiny_splits():
    return datasets.load_splits(
        "cifar10", source="sample", train_size=200, test_size=60
    )


def _decay_steps(model):
    schedule = model.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "CosineDecay"
    return schedule["config"]["decay_steps"]


def test_search_space_fixed_and_searched_values(tiny_splits):
    hypermodel = tuning.SAMHyperModel(
        tiny_splits,
        RunConfig(model="small-cnn", epochs=3),
        tuning.SearchSpace(rho_values=(0.0, 0.05, 0.1), batch_sizes=(32, 64)),
        baseline_epoch_multiplier=2,
    )
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {
        "rho": "Choice",
        "batch_size": "Choice",
        "learning_rate": "Fixed",
        "weight_decay": "Fixed",
    }
    # rho = 0 is the plain Keras model; rho > 0 wraps it in SAMModel.
    hp.values.update(rho=0.0, batch_size=64)
    plain = hypermodel.build(hp)
    assert not isinstance(plain, SAMModel)
    hp.values["rho"] = 0.1
    sam = hypermodel.build(hp)
    assert isinstance(sam, SAMModel) and sam.rho == 0.1
    # The cosine schedule spans the whole run: epochs x steps per epoch
    # (180 training images at batch 64: 3 steps).
    assert _decay_steps(sam) == 9 and _decay_steps(plain) == 18
    assert sam.optimizer.nesterov and sam.optimizer.momentum == 0.9
    assert hypermodel.epochs_for(0.0) == 6 and hypermodel.epochs_for(0.1) == 3


@pytest.mark.parametrize(
    "space, settings, message",
    [
        ({"rho_values": (0.1, -0.1)}, {}, "rho_values"),
        ({"batch_sizes": (32.5,)}, {}, "batch_sizes"),
        ({"batch_sizes": ()}, {}, "batch_sizes"),
        ({"rho_values": (0.1, 0.1)}, {}, "repeated"),
        ({}, {"epochs": 0}, "epochs"),
        ({}, {"augment": "autoaugment"}, "AutoAugment"),
    ],
)
def test_hypermodel_rejects_bad_arguments(
    tiny_splits, space, settings, message
):
    config = RunConfig(model="small-cnn", **settings)
    with pytest.raises(ValueError, match=message):
        tuning.SAMHyperModel(tiny_splits, config, tuning.SearchSpace(**space))


def test_hypermodel_needs_a_validation_split():
    splits = datasets.load_splits(
        "cifar10", source="sample", train_size=100, validation_fraction=0
    )
    with pytest.raises(ValueError, match="validation"):
        tuning.SAMHyperModel(splits, RunConfig(model="small-cnn"))


def test_grid_search_rows_match_trials_and_seeds(tiny_splits, tmp_path):
    hypermodel = tuning.SAMHyperModel(
        tiny_splits,
        RunConfig(model="small-cnn", epochs=1),
        tuning.SearchSpace(rho_values=(0.0, 0.05), batch_sizes=(64,)),
        baseline_epoch_multiplier=2,
    )
    tuner = tuning.make_tuner(
        hypermodel, "grid", directory=tmp_path, seeds=(3, 7)
    )
    tuner.search(verbose=0)
    rows = tuning.export_results(
        tuner, tmp_path / "trials.csv", tmp_path / "best.json"
    )
    assert read_csv(tmp_path / "trials.csv") == [
        {key: str(value) for key, value in row.items()} for row in rows
    ]
    # One row per trial and seed, every grid point once.
    assert [(r["trial_id"], r["seed"]) for r in rows] == [
        ("0000", 3),
        ("0000", 7),
        ("0001", 3),
        ("0001", 7),
    ]
    assert sorted({r["rho"] for r in rows}) == [0.0, 0.05]
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert row["epochs"] == (2 if row["rho"] == 0 else 1)
        assert row["steps_per_epoch"] == 3  # 180 images at batch 64
        assert 0 <= row["val_accuracy"] <= 1
        assert row["test_error"] == pytest.approx(
            100 * (1 - row["test_accuracy"])
        )
    # KerasTuner's score is the mean over seeds of the final val_accuracy.
    trials = tuner.oracle.trials
    for trial_id, trial in trials.items():
        own = [r["val_accuracy"] for r in rows if r["trial_id"] == trial_id]
        assert trial.score == pytest.approx(np.mean(own), abs=1e-7)
    # The two seeds of a trial are different runs.
    first = [r["loss"] for r in rows if r["rho"] == 0.05]
    assert first[0] != first[1]
    best = json.loads((tmp_path / "best.json").read_text())
    scores = {r["rho"]: r["score"] for r in rows}
    assert best["hyperparameters"]["rho"] == max(scores, key=scores.get)
    # best.json explains its score: the per-seed values it averages.
    best_rows = [r for r in rows if r["trial_id"] == best["trial_id"]]
    assert best["seed_scores"] == {
        str(r["seed"]): r["val_accuracy"] for r in best_rows
    }
    assert best["score"] == pytest.approx(
        np.mean(list(best["seed_scores"].values())), abs=1e-7
    )
    assert "score_check" not in best
    assert best["seeds"] == [3, 7]


def test_same_seed_gives_the_same_trial(tiny_splits, tmp_path):
    results = []
    for attempt in range(2):
        hypermodel = tuning.SAMHyperModel(
            tiny_splits,
            RunConfig(model="small-cnn", epochs=1),
            tuning.SearchSpace(rho_values=(0.05,)),
        )
        tuner = tuning.make_tuner(
            hypermodel, "grid", directory=tmp_path / str(attempt), seeds=(5,)
        )
        tuner.search(verbose=0)
        results.append(
            tuning.export_results(tuner, tmp_path / f"{attempt}.csv")[0]
        )
    for key in ("loss", "accuracy", "val_accuracy", "test_accuracy"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6)


def test_bayesian_and_random_search(tiny_splits, tmp_path):
    hypermodel = tuning.SAMHyperModel(
        tiny_splits,
        RunConfig(model="small-cnn", epochs=1),
        tuning.SearchSpace(rho_values=(0.0, 0.02, 0.05, 0.1)),
        evaluate_test=False,
    )
    tuner = tuning.make_tuner(
        hypermodel, "bayesian", directory=tmp_path, max_trials=2
    )
    assert isinstance(
        tuner.oracle, keras_tuner.oracles.BayesianOptimizationOracle
    )
    tuner.search(verbose=0)
    rows = tuning.export_results(tuner, tmp_path / "trials.csv")
    assert len(rows) == 2 and len({r["rho"] for r in rows}) == 2
    assert all(r["test_error"] == "" for r in rows)
    random = tuning.make_tuner(
        hypermodel, "random", directory=tmp_path / "r", max_trials=3
    )
    assert isinstance(random.oracle, keras_tuner.oracles.RandomSearchOracle)
    with pytest.raises(ValueError, match="max_trials"):
        tuning.make_tuner(hypermodel, "random", directory=tmp_path / "x")
    with pytest.raises(ValueError, match="hyperband"):
        tuning.make_tuner(hypermodel, "hyperband", directory=tmp_path / "y")


# Subprocess tests: resume after SIGKILL, chief + two workers -------------

_SWEEP = [
    sys.executable,
    "-m",
    "keras_sam.experiments.cli",
    "sweep",
    "--source",
    "sample",
    "--model",
    "small-cnn",
    "--train-size",
    "200",
    "--test-size",
    "60",
    "--batch-size",
    "64",
    "--verbose",
    "0",
]


def _environment(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    for key in list(env):
        if key.startswith("KERASTUNER_"):
            del env[key]
    env.update(extra)
    return env


def _start(command, env, log):
    return subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process):
    """Kills the process group of `process` if it is still running."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def test_sweep_killed_with_sigkill_resumes_with_every_trial_once(tmp_path):
    output = tmp_path / "sweep"
    command = _SWEEP + [
        "--rho",
        "0,0.05,0.1",
        "--epochs",
        "2",
        "--output-dir",
        str(output),
    ]
    records = output / "tuner" / "records"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = _start(command, _environment(), log)
        try:
            deadline = time.monotonic() + 300
            # Kill once trial 0 is recorded and trial 1 has started.
            while time.monotonic() < deadline:
                done = list(records.glob("trial_*_seed_*.json"))
                started = output / "tuner" / "trial_0001" / "trial.json"
                if done and started.is_file():
                    break
                assert first.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            else:
                pytest.fail("the sweep did not reach its second trial")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            _stop(first)
    assert first.returncode == -signal.SIGKILL
    killed_during = sorted(p.name for p in records.glob("*.json"))
    assert killed_during == ["trial_0000_seed_0.json"]
    assert not (output / "trials.csv").exists()

    run_ok(command, env=_environment())
    rows = read_csv(output / "trials.csv")
    assert [r["trial_id"] for r in rows] == ["0000", "0001", "0002"]
    assert sorted(float(r["rho"]) for r in rows) == [0.0, 0.05, 0.1]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert all(r["epochs"] == "2" for r in rows)
    assert (output / "sweep.png").read_bytes().startswith(b"\x89PNG")
    # Run again: nothing left to do, same rows.
    run_ok(command, env=_environment(), timeout=300)
    assert read_csv(output / "trials.csv") == rows


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_on_localhost(tmp_path):
    output = tmp_path / "sweep"
    command = _SWEEP + [
        "--rho",
        "0,0.02,0.05,0.1,0.2,0.5",
        "--epochs",
        "2",
        "--output-dir",
        str(output),
    ]
    port = str(_free_port())
    processes = {}
    logs = {}
    try:
        for tuner_id in ("chief", "worker0", "worker1"):
            env = _environment(
                KERASTUNER_TUNER_ID=tuner_id,
                KERASTUNER_ORACLE_IP="127.0.0.1",
                KERASTUNER_ORACLE_PORT=port,
            )
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w")
            processes[tuner_id] = _start(command, env, logs[tuner_id])
            if tuner_id == "chief":
                time.sleep(3)  # let the chief open its port first
        deadline = time.monotonic() + 580
        for process in processes.values():
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes.values():
            _stop(process)
        for log in logs.values():
            log.close()
    for tuner_id, process in processes.items():
        text = (tmp_path / f"{tuner_id}.log").read_text()
        assert process.returncode == 0, f"{tuner_id}:\n{text[-3000:]}"
    rows = read_csv(output / "trials.csv")
    assert len(rows) == 6
    assert sorted(float(r["rho"]) for r in rows) == [
        0.0,
        0.02,
        0.05,
        0.1,
        0.2,
        0.5,
    ]
    assert len({r["trial_id"] for r in rows}) == 6
    assert {r["status"] for r in rows} == {"COMPLETED"}
    # Trials ran in the workers, both of them; the chief only served.
    assert {r["tuner_id"] for r in rows} == {"worker0", "worker1"}
    assert "Worker finished" in (tmp_path / "worker0.log").read_text()


def test_trial_begin_names_the_id_the_records_use(
    tiny_splits, tmp_path, capsys
):
    hypermodel = tuning.SAMHyperModel(
        tiny_splits,
        RunConfig(model="small-cnn", epochs=1),
        tuning.SearchSpace(rho_values=(0.05,), batch_sizes=(64,)),
    )
    tuner = tuning.make_tuner(
        hypermodel, "grid", directory=tmp_path, seeds=(3, 7)
    )
    trial = keras_tuner.engine.trial.Trial(tuner.oracle.get_space(), "0000")
    tuner.on_trial_begin(trial)
    assert "Trial id 0000 (the trial_id column of trials.csv), seeds [3, 7]" \
        in capsys.readouterr().out
    tuner.oracle.verbose = 0
    tuner.on_trial_begin(trial)
    assert capsys.readouterr().out == ""
