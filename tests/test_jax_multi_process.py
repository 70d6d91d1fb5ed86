"""SAMModel on JAX across processes: 2 processes x 2 CPU devices on
127.0.0.1 (`jax.distributed.initialize`, gloo CPU collectives) against
1 process x 4 devices, and a process killed mid-epoch (issue 30).

The workers are `tests/jax_distribute_job.py worker`; each process feeds
its own rows of every global batch of 8, so both layouts train on the
same global batches, device `d` holding rows `2 d, 2 d + 1`.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

TESTS = Path(__file__).parent
HEARTBEAT = 10  # seconds, the coordination service's heartbeat timeout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out, *args, devices, process_id=None, coordinator=None):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(TESTS.parent))
    command = [sys.executable, str(TESTS / "jax_distribute_job.py"),
               "worker", str(out), *map(str, args)]
    if process_id is not None:
        command += ["--process-id", str(process_id), "--num-processes", "2",
                    "--coordinator", coordinator,
                    "--heartbeat", str(HEARTBEAT)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            cwd=TESTS.parent)


def two_processes(tmp_path, name, *args, kill=None, kill_args=()):
    """Runs both processes; returns `(outputs, exit codes, logs, exit
    times)`; `kill`: the process that sends itself SIGKILL mid-epoch."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for pid in (0, 1):
        extra = ["--kill-at-epoch", "1", *kill_args] if pid == kill else []
        procs.append(start(tmp_path / f"{name}_{pid}.npz", *args, *extra,
                           devices=2, process_id=pid,
                           coordinator=coordinator))
    logs, codes, ended = [None, None], [None, None], [None, None]
    # The survivor first; a stopped (SIGSTOP) process never ends itself.
    for pid in sorted((0, 1), key=lambda pid: pid == kill):
        proc = procs[pid]
        try:
            logs[pid] = proc.communicate(timeout=5 if pid == kill else 600)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            logs[pid] = proc.communicate()[0]
        codes[pid], ended[pid] = proc.returncode, time.time()
    outputs = [tmp_path / f"{name}_{pid}.npz" for pid in (0, 1)]
    return outputs, codes, logs, ended


def one_process(tmp_path, name, *args):
    proc = start(tmp_path / f"{name}.npz", *args, devices=4)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-4000:]
    return np.load(tmp_path / f"{name}.npz")


def assert_same_weights(got, want, modes, atol):
    for mode in modes:
        for i in range(4):
            np.testing.assert_allclose(
                got[f"{mode}_w{i}"], want[f"{mode}_w{i}"], rtol=0,
                atol=atol, err_msg=f"{mode}, weight {i}",
            )


def test_two_processes_equal_one_process_of_four_devices(tmp_path):
    single = one_process(tmp_path, "single")
    outputs, codes, logs, _ = two_processes(tmp_path, "pair")
    assert codes == [0, 0], logs[0][-4000:] + logs[1][-4000:]
    first, second = (np.load(out) for out in outputs)
    assert int(single["devices"]) == int(first["devices"]) == 4
    modes = ("replica", "global")
    # The processes hold bit-identical weights ...
    assert_same_weights(second, first, modes, atol=0)
    # ... equal to one process's to float tolerance, 12 steps each.
    assert_same_weights(first, single, modes, atol=2e-6)
    for mode in modes:
        assert int(first[f"{mode}_iterations"]) == 12
    assert np.abs(first["replica_w0"] - first["global_w0"]).max() > 1e-2


@pytest.mark.slow
def test_killed_process_fails_the_other_and_both_resume(tmp_path):
    """SIGKILL to process 1 after the 2nd step of epoch 1 (of 3): process
    0 exits with an error within a bounded time; both restarted with
    `BackupAndRestore` resume at epoch 1 and end with the uninterrupted
    run's weights."""
    args = ["--modes", "replica", "--backup-dir", tmp_path / "backup"]
    outputs, codes, logs, ended = two_processes(tmp_path, "killed", *args,
                                                kill=1)
    killed_at = next(
        json.loads(line)["killed_at"] for line in logs[1].splitlines()
        if line.startswith('{"killed_at"')
    )
    assert codes[1] == -9
    assert codes[0] != 0, logs[0][-4000:]
    assert ended[0] - killed_at < 2 * HEARTBEAT + 60, logs[0][-4000:]
    outputs, codes, logs, _ = two_processes(tmp_path, "resumed", *args)
    assert codes == [0, 0], logs[0][-4000:] + logs[1][-4000:]
    resumed = [np.load(out) for out in outputs]
    assert int(resumed[0]["replica_initial_epoch"]) == 1
    assert int(resumed[0]["replica_iterations"]) == 12
    uninterrupted = one_process(tmp_path, "uninterrupted", "--modes",
                                "replica")
    for got in resumed:
        assert_same_weights(got, uninterrupted, ("replica",), atol=2e-6)


def reproduce(output_dir, devices, process_id=None, coordinator=None):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(TESTS.parent))
    if process_id is not None:
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=coordinator,
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(process_id))
    return subprocess.Popen(
        [sys.executable, "-m", "keras_sam.experiments.cli", "reproduce",
         "--quick", "--backend", "jax", "--rho", "0.05", "--seeds", "1",
         "--verbose", "0", "--distribute", "data-parallel",
         "--output-dir", str(output_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=TESTS.parent,
    )


def read_results(path):
    import csv

    with open(path) as f:
        return {row["run"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_reproduce_on_two_processes_equals_one_process(tmp_path):
    """`keras-sam reproduce --quick --distribute data-parallel` (batch
    128) on 2 processes x 2 CPU devices: the results of 1 process x 4
    devices, `m` = 32 recorded; process 1 writes into `process_1/`."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [reproduce(tmp_path / "pair", 2, pid, coordinator)
             for pid in (0, 1)]
    procs.append(reproduce(tmp_path / "single", 4))
    for proc in procs:
        log = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, log[-4000:]
    single = read_results(tmp_path / "single" / "results.csv")
    for path in ("pair", "pair/process_1"):
        pair = read_results(tmp_path / path / "results.csv")
        assert sorted(pair) == sorted(single) == ["sam_seed0", "sgd_seed0"]
        for run, want in single.items():
            assert pair[run]["m"] == want["m"] == "32"
            assert pair[run]["test_error"] == want["test_error"]
            for key in ("test_loss", "loss"):
                np.testing.assert_allclose(float(pair[run][key]),
                                           float(want[key]), rtol=1e-3)
