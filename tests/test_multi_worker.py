"""SAMModel under MultiWorkerMirroredStrategy: two worker processes.

Each test starts two real workers on 127.0.0.1 (tests/multi_worker_job.py,
`TF_CONFIG` with two free ports, one CPU replica each) and compares what
they write with an independent answer: the same SAM trained in this
process on one device (global mode), or the NumPy reference (replica
mode). Every worker has a deadline, is killed if it outlives it, and
stops itself by SIGALRM besides, so none is left behind.

Fault tolerance, as checked here with Keras 3.15.1 and TensorFlow 2.21:

- When one worker dies (SIGKILL mid-epoch), the surviving worker does not
  hang: TensorFlow's coordination service misses the dead worker's
  heartbeats, aborts the collectives of the survivor, and its `fit`
  raises `tf.errors.UnavailableError` ("The following tasks are unhealthy
  (stopped sending heartbeats)"), about 9 s after the kill here (the
  service's default heartbeat timeout is 10 s); where the survivor was
  already receiving from the dead peer it can instead get
  `tf.errors.AbortedError` ("Socket closed").
- Recovery needs every worker to be restarted as a new process. Calling
  `fit` again in the surviving process fails at once ("Collective ops is
  aborted ... unexpectedly tried to connect with a different incarnation.
  It has likely restarted") and the restarted peer then waits forever
  for the dead cluster.
- After all workers restart, `keras.callbacks.BackupAndRestore` resumes
  from the start of the epoch after the last complete backup and ends
  with the weights of an uninterrupted run (tested below).
- Keras 3's `BackupAndRestore` is not multi-worker aware: every worker
  writes the same files, so each worker needs its own `backup_dir` (with
  a shared one, two workers writing `latest.weights.h5` at the same time
  crash with HDF5's "unable to lock file"); it writes the weights in place
  and then the metadata, so a kill during a save can leave a truncated
  file (`double_checkpoint=True` keeps a previous copy to fall back on)
  or new weights with the previous epoch number (that epoch is then
  trained twice); and it resumes at epoch boundaries only: with an
  integer `save_freq` the batches of the interrupted epoch before the
  backup are trained twice. The test therefore backs up per epoch and
  kills between saves.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute is TensorFlow-only", allow_module_level=True)

import sam_reference as ref  # noqa: E402
from multi_worker_job import make_mlp  # noqa: E402
from test_sam_model import make_problem  # noqa: E402

import keras_sam  # noqa: E402

TESTS = Path(__file__).parent
JOB = TESTS / "multi_worker_job.py"
NUM_WORKERS = 2
BATCH_SIZE = 8  # global batch; 24 examples give 3 steps per epoch
RHO = 0.1
WORKER_TIMEOUT = 120  # seconds for one cluster run; about 25 s here


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_cluster(tmp_path, name, args, worker_args=None):
    """Runs the job on two workers; returns `[(returncode, log, out)]`.

    `returncode` is `None` for a worker that was still running at the
    deadline (it is killed). `worker_args[i]` is appended to worker `i`'s
    command line.
    """
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(NUM_WORKERS)]
    problem = tmp_path / "problem.npz"
    processes, runs = [], []
    try:
        for index in range(NUM_WORKERS):
            tf_config = {
                "cluster": {"worker": hosts},
                "task": {"type": "worker", "index": index},
            }
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config),
                       TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
            out = tmp_path / f"{name}{index}.npz"
            log = tmp_path / f"{name}{index}.log"
            extra = (worker_args or {}).get(index, [])
            with open(log, "w") as log_file:
                processes.append(subprocess.Popen(
                    [sys.executable, str(JOB), str(problem), str(out),
                     *map(str, args), *map(str, extra)],
                    env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    cwd=TESTS.parent,
                ))
            runs.append((log, out))
        deadline = time.monotonic() + WORKER_TIMEOUT
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pass
    finally:
        codes = [process.poll() for process in processes]
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [
        (code, log.read_text(), out)
        for code, (log, out) in zip(codes, runs)
    ]


def _check_succeeded(runs):
    for index, (code, log, _) in enumerate(runs):
        assert code == 0, f"worker {index} exited with {code}:\n{log[-4000:]}"
    return [np.load(out) for _, _, out in runs]


def _weights(results, mode):
    return [results[f"{mode}_w{i}"] for i in range(4)]


def _single_process_sam(params, x, y, epochs, **kwargs):
    """Global-mode SAM in this process, on one device, same batches."""
    sam = keras_sam.SAMModel(make_mlp(params), rho=RHO, **kwargs)
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse")
    history = sam.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs,
                      shuffle=False, verbose=0)
    return sam, history.history["loss"]


def _write_problem(tmp_path, seed):
    x, y, params = make_problem(n=24, seed=seed)
    np.savez(tmp_path / "problem.npz", x=x, y=y,
             **{f"w{i}": p for i, p in enumerate(params)})
    return x, y, params


def _replica_reference(params, x, y, epochs):
    """NumPy SAM where each worker perturbs with its half of each batch."""
    weights = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    for _ in range(epochs):
        for start in range(0, len(x), BATCH_SIZE):
            part = slice(start, start + BATCH_SIZE)
            grads = ref.sam_gradient(
                weights, x[part].astype("float64"),
                y[part].astype("float64"), rho=RHO, splits=NUM_WORKERS,
            )[0]
            weights = optimizer.apply(weights, grads)
    return weights


def test_two_workers_match_single_process_and_reference(tmp_path):
    x, y, params = _write_problem(tmp_path, seed=30)
    epochs = 2
    runs = _run_cluster(tmp_path, "run",
                        ["--modes", "global,replica", "--epochs", epochs,
                         "--evaluate"])
    first, second = _check_succeeded(runs)
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert int(first["global_iterations"]) == epochs * 3

    single, single_loss = _single_process_sam(params, x, y, epochs,
                                              perturbation="global")
    for got, want in zip(_weights(first, "global"), single.get_weights()):
        assert np.abs(got - want).max() <= 1e-6
    np.testing.assert_allclose(first["global_loss"], single_loss,
                               rtol=1e-5)
    np.testing.assert_allclose(
        first["global_eval_loss"],
        single.evaluate(x, y, batch_size=BATCH_SIZE, verbose=0),
        rtol=1e-5,
    )

    expected = _replica_reference(params, x, y, epochs)
    for got, want in zip(_weights(first, "replica"), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_restart_after_a_worker_is_killed_resumes_from_backup(tmp_path):
    """SIGKILL one worker mid-epoch, restart both, compare with no fault.

    See the module docstring for what does and does not hold.
    """
    x, y, params = _write_problem(tmp_path, seed=31)
    epochs, kill_epoch = 3, 2
    backups = [tmp_path / f"backup{index}" for index in range(NUM_WORKERS)]
    args = ["--modes", "global", "--epochs", epochs]
    worker_args = {
        index: ["--backup-dir", backups[index]]
        for index in range(NUM_WORKERS)
    }
    worker_args[1] += ["--kill-at-epoch", kill_epoch]
    (survivor_code, survivor_log, _), (killed_code, killed_log, _) = (
        _run_cluster(tmp_path, "faulty", args, worker_args)
    )
    assert killed_code == -signal.SIGKILL, killed_log[-4000:]
    # The survivor fails (it neither hangs nor finishes).
    assert survivor_code not in (0, None), survivor_log[-4000:]
    assert ("UnavailableError" in survivor_log
            or "AbortedError" in survivor_log), survivor_log[-4000:]

    # Both backups are complete, loadable and hold the state after the
    # last finished epoch.
    single, _ = _single_process_sam(params, x, y, kill_epoch,
                                              perturbation="global")
    for backup in backups:
        metadata = json.loads((backup / "training_metadata.json").read_text())
        assert metadata["epoch"] == kill_epoch
        restored = keras_sam.SAMModel(make_mlp(params), rho=RHO,
                                      perturbation="global")
        restored.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                         loss="mse")
        restored.optimizer.build(restored.trainable_variables)
        restored.load_weights(backup / "latest.weights.h5")
        assert int(restored.optimizer.iterations.numpy()) == kill_epoch * 3
        for got, want in zip(restored.get_weights(), single.get_weights()):
            assert np.abs(got - want).max() <= 1e-6

    worker_args[1] = worker_args[1][:2]
    first, second = _check_succeeded(
        _run_cluster(tmp_path, "restarted", args, worker_args)
    )
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert int(first["global_initial_epoch"]) == kill_epoch
    assert int(first["global_iterations"]) == epochs * 3
    # The uninterrupted run: two more epochs of the same model.
    history = single.fit(x, y, batch_size=BATCH_SIZE,
                         epochs=epochs - kill_epoch, shuffle=False, verbose=0)
    for got, want in zip(_weights(first, "global"), single.get_weights()):
        assert np.abs(got - want).max() <= 1e-6
    np.testing.assert_allclose(first["global_loss"],
                               history.history["loss"], rtol=1e-5)
    # BackupAndRestore removes its files after a finished `fit`.
    assert not any(backup.exists() for backup in backups)
