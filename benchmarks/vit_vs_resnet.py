"""A Vision Transformer against a ResNet, with and without SAM: round 7.

Runs the pre-registered protocol `saved_results/evidence/PROTOCOL_7.md`
(settings in `PROTOCOL_7` below; the file and this dictionary must
agree): KerasHub's ViT (142k parameters) and a ResNet-14 (173k) trained
on the evidence's 5,000-image CIFAR-10 subset with clean labels and no
augmentation, each with AdamW (warm-up and cosine, decoupled weight
decay) and with SAM around the same AdamW, from the same initial weights
and batches per seed. After every run: test error, the top Hessian
eigenvalue and trace on a fixed probe set, and a filter-normalized 1-D
loss line through the minimum.

The question (Chen, Hsieh and Gong, ICLR 2022): is SAM's gain larger for
the ViT than for the ResNet, and are the ViT's minima sharper?

One row per finished run goes to `runs.csv`, per-epoch logs to
`curves/<run>.csv`, the loss line to `curves/line_<run>.csv`; a killed run
resumes at its last finished epoch and finished runs are never repeated
(the bookkeeping of `benchmarks/evidence.py`). `--report` only rewrites
`table.md`, `README.md` and the figure from the CSVs.

    python benchmarks/vit_vs_resnet.py            # the round (~40 min)
    python benchmarks/vit_vs_resnet.py --report   # table and figure

References:
    - Chen, Hsieh and Gong, 2022. When Vision Transformers Outperform
      ResNets without Pre-training or Strong Data Augmentations.
      https://arxiv.org/abs/2106.01548
    - Dosovitskiy et al., 2021. An Image is Worth 16x16 Words.
      https://arxiv.org/abs/2010.11929
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import evidence  # noqa: E402  (benchmarks/evidence.py, the shared runner)
import keras  # noqa: E402

from keras_sam.experiments import _run_records  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "saved_results" / "evidence_vit_round7"

PROTOCOL_7 = {
    "protocol": "PROTOCOL_7.md",
    "train_size": 5000,
    "subset_seed": 0,
    "noise_seed": 0,
    "settings": {"clean": 0.0},
    "augment": False,
    "architectures": {
        "vit": {"patch_size": 4, "num_layers": 4, "num_heads": 4,
                "hidden_dim": 64, "mlp_dim": 128},
        "resnet": {"depth": 14},
    },
    "arms": ["adamw", "sam"],
    "epochs": 15,
    "batch_size": 128,
    "learning_rate": 1e-3,
    "warmup_epochs": 2,
    "weight_decay": 0.05,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "rho": 0.05,
    "seeds": [0, 1, 2],
    "probe_size": 256,
    "lanczos_iterations": 15,
    "trace_samples": 10,
    "measure_seed": 0,
    "line_size": 500,
    "line_points": 21,
    "line_extent": 1.0,
}

RUN_FIELDS = (
    "architecture", "arm", "rho", "seed", "epochs", "parameters",
    "test_error", "test_loss", "train_loss", "train_error",
    "top_eigenvalue", "trace", "trace_stderr", "wall_seconds", "resumed",
    "init_digest", "commit",
)
LINE_FIELDS = ("alpha", "loss", "accuracy")


def run_name(architecture, arm, seed):
    return f"{architecture}_{arm}_seed{seed}"


def run_plan(settings):
    """Seed by seed (ViT then ResNet, base then SAM): a cut-short round
    has whole seeds."""
    return [
        (architecture, arm, seed)
        for seed in settings["seeds"]
        for architecture in settings["architectures"]
        for arm in settings["arms"]
    ]


def build_network(settings, architecture):
    """The protocol's network, logits out, built under the current seed."""
    arguments = settings["architectures"][architecture]
    if architecture == "vit":
        import keras_hub

        backbone = keras_hub.models.ViTBackbone(
            image_shape=(32, 32, 3), **arguments
        )
        return keras_hub.models.ViTImageClassifier(
            backbone=backbone, num_classes=10
        )
    if architecture == "resnet":
        from keras_sam import models

        return models.resnet(
            **arguments, weight_decay=0.0, classifier_activation=None
        )
    raise ValueError(
        f"Argument `architecture` must be one of "
        f"{sorted(settings['architectures'])}. Received: "
        f"architecture={architecture!r}."
    )


