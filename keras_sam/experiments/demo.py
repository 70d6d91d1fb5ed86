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
from keras_sam.experiments import datasets
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


def run_demo(
    output_dir="keras_sam_runs/demo",
    epochs=10,
    batch_size=128,
    learning_rate=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    rho=0.05,
    seed=0,
    train_size=None,
    test_size=None,
    probe_batches=4,
    verbose=1,
    command=None,
):
    """Trains the small CNN with SGD and with SAM and writes the results.

    Args:
        output_dir: folder for `history.csv`, `summary.json` and
            `curves.png`. Defaults to `"keras_sam_runs/demo"`.
        epochs: training epochs of each run. Defaults to `10`.
        batch_size: batch size. Defaults to `128`.
        learning_rate: peak learning rate of the cosine schedule. Defaults
            to `0.05`.
        momentum: SGD momentum. Defaults to `0.9`.
        weight_decay: coupled L2 coefficient of the model's kernels (see
            `keras_sam.models.small_cnn`). Defaults to `5e-4`.
        rho: SAM radius, also used by the sharpness probe. Defaults to
            `0.05`.
        seed: seed of the initial weights, the data order and the flips.
            Defaults to `0`.
        train_size: use the first `train_size` training images of the
            sample, or all 5,000 if `None`. Defaults to `None`.
        test_size: likewise for the 1,000 test images. Defaults to `None`.
        probe_batches: training batches on which the sharpness is probed
            after each epoch. Defaults to `4`.
        verbose: Keras `fit` verbosity (1 shows progress bars). Defaults to
            `1`.
        command: the command line to record in `summary.json`.

    Returns:
        A dict with `summary` (the final numbers of each run), `history`
        (one row per run and epoch) and `paths` (the files written).
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_cifar10_sample()
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = x_test[:test_size], y_test[:test_size]
    mean = (x_train / 255.0).mean(axis=(0, 1, 2)).astype("float32")
    std = (x_train / 255.0).std(axis=(0, 1, 2)).astype("float32")
    x_train = _standardize(x_train, mean, std)
    x_test = _standardize(x_test, mean, std)
    probe_size = min(len(x_train), probe_batches * batch_size)
    probe_data = (x_train[:probe_size], y_train[:probe_size])

    keras.utils.set_random_seed(seed)
    initial = models.small_cnn(
        weight_decay=weight_decay, classifier_activation=None
    )
    initial_weights = initial.get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = epochs * math.ceil(len(x_train) / batch_size)

    def optimizer():
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=steps
        )
        return keras.optimizers.SGD(schedule, momentum=momentum)

    rows = []
    runs = (("sgd", "SGD"), ("sam", f"SAM (rho={rho:g})"))
    for label, title in runs:
        print(f"\n== {title} ==", flush=True)
        keras.utils.set_random_seed(seed)
        inner = models.small_cnn(
            weight_decay=weight_decay, classifier_activation=None
        )
        inner.set_weights(initial_weights)
        model = inner if label == "sgd" else SAMModel(inner, rho=rho)
        model.compile(optimizer=optimizer(), loss=loss, metrics=["accuracy"])
        batches = _ShuffledBatches(x_train, y_train, batch_size, seed)
        rows += _train(
            label,
            model,
            inner,
            batches,
            (x_test, y_test),
            probe_data,
            epochs,
            batch_size,
            rho,
            loss,
            verbose,
        )

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
    paths = {
        "history": output_dir / "history.csv",
        "summary": output_dir / "summary.json",
        "plot": output_dir / "curves.png",
    }
    _write_history(paths["history"], rows)
    config = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "schedule": "cosine",
        "momentum": momentum,
        "weight_decay": weight_decay,
        "weight_decay_kind": "coupled L2 on kernels (gradient wd * w)",
        "rho": rho,
        "seed": seed,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "probe_images": int(probe_size),
        "augmentation": "random horizontal flip",
        "model": "small-cnn",
        "data": "keras_sam CIFAR-10 sample (JPEG copy, Pillow-decoded)",
    }
    record = {
        "summary": summary,
        "config": config,
        "backend": keras.backend.backend(),
        "versions": {
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.machine(),
        "command": command or " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    paths["summary"].write_text(json.dumps(record, indent=2) + "\n")
    plot_history(paths["history"], paths["plot"])
    return {"summary": summary, "history": rows, "paths": paths}


def _write_history(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_history(csv_path, png_path):
    """Plots the demo's training curves from its `history.csv`.

    Args:
        csv_path: the `history.csv` written by `run_demo`.
        png_path: where to write the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    panels = (
        ("loss", "train loss (clean)"),
        ("test_accuracy", "test accuracy"),
        ("probe_sharpness", "sharpness L(w+eps)-L(w)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
    for label in dict.fromkeys(row["optimizer"] for row in rows):
        own = [row for row in rows if row["optimizer"] == label]
        epochs = [int(row["epoch"]) for row in own]
        for axis, (key, title) in zip(axes, panels):
            values = [float(row[key]) for row in own]
            axis.plot(epochs, values, marker="o", label=label.upper())
            axis.set_title(title)
            axis.set_xlabel("epoch")
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
