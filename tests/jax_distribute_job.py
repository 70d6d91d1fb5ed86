"""JAX `DataParallel` jobs that test_jax_distribute.py runs in subprocesses.

`python tests/jax_distribute_job.py JOB OUT.npz [options]` with
`KERAS_BACKEND=jax` and `XLA_FLAGS=--xla_force_host_platform_device_count=N`
set by the caller (JAX reads them at import):

- `shards OUT.npz`: SAM on the 16-row MLP problem under `DataParallel`
  over every device, in each case of `CASES`; saves the weights after 1
  and after 3 steps (`<case>_step1_w<i>`, `<case>_step3_w<i>`), and the
  weights of single-device SAM on the whole batch (`single_...`).
- `state OUT.npz`: a BatchNorm + dropout model with Friendly-SAM in
  replica mode for 6 steps; saves, per variable, whether every device's
  copy is bit-identical (`same_<i>`).
- `worker OUT.npz --modes replica,global [--process-id P --num-processes
  N --coordinator HOST:PORT]`: `fit` for `--epochs` epochs of the 32-row
  problem at global batch 8 under `DataParallel` over every device of
  every process (`jax.distributed.initialize` with gloo CPU collectives
  when `--num-processes` > 1); each process feeds its own rows of every
  global batch. Saves the final weights (`<mode>_w<i>`), the first epoch
  trained (`<mode>_initial_epoch`) and the step count. With
  `--backup-dir`, `keras.callbacks.BackupAndRestore`; with
  `--kill-at-epoch E` the process sends itself SIGKILL (or, with
  `--kill-signal STOP`, SIGSTOP) after the second step of epoch `E`. A
  `fit` that raises prints the error and exits 1. SIGALRM ends the
  process after `--time-limit` seconds; `faulthandler` prints the Python
  stack of a process that a collective aborts.
"""

import argparse
import faulthandler
import json
import os
import pathlib
import signal
import sys
import time
import traceback

# This checkout's package, not an installed one (`python tests/...` puts
# tests/ first on the path, and an editable install may name another
# checkout).
ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

CASES = {
    "replica": {},
    "global": {"perturbation": "global"},
    "replica_splits": {"num_batch_splits": 2},
    "friendly": {"rule": ("FriendlySAM", {"sigma": 0.7, "decay": 0.6})},
}


def make_problem(n, seed, d=3, hidden=5, out=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, out)).astype("float32")
    params = [
        rng.normal(scale=0.7, size=(d, hidden)),
        rng.normal(scale=0.1, size=(hidden,)),
        rng.normal(scale=0.7, size=(hidden, out)),
        rng.normal(scale=0.1, size=(out,)),
    ]
    return x, y, [p.astype("float32") for p in params]


def make_mlp(params):
    inputs = keras.Input((params[0].shape[0],))
    h = keras.layers.Dense(params[0].shape[1], activation="tanh")(inputs)
    outputs = keras.layers.Dense(params[2].shape[1])(h)
    model = keras.Model(inputs, outputs)
    model.set_weights(params)
    return model


def compiled_sam(inner, rule=None, **kwargs):
    import keras_sam

    if rule is not None:
        name, arguments = rule
        rule = getattr(keras_sam.rules, name)(**arguments)
    sam = keras_sam.SAMModel(inner, rho=0.1, rule=rule, **kwargs)
    sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss="mse")
    return sam


def local_weights(model):
    """The weights as this process holds them (its first device's copy):
    `get_weights` cannot read an array spanning other processes'
    devices."""
    return [np.asarray(v.value.addressable_shards[0].data)
            for v in model.weights]


def data_parallel():
    # Every process feeds its own rows (see `worker`): no auto-sharding.
    return keras.distribution.DataParallel(
        devices=jax.devices(), auto_shard_dataset=False
    )


def shards(out):
    x, y, params = make_problem(16, seed=30)
    results = {"num_devices": np.array(len(jax.devices()))}
    keras.distribution.set_distribution(data_parallel())
    for case, kwargs in CASES.items():
        sam = compiled_sam(make_mlp(params), **kwargs)
        for steps, epochs in (("step1", 1), ("step3", 2)):
            sam.fit(x, y, batch_size=16, epochs=epochs, shuffle=False,
                    verbose=0)
            for i, w in enumerate(sam.get_weights()):
                results[f"{case}_{steps}_w{i}"] = w
    keras.distribution.set_distribution(None)
    sam = compiled_sam(make_mlp(params), perturbation="global")
    sam.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    for i, w in enumerate(sam.get_weights()):
        results[f"single_step3_w{i}"] = w
    np.savez(out, **results)