def plain(network):
    """`network` for Keras's own `fit`: a functional model around it.

    A KerasHub task's `fit` builds a `tf.data` pipeline from its input and
    cannot take the seeded `keras.utils.PyDataset` of the batches
    ("Can't convert non-rectangular Python sequence to Tensor", keras-hub
    0.27); the wrapper holds the same variables and computes the same
    function. (`SAMModel` runs Keras's `fit`, so the SAM arm needs none.)
    """
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, network(inputs))


def no_decay(network):
    """The variables AdamW does not decay (timm's rule): biases, every
    variable of fewer than two dimensions (normalization scales and
    offsets), the ViT's class token and position embedding."""
    skip = ("bias", "class_token", "position_embedding")
    return [
        v for v in network.trainable_variables
        if len(v.shape) < 2 or any(part in v.path for part in skip)
    ]


def learning_rate_schedule(settings, steps_per_epoch):
    """Linear warm-up from 0 to the peak, then cosine decay to 0."""
    total = settings["epochs"] * steps_per_epoch
    warmup = settings["warmup_epochs"] * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total - warmup,
        warmup_target=settings["learning_rate"],
        warmup_steps=warmup,
    )


def adamw(settings, network, steps_per_epoch):
    """AdamW on the schedule, without decay on `no_decay(network)`."""
    optimizer = keras.optimizers.AdamW(
        learning_rate_schedule(settings, steps_per_epoch),
        weight_decay=settings["weight_decay"],
        beta_1=settings["beta_1"],
        beta_2=settings["beta_2"],
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay(network))
    return optimizer


