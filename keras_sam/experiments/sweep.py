"""`keras-sam sweep`: the plain KerasTuner sweep over `rho` and the batch
size, its trials as a CSV and a plot of test error against `rho`."""

import json
import pathlib
import sys

from keras_sam.experiments import _run_records, data_pipeline
from keras_sam.experiments.config import RunConfig
from keras_sam.experiments.reproduce import mean_and_interval


def run_sweep(
    output_dir,
    config=None,
    space=None,
    seeds=(0,),
    tuner="grid",
    max_trials=None,
    evaluate_test=True,
):
    """A KerasTuner sweep; writes `trials.csv`, `best.json`, `sweep.png`.

    See `experiments.tuning` for the search itself. The raw tuner state goes
    to `output_dir/tuner/` (needed to resume; do not commit it). Only the
    chief (or the single process) writes the exports.

    Args:
        output_dir: folder of the results and the tuner state.
        config: a `keras_sam.experiments.config.RunConfig`: the data, the
            network, the `epochs` of every trial and the recipe (see
            `keras_sam.experiments.tuning.SAMHyperModel`). Defaults to
            `None` (`RunConfig(model="resnet-20")`).
        space: the searched values, a
            `keras_sam.experiments.tuning.SearchSpace`. Defaults to `None`
            (`SearchSpace()`: `rho` over 0 and the paper's grid).
        seeds: seeds of every trial. Defaults to `(0,)`.
        tuner: `"grid"`, `"random"` or `"bayesian"`. Defaults to
            `"grid"`.
        max_trials: trial budget (required unless grid). Defaults to
            `None`.
        evaluate_test: whether to record test errors. Defaults to `True`.

    Returns:
        A dict with `rows` (the CSV rows, `None` on a worker), `best`
        and `paths`.
    """
    from keras_sam import models
    from keras_sam.experiments import tuning

    config = RunConfig(model="resnet-20") if config is None else config
    output_dir = pathlib.Path(output_dir)
    # A wrong model name or data fails before anything is written.
    models.check_model_name(config.model)
    splits = config.load_splits()
    hypermodel = tuning.SAMHyperModel(
        splits, config, space, evaluate_test=evaluate_test
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    _run_records.set_precision(config.mixed_precision)
    environment, started = _run_records.environment(), _run_records.now()
    search = tuning.make_tuner(
        hypermodel,
        tuner,
        directory=output_dir,
        project_name="tuner",
        max_trials=max_trials,
        seeds=seeds,
    )
    search.search(verbose=config.verbose)
    paths = {
        "trials": output_dir / "trials.csv",
        "best": output_dir / "best.json",
        "plot": output_dir / "sweep.png",
        "info": output_dir / "sweep_info.json",
    }
    if not tuning.is_chief_or_single():
        return {"rows": None, "best": None, "paths": {}}
    rows = tuning.export_results(search, paths["trials"], paths["best"])
    _run_records.write_json(
        paths["info"],
        _sweep_info(config, splits, tuner, seeds, environment, started),
    )
    if evaluate_test:
        plot_sweep(paths["trials"], paths["plot"])
    else:
        paths.pop("plot")
    best = json.loads(paths["best"].read_text())
    return {"rows": rows, "best": best, "paths": paths}


def _sweep_info(config, splits, tuner, seeds, environment, started):
    """`sweep_info.json`: the data, the settings, the machine, the dates."""
    return {
        "dataset": config.dataset,
        "data": splits.source,
        "input_pipeline": data_pipeline.choose_pipeline(),
        "model": config.model,
        "augment": config.augment,
        "epochs": config.epochs,
        "tuner": tuner,
        "seeds": list(seeds),
        "mixed_precision": config.mixed_precision,
        "train_images": len(splits.y_train),
        "validation_images": len(splits.y_validation),
        "test_images": len(splits.y_test),
        "environment": environment,
        "command": config.command or " ".join(sys.argv),
        "started": started,
        "date": _run_records.now(),
    }


def sweep_errors(rows):
    """Mean test error per `(batch_size, rho)` over seeds.

    Args:
        rows: rows of a `trials.csv` (dicts of strings).

    Returns:
        A dict `{batch_size: {rho: (mean, half_width, count)}}` over the
        completed rows; the half-width is the 95% Student t interval.
    """
    grouped = {}
    for row in rows:
        if row["status"] != "COMPLETED" or row["test_error"] == "":
            continue
        key = (int(row["batch_size"]), float(row["rho"]))
        grouped.setdefault(key, []).append(float(row["test_error"]))
    errors = {}
    for (batch_size, rho), values in sorted(grouped.items()):
        mean, half_width = mean_and_interval(values)
        errors.setdefault(batch_size, {})[rho] = (mean, half_width, len(values))
    return errors


def plot_sweep(csv_path, png_path, title=None):
    """Plots test error against `rho`, one line per batch size.

    `rho = 0` (the plain model) is drawn at the left end of a symlog axis.
    Error bars are 95% intervals over seeds where there are several.

    Args:
        csv_path: a `trials.csv` written by `run_sweep`.
        png_path: where to write the figure.
        title: figure title. Defaults to `None` (the file name).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = sweep_errors(_run_records.read_csv(csv_path))
    figure, axis = plt.subplots(figsize=(6, 4))
    for batch_size, by_rho in errors.items():
        rhos = sorted(by_rho)
        means = [by_rho[rho][0] for rho in rhos]
        bars = [by_rho[rho][1] or 0.0 for rho in rhos]
        axis.errorbar(
            rhos, means, yerr=bars, marker="o", capsize=3,
            label=f"batch {batch_size}",
        )  # fmt: skip
    axis.set_xscale("symlog", linthresh=0.01)
    ticks = sorted({rho for by_rho in errors.values() for rho in by_rho})
    axis.set_xticks(ticks, [f"{rho:g}" for rho in ticks])
    axis.set_xlabel("rho (0 = plain SGD)")
    axis.set_ylabel("test error (%)")
    axis.set_title(title or pathlib.Path(csv_path).parent.name)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
