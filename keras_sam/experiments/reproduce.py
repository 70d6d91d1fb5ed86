"""`keras-sam reproduce` and `keras-sam sweep`: the SAM CIFAR table.

`run_reproduction` follows the paper's protocol for one row of Table 1:

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
"""

import csv
import json
import math
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from keras_sam.experiments import datasets, paper_results, training

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
    "test_accuracy",
    "test_loss",
    "loss",
    "accuracy",
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


def _format_error(mean, half_width, digits=2):
    if mean is None:
        return "n/a"
    if half_width is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def _environment():
    import keras

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _processor_name(),
        "commit": _git_commit(),
    }


def _processor_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit():
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "keras_sam"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(path, value):
    path = pathlib.Path(path)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)


def _check_same_settings(path, settings):
    """Refuses to resume into a folder made with other settings."""
    if not path.is_file():
        _write_json(path, settings)
        return
    saved = json.loads(path.read_text())
    changed = sorted(
        key
        for key in set(saved) | set(settings)
        if saved.get(key) != settings.get(key)
    )
    if changed:
        raise ValueError(
            f"{path.parent} holds a run with other settings ({changed}: "
            f"{[saved.get(k) for k in changed]} there, "
            f"{[settings.get(k) for k in changed]} now). Use another "
            "--output-dir, or the same settings to resume."
        )