def train_one(data, settings, architecture, arm, seed, output_dir, commit,
              verbose):
    """Trains one run, measures it and returns its `runs.csv` row."""
    from keras_sam import landscape
    from keras_sam.sam_model import SAMModel

    name = run_name(architecture, arm, seed)
    labels, _ = data["labels"]["clean"]
    keras.utils.set_random_seed(seed)
    network = build_network(settings, architecture)
    init_digest = evidence.weights_digest(network)
    rho = settings["rho"] if arm == "sam" else 0.0
    model = SAMModel(network, rho=rho) if arm == "sam" else plain(network)
    batches = evidence.AugmentedBatches(
        data["x_train"], labels, settings["batch_size"], seed,
        augment=settings["augment"],
    )
    model.compile(
        optimizer=adamw(settings, network, len(batches)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    resumed, curve = evidence.fit_logged(
        model, batches, settings["epochs"], output_dir, name, verbose)
    test_loss, test_accuracy = model.evaluate(
        data["x_test"], data["y_test"], batch_size=1000, verbose=0
    )
    train_loss, train_accuracy = model.evaluate(
        data["x_train"], labels, batch_size=1000, verbose=0
    )
    top, trace = evidence.end_sharpness(model, data["x_train"], labels,
                                        settings)
    line_rows = slice(0, settings["line_size"])
    line = landscape.loss_surface_1d(
        model, (data["x_train"][line_rows], labels[line_rows]),
        num_points=settings["line_points"],
        extent=settings["line_extent"],
        seed=settings["measure_seed"],
    )
    evidence._write_csv(
        output_dir / "curves" / f"line_{name}.csv", LINE_FIELDS,
        [dict(zip(LINE_FIELDS, values)) for values in zip(
            line["alpha"], line["loss"], line["accuracy"]
        )],
    )
    return {
        "architecture": architecture,
        "arm": arm,
        "rho": rho,
        "seed": seed,
        "epochs": settings["epochs"],
        "parameters": network.count_params(),
        "test_error": 100.0 * (1.0 - float(test_accuracy)),
        "test_loss": float(test_loss),
        "train_loss": float(train_loss),
        "train_error": 100.0 * (1.0 - float(train_accuracy)),
        "top_eigenvalue": top,
        "trace": trace["trace"],
        "trace_stderr": trace["trace_stderr"],
        "wall_seconds": sum(float(r["epoch_seconds"]) for r in curve),
        "resumed": resumed,
        "init_digest": init_digest,
        "commit": commit,
    }


def run_round(output_dir, data_dir, settings, max_runs=None, verbose=2):
    """Makes every run of the plan not yet in `runs.csv`; returns how
    many it made."""
    output_dir = pathlib.Path(output_dir)
    evidence.check_settings(output_dir, settings)
    data = evidence.load_data(data_dir, settings)  # fails before writing
    output_dir.mkdir(parents=True, exist_ok=True)
    if not (output_dir / "settings.json").exists():
        _run_records.write_json(output_dir / "settings.json", settings)
    runs_path = output_dir / "runs.csv"
    done = {
        (r["architecture"], r["arm"], int(r["seed"]))
        for r in _run_records.read_csv(runs_path, missing_ok=True)
    }
    commit = _run_records.git_commit() or "unknown"
    plan = run_plan(settings)
    made = 0
    for index, (architecture, arm, seed) in enumerate(plan):
        if (architecture, arm, seed) in done:
            continue
        if max_runs is not None and made >= max_runs:
            break
        name = run_name(architecture, arm, seed)
        print(f"[{index + 1}/{len(plan)}] {name}: {settings['epochs']} "
              "epochs", flush=True)
        row = train_one(data, settings, architecture, arm, seed, output_dir,
                        commit, verbose)
        evidence._append_csv(runs_path, RUN_FIELDS, row)
        shutil.rmtree(output_dir / "backup" / name, ignore_errors=True)
        made += 1
        print(f"    test error {row['test_error']:.2f}%, train error "
              f"{row['train_error']:.2f}%, top eigenvalue "
              f"{row['top_eigenvalue']:.2f}, {row['wall_seconds']:.0f} s",
              flush=True)
    write_report(output_dir)
    return made


# Statistics ----------------------------------------------------------------


def _by_seed(rows, quantity):
    """`{(architecture, arm): {seed: value}}` of one column."""
    table = {}
    for r in rows:
        key = (r["architecture"], r["arm"])
        table.setdefault(key, {})[int(r["seed"])] = float(r[quantity])
    return table


def _paired(first, second, transform):
    """Per-seed `transform(first[s], second[s])` over shared seeds."""
    seeds = sorted(set(first) & set(second))
    return [transform(first[s], second[s]) for s in seeds]


def _log10_ratio(first, second):
    """Per-seed `log10(first / second)`, over the seeds where both are
    positive (a Hutchinson trace of few samples can come out negative;
    such a seed has no ratio and `n` says so)."""
    seeds = sorted(s for s in set(first) & set(second)
                   if first[s] > 0 and second[s] > 0)
    return [math.log10(first[s] / second[s]) for s in seeds]


def _verdict(mean, half, above, below):
    if half is None or not math.isfinite(half):
        return "n/a"
    if mean - half > 0:
        return above
    if mean + half < 0:
        return below
    return "no difference shown"


def summarize(rows):
    """The protocol's quantities: mean, 95% t half-width, n and verdict."""
    from keras_sam.experiments.reproduce import mean_and_interval

    error = _by_seed(rows, "test_error")
    empty = {}
    gains = {
        arch: dict(zip(
            sorted(set(error.get((arch, "adamw"), empty))
                   & set(error.get((arch, "sam"), empty))),
            _paired(error.get((arch, "adamw"), empty),
                    error.get((arch, "sam"), empty),
                    lambda base, sam: base - sam),
        ))
        for arch in ("vit", "resnet")
    }
    summary = []

    def add(quantity, values, above=None, below=None):
        mean, half = mean_and_interval(values)
        verdict = _verdict(mean, half, above, below) if above else ""
        summary.append({
            "quantity": quantity, "n": len(values), "mean": mean,
            "half_width": half, "verdict": verdict,
        })

    for arch in ("vit", "resnet"):
        for arm in ("adamw", "sam"):
            add(f"{arch} {arm}: test error (%)",
                list(error.get((arch, arm), empty).values()))
    for arch in ("vit", "resnet"):
        add(f"{arch}: SAM's gain, adamw - sam (points)",
            list(gains[arch].values()), "SAM better", "SAM worse")
    add("primary: gain(vit) - gain(resnet) (points)",
        _paired(gains["vit"], gains["resnet"], lambda v, r: v - r),
        "larger for the ViT", "larger for the ResNet")
    for quantity, label in (("top_eigenvalue", "top eigenvalue"),
                            ("trace", "trace")):
        values = _by_seed(rows, quantity)
        add(f"adamw: log10 {label} vit / resnet",
            _log10_ratio(values.get(("vit", "adamw"), empty),
                         values.get(("resnet", "adamw"), empty)),
            "ViT sharper", "ViT flatter")
        for arch in ("vit", "resnet"):
            add(f"{arch}: log10 {label} sam / adamw",
                _log10_ratio(values.get((arch, "sam"), empty),
                             values.get((arch, "adamw"), empty)),
                "SAM sharper", "SAM flatter")
    return summary


def table_lines(rows):
    from keras_sam.experiments.reproduce import format_interval

    lines = [
        "| quantity | n | mean ± 95% t half-width | verdict |",
        "|---|---|---|---|",
    ]
    for s in summarize(rows):
        lines.append(
            f"| {s['quantity']} | {s['n']} | "
            f"{format_interval(s['mean'], s['half_width'])} | "
            f"{s['verdict']} |"
        )
    lines += [
        "",
        "| network | arm | seed | parameters | test error % | train error %"
        " | top eigenvalue | trace | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['architecture']} | {r['arm']} | {r['seed']} | "
            f"{int(r['parameters']):,} | {float(r['test_error']):.2f} | "
            f"{float(r['train_error']):.2f} | "
            f"{float(r['top_eigenvalue']):.1f} | "
            f"{float(r['trace']):.0f} ± {float(r['trace_stderr']):.0f} | "
            f"{float(r['wall_seconds']):.0f} |"
        )
    return lines


def write_report(output_dir):
    """`table.md` and `README.md` from the CSVs; returns the table."""
    output_dir = pathlib.Path(output_dir)
    rows = _run_records.read_csv(output_dir / "runs.csv", missing_ok=True)
    lines = table_lines(rows)
    (output_dir / "table.md").write_text("\n".join(lines) + "\n")
    settings = json.loads((output_dir / "settings.json").read_text())
    commits = sorted({r["commit"] for r in rows}) or ["none yet"]
    planned = len(run_plan(settings))
    readme = [
        "# Round 7: a Vision Transformer against a ResNet, with and "
        "without SAM",
        "",
        "Protocol, committed before the first run: "
        "[PROTOCOL_7.md](../evidence/PROTOCOL_7.md). Command: "
        "`python benchmarks/vit_vs_resnet.py`; runs made at commit "
        f"{', '.join(commits)}; {len(rows)} of {planned} planned runs made. "
        "Per-epoch logs and the loss lines are in `curves/`; tutorial 07 "
        "(`tutorials/07_vit_vs_resnet.py`) draws them.",
        "",
        *lines,
        "",
    ]
    (output_dir / "README.md").write_text("\n".join(readme))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="ViT against ResNet, AdamW and SAM (PROTOCOL_7.md)."
    )
    evidence.add_run_arguments(
        parser, "default: saved_results/evidence_vit_round7")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or str(OUTPUT_DIR)
    return evidence.run_or_report(args, PROTOCOL_7, run_round, write_report,
                                  "vit_vs_resnet.py")


if __name__ == "__main__":
    sys.exit(main())
