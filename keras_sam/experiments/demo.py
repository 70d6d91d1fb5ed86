"""`keras-sam demo`: the same small CNN trained with SGD and with SAM.

Both runs start from the same initial weights and see the same batches in
the same order (same shuffling and flips, from one seed); only the
training step differs: a plain `keras.Model` with SGD (momentum) against
`SAMModel(rho=0.05)` with the same optimizer settings. After every epoch
both models are measured the same way: the SAM sharpness
`L(w + eps) - L(w)` (`eps = rho g / ||g||`, the batch's gradient `g`) on a
fixed set of training batches, computed by a `SAMModel` with learning
rate 0 wrapped around the trained model (its BatchNorm statistics are
restored afterwards, so the probe changes nothing).
"""

import csv
import json
import math
import pathlib
import platform
import sys
import time

import keras
import numpy as np

from keras_sam import models
from keras_sam.experiments import _run_records, datasets
from keras_sam.experiments.config import RunConfig
from keras_sam.sam_model import SAMModel

HISTORY_FIELDS = (
    "optimizer",
    "epoch",
    "loss",
    "accuracy",
    "test_loss",
    "test_accuracy",
    "sam_sharpness",
    "grad_norm",
    "probe_sharpness",
    "epoch_seconds",
)


class _ShuffledBatches(keras.utils.PyDataset):
    """Batches in a seeded order, with seeded horizontal flips.

    The order and the flips depend only on `(seed, epoch, batch index)`,
    so two models trained on it see exactly the same data.
    """

    def __init__(self, x, y, batch_size, seed, augment=True):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self._order = self._permutation()

    def _permutation(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(len(self.x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = self._order[
            index * self.batch_size : (index + 1) * self.batch_size
        ]
        x = self.x[rows]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            flip = rng.random(len(rows)) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return x, self.y[rows]

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._permutation()


def _standardize(x, mean, std):
    return ((x.astype("float32") / 255.0) - mean) / std


def _make_probe(model, rho, loss):
    """A SAMModel at learning rate 0 whose `fit` logs the sharpness."""
    probe = SAMModel(model, rho=rho, name="sharpness_probe")
    probe.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss)
    return probe


def _probe_sharpness(probe, model, x, y, batch_size):
    """Mean `L(w + eps) - L(w)` over the probe batches; weights restored."""
    saved = model.get_weights()
    history = probe.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0
    )
    model.set_weights(saved)
    return float(history.history["sam_sharpness"][-1])


class _RunProgress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar for one epoch of a run fitted epoch by epoch:
    its header counts the run's epochs ("Epoch 3/10"), not the call's."""

    def __init__(self, total_epochs):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def _train(
    label,
    model,
    inner,
    train_batches,
    test_data,
    probe_data,
    epochs,
    batch_size,
    rho_probe,
    loss,
    verbose,
):
    """Trains epoch by epoch, probing sharpness after each epoch."""
    probe = _make_probe(inner, rho_probe, loss)
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        history = model.fit(
            train_batches,
            epochs=epoch + 1,
            initial_epoch=epoch,
            validation_data=test_data,
            verbose=verbose,
            callbacks=[_RunProgress(epochs)] if verbose else [],
        )
        seconds = time.perf_counter() - start
        logs = {key: values[-1] for key, values in history.history.items()}
        sharpness = _probe_sharpness(probe, inner, *probe_data, batch_size)
        rows.append(
            {
                "optimizer": label,
                "epoch": epoch + 1,
                "loss": logs["loss"],
                "accuracy": logs["accuracy"],
                "test_loss": logs["val_loss"],
                "test_accuracy": logs["val_accuracy"],
                "sam_sharpness": logs.get("sam_sharpness", ""),
                "grad_norm": logs.get("grad_norm", ""),
                "probe_sharpness": sharpness,
                "epoch_seconds": seconds,
            }
        )
    return rows


DEMO_CONFIG = RunConfig(
    dataset="cifar10",
    source="sample",
    model="small-cnn",
    epochs=10,
    batch_size=128,
    learning_rate=0.05,
    nesterov=False,
    rho=0.05,
)


def run_demo(
    config=DEMO_CONFIG,
    output_dir="keras_sam_runs/demo",
    seed=0,
    probe_batches=4,
):
    """Trains the small CNN with SGD and with SAM and writes the results.

    Args:
        config: a `keras_sam.experiments.config.RunConfig`; the demo reads
            its `epochs`, `batch_size`, `learning_rate` (peak of the
            cosine schedule), `momentum`, `nesterov`, `weight_decay`
            (coupled L2 of the kernels, see `keras_sam.models.small_cnn`),
            `rho` (SAM's, also the sharpness probe's), `train_size` and
            `test_size` (the first images of the shipped sample's 5,000
            and 1,000; `None` for all), `verbose` and `command`. The
            network is always the small CNN on the shipped sample, with
            random flips. Defaults to `DEMO_CONFIG` (10 epochs, batch
            128, learning rate 0.05, momentum 0.9 without Nesterov,
            weight decay 5e-4, rho 0.05).
        output_dir: folder for `history.csv`, `summary.json` and
            `curves.png`. Defaults to `"keras_sam_runs/demo"`.
        seed: seed of the initial weights, the data order and the flips.
            Defaults to `0`.
        probe_batches: training batches on which the sharpness is probed
            after each epoch. Defaults to `4`.

    Returns:
        A dict with `summary` (the final numbers of each run), `history`
        (one row per run and epoch) and `paths` (the files written).
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, test = _standardized_sample(config.train_size, config.test_size)
    probe_size = min(len(train[0]), probe_batches * config.batch_size)
    probe_data = (train[0][:probe_size], train[1][:probe_size])
    runs = (("sgd", "SGD"), ("sam", f"SAM (rho={config.rho:g})"))
    rows = _train_both(config, runs, train, test, probe_data, seed)
    summary = _summarize(runs, rows)
    paths = {
        "history": output_dir / "history.csv",
        "summary": output_dir / "summary.json",
        "plot": output_dir / "curves.png",
    }
    _write_history(paths["history"], rows)
    record = _summary_record(
        config, summary, seed, (len(train[0]), len(test[0]), probe_size)
    )
    paths["summary"].write_text(json.dumps(record, indent=2) + "\n")
    plot_history(paths["history"], paths["plot"], labels=dict(runs))
    return {"summary": summary, "history": rows, "paths": paths}


def _standardized_sample(train_size, test_size):
    """The first images of the shipped sample, standardized per channel
    with the training images' statistics: `(x, y)` train and test."""
    (x_train, y_train), (x_test, y_test) = datasets.load_cifar10_sample()
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = x_test[:test_size], y_test[:test_size]
    mean = (x_train / 255.0).mean(axis=(0, 1, 2)).astype("float32")
    std = (x_train / 255.0).std(axis=(0, 1, 2)).astype("float32")
    return (
        (_standardize(x_train, mean, std), y_train),
        (_standardize(x_test, mean, std), y_test),
    )


def _small_cnn(config):
    return models.small_cnn(
        weight_decay=config.weight_decay, classifier_activation=None
    )


def _train_both(config, runs, train, test, probe_data, seed):
    """Trains SGD, then SAM, from the same initial weights and batches;
    returns the rows of both histories."""
    keras.utils.set_random_seed(seed)
    initial_weights = _small_cnn(config).get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = config.epochs * math.ceil(len(train[0]) / config.batch_size)
    rows = []
    for label, title in runs:
        print(f"\n== {title} ==", flush=True)
        keras.utils.set_random_seed(seed)
        inner = _small_cnn(config)
        inner.set_weights(initial_weights)
        model = inner if label == "sgd" else SAMModel(inner, rho=config.rho)
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=steps
        )
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=config.nesterov
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        batches = _ShuffledBatches(*train, config.batch_size, seed)
        rows += _train(
            label,
            model,
            inner,
            batches,
            test,
            probe_data,
            config.epochs,
            config.batch_size,
            config.rho,
            loss,
            config.verbose,
        )
    return rows