def run_reproduction(
    output_dir,
    dataset="cifar10",
    data_dir=None,
    source="auto",
    model_name="wrn-28-10",
    augment="basic",
    epochs=200,
    seeds=5,
    rho=None,
    rho_grid=training.PAPER_RHO_GRID,
    select_seeds=1,
    select_epochs=None,
    batch_size=training.PAPER_DEFAULTS["batch_size"],
    learning_rate=training.PAPER_DEFAULTS["learning_rate"],
    momentum=training.PAPER_DEFAULTS["momentum"],
    nesterov=training.PAPER_DEFAULTS["nesterov"],
    weight_decay=training.PAPER_DEFAULTS["weight_decay"],
    sgd_epoch_multiplier=training.PAPER_DEFAULTS["sgd_epoch_multiplier"],
    validation_fraction=training.PAPER_DEFAULTS["validation_fraction"],
    train_size=None,
    test_size=None,
    split_seed=0,
    mixed_precision=None,
    verbose=1,
    command=None,
):
    """Reproduces one row of the SAM paper's Table 1 (see the module).

    Args:
        output_dir: folder of the results and of the resumable state.
        dataset: `"cifar10"` or `"cifar100"`. Defaults to `"cifar10"`.
        data_dir: see `keras_sam.experiments.datasets.load_splits`. Defaults to
            `None`.
        source: see `keras_sam.experiments.datasets.load_splits`. Defaults to
            `"auto"`.
        model_name: a `keras_sam.models` name. Defaults to `"wrn-28-10"`.
        augment: see `experiments.datasets.load`. Defaults to `"basic"`.
        epochs: SAM's training epochs. Defaults to `200`.
        seeds: number of seeds (`0 .. seeds - 1`) of the final runs.
            Defaults to `5`.
        rho: SAM radius; `None` chooses it from `rho_grid` on the held-out
            split. Defaults to `None`.
        rho_grid: candidates for `rho`. Defaults to the paper's
            `(0.01, 0.02, 0.05, 0.1, 0.2, 0.5)`.
        select_seeds: seeds per candidate when choosing `rho`. Defaults to
            `1`.
        select_epochs: epochs of the selection runs, `None` for `epochs`.
            Defaults to `None`.
        batch_size: batch size. Defaults to `256`.
        learning_rate: peak of the cosine schedule. Defaults to `0.1`.
        momentum: SGD momentum. Defaults to `0.9`.
        nesterov: Nesterov momentum. Defaults to `True`.
        weight_decay: coupled L2 coefficient. Defaults to `5e-4`.
        sgd_epoch_multiplier: the SGD baseline trains `epochs` times this.
            Defaults to `2`.
        validation_fraction: fraction held out to choose `rho`. Defaults
            to `0.1`.
        train_size: class-balanced subset of the training images, or
            `None` for all. Defaults to `None`.
        test_size: class-balanced subset of the test images, or `None`.
            Defaults to `None`.
        split_seed: seed of the subsets and the held-out split. Defaults
            to `0`.
        mixed_precision: `None`, `"bfloat16"` or `"float16"`: the Keras
            dtype policy `mixed_<...>` to train under (GPU). Defaults to
            `None` (float32).
        verbose: Keras `fit` verbosity (1: progress bars). Defaults to
            `1`.
        command: the command line to record. Defaults to `None`.

    Returns:
        A dict with `summary` (per optimizer: mean test error, interval,
        seeds), `rho` and `paths` (the files written).
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": dataset,
        "data_dir": None if data_dir is None else str(data_dir),
        "source": source,
        "model": model_name,
        "augment": augment,
        "epochs": epochs,
        "seeds": seeds,
        "rho": rho,
        "rho_grid": list(rho_grid),
        "select_seeds": select_seeds,
        "select_epochs": select_epochs or epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "weight_decay_kind": "coupled L2 (gradient weight_decay * w)",
        "schedule": "cosine to 0 over the run, no warm-up",
        "sgd_epoch_multiplier": sgd_epoch_multiplier,
        "validation_fraction": validation_fraction,
        "train_size": train_size,
        "test_size": test_size,
        "split_seed": split_seed,
        "mixed_precision": mixed_precision,
    }
    _check_same_settings(output_dir / "settings.json", settings)
    _set_precision(mixed_precision)
    # The code that runs is the code at the start: record it now.
    environment, started = _environment(), _now()
    load_options = {
        "data_dir": data_dir,
        "source": source,
        "train_size": train_size,
        "test_size": test_size,
        "split_seed": split_seed,
    }
    if rho is None:
        rho = _select_rho(
            output_dir, dataset, load_options, settings, verbose, command
        )
    final_splits = datasets.load_splits(
        dataset, validation_fraction=0.0, **load_options
    )
    runs = []
    for seed in range(seeds):
        runs.append(("sam", rho, epochs, seed))
        runs.append(("sgd", 0.0, epochs * sgd_epoch_multiplier, seed))
    runs_dir = output_dir / "runs"
    runs_dir.mkdir(exist_ok=True)
    for index, (optimizer, run_rho, run_epochs, seed) in enumerate(runs):
        name = f"{optimizer}_seed{seed}"
        path = runs_dir / f"{name}.json"
        title = (
            f"[{index + 1}/{len(runs)}] {optimizer.upper()} "
            f"(rho={run_rho:g}) seed {seed}, {run_epochs} epochs"
        )
        if path.is_file():
            print(f"{title}: done before, kept", flush=True)
            continue
        print(f"{title}", flush=True)
        result = _final_run(
            final_splits,
            settings,
            run_rho,
            run_epochs,
            seed,
            runs_dir / f"{name}_backup",
            verbose,
        )
        record = {
            "run": name,
            "optimizer": optimizer,
            "rho": run_rho,
            "seed": seed,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            **result,
            "date": _now(),
        }
        _write_json(path, record)
        print(f"{title}: test error {result['test_error']:.2f}%", flush=True)
    records = [
        json.loads((runs_dir / f"{o}_seed{s}.json").read_text())
        for o, _, _, s in runs
    ]
    _write_results_csv(output_dir / "results.csv", records)
    record = {
        "settings": settings,
        "rho": rho,
        "data": final_splits.source,
        "train_images": len(final_splits.y_train),
        "test_images": len(final_splits.y_test),
        "environment": environment,
        "command": command or " ".join(sys.argv),
        "started": started,
        "date": _now(),
    }
    _write_json(output_dir / "run_info.json", record)
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


def _set_precision(mixed_precision):
    import keras

    if mixed_precision not in (None, "bfloat16", "float16"):
        raise ValueError(
            "`mixed_precision` must be None, 'bfloat16' or 'float16', got "
            f"{mixed_precision!r}."
        )
    policy = (
        "float32" if mixed_precision is None else f"mixed_{mixed_precision}"
    )
    keras.config.set_dtype_policy(policy)


def _final_run(splits, settings, rho, epochs, seed, backup_dir, verbose):
    from keras_sam.experiments import data_pipeline

    pipelines = data_pipeline.make_pipelines(
        splits,
        batch_size=settings["batch_size"],
        augment=settings["augment"],
        seed=seed,
    )
    result = training.train_and_evaluate(
        pipelines,
        settings["model"],
        rho,
        epochs,
        learning_rate=settings["learning_rate"],
        momentum=settings["momentum"],
        nesterov=settings["nesterov"],
        weight_decay=settings["weight_decay"],
        seed=seed,
        backup_dir=backup_dir,
        verbose=verbose,
    )
    shutil.rmtree(backup_dir, ignore_errors=True)
    return result


def _select_rho(output_dir, dataset, load_options, settings, verbose, command):
    """Grid search over `rho` on the held-out split; returns the best."""
    from keras_sam.experiments import tuning

    best_path = output_dir / "rho_selection_best.json"
    splits = datasets.load_splits(
        dataset,
        validation_fraction=settings["validation_fraction"],
        **load_options,
    )
    hypermodel = tuning.SAMHyperModel(
        splits,
        settings["model"],
        rho_values=settings["rho_grid"],
        batch_sizes=(settings["batch_size"],),
        learning_rates=(settings["learning_rate"],),
        weight_decays=(settings["weight_decay"],),
        epochs=settings["select_epochs"],
        augment=settings["augment"],
        momentum=settings["momentum"],
        nesterov=settings["nesterov"],
        evaluate_test=False,
    )
    tuner = tuning.make_tuner(
        hypermodel,
        "grid",
        directory=output_dir,
        project_name="rho_selection",
        seeds=tuple(range(settings["select_seeds"])),
    )
    print(
        f"Choosing rho from {settings['rho_grid']} on "
        f"{len(splits.y_validation)} held-out images "
        f"({settings['select_seeds']} seed(s) each)",
        flush=True,
    )
    tuner.search(verbose=verbose)
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


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_table(output_dir):
    """Writes `summary.json` and `table.md` from `results.csv`.

    Reads only `results.csv`, `settings.json`, `run_info.json` and (if
    present) `rho_selection.csv` in `output_dir`, so it regenerates the
    table of a saved run.

    Args:
        output_dir: a folder written by `run_reproduction`.

    Returns:
        The summary: per optimizer, `mean_test_error`, `interval` (95%
        half-width), `seeds`, `epochs`, `rho`.
    """
    output_dir = pathlib.Path(output_dir)
    rows = _read_csv(output_dir / "results.csv")
    settings = json.loads((output_dir / "settings.json").read_text())
    info = json.loads((output_dir / "run_info.json").read_text())
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
    paper_row, same_setting = paper_results.reference_row(
        settings["model"],
        settings["augment"],
        settings["dataset"],
        settings["epochs"],
    )
    _write_json(
        output_dir / "summary.json",
        {
            "summary": summary,
            "paper_row": None if paper_row is None else paper_row._asdict(),
            "paper_row_is_same_setting": same_setting,
            "confidence": 0.95,
        },
    )
    lines = _table_lines(settings, info, summary, paper_row, same_setting)
    selection = output_dir / "rho_selection.csv"
    if selection.is_file():
        lines += _selection_lines(_read_csv(selection))
    (output_dir / "table.md").write_text("\n".join(lines) + "\n")
    return summary


def _table_lines(settings, info, summary, paper_row, same_setting):
    sam, sgd = summary["sam"], summary["sgd"]
    environment = info["environment"]
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
        f"{_format_error(sam['mean_test_error'], sam['interval'])} | "
        f"{_format_error(sgd['mean_test_error'], sgd['interval'])} | "
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
    subset = []
    if settings["train_size"]:
        subset.append(f"{info['train_images']} training images")
    if settings["test_size"]:
        subset.append(f"{info['test_images']} test images")
    lines += [
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
    if "JPEG" in info["data"] or "sample" in info["data"]:
        lines += ["", _JPEG_CAVEAT]
    return lines


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
