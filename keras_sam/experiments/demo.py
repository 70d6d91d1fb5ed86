"""`keras-sam demo`: the same small CNN trained with SGD and with SAM.

Both runs start from the same initial weights and see the same batches in
the same order (same shuffling, and flips where used, from one seed); only
the training step differs: a plain `keras.Model` with SGD (momentum)
against `SAMModel` with the same optimizer settings. After every epoch
both models are measured the same way: the SAM sharpness
`L(w + eps) - L(w)` (`eps = rho g / ||g||`, the batch's gradient `g`) on a
fixed set of training batches, computed by a `SAMModel` with learning
rate 0 wrapped around the trained model (its BatchNorm statistics are
restored afterwards, so the probe changes nothing).

By default a fixed share of the training labels is wrong
(`symmetric_label_noise`), the setting where SAM's gain shows at this
scale: the plain network memorizes the wrong labels and SAM resists
(`saved_results/demo_calibration/`). `label_noise=0` gives the clean-label
comparison (`CLEAN_DEMO_CONFIG`), where SAM ends flatter but, at this
scale, not more accurate.
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
from keras_sam.experiments.label_noise import symmetric_label_noise
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
# Training images in the shipped sample (the limit of `train_size`).
SAMPLE_TRAIN_IMAGES = 5000
# The label-noise draw is the same for every training seed: seeds change
# the initial weights and the batch order, not which labels are wrong.
NOISE_SEED = 0


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


def fitted_shares(predictions, labels, is_wrong):
    """How many of the training labels a model reproduces.

    Args:
        predictions: the predicted classes of the training images, `(N,)`.
        labels: the labels it was trained on (some wrong), `(N,)`.
        is_wrong: bool `(N,)`, which of `labels` are wrong.

    Returns:
        A dict: `wrong_labels_fitted`, the share of the wrong labels that
        it predicts (memorized), and `correct_labels_fitted`, the share of
        the correct ones; `None` where there are no such labels.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    is_wrong = np.asarray(is_wrong, dtype=bool)
    hits = predictions == labels

    def share(rows):
        return float(hits[rows].mean()) if rows.any() else None

    return {
        "wrong_labels_fitted": share(is_wrong),
        "correct_labels_fitted": share(~is_wrong),
    }


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


# The default: 40% of the first 2,000 training labels wrong, a network
# that can memorize them (width 32, no augmentation), 20 epochs; chosen by
# the calibration in saved_results/demo_calibration/ (PROTOCOL.md there).
DEMO_CONFIG = RunConfig(
    dataset="cifar10",
    source="sample",
    model="small-cnn",
    epochs=20,
    batch_size=128,
    learning_rate=0.05,
    nesterov=True,
    rho=0.1,
    train_size=2000,
    augment="none",
)
DEMO_OPTIONS = {"label_noise": 0.4, "width": 32, "flips": False}
# `label_noise=0` (`keras-sam demo --noise 0`): the clean-label comparison
# of earlier versions, all 5,000 images with flips, width 16, 10 epochs.
CLEAN_DEMO_CONFIG = RunConfig(
    dataset="cifar10",
    source="sample",
    model="small-cnn",
    epochs=10,
    batch_size=128,
    learning_rate=0.05,
    nesterov=False,
    rho=0.05,
)
CLEAN_DEMO_OPTIONS = {"label_noise": 0.0, "width": 16, "flips": True}


def demo_setting(label_noise=None):
    """The demo's settings for a share of wrong labels.

    Args:
        label_noise: `None` for the default (`DEMO_OPTIONS`, 40% wrong),
            `0` for the clean-label comparison (`CLEAN_DEMO_CONFIG`), or
            another share in `(0, 1)` for the default setting with that
            share wrong.

    Returns:
        `(config, options)`: the `RunConfig` and the keyword arguments
        `label_noise`, `width` and `flips` of `run_demo`.
    """
    if label_noise == 0:
        return CLEAN_DEMO_CONFIG, dict(CLEAN_DEMO_OPTIONS)
    options = dict(DEMO_OPTIONS)
    if label_noise is not None:
        options["label_noise"] = label_noise
    return DEMO_CONFIG, options


