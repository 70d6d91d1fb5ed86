"""`keras-sam reproduce` and `keras-sam sweep`: the SAM paper's tables.

`run_reproduction` follows the paper's protocol for one row of Table 1
(CIFAR; for a row of Table 2, ImageNet, see below):

1. choose `rho` from the grid by validation accuracy on 10% of the
   training set held out (a KerasTuner grid search, `experiments.tuning`),
   unless `rho` is given;
2. train on the whole training set, for each seed, SAM with that `rho`
   and the plain SGD baseline with twice the epochs, from the same
   initial weights and data order, and measure the test error;
3. write `results.csv` (one row per run), `summary.json` and `table.md`,
   the mean test error and its 95% confidence interval (Student t over
   the seeds) next to the paper's row.

Every finished run is kept in `runs/<name>.json` and a run in progress
is backed up after each epoch (`keras.callbacks.BackupAndRestore`), so the
same command started again after a crash or a kill continues where it
stopped. The plain KerasTuner sweep behind `keras-sam sweep` is
`keras_sam.experiments.sweep`.

With `dataset="imagenet2012"` (`experiments.imagenet`), `rho` must be
given (the paper chose 0.05 once, on ResNet-50 at 100 epochs), the SGD
baseline has SAM's epochs (`sgd_epoch_multiplier=1` in
`config.IMAGENET_RECIPE`), and the table gives top-1 and top-5 error
beside the paper's Table 2 row.
"""

import csv
import json
import math
import pathlib
import shutil
import sys

import numpy as np

from keras_sam.experiments import (
    _run_records,
    data_pipeline,
    paper_results,
    training,
)
from keras_sam.experiments.config import (
    IMAGENET,
    RunConfig,
    check_same_settings,
)

RESULT_FIELDS = (
    "run",
    "optimizer",
    "rho",
    "seed",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "test_error",
    "test_top5_error",
    "test_accuracy",
    "test_loss",
    "loss",
    "accuracy",
    "m",
    "seconds",
)
_JPEG_CAVEAT = (
    "The images come from a JPEG-compressed copy of CIFAR-10 (quality "
    "about 75), which is harder than the original release (DESIGN.md: "
    "about 9% vs 5-6% error after 30 epochs of WRN-16-8): compare SAM with "
    "SGD on the same copy, not absolute errors with the paper's."
)


