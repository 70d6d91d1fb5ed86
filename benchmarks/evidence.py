"""SAM against SGD on CIFAR-10, clean and with label noise: the evidence grid.

Runs the pre-registered protocol `saved_results/evidence/PROTOCOL.md`
(settings in `PROTOCOL` below; the file and this dictionary must agree):
a small CNN trained on a class-balanced CIFAR-10 subset with SGD and with
SAM from the same initial weights and the same batches per seed, with
clean labels and with 40% symmetric label noise, tested on the full clean
test set; SGD also at twice the epochs (the paper's protocol). After every
run: test error, the fit of the training labels, and the top Hessian
eigenvalue and trace on a fixed probe set (`keras_sam.hessian`).

One row per finished run goes to `runs.csv`; per-epoch logs to
`curves/<run>.csv`; a killed run resumes at its last finished epoch
(`keras.callbacks.BackupAndRestore`) and finished runs are never repeated.
`--report` only regenerates `table.md`, the figures and `README.md` from
the CSVs.

    python benchmarks/evidence.py                       # the grid
    python benchmarks/evidence.py --report              # tables and plots

References:
    - Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
      Improving Generalization. https://arxiv.org/abs/2010.01412
      (Table 4: label noise, ResNet-32 on CIFAR-10.)
"""

import argparse
import csv
import hashlib
import json
import math
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam.experiments import _run_records, numpy_pipeline  # noqa: E402
from keras_sam.experiments.label_noise import (  # noqa: E402
    symmetric_label_noise,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent

PROTOCOL = {
    "protocol": "PROTOCOL.md",
    "model": "small_cnn",
    "width": 16,
    "train_size": 5000,
    "subset_seed": 0,
    "noise_seed": 0,
    "settings": {"clean": 0.0, "noise40": 0.4},
    "epochs": 30,
    "sgd_epoch_multiplier": 2,
    "batch_size": 128,
    "learning_rate": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "rho": 0.1,
    "seeds": [0, 1, 2],
    "probe_size": 256,
    "lanczos_iterations": 15,
    "trace_samples": 10,
    "measure_seed": 0,
}

# Round 2 (PROTOCOL_2.md), written after round 1 showed the width-16 CNN
# could not fit the training labels (it fitted 6-8% of the noisy labels,
# chance level): a network that can fit them, trained without
# augmentation, equal epochs only.
PROTOCOL_2 = {
    **PROTOCOL,
    "protocol": "PROTOCOL_2.md",
    "width": 32,
    "augment": False,
    "sgd_epoch_multiplier": None,
}
# Round 3 (PROTOCOL_3.md, issue 15): SAM variants as new arms of round 2,
# same settings and seeds, paired with round 2's SGD and SAM runs.
PROTOCOL_3 = {
    **PROTOCOL_2,
    "protocol": "PROTOCOL_3.md",
    "variant_arms": {
        "gsam": {"GSAM": {"alpha": 0.2}},
        "friendly_sam": {"FriendlySAM": {"sigma": 1.0, "decay": 0.95}},
    },
    "baseline_dir": "evidence_round2",
}
# Round 4 (PROTOCOL_4.md, issue 16): the cheaper rules as arms of round 2.
PROTOCOL_4 = {
    **PROTOCOL_3,
    "protocol": "PROTOCOL_4.md",
    "variant_arms": {
        "looksam": {"LookSAM": {"every": 5, "alpha": 0.7}},
        "randomized_sam": {"RandomizedSAM": {"probability": 0.5, "seed": 0}},
        # SAM for the last 6 of 30 epochs (40 steps per epoch).
        "late_sam": {"LateSAM": {"start_step": 960}},
    },
}
# Round 5 (PROTOCOL_5.md, issue 16): the cheaper rules round 4 did not
# have, and LookSAM at a smaller alpha (round 4's alpha 0.7 did not train).
PROTOCOL_5 = {
    **PROTOCOL_3,
    "protocol": "PROTOCOL_5.md",
    "variant_arms": {
        "momentum_sam": {"MomentumSAM": {}},
        "aesam": {"AESAM": {"total_steps": 1200}},
        "esam": {"ESAM": {"weight_fraction": 0.5, "data_fraction": 0.5,
                          "seed": 0}},
        "looksam_alpha01": {"LookSAM": {"every": 5, "alpha": 0.1}},
    },
    # Momentum-SAM's radius (Becker et al. 2024 use 0.3 and up on CIFAR);
    # every other arm keeps `rho`.
    "arm_rho": {"momentum_sam": 0.3},
}
# Round 6 (PROTOCOL_6.md, issue 28): SAF and MESA, a trajectory loss
# instead of the ascent (40 steps per epoch of the 5,000 images).
PROTOCOL_6 = {
    **PROTOCOL_3,
    "protocol": "PROTOCOL_6.md",
    "variant_arms": {
        "saf": {"SAF": {"num_samples": 5000, "num_classes": 10,
                        "steps_per_epoch": 40, "epochs_back": 3,
                        "weight": 0.3, "temperature": 5.0,
                        "start_epoch": 5}},
        "mesa": {"MESA": {"start_step": 200, "decay": 0.95, "weight": 0.8,
                          "temperature": 5.0}},
    },
    # The arms whose batches carry each sample's index.
    "indexed_arms": ["saf"],
}
PROTOCOLS = {1: PROTOCOL, 2: PROTOCOL_2, 3: PROTOCOL_3, 4: PROTOCOL_4,
             5: PROTOCOL_5, 6: PROTOCOL_6}
OUTPUT_DIRS = {1: "evidence", 2: "evidence_round2", 3: "evidence_variants",
               4: "evidence_cheaper", 5: "evidence_cheaper_round5",
               6: "evidence_trajectory_round6"}

# Foret et al. (2020), Table 4: clean CIFAR-10 test accuracy (%) of
# ResNet-32 trained with symmetric label noise.
PAPER_TABLE4 = {
    "noise_rates": [20, 40, 60, 80],
    "SGD": [84.8, 68.8, 48.2, 26.2],
    "SAM": [95.1, 93.4, 90.5, 77.9],
}

RUN_FIELDS = (
    "setting", "noise_fraction", "arm", "rho", "seed", "epochs",
    "test_error", "test_loss", "train_loss", "train_error_given_labels",
    "train_error_true_labels", "noisy_labels_fitted", "top_eigenvalue",
    "trace", "trace_stderr", "wall_seconds", "resumed", "init_digest",
    "commit",
)
CURVE_FIELDS = (
    "epoch", "loss", "accuracy", "sam_sharpness", "grad_norm",
    "learning_rate", "epoch_seconds",
)


# Data -------------------------------------------------------------------


class AugmentedBatches(keras.utils.PyDataset):
    """Seeded batches with 4-pixel pad-and-crop and horizontal flips.

    Order, crops and flips depend only on `(seed, epoch, batch index)`, so
    two arms with the same seed see exactly the same batches; `epoch` is
    set by `SetEpoch` at the start of every epoch, also after a resume.
    """

    padding = 4

    def __init__(self, x, y, batch_size, seed, augment=True,
                 with_index=False):
        super().__init__()
        self.augment = augment
        # SAF's batches: x as {"inputs": images, "sample_index": rows}.
        self.with_index = with_index
        self.x, self.y = x, y
        self.size = len(x)
        self.batch_size = batch_size
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(self.size)

    def __len__(self):
        return math.ceil(self.size / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images, labels = self._batch(index, rows)
        if self.with_index:
            return {"inputs": images, "sample_index": rows}, labels
        return images, labels

    def _batch(self, index, rows):
        if not self.augment:
            return self.x[rows], self.y[rows]
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        crops = numpy_pipeline.crop_and_flip(
            self.x[rows], rng, self.padding, padding_mode="reflect"
        )
        return crops, self.y[rows]

    def on_epoch_end(self):
        pass  # `SetEpoch` chooses the epoch


def load_data(data_dir, settings):
    """The standardized training subset, its labels, and the test set."""
    from keras_sam.experiments import datasets

    data_dir = pathlib.Path(data_dir)
    for name in ("train.npz", "test.npz"):
        if not (data_dir / name).is_file():
            raise ValueError(
                f"Argument `--data-dir` must hold train.npz and test.npz "
                f"(the CIFAR-10 JPEG copy). Received: --data-dir={data_dir} "
                f"(no {name})."
            )
    x_train, y_train = datasets.load_jpeg_npz(data_dir / "train.npz")
    x_test, y_test = datasets.load_jpeg_npz(data_dir / "test.npz")
    rows = np.sort(
        datasets.balanced_order(y_train, settings["subset_seed"])[
            : settings["train_size"]
        ]
    )
    x_train, y_train = x_train[rows], y_train[rows]
    if settings.get("test_size"):
        keep = np.sort(
            datasets.balanced_order(y_test, 0)[: settings["test_size"]]
        )
        x_test, y_test = x_test[keep], y_test[keep]
    scaled = x_train.astype("float32") / 255.0
    mean = scaled.mean(axis=(0, 1, 2))
    std = scaled.std(axis=(0, 1, 2))

    def standardize(images):
        return ((images.astype("float32") / 255.0 - mean) / std).astype(
            "float32"
        )

    labels = {}
    for setting, fraction in settings["settings"].items():
        labels[setting] = symmetric_label_noise(
            y_train, fraction, 10, settings["noise_seed"]
        )
    return {
        "x_train": standardize(x_train),
        "y_true": y_train.astype("int64"),
        "labels": labels,
        "x_test": standardize(x_test),
        "y_test": y_test.astype("int64"),
    }


# One run ----------------------------------------------------------------


def run_plan(settings):
    """Every run of the grid, in the order they are made.

    SGD and SAM at equal epochs first, label noise (every seed) before
    clean labels (every seed), as PROTOCOL_2.md states, then SGD at twice
    the epochs, so a cut-short grid has the primary pairs first.
    """
    epochs = settings["epochs"]
    plan = []
    if settings.get("variant_arms"):
        # Round 3: the variant arms only, label noise first, seed by seed.
        for setting in reversed(list(settings["settings"])):
            for seed in settings["seeds"]:
                for arm in settings["variant_arms"]:
                    plan.append((setting, arm, seed, epochs))
        return plan
    for setting in reversed(list(settings["settings"])):
        for seed in settings["seeds"]:
            plan.append((setting, "sgd", seed, epochs))
            plan.append((setting, "sam", seed, epochs))
    if not settings["sgd_epoch_multiplier"]:
        return plan
    longer = epochs * settings["sgd_epoch_multiplier"]
    for seed in settings["seeds"]:
        for setting in reversed(list(settings["settings"])):
            plan.append((setting, f"sgd_{longer}ep", seed, longer))
    return plan


def variant_of(settings, arm):
    """The `keras_sam.rules` rule of a variant arm (`None`: SAM)."""
    from keras_sam import rules

    spec = settings.get("variant_arms", {}).get(arm)
    if spec is None:
        return None
    (name, arguments), = spec.items()
    return getattr(rules, name)(**arguments)


def arm_rho(settings, arm):
    """The SAM radius of an arm: 0 for SGD, `arm_rho[arm]` where the
    protocol gives one, else `rho`."""
    if arm.startswith("sgd"):
        return 0.0
    return float(settings.get("arm_rho", {}).get(arm, settings["rho"]))


def run_name(setting, arm, seed):
    return f"{setting}_{arm}_seed{seed}"


def weights_digest(model):
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def _callbacks(batches, curve_path, backup_dir):
    class SetEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            batches.set_epoch(epoch)
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            optimizer = self.model.optimizer
            row = {
                "epoch": epoch + 1,
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "sam_sharpness": logs.get("sam_sharpness", ""),
                "grad_norm": logs.get("grad_norm", ""),
                "learning_rate": float(
                    keras.ops.convert_to_numpy(optimizer.learning_rate)
                ),
                "epoch_seconds": time.perf_counter() - self.start,
            }
            _append_csv(curve_path, CURVE_FIELDS, row)

    return [SetEpoch(), keras.callbacks.BackupAndRestore(str(backup_dir))]


def train_one(data, settings, setting, arm, seed, epochs, output_dir,
              commit, verbose):
    """Trains one arm, measures it and returns its `runs.csv` row."""
    from keras_sam import models
    from keras_sam.sam_model import SAMModel

    name = run_name(setting, arm, seed)
    noisy_labels, is_noisy = data["labels"][setting]
    rho = arm_rho(settings, arm)
    keras.utils.set_random_seed(seed)
    inner = models.small_cnn(
        width=settings["width"],
        weight_decay=settings["weight_decay"],
        classifier_activation=None,
    )
    init_digest = weights_digest(inner)
    model = (
        SAMModel(inner, rho=rho, rule=variant_of(settings, arm))
        if rho > 0 else inner
    )
    batches = AugmentedBatches(
        data["x_train"], noisy_labels, settings["batch_size"], seed,
        augment=settings.get("augment", True),
        with_index=arm in settings.get("indexed_arms", ()),
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        settings["learning_rate"], decay_steps=epochs * len(batches)
    )
    model.compile(
        optimizer=keras.optimizers.SGD(
            schedule,
            momentum=settings["momentum"],
            nesterov=settings["nesterov"],
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    resumed, curve = fit_logged(model, batches, epochs, output_dir, name,
                                verbose)
    test_loss, test_accuracy = model.evaluate(
        data["x_test"], data["y_test"], batch_size=1000, verbose=0
    )
    logits = inner.predict(data["x_train"], batch_size=1000, verbose=0)
    predicted = logits.argmax(axis=1)
    fitted_noisy = (
        float(np.mean(predicted[is_noisy] == noisy_labels[is_noisy]))
        if is_noisy.any() else ""
    )
    top, trace = end_sharpness(model, data["x_train"], noisy_labels,
                               settings)
    row = {
        "setting": setting,
        "noise_fraction": settings["settings"][setting],
        "arm": arm,
        "rho": rho,
        "seed": seed,
        "epochs": epochs,
        "test_error": 100.0 * (1.0 - float(test_accuracy)),
        "test_loss": float(test_loss),
        "train_loss": float(curve[-1]["loss"]),
        "train_error_given_labels": 100.0 * float(
            np.mean(predicted != noisy_labels)
        ),
        "train_error_true_labels": 100.0 * float(
            np.mean(predicted != data["y_true"])
        ),
        "noisy_labels_fitted": fitted_noisy,
        "top_eigenvalue": top,
        "trace": trace["trace"],
        "trace_stderr": trace["trace_stderr"],
        "wall_seconds": sum(float(r["epoch_seconds"]) for r in curve),
        "resumed": resumed,
        "init_digest": init_digest,
        "commit": commit,
    }
    return row


def fit_logged(model, batches, epochs, output_dir, name, verbose):
    """`fit` with the per-epoch log `curves/<name>.csv` and a backup that
    a killed run resumes from; returns `(resumed, the epochs' rows)`."""
    curve_path = output_dir / "curves" / f"{name}.csv"
    backup_dir = output_dir / "backup" / name
    resumed = backup_dir.exists()
    model.fit(
        batches,
        epochs=epochs,
        callbacks=_callbacks(batches, curve_path, backup_dir),
        verbose=verbose,
    )
    curve = _dedupe_epochs(
        _run_records.read_csv(curve_path, missing_ok=True)
    )
    _write_csv(curve_path, CURVE_FIELDS, curve)
    return resumed, curve


def end_sharpness(model, x, labels, settings):
    """The top Hessian eigenvalue and the trace (a dict with its standard
    error) on the first `probe_size` training samples."""
    from keras_sam import hessian

    probe_data = (x[:settings["probe_size"]], labels[:settings["probe_size"]])
    top = hessian.top_eigenvalues(
        model, probe_data, k=1,
        num_iterations=settings["lanczos_iterations"],
        seed=settings["measure_seed"],
    )
    trace = hessian.hessian_trace(
        model, probe_data, num_samples=settings["trace_samples"],
        seed=settings["measure_seed"],
    )
    return float(top[0]), trace


# CSV helpers --------------------------------------------------------------


def _write_csv(path, fields, rows):
    path = pathlib.Path(path)
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def _append_csv(path, fields, row):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _dedupe_epochs(rows):
    """Keeps the last row of every epoch (a resumed run repeats at most
    the epoch that was running when it was killed)."""
    by_epoch = {int(r["epoch"]): r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


# The grid -----------------------------------------------------------------


def check_settings(output_dir, settings):
    """Refuses to mix runs made under other settings in one folder."""
    path = output_dir / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = sorted(
                k for k in set(saved) | set(settings)
                if saved.get(k) != settings.get(k)
            )
            raise ValueError(
                f"{output_dir} holds runs made with other settings "
                f"(differing: {', '.join(changed)}). Use another "
                "--output-dir."
            )


def run_grid(output_dir, data_dir, settings, max_runs=None, verbose=2):
    output_dir = pathlib.Path(output_dir)
    check_settings(output_dir, settings)
    data = load_data(data_dir, settings)  # fails before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    settings_path = output_dir / "settings.json"
    if not settings_path.exists():
        _run_records.write_json(settings_path, settings)
    runs_path = output_dir / "runs.csv"
    done = {
        (r["setting"], r["arm"], int(r["seed"]))
        for r in _run_records.read_csv(runs_path, missing_ok=True)
    }
    commit = _run_records.git_commit() or "unknown"
    plan = run_plan(settings)
    made = 0
    for index, (setting, arm, seed, epochs) in enumerate(plan):
        if (setting, arm, seed) in done:
            continue
        if max_runs is not None and made >= max_runs:
            break
        print(
            f"[{index + 1}/{len(plan)}] {run_name(setting, arm, seed)}: "
            f"{epochs} epochs",
            flush=True,
        )
        row = train_one(
            data, settings, setting, arm, seed, epochs, output_dir, commit,
            verbose,
        )
        _append_csv(runs_path, RUN_FIELDS, row)
        shutil.rmtree(output_dir / "backup" / run_name(setting, arm, seed),
                      ignore_errors=True)
        made += 1
        print(
            f"    test error {row['test_error']:.2f}%, train loss "
            f"{row['train_loss']:.3f}, top eigenvalue "
            f"{row['top_eigenvalue']:.2f}, {row['wall_seconds']:.0f} s",
            flush=True,
        )
    write_report(output_dir)
    return made


# Report -------------------------------------------------------------------


def paired_differences(rows, setting, arm, baseline):
    """Per-seed `arm - baseline` test error, for seeds that have both."""
    by = {(r["arm"], int(r["seed"])): float(r["test_error"])
          for r in rows if r["setting"] == setting}
    seeds = sorted(s for a, s in by if a == arm and (baseline, s) in by)
    return seeds, [by[(arm, s)] - by[(baseline, s)] for s in seeds]


def gain_fractions(rows, setting, arm):
    """Per-seed fraction of SAM's gain an arm keeps, `(sgd - arm) / (sgd -
    sam)` in test error, for seeds that have all three (PROTOCOL_6.md)."""
    by = {(r["arm"], int(r["seed"])): float(r["test_error"])
          for r in rows if r["setting"] == setting}
    seeds = sorted(s for a, s in by
                   if a == arm and ("sgd", s) in by and ("sam", s) in by)
    return seeds, [(by[("sgd", s)] - by[(arm, s)])
                   / (by[("sgd", s)] - by[("sam", s)]) for s in seeds]


def summarize(rows, settings):
    """Mean and 95% t interval of every arm, of the paired differences
    and of each variant arm's fraction of SAM's gain."""
    from keras_sam.experiments.reproduce import mean_and_interval

    arms = ["sgd", "sam"]
    if settings["sgd_epoch_multiplier"]:
        arms.append(
            f"sgd_{settings['epochs'] * settings['sgd_epoch_multiplier']}ep"
        )
    comparisons = [("sam", a) for a in arms if a != "sam"]
    for variant in settings.get("variant_arms", {}):
        arms.append(variant)
        comparisons += [(variant, "sgd"), (variant, "sam")]
    summary = []
    for setting in settings["settings"]:
        for arm in arms:
            values = [float(r["test_error"]) for r in rows
                      if r["setting"] == setting and r["arm"] == arm]
            mean, half = mean_and_interval(values)
            summary.append({
                "setting": setting, "quantity": f"{arm} test_error",
                "n": len(values), "mean": mean, "half_width": half,
            })
        for arm, baseline in comparisons:
            seeds, diffs = paired_differences(rows, setting, arm, baseline)
            mean, half = mean_and_interval(diffs)
            verdict = "n/a"
            name = "SAM" if arm == "sam" else arm
            if half is not None:
                if mean + half < 0:
                    verdict = f"{name} better"
                elif mean - half > 0:
                    verdict = f"{name} worse"
                else:
                    verdict = "no difference shown"
            summary.append({
                "setting": setting, "quantity": f"{arm} - {baseline}",
                "n": len(diffs), "mean": mean, "half_width": half,
                "verdict": verdict,
            })
        for arm in settings.get("variant_arms", {}):
            _, fractions = gain_fractions(rows, setting, arm)
            mean, half = mean_and_interval(fractions)
            summary.append({
                "setting": setting,
                "quantity": f"{arm}: fraction of SAM's gain kept",
                "n": len(fractions), "mean": mean, "half_width": half,
                "verdict": "",
            })
    return summary


def table_lines(rows, settings):
    from keras_sam.experiments.reproduce import format_interval

    summary = summarize(rows, settings)
    lines = [
        "| setting | quantity (test error %, or a fraction) | n "
        "| mean ± 95% t half-width | verdict |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['setting']} | {s['quantity']} | {s['n']} | "
            f"{format_interval(s['mean'], s['half_width'])} | "
            f"{s.get('verdict', '')} |"
        )
    lines += [
        "",
        "| setting | arm | seed | epochs | test error % | train loss | "
        "noisy labels fitted | top eigenvalue | trace | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fitted = r["noisy_labels_fitted"]
        fitted = f"{float(fitted):.3f}" if fitted not in ("", None) else "-"
        lines.append(
            f"| {r['setting']} | {r['arm']} | {r['seed']} | {r['epochs']} | "
            f"{float(r['test_error']):.2f} | {float(r['train_loss']):.3f} | "
            f"{fitted} | {float(r['top_eigenvalue']):.2f} | "
            f"{float(r['trace']):.1f} ± {float(r['trace_stderr']):.1f} | "
            f"{float(r['wall_seconds']):.0f} |"
        )
    return lines


ARM_COLORS = {
    "sgd": "tab:blue", "sam": "tab:red", "gsam": "tab:green",
    "friendly_sam": "tab:purple", "looksam": "tab:orange",
    "randomized_sam": "tab:brown", "late_sam": "tab:pink",
}


def plot_error_against_time(output_dir, rows, settings):
    """Test error against wall time, every run: which arm buys most of
    SAM's gain for least time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(settings["settings"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8),
                                squeeze=False)
    for axis, setting in zip(axes[0], names):
        for r in rows:
            if r["setting"] != setting:
                continue
            axis.scatter(float(r["wall_seconds"]) / 60,
                         float(r["test_error"]),
                         color=ARM_COLORS.get(r["arm"], "tab:gray"),
                         label=r["arm"])
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        axis.legend(unique.values(), unique.keys(), fontsize=8)
        axis.set(title=f"{setting}: test error against training time",
                 xlabel="wall time of training (min, 2 shared CPU cores)",
                 ylabel="test error (%)")
    figure.tight_layout()
    figure.savefig(output_dir / "error_vs_time.png", dpi=120)
    plt.close(figure)


def plot_curves(output_dir, rows, settings):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(settings["settings"])
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6),
                                squeeze=False)
    colors = ARM_COLORS
    for axis, setting in zip(axes[0], names):
        for path in sorted((output_dir / "curves").glob(f"{setting}_*.csv")):
            curve = _run_records.read_csv(path, missing_ok=True)
            arm = path.stem[len(setting) + 1:].rsplit("_seed", 1)[0]
            axis.plot(
                [int(r["epoch"]) for r in curve],
                [float(r["loss"]) for r in curve],
                color=colors.get(arm, "tab:gray"), alpha=0.7, lw=1,
                label=arm,
            )
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        axis.legend(unique.values(), unique.keys())
        axis.set(title=f"{setting}: training loss (given labels)",
                 xlabel="epoch", ylabel="loss", yscale="log")
    figure.tight_layout()
    figure.savefig(output_dir / "curves.png", dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 4))
    markers = dict(zip(names, "os^"))
    for r in rows:
        axis.scatter(
            float(r["top_eigenvalue"]), float(r["test_error"]),
            color=colors.get(r["arm"], "tab:gray"),
            marker=markers.get(r["setting"], "x"),
            label=f"{r['setting']} {r['arm']}",
        )
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.set(xlabel="top Hessian eigenvalue (probe set)",
             ylabel="test error (%)", xscale="log",
             title="test error against sharpness, every run")
    figure.tight_layout()
    figure.savefig(output_dir / "error_vs_sharpness.png", dpi=120)
    plt.close(figure)


def all_rows(output_dir, settings):
    """The folder's runs, after the baseline runs they are paired with
    (round 3: round 2's SGD and SAM runs)."""
    output_dir = pathlib.Path(output_dir)
    rows = _run_records.read_csv(output_dir / "runs.csv", missing_ok=True)
    if settings.get("baseline_dir"):
        baseline = output_dir.parent / settings["baseline_dir"] / "runs.csv"
        rows = _run_records.read_csv(baseline, missing_ok=True) + rows
    return rows


def write_report(output_dir):
    """`table.md`, `curves.png`, `error_vs_sharpness.png` from the CSVs."""
    output_dir = pathlib.Path(output_dir)
    settings = json.loads((output_dir / "settings.json").read_text())
    rows = all_rows(output_dir, settings)
    lines = table_lines(rows, settings)
    (output_dir / "table.md").write_text("\n".join(lines) + "\n")
    if rows:
        plot_curves(output_dir, rows, settings)
        if settings.get("variant_arms"):
            plot_error_against_time(output_dir, rows, settings)
    return lines


def write_summary(root=None):
    """`saved_results/evidence/README.md`: every round's table, the
    paper's Table 4 beside them, the command, commit and hardware."""
    root = pathlib.Path(root or ROOT / "saved_results")
    environment = _run_records.environment()
    lines = [
        "# Evidence: SAM against SGD on a CIFAR-10 subset",
        "",
        "Generated by `python benchmarks/evidence.py --summary` from the "
        "CSVs of every round (issue 13). Protocols, committed before "
        "their runs: [round 1](PROTOCOL.md), [round 2](PROTOCOL_2.md), "
        "[round 3, SAM variants](PROTOCOL_3.md), "
        "[round 4, cheaper SAM](PROTOCOL_4.md), "
        "[round 5, more cheaper SAM](PROTOCOL_5.md), "
        "[round 6, SAF and MESA](PROTOCOL_6.md). "
        "Every run made under them is below. Round 7 (a ViT against a "
        "ResNet, [PROTOCOL_7.md](PROTOCOL_7.md)) has its own runner and "
        "table: [evidence_vit_round7](../evidence_vit_round7/README.md).",
        "",
        "- hardware: 2-core CPU machines, one per session (the CPU "
        "model is not recorded per run, so wall times compare within a "
        "session's runs only); this summary was written on "
        f"{_run_records.processor_name()}, {_run_records.cpu_count()} CPU "
        f"cores; backend {environment['backend']}, Keras "
        f"{environment['keras']}",
        "- commands: `python benchmarks/evidence.py` (round 1), "
        "`python benchmarks/evidence.py --round 2` (`--round 3`, "
        "`--round 4`, `--round 5`, `--round 6`)",
        f"- generated: {_run_records.now()}",
        "",
    ]
    for number, folder in OUTPUT_DIRS.items():
        path = root / folder
        if not (path / "runs.csv").exists():
            lines += [f"## Round {number}", "", "No runs yet.", ""]
            continue
        settings = json.loads((path / "settings.json").read_text())
        rows = all_rows(path, settings)
        commits = sorted({r["commit"] for r in rows})
        link = "" if folder == "evidence" else f"../{folder}/"
        augment = settings.get("augment", True)
        lines += [
            f"## Round {number} ({settings['protocol']}): width "
            f"{settings['width']} CNN, "
            f"{'augmented' if augment else 'no augmentation'}, "
            f"{settings['train_size']} training images, rho "
            f"{settings['rho']}, {settings['epochs']} epochs",
            "",
            f"Runs made at commit {', '.join(commits)}; "
            f"[curves]({link}curves.png), "
            f"[test error against sharpness]({link}error_vs_sharpness.png), "
            + (f"[test error against time]({link}error_vs_time.png), "
               if settings.get("variant_arms") else "")
            + f"[runs.csv]({link}runs.csv).",
            "",
            *table_lines(rows, settings),
            "",
        ]
    rates = PAPER_TABLE4["noise_rates"]
    lines += [
        "## For scale: Foret et al. (2020), Table 4",
        "",
        "Clean CIFAR-10 test accuracy (%) of ResNet-32 trained 200 epochs "
        "on all 50,000 images with symmetric label noise (their rho 0.1, "
        "0.05 at 80%). A different network, data size and schedule.",
        "",
        "| noise rate | " + " | ".join(f"{r}%" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
        *(
            f"| {arm} | " + " | ".join(f"{a:.1f}" for a in PAPER_TABLE4[arm])
            + " |"
            for arm in ("SGD", "SAM")
        ),
        "",
    ]
    (root / "evidence" / "README.md").write_text("\n".join(lines))
    return lines


def add_run_arguments(parser, output_dir_help):
    """The options every evidence runner takes (this one and
    `vit_vs_resnet.py`): where to write and read, and the test hooks."""
    parser.add_argument("--output-dir", default=None, help=output_dir_help)
    parser.add_argument("--data-dir", default=str(
        ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--report", action="store_true",
                        help="only regenerate the table and figures")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="stop after this many new runs")
    parser.add_argument("--override", default=None,
                        help="JSON object of settings to change (tests only; "
                        "such runs are not runs of the protocol)")


def run_or_report(args, protocol, run, report, program):
    """Runs `run(output_dir, data_dir, settings, max_runs)` (or only
    `report(output_dir)` with `--report`); a `ValueError` is the one-line
    usage error of `program`, exit status 2."""
    settings = dict(protocol)
    if args.override:
        settings.update(json.loads(args.override))
    if args.report:
        for line in report(args.output_dir):
            print(line)
        return 0
    try:
        run(args.output_dir, args.data_dir, settings, args.max_runs)
    except ValueError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="SAM vs SGD, clean and noisy labels (PROTOCOL.md)."
    )
    parser.add_argument("--round", type=int, choices=sorted(PROTOCOLS),
                        default=1, help="the protocol round (default 1)")
    parser.add_argument("--summary", action="store_true",
                        help="only write saved_results/evidence/README.md")
    add_run_arguments(parser, "default: saved_results/evidence[_roundN]")
    args = parser.parse_args(argv)
    if args.output_dir is None:
        args.output_dir = str(
            ROOT / "saved_results" / OUTPUT_DIRS[args.round]
        )
    if args.summary:
        write_summary()
        return 0
    return run_or_report(args, PROTOCOLS[args.round], run_grid,
                         write_report, "evidence.py")


if __name__ == "__main__":
    sys.exit(main())
