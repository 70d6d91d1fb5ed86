"""One worker of the MultiWorkerMirroredStrategy tests (test_multi_worker.py).

`python tests/multi_worker_job.py PROBLEM.npz OUT.npz [options]`, with
`TF_CONFIG` naming this worker in the cluster (without `TF_CONFIG` it
trains on one device, under the default strategy). `PROBLEM.npz` holds the
data `x`, `y` and the MLP's initial weights `w0`..`w3`; for each mode in
`--modes` the script trains `SAMModel(mlp, rho=0.1, perturbation=mode)`
with SGD (learning rate 0.1, momentum 0.9) and "mse" for `--epochs`
epochs of `--batch-size` (global) examples, `shuffle=False`, and writes
into `OUT.npz`, per mode, the final weights (`<mode>_w<i>`), the logged
`loss` of every epoch this run trained (`<mode>_loss`), the first epoch
this run trained (`<mode>_initial_epoch`, not 0 after a restore) and the
optimizer's step count (`<mode>_iterations`), and with `--evaluate` the
loss of `evaluate` on the data (`<mode>_eval_loss`).

Fault injection: with `--backup-dir DIR`, `fit` gets
`keras.callbacks.BackupAndRestore(DIR)`; with `--kill-at-epoch E`, the
process sends itself SIGKILL after the second step of epoch `E` (epochs
numbered from 0), so it dies mid-epoch without any Python clean-up. A
worker whose `fit` raises prints the traceback and exits with status 1.
Every worker ends itself (SIGALRM) after `--time-limit` seconds.
"""

import argparse
import json
import os
import signal
import sys
import time
import traceback

import keras
import numpy as np
import tensorflow as tf

import keras_sam


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("problem")
    parser.add_argument("out")
    parser.add_argument("--modes", default="global")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backup-dir")
    parser.add_argument("--kill-at-epoch", type=int)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--time-limit", type=int, default=150)
    return parser.parse_args(argv)


class KillAtEpoch(keras.callbacks.Callback):
    """Sends this process SIGKILL after the second step of `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current_epoch == self.epoch and batch == 1:
            print(json.dumps({"killed_at": time.time()}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def make_mlp(weights):
    inputs = keras.Input((weights[0].shape[0],))
    hidden = keras.layers.Dense(weights[0].shape[1], activation="tanh")(
        inputs
    )
    outputs = keras.layers.Dense(weights[2].shape[1])(hidden)
    model = keras.Model(inputs, outputs)
    model.set_weights(weights)
    return model


def main(argv):
    args = parse_args(argv)
    # SIGALRM's default action ends the process even inside a blocked
    # collective, so no worker outlives a test that lost track of it.
    signal.alarm(args.time_limit)
    if "TF_CONFIG" in os.environ:
        # Must come before any other TensorFlow op in the process.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    problem = np.load(args.problem)
    x, y = problem["x"], problem["y"]
    weights = [problem[f"w{i}"] for i in range(4)]
    callbacks = []
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup_dir))
    if args.kill_at_epoch is not None:
        callbacks.append(KillAtEpoch(args.kill_at_epoch))
    results = {}
    for mode in args.modes.split(","):
        with strategy.scope():
            sam = keras_sam.SAMModel(make_mlp(weights), rho=0.1,
                                     perturbation=mode)
            sam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                        loss="mse")
        try:
            history = sam.fit(x, y, batch_size=args.batch_size,
                              epochs=args.epochs, shuffle=False, verbose=0,
                              callbacks=callbacks)
        except Exception as error:
            traceback.print_exc()
            print(json.dumps({"failed_at": time.time(),
                              "error": type(error).__name__}), flush=True)
            # As below; here the teardown can also wait on the dead peer.
            os._exit(1)
        for i, value in enumerate(sam.get_weights()):
            results[f"{mode}_w{i}"] = value
        results[f"{mode}_loss"] = np.array(history.history["loss"])
        results[f"{mode}_initial_epoch"] = np.array(
            args.epochs - len(history.history["loss"])
        )
        results[f"{mode}_iterations"] = np.array(
            int(sam.optimizer.iterations.numpy())
        )
        if args.evaluate:
            results[f"{mode}_eval_loss"] = np.array(
                sam.evaluate(x, y, batch_size=args.batch_size, verbose=0)
            )
    np.savez(args.out, **results)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync}), flush=True)
    # Skip the interpreter's teardown of TensorFlow's gRPC server (seconds).
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