def mean_and_interval(values, confidence=0.95):
    """Mean and half-width of the Student t confidence interval.

    Args:
        values: the per-seed measurements.
        confidence: the interval's confidence. Defaults to `0.95`.

    Returns:
        A tuple `(mean, half_width)`; `half_width` is `None` for fewer
        than two values.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None, None
    mean = float(values.mean())
    if values.size < 2:
        return mean, None
    quantile = stats.t.ppf(0.5 + confidence / 2, df=values.size - 1)
    half_width = quantile * values.std(ddof=1) / math.sqrt(values.size)
    return mean, float(half_width)


def format_interval(mean, half_width, digits=2):
    """`"mean ± half_width"` to `digits` decimals, `"mean"` without a
    half-width, `"n/a"` without a mean."""
    if mean is None:
        return "n/a"
    if half_width is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def run_reproduction(output_dir, config=None):
    """Reproduces one row of the SAM paper's Table 1 (see the module).

    Args:
        output_dir: folder of the results and of the resumable state.
        config: the run's `keras_sam.experiments.config.RunConfig`: the
            data, the network, the recipe, `rho` (or `rho_grid` to choose
            it from), the seeds and the SGD baseline's epochs. Its
            `settings()` are saved in `settings.json`; a folder holding
            other settings is refused. Defaults to `None`
            (`RunConfig()`, the paper's WRN-28-10 row).

    Returns:
        A dict with `summary` (per optimizer: mean test error, interval,
        seeds), `rho` and `paths` (the files written).
    """
    from keras_sam import models

    config = RunConfig() if config is None else config
    output_dir = pathlib.Path(output_dir)
    settings_path = output_dir / "settings.json"
    # Everything that can fail on the settings (another run in the folder,
    # the model name, the data) fails before anything is written, so the
    # corrected command is not refused as "other settings".
    check_same_settings(settings_path, config, write=False)
    models.check_model_name(config.model)
    rho = config.rho
    if config.dataset == IMAGENET:
        if rho is None:
            raise ValueError(
                "imagenet2012 needs a given rho (the paper's is 0.05, "
                "chosen once on ResNet-50 at 100 epochs): choosing it on "
                "held-out ImageNet images is not offered."
            )
        selection_splits = None
        final_splits = _final_pipelines(None, config, seed=0)
    else:
        selection_splits = config.load_splits() if rho is None else None
        final_splits = config.load_splits(validation_fraction=0.0)
    with training.distribution_scope(config.distribute) as replicas:
        training.check_last_batches(
            _count(final_splits, "train"), _count(final_splits, "test"),
            config.batch_size, replicas,
        )
    # Process i > 0 of a multi-process job writes into process_<i>/.
    output_dir = training.process_path(output_dir, config.distribute)
    settings_path = output_dir / "settings.json"
    output_dir.mkdir(parents=True, exist_ok=True)
    check_same_settings(settings_path, config)
    _run_records.set_precision(config.mixed_precision)
    # The code that runs is the code at the start: record it now.
    environment, started = _run_records.environment(), _run_records.now()
    if rho is None:
        rho = _select_rho(output_dir, config, selection_splits)
        del selection_splits
    runs = _final_runs(config, rho)
    _train_final_runs(output_dir / "runs", final_splits, config, runs)
    records = [
        json.loads((output_dir / "runs" / f"{name}.json").read_text())
        for name, *_ in runs
    ]
    _write_results_csv(output_dir / "results.csv", records)
    _run_records.write_json(
        output_dir / "run_info.json",
        {
            "settings": config.settings(),
            "rho": rho,
            "data": final_splits.source,
            "input_pipeline": (
                "tf.data" if config.dataset == IMAGENET
                else data_pipeline.choose_pipeline()
            ),
            "train_images": _count(final_splits, "train"),
            "test_images": _count(final_splits, "test"),
            "environment": environment,
            "command": config.command or " ".join(sys.argv),
            "started": started,
            "date": _run_records.now(),
        },
    )
    summary = write_table(output_dir)
    return {
        "summary": summary,
        "rho": rho,
        "paths": {
            "results": output_dir / "results.csv",
            "table": output_dir / "table.md",
            "summary": output_dir / "summary.json",
        },
    }


def _count(data, split):
    """Images of `split` in CIFAR splits or ImageNet pipelines."""
    if hasattr(data, f"{split}_images"):
        return getattr(data, f"{split}_images")
    return len(getattr(data, f"y_{split}"))


def _final_pipelines(splits, config, seed):
    """The pipelines of a final run: CIFAR's from `splits`, ImageNet's
    from `config.data_dir`."""
    if config.dataset == IMAGENET:
        from keras_sam.experiments import imagenet

        return imagenet.make_pipelines(
            config.data_dir,
            source=config.source,
            batch_size=config.batch_size,
            augment=config.augment,
            seed=seed,
            image_size=config.image_size or imagenet.IMAGE_SIZE,
            manual_dir=config.manual_dir,
            train_size=config.train_size,
            test_size=config.test_size,
        )
    return data_pipeline.make_pipelines(
        splits,
        batch_size=config.batch_size,
        augment=config.augment,
        seed=seed,
    )


def _final_runs(config, rho):
    """`(name, optimizer, rho, epochs, seed)` of every final run, in order:
    per seed, SAM with `rho`, then the SGD baseline with more epochs."""
    runs = []
    sgd_epochs = config.epochs * config.sgd_epoch_multiplier
    for seed in range(config.seeds):
        runs.append((f"sam_seed{seed}", "sam", rho, config.epochs, seed))
        runs.append((f"sgd_seed{seed}", "sgd", 0.0, sgd_epochs, seed))
    return runs


def _train_final_runs(runs_dir, splits, config, runs):
    """Trains every run not yet recorded in `runs_dir/<name>.json`.

    A run in progress is backed up in `runs_dir/<name>_backup/` after
    every epoch, so a killed command started again resumes it.
    """
    runs_dir.mkdir(exist_ok=True)
    for index, (name, optimizer, rho, epochs, seed) in enumerate(runs):
        path = runs_dir / f"{name}.json"
        title = (
            f"[{index + 1}/{len(runs)}] {optimizer.upper()} "
            f"(rho={rho:g}) seed {seed}, {epochs} epochs"
        )
        if path.is_file():
            print(f"{title}: done before, kept", flush=True)
            continue
        print(f"{title}", flush=True)
        result = _final_run(
            splits, config, rho, epochs, seed, runs_dir / f"{name}_backup"
        )
        record = {
            "run": name,
            "optimizer": optimizer,
            "rho": rho,
            "seed": seed,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            **result,
            "date": _run_records.now(),
        }
        _run_records.write_json(path, record)
        print(f"{title}: test error {result['test_error']:.2f}%", flush=True)


def _final_run(splits, config, rho, epochs, seed, backup_dir):
    pipelines = _final_pipelines(splits, config, seed)
    result = training.train_and_evaluate(
        pipelines, config, rho, epochs, seed=seed, backup_dir=backup_dir
    )
    shutil.rmtree(backup_dir, ignore_errors=True)
    return result


def _select_rho(output_dir, config, splits):
    """Grid search over `rho` on the held-out split of `splits`; returns
    the best."""
    from keras_sam.experiments import tuning

    best_path = output_dir / "rho_selection_best.json"
    hypermodel = tuning.SAMHyperModel(
        splits,
        config.replace(epochs=config.select_epochs or config.epochs),
        tuning.SearchSpace(rho_values=config.rho_grid),
        evaluate_test=False,
    )
    tuner = tuning.make_tuner(
        hypermodel,
        "grid",
        directory=output_dir,
        project_name="rho_selection",
        seeds=tuple(range(config.select_seeds)),
    )
    print(
        f"Choosing rho from {list(config.rho_grid)} on "
        f"{len(splits.y_validation)} held-out images "
        f"({config.select_seeds} seed(s) each)",
        flush=True,
    )
    tuner.search(verbose=config.verbose)
    tuning.export_results(
        tuner, output_dir / "rho_selection.csv", best_path=best_path
    )
    best = json.loads(best_path.read_text())
    if best is None:
        raise RuntimeError(
            "No rho-selection trial completed; see "
            f"{output_dir / 'rho_selection.csv'}."
        )
    rho = float(best["hyperparameters"]["rho"])
    print(
        f"Chosen rho = {rho:g} (held-out accuracy {best['score']:.4f})",
        flush=True,
    )
    return rho


def _write_results_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow({k: record.get(k, "") for k in RESULT_FIELDS})


def write_table(output_dir):
    """Writes `summary.json` and `table.md` from `results.csv`.

    Reads only `results.csv`, `settings.json`, `run_info.json` and (if
    present) `rho_selection.csv` in `output_dir`, so it regenerates the
    table of a saved run.

    Args:
        output_dir: a folder written by `run_reproduction`.

    Returns:
        The summary: per optimizer, `mean_test_error`, `interval` (95%
        half-width), `seeds`, `epochs`, `rho` (and, for ImageNet,
        `mean_test_top5_error`, `top5_interval`).
    """
    output_dir = pathlib.Path(output_dir)
    rows = _run_records.read_csv(output_dir / "results.csv")
    settings = json.loads((output_dir / "settings.json").read_text())
    info = json.loads((output_dir / "run_info.json").read_text())
    imagenet = settings["dataset"] == IMAGENET
    summary = {}
    for optimizer in ("sam", "sgd"):
        own = [row for row in rows if row["optimizer"] == optimizer]
        mean, half_width = mean_and_interval(
            [float(row["test_error"]) for row in own]
        )
        summary[optimizer] = {
            "mean_test_error": mean,
            "interval": half_width,
            "seeds": [int(row["seed"]) for row in own],
            "epochs": int(own[0]["epochs"]) if own else None,
            "rho": float(own[0]["rho"]) if own else None,
        }
        if imagenet:
            top5, top5_half = mean_and_interval(
                [float(row["test_top5_error"]) for row in own]
            )
            summary[optimizer]["mean_test_top5_error"] = top5
            summary[optimizer]["top5_interval"] = top5_half
    if imagenet:
        paper_row = paper_results.find_imagenet_row(
            settings["model"], settings["epochs"]
        )
        same_setting = paper_row is not None
        if paper_row is None:
            paper_row = paper_results.find_imagenet_row("resnet-50", 100)
        lines = _imagenet_table_lines(
            settings, info, summary, paper_row, same_setting
        )
    else:
        paper_row, same_setting = paper_results.reference_row(
            settings["model"],
            settings["augment"],
            settings["dataset"],
            settings["epochs"],
        )
        lines = _table_lines(settings, info, summary, paper_row, same_setting)
    _run_records.write_json(
        output_dir / "summary.json",
        {
            "summary": summary,
            "paper_row": None if paper_row is None else paper_row._asdict(),
            "paper_row_is_same_setting": same_setting,
            "confidence": 0.95,
        },
    )
    selection = output_dir / "rho_selection.csv"
    if selection.is_file():
        lines += _selection_lines(_run_records.read_csv(selection))
    (output_dir / "table.md").write_text("\n".join(lines) + "\n")
    return summary


def _imagenet_table_lines(settings, info, summary, paper_row, same_setting):
    """`table.md` of an ImageNet run: top-1 and top-5 beside Table 2."""
    sam, sgd = summary["sam"], summary["sgd"]

    def cells(entry):
        return (
            f"{format_interval(entry['mean_test_error'], entry['interval'])} | "
            + format_interval(entry["mean_test_top5_error"],
                            entry["top5_interval"])
        )

    lines = [
        f"# SAM vs standard training: {settings['model']}, imagenet2012",
        "",
        "Top-1 and top-5 test error (%) on the ILSVRC-2012 validation "
        "images, mean ± 95% confidence interval (Student t) over "
        f"{len(sam['seeds'])} seed(s). Generated from `results.csv` by "
        "`keras_sam.experiments.reproduce.write_table`.",
        "",
        "| | SAM top-1 | SAM top-5 | standard top-1 | standard top-5 "
        "| epochs | rho | seeds |",
        "|---|---|---|---|---|---|---|---|",
        f"| this run: {settings['model']} | {cells(sam)} | {cells(sgd)} | "
        f"{sam['epochs']} | {sam['rho']:g} | {len(sam['seeds'])} |",
        f"| paper, Table 2: {paper_row.model_label} | "
        f"{paper_row.sam_top1} ± {paper_row.sam_top1_interval} | "
        f"{paper_row.sam_top5} ± {paper_row.sam_top5_interval} | "
        f"{paper_row.sgd_top1} ± {paper_row.sgd_top1_interval} | "
        f"{paper_row.sgd_top5} ± {paper_row.sgd_top5_interval} | "
        f"{paper_row.epochs} | 0.05 | see paper |",
        "",
    ]
    if not same_setting:
        lines += [
            "The paper has no row for this setting; its ResNet-50 "
            "100-epoch row is shown for scale only: this run is not a "
            "reproduction of it.",
            "",
        ]
    smoothing = settings.get("label_smoothing") or 0
    data, recipe, *rest = _notes_lines(settings, info)
    return lines + [
        data.replace("class-balanced subset", "seeded subset"),
        recipe,
        f"- ImageNet: {settings.get('image_size') or 224}-pixel "
        "Inception-style crops and flips (centre crop of 87.5% for "
        f"evaluation), label smoothing {smoothing:g}.",
        *rest,
    ]


def _table_lines(settings, info, summary, paper_row, same_setting):
    """`table.md`: this run's row, the paper's, then the notes."""
    sam, sgd = summary["sam"], summary["sgd"]
    setting = (
        f"{settings['model']}, {settings['augment']}, {settings['dataset']}"
    )
    lines = [
        f"# SAM vs SGD: {setting}",
        "",
        "Test error (%), mean ± 95% confidence interval (Student t) over "
        f"{len(sam['seeds'])} seed(s). Generated from `results.csv` by "
        "`keras_sam.experiments.reproduce.write_table`.",
        "",
        "| | SAM | SGD | SAM epochs | SGD epochs | rho | seeds |",
        "|---|---|---|---|---|---|---|",
        f"| this run: {setting} | "
        f"{format_interval(sam['mean_test_error'], sam['interval'])} | "
        f"{format_interval(sgd['mean_test_error'], sgd['interval'])} | "
        f"{sam['epochs']} | {sgd['epochs']} | {sam['rho']:g} | "
        f"{len(sam['seeds'])} |",
    ]
    if paper_row is not None:
        label = paper_results.AUGMENT_LABELS[paper_row.augment]
        lines.append(
            f"| paper, Table 1: {paper_row.model_label}, {label}, "
            f"{paper_row.dataset} | {paper_row.sam_error} ± "
            f"{paper_row.sam_interval} | {paper_row.sgd_error} ± "
            f"{paper_row.sgd_interval} | "
            f"{paper_row.epochs or 'see paper'} | "
            f"{2 * paper_row.epochs if paper_row.epochs else 'see paper'} "
            "| chosen on held-out | 5 |"
        )
    lines += [""]
    if paper_row is not None and not same_setting:
        lines.append(
            "The paper has no row for this setting; its row shown is the "
            "closest one (same augmentation and dataset), for scale only: "
            "this run is not a reproduction of it."
        )
        lines.append("")
    lines += _notes_lines(settings, info)
    if "JPEG" in info["data"] or "sample" in info["data"]:
        lines += ["", _JPEG_CAVEAT]
    return lines


def _notes_lines(settings, info):
    """The table's notes: data, recipe, rho, machine and command."""
    environment = info["environment"]
    subset = []
    if settings["train_size"]:
        subset.append(f"{info['train_images']} training images")
    if settings["test_size"]:
        subset.append(f"{info['test_images']} test images")
    return [
        f"- Data: {info['data']}; "
        + (
            "class-balanced subset of " + " and ".join(subset)
            if subset
            else f"{info['train_images']} training and "
            f"{info['test_images']} test images"
        )
        + ".",
        f"- Recipe: batch {settings['batch_size']}, SGD "
        f"{'Nesterov ' if settings['nesterov'] else ''}momentum "
        f"{settings['momentum']}, cosine from lr "
        f"{settings['learning_rate']}, {settings['weight_decay_kind']} "
        f"{settings['weight_decay']}, augmentation {settings['augment']}, "
        f"{_precision_label(settings)}; final runs on the whole training "
        "set.",
        "- rho: "
        + (
            f"given ({settings['rho']:g})"
            if settings["rho"] is not None
            else f"chosen from {settings['rho_grid']} by accuracy on "
            f"{settings['validation_fraction']:.0%} of the training images "
            f"held out ({settings['select_seeds']} seed(s), "
            f"{settings['select_epochs']} epochs)"
        )
        + ".",
        f"- Ran on: {environment['processor']}, Keras "
        f"{environment['keras']} ({environment['backend']} backend), "
        f"commit {environment['commit']} "
        + (
            f"(at the start, {info['started']}), "
            if "started" in info
            else "(read when the run ended), "
        )
        + f"finished {info['date']}.",
        f"- Command: `{info['command']}`",
    ]


def _precision_label(settings):
    if settings.get("mixed_precision"):
        return f"mixed {settings['mixed_precision']} precision"
    return "float32"


def _selection_lines(rows):
    lines = [
        "",
        "## Choice of rho (held-out accuracy)",
        "",
        "| rho | seeds | held-out accuracy (mean) |",
        "|---|---|---|",
    ]
    by_rho = {}
    for row in rows:
        if row["status"] == "COMPLETED" and row["val_accuracy"] != "":
            by_rho.setdefault(float(row["rho"]), []).append(
                float(row["val_accuracy"])
            )
    for rho in sorted(by_rho):
        values = by_rho[rho]
        lines.append(f"| {rho:g} | {len(values)} | {np.mean(values):.4f} |")
    return lines