def _summarize(runs, rows):
    """The final numbers of each run, for the table and `summary.json`."""
    summary = {}
    for label, title in runs:
        own = [row for row in rows if row["optimizer"] == label]
        logged = [row["sam_sharpness"] for row in own]
        summary[label] = {
            "title": title,
            "test_accuracy": own[-1]["test_accuracy"],
            "final_train_loss": own[-1]["loss"],
            "mean_sam_sharpness": (
                float(np.mean(logged)) if label == "sam" else None
            ),
            "final_probe_sharpness": own[-1]["probe_sharpness"],
            "train_seconds": float(sum(row["epoch_seconds"] for row in own)),
        }
    return summary


def _summary_record(config, summary, seed, sizes):
    """`summary.json`: the summary, the settings, versions and command;
    `sizes` is `(train_images, test_images, probe_images)`."""
    train_images, test_images, probe_images = sizes
    settings = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "schedule": "cosine",
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "weight_decay_kind": "coupled L2 on kernels (gradient wd * w)",
        "rho": config.rho,
        "seed": seed,
        "train_images": train_images,
        "test_images": test_images,
        "probe_images": int(probe_images),
        "augmentation": "random horizontal flip",
        "model": "small-cnn",
        "data": "keras_sam CIFAR-10 sample (JPEG copy, Pillow-decoded)",
    }
    return {
        "summary": summary,
        "config": settings,
        "backend": keras.backend.backend(),
        "versions": {
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.machine(),
        "command": config.command or " ".join(sys.argv),
        "date": _run_records.now(),
    }


def _write_history(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_history(csv_path, png_path, labels=None):
    """Plots the demo's training curves from its `history.csv`.

    Args:
        csv_path: the `history.csv` written by `run_demo`.
        png_path: where to write the figure.
        labels: optional `{optimizer: legend label}`, e.g.
            `{"sam": "SAM (rho=0.05)"}`; defaults to the CSV's names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = labels or {}
    panels = (
        ("loss", "train loss (clean)", "loss"),
        ("test_accuracy", "test accuracy", "accuracy"),
        ("probe_sharpness", "sharpness at the weights (probe)",
         "L(w + eps) - L(w)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for name in dict.fromkeys(row["optimizer"] for row in rows):
        own = [row for row in rows if row["optimizer"] == name]
        epochs = [int(row["epoch"]) for row in own]
        for axis, (key, title, ylabel) in zip(axes, panels):
            values = [float(row[key]) for row in own]
            axis.plot(epochs, values, marker="o",
                      label=labels.get(name, name.upper()))
            axis.set(title=title, xlabel="epoch", ylabel=ylabel)
            # Whole epochs only (one epoch: a single tick, not 0.96-1.04).
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(set(epochs)) == 1:
                axis.set_xticks(epochs)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def format_table(summary):
    """The side-by-side table printed by `keras-sam demo`, as text."""
    labels = list(summary)

    def number(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        ("", [summary[label]["title"] for label in labels]),
        (
            "test accuracy",
            [number(summary[k]["test_accuracy"], 4) for k in labels],
        ),
        (
            "final train loss",
            [number(summary[k]["final_train_loss"], 4) for k in labels],
        ),
        (
            "mean sam_sharpness (training logs)",
            [number(summary[k]["mean_sam_sharpness"], 4) for k in labels],
        ),
        (
            "sharpness at final weights (probe)",
            [number(summary[k]["final_probe_sharpness"], 4) for k in labels],
        ),
        (
            "fit time incl. test evaluation (s)",
            [number(summary[k]["train_seconds"], 1) for k in labels],
        ),
    ]
    first = max(len(name) for name, _ in lines)
    widths = [
        max(len(values[i]) for _, values in lines) for i in range(len(labels))
    ]
    text = []
    for index, (name, values) in enumerate(lines):
        cells = [value.rjust(width) for value, width in zip(values, widths)]
        text.append(f"{name.ljust(first)} | " + " | ".join(cells))
        if index == 0:
            text.append("-" * len(text[0]))
    return "\n".join(text)