def run_demo(
    config=DEMO_CONFIG,
    output_dir="keras_sam_runs/demo",
    seed=0,
    probe_batches=4,
    label_noise=DEMO_OPTIONS["label_noise"],
    width=DEMO_OPTIONS["width"],
    flips=DEMO_OPTIONS["flips"],
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
            network is always the small CNN on the shipped sample.
            Defaults to `DEMO_CONFIG` (2,000 training images, 20 epochs,
            batch 128, learning rate 0.05, Nesterov momentum 0.9, weight
            decay 5e-4, rho 0.1); `CLEAN_DEMO_CONFIG` is the clean-label
            comparison's.
        output_dir: folder for `history.csv`, `summary.json` and
            `curves.png`. Defaults to `"keras_sam_runs/demo"`.
        seed: seed of the initial weights, the data order and the flips.
            Defaults to `0`.
        probe_batches: training batches on which the sharpness is probed
            after each epoch. Defaults to `4`.
        label_noise: share of the training labels moved to a wrong class
            (`symmetric_label_noise`, seed `NOISE_SEED`); the test labels
            stay clean. Defaults to `0.4`.
        width: filters of the small CNN's first stage. Defaults to `32`.
        flips: random horizontal flips of the training images. Defaults
            to `False`.

    Returns:
        A dict with `summary` (the final numbers of each run), `history`
        (one row per run and epoch), `record` (the content of
        `summary.json`) and `paths` (the files written).
    """
    start = time.perf_counter()
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, test = _standardized_sample(config.train_size, config.test_size)
    is_wrong = np.zeros(len(train[1]), dtype=bool)
    if label_noise:
        noisy, is_wrong = symmetric_label_noise(
            train[1], label_noise, seed=NOISE_SEED
        )
        train = (train[0], noisy)
    probe_size = min(len(train[0]), probe_batches * config.batch_size)
    probe_data = (train[0][:probe_size], train[1][:probe_size])
    runs = (("sgd", "SGD"), ("sam", f"SAM (rho={config.rho:g})"))
    rows, fits = _train_both(
        config, runs, train, test, probe_data, seed, width, flips, is_wrong
    )
    summary = _summarize(runs, rows, fits)
    paths = {
        "history": output_dir / "history.csv",
        "summary": output_dir / "summary.json",
        "plot": output_dir / "curves.png",
    }
    _write_history(paths["history"], rows)
    record = _summary_record(
        config,
        summary,
        seed,
        (len(train[0]), len(test[0]), probe_size),
        {
            "label_noise": label_noise,
            "wrong_labels": int(is_wrong.sum()),
            "width": width,
            "flips": flips,
        },
    )
    record["demo_seconds"] = time.perf_counter() - start
    paths["summary"].write_text(json.dumps(record, indent=2) + "\n")
    plot_history(
        paths["history"],
        paths["plot"],
        labels=_legend_labels(summary),
        title=_figure_title(record["config"]),
        label_noise=label_noise,
    )
    return {
        "summary": summary,
        "history": rows,
        "record": record,
        "paths": paths,
    }


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


def _small_cnn(config, width):
    return models.small_cnn(
        width=width,
        weight_decay=config.weight_decay,
        classifier_activation=None,
    )


def _train_both(
    config, runs, train, test, probe_data, seed, width, flips, is_wrong
):
    """Trains SGD, then SAM, from the same initial weights and batches;
    returns the rows of both histories and, per run, the shares of the
    training labels it fits at the end (`fitted_shares`)."""
    keras.utils.set_random_seed(seed)
    initial_weights = _small_cnn(config, width).get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = config.epochs * math.ceil(len(train[0]) / config.batch_size)
    rows, fits = [], {}
    for label, title in runs:
        print(f"\n== {title} ==", flush=True)
        keras.utils.set_random_seed(seed)
        inner = _small_cnn(config, width)
        inner.set_weights(initial_weights)
        model = inner if label == "sgd" else SAMModel(inner, rho=config.rho)
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=steps
        )
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=config.nesterov
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        batches = _ShuffledBatches(*train, config.batch_size, seed, flips)
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
        logits = inner.predict(train[0], batch_size=256, verbose=0)
        fits[label] = fitted_shares(logits.argmax(axis=-1), train[1], is_wrong)
    return rows, fits


def _summarize(runs, rows, fits):
    """The final numbers of each run, for the table and `summary.json`."""
    summary = {}
    for label, title in runs:
        own = [row for row in rows if row["optimizer"] == label]
        logged = [row["sam_sharpness"] for row in own]
        summary[label] = {
            "title": title,
            "test_accuracy": own[-1]["test_accuracy"],
            "final_train_loss": own[-1]["loss"],
            **fits[label],
            "mean_sam_sharpness": (
                float(np.mean(logged)) if label == "sam" else None
            ),
            "final_probe_sharpness": own[-1]["probe_sharpness"],
            "train_seconds": float(sum(row["epoch_seconds"] for row in own)),
        }
    return summary


def _summary_record(config, summary, seed, sizes, noise):
    """`summary.json`: the summary, the settings, versions and command;
    `sizes` is `(train_images, test_images, probe_images)`, `noise` the
    `label_noise`, `wrong_labels`, `width` and `flips` of the run."""
    train_images, test_images, probe_images = sizes
    settings = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "schedule": "cosine",
        "momentum": config.momentum,
        "nesterov": config.nesterov,
        "weight_decay": config.weight_decay,
        "weight_decay_kind": "coupled L2 on kernels (gradient wd * w)",
        "rho": config.rho,
        "seed": seed,
        "train_images": train_images,
        "test_images": test_images,
        "probe_images": int(probe_images),
        "label_noise": noise["label_noise"],
        "wrong_labels": noise["wrong_labels"],
        "noise_seed": NOISE_SEED,
        "augmentation": (
            "random horizontal flip" if noise["flips"] else "none"
        ),
        "model": "small-cnn",
        "width": noise["width"],
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


def _legend_labels(summary):
    """`{optimizer: legend label}`; with wrong labels, how many it fit."""
    labels = {}
    for label, numbers in summary.items():
        fitted = numbers["wrong_labels_fitted"]
        labels[label] = numbers["title"] + (
            "" if fitted is None else f", fits {fitted:.0%} of wrong labels"
        )
    return labels


def _figure_title(settings):
    """The figure's title: what was trained, on which labels."""
    what = (
        f"small CNN (width {settings['width']}), "
        f"{settings['train_images']:,} training images, "
        f"{settings['epochs']} epoch{'s' * (settings['epochs'] != 1)}, "
        f"seed {settings['seed']}"
    )
    if settings["label_noise"]:
        return (
            f"SGD vs SAM with {settings['label_noise']:.0%} of the training "
            f"labels wrong\n{what}"
        )
    return f"SGD vs SAM on clean labels\n{what}"


def plot_history(csv_path, png_path, labels=None, title=None, label_noise=0):
    """Plots the demo's training curves from its `history.csv`.

    Every panel has a legend naming the runs.

    Args:
        csv_path: the `history.csv` written by `run_demo`.
        png_path: where to write the figure.
        labels: optional `{optimizer: legend label}`, e.g.
            `{"sam": "SAM (rho=0.05)"}`; defaults to the CSV's names.
        title: the figure's title, or `None` for none. Defaults to `None`.
        label_noise: the share of wrong training labels: above 0 the first
            panel is the training accuracy on the given labels, with the
            share of correct labels (what a network that does not memorize
            can reach) drawn as a line. Defaults to `0` (the training
            loss).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = labels or {}
    if label_noise:
        first = ("accuracy", "training accuracy on the given labels",
                 "accuracy")
    else:
        first = ("loss", "training loss", "loss")
    panels = (
        first,
        ("test_accuracy", "test accuracy (clean test labels)", "accuracy"),
        ("probe_sharpness", "sharpness at the weights (probe)",
         "L(w + eps) - L(w)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 4.2))
    for name in dict.fromkeys(row["optimizer"] for row in rows):
        own = [row for row in rows if row["optimizer"] == name]
        epochs = [int(row["epoch"]) for row in own]
        for axis, (key, panel_title, ylabel) in zip(axes, panels):
            values = [float(row[key]) for row in own]
            axis.plot(epochs, values, marker="o",
                      label=labels.get(name, name.upper()))
            axis.set(title=panel_title, xlabel="epoch", ylabel=ylabel)
            # Whole epochs only (one epoch: a single tick, not 0.96-1.04).
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(set(epochs)) == 1:
                axis.set_xticks(epochs)
    if label_noise:
        correct = 1 - label_noise
        axes[0].axhline(correct, color="gray", linestyle="--",
                        label=f"share of correct labels ({correct:.0%})")
    for axis in axes:
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def format_reading(record):
    """What the demo shows, in three lines of text.

    Args:
        record: the `record` returned by `run_demo` (`summary.json`).

    Returns:
        The lines joined by newlines: the test accuracy of each run and
        SAM's gain in points; the share of wrong labels each fitted (with
        label noise) and the sharpness at the final weights; the time.
    """
    sgd, sam = record["summary"]["sgd"], record["summary"]["sam"]
    settings = record["config"]
    gain = 100 * (sam["test_accuracy"] - sgd["test_accuracy"])
    if gain > 0:
        verdict = f"SAM is {gain:.1f} points more accurate"
    elif gain < 0:
        verdict = f"SAM is {-gain:.1f} points less accurate"
    else:
        verdict = "equally accurate"
    accuracy = (
        f"test accuracy SGD {sgd['test_accuracy']:.1%}, "
        f"SAM {sam['test_accuracy']:.1%}: {verdict}."
    )
    sharpness = (
        f"sharpness L(w + eps) - L(w) at the end SGD "
        f"{sgd['final_probe_sharpness']:.3f}, "
        f"SAM {sam['final_probe_sharpness']:.3f}"
    )
    if settings["label_noise"]:
        first = (
            f"{settings['label_noise']:.0%} of the "
            f"{settings['train_images']:,} training labels are wrong; "
            + accuracy
        )
        second = (
            f"Wrong labels fitted (memorized): SGD "
            f"{sgd['wrong_labels_fitted']:.0%}, SAM "
            f"{sam['wrong_labels_fitted']:.0%}; {sharpness}."
        )
    else:
        first = (
            f"Clean labels, {settings['train_images']:,} training images; "
            + accuracy
        )
        second = (
            f"The {sharpness}. On clean labels at this scale SAM ends "
            "flatter, not more accurate; --noise 0.4 shows where it helps."
        )
    third = (
        f"Time: SGD {sgd['train_seconds']:.0f} s, SAM "
        f"{sam['train_seconds']:.0f} s (two gradients per step); the "
        f"whole demo {record['demo_seconds']:.0f} s."
    )
    return "\n".join((first, second, third))


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
    ]
    if summary[labels[0]].get("wrong_labels_fitted") is not None:
        lines += [
            (
                "wrong training labels fitted",
                [number(summary[k]["wrong_labels_fitted"], 4)
                 for k in labels],
            ),
            (
                "correct training labels fitted",
                [number(summary[k]["correct_labels_fitted"], 4)
                 for k in labels],
            ),
        ]
    lines += [
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