def state(out):
    rng = np.random.default_rng(31)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.normal(size=(48, 1)).astype("float32")
    keras.distribution.set_distribution(data_parallel())
    inputs = keras.Input((4,))
    h = keras.layers.Dense(6, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(1, use_bias=False)(h)
    sam = compiled_sam(keras.Model(inputs, outputs),
                       rule=("FriendlySAM", {}))
    sam.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    results = {"iterations": np.array(int(sam.optimizer.iterations.value))}
    for i, variable in enumerate(sam.variables):
        copies = [np.asarray(s.data) for s in
                  variable.value.addressable_shards]
        results[f"copies_{i}"] = np.array(len(copies))
        results[f"same_{i}"] = np.array(
            all(np.array_equal(copies[0], c) for c in copies)
        )
    np.savez(out, **results)


class KillAtEpoch(keras.callbacks.Callback):
    """Sends this process `signal_number` (SIGKILL: dies without any
    clean-up; SIGSTOP: hangs with its connections open) after the second
    step of `epoch`."""

    def __init__(self, epoch, signal_number=signal.SIGKILL):
        super().__init__()
        self.epoch = epoch
        self.signal_number = signal_number
        self.current_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current_epoch == self.epoch and batch == 1:
            print(json.dumps({"killed_at": time.time()}), flush=True)
            os.kill(os.getpid(), self.signal_number)


def worker(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--modes", default="replica,global")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--backup-dir")
    parser.add_argument("--kill-at-epoch", type=int)
    parser.add_argument("--kill-signal", default="KILL",
                        choices=["KILL", "STOP"])
    parser.add_argument("--time-limit", type=int, default=300)
    args = parser.parse_args(argv)
    signal.alarm(args.time_limit)
    # A collective that aborts the process (gloo) still prints where the
    # Python code was.
    faulthandler.enable()
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            heartbeat_timeout_seconds=args.heartbeat,
        )
    # The same initial values on every process (`device_put` checks it);
    # `keras.distribution.initialize` would agree on a seed instead.
    keras.utils.set_random_seed(1)
    x, y, params = make_problem(32, seed=32)
    global_batch = 8
    local = global_batch // args.num_processes
    # Global batch k is the processes' k-th local batches in process
    # order: this process feeds rows [P local, (P + 1) local) of each.
    rows = np.concatenate([
        np.arange(start + args.process_id * local,
                  start + (args.process_id + 1) * local)
        for start in range(0, len(x), global_batch)
    ])
    callbacks = []
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(
            os.path.join(args.backup_dir, str(args.process_id))
        ))
    if args.kill_at_epoch is not None:
        callbacks.append(KillAtEpoch(
            args.kill_at_epoch, getattr(signal, f"SIG{args.kill_signal}")
        ))
    keras.distribution.set_distribution(data_parallel())
    results = {"devices": np.array(len(jax.devices()))}
    for mode in args.modes.split(","):
        sam = compiled_sam(make_mlp(params), perturbation=mode)
        try:
            history = sam.fit(x[rows], y[rows], batch_size=local,
                              epochs=args.epochs, shuffle=False, verbose=0,
                              callbacks=callbacks)
        except Exception as error:
            traceback.print_exc()
            print(json.dumps({"failed_at": time.time(),
                              "error": type(error).__name__}), flush=True)
            os._exit(1)
        for i, w in enumerate(local_weights(sam)):
            results[f"{mode}_w{i}"] = w
        results[f"{mode}_initial_epoch"] = np.array(
            args.epochs - len(history.history["loss"])
        )
        results[f"{mode}_iterations"] = np.array(
            int(np.asarray(
                sam.optimizer.iterations.value.addressable_shards[0].data
            ))
        )
    np.savez(args.out, **results)
    print(json.dumps({"done": time.time()}), flush=True)
    # Skip the teardown, which can wait on a peer that already left.
    os._exit(0)


if __name__ == "__main__":
    job, *rest = sys.argv[1:]
    if job == "worker":
        worker(rest)
    else:
        {"shards": shards, "state": state}[job](*rest)
