"""`keras-sam landscape`: measure saved models, write CSVs, plot them.

`measure_models` loads compiled `.keras` models, measures each on probe
data (and on test data, where given) with `keras_sam.hessian` and
`keras_sam.landscape`, and writes one CSV per quantity;
`plot_results` draws the figures from those CSVs alone, so they can be
redrawn from committed results:

- `measures.csv`: per model, its probe loss, top Hessian eigenvalue,
  Hessian trace and Keskar sharpness;
- `density.csv`, `density.png`: the Hessian eigenvalue density
  (stochastic Lanczos quadrature: nodes and weights per run);
- `surface_1d.csv`, `surface_1d.png`: the loss along one random
  filter-normalized direction around each model (Li et al., 2018);
- `surface_2d.csv`, `surface_2d.png`: the same on a plane of two
  directions (with `surface_2d=True`);
- `interpolation.csv`, `interpolation.png` (two or more models): the
  loss along the line from the first model to each other one
  (Goodfellow et al., 2015; Keskar et al., 2017, Figure 3).
"""

import csv
import pathlib

import numpy as np

from keras_sam.experiments import _run_records

MEASURE_FIELDS = ("model", "num_weights", "loss", "top_eigenvalue",
                  "hessian_trace", "hessian_trace_stderr",
                  "keskar_sharpness")


def load_probe(path, argument="--data"):
    """`(x, y)` from an npz file with arrays `x` and `y` (the models'
    inputs, already preprocessed as in training, and their targets)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"argument {argument}: no such file: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise ValueError(
                    f"argument {argument}: {str(path)!r} has no array "
                    f"{missing[0]!r} (it has {sorted(arrays.files)}); save "
                    "the probe data with np.savez(path, x=x, y=y)"
                )
            x, y = arrays["x"], arrays["y"]
    except ValueError as error:
        if str(error).startswith("argument"):
            raise
        raise ValueError(
            f"argument {argument}: {str(path)!r} is not a valid npz file "
            f"({error})"
        ) from None
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"argument {argument}: {str(path)!r} must hold as many targets "
            f"as inputs, at least one: x has {len(x)} rows, y {len(y)}"
        )
    return x, y


def load_models(paths):
    """The compiled models saved at `paths` (`.keras` files)."""
    import keras

    import keras_sam  # noqa: F401 - registers SAMModel and the rules

    models = []
    for path in paths:
        if not pathlib.Path(path).is_file():
            raise ValueError(f"argument MODEL: no such file: {str(path)!r}")
        try:
            model = keras.models.load_model(path)
        except Exception as error:  # noqa: BLE001 - say which file
            raise ValueError(
                f"argument MODEL: could not load {str(path)!r} as a Keras "
                f"model ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})"
            ) from None
        if getattr(model, "loss", None) is None:
            raise ValueError(
                f"argument MODEL: {str(path)!r} was saved without a "
                "compiled loss; compile the model before saving it"
            )
        models.append(model)
    return models


def measure_models(models, names, probe, test=None, output_dir=".",
                   num_points=21, extent=1.0, surface_2d=False,
                   density_steps=30, density_runs=2, lanczos_steps=20,
                   trace_samples=16, seed=0, progress=print):
    """Measures every model and writes the CSVs; returns their paths.

    Args:
        models: Compiled Keras models.
        names: A name per model (the CSVs' `model` column).
        probe: `(x, y)` probe data, in the models' input format.
        test: `(x, y)` or `None`: also evaluate the lines on it.
        output_dir: Folder for the CSVs (made if missing).
        num_points: Points per line (and per side of the plane).
        extent: Lines and planes span `[-extent, extent]`.
        surface_2d: Whether to compute the plane too.
        density_steps, density_runs: SLQ steps and runs.
        lanczos_steps, trace_samples: For the top eigenvalue and trace.
        seed: Seeds every random direction and start vector.
        progress: Called with one line of text per finished step.

    Returns:
        A dict of the paths written.
    """
    import keras_sam

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = [("probe", probe)] + ([("test", test)] if test else [])
    measures, density, line, plane = [], [], [], []
    for name, model in zip(names, models):
        top = keras_sam.hessian.top_eigenvalues(
            model, probe, num_iterations=lanczos_steps, seed=seed)[0]
        trace = keras_sam.hessian.hessian_trace(
            model, probe, num_samples=trace_samples, seed=seed)
        keskar = keras_sam.hessian.keskar_sharpness(model, probe, seed=seed)
        measures.append({
            "model": name,
            "num_weights": sum(int(np.prod(v.shape))
                               for v in model.trainable_variables),
            "loss": keskar["loss"], "top_eigenvalue": float(top),
            "hessian_trace": trace["trace"],
            "hessian_trace_stderr": trace["trace_stderr"],
            "keskar_sharpness": keskar["sharpness"],
        })
        quadrature = keras_sam.hessian.eigenvalue_density(
            model, probe, num_steps=density_steps, num_runs=density_runs,
            seed=seed)
        for run, (nodes, weights) in enumerate(
                zip(quadrature["nodes"], quadrature["weights"])):
            density += [{"model": name, "run": run, "node": n, "weight": w}
                        for n, w in zip(nodes, weights)]
        directions = [
            keras_sam.landscape.filter_normalized_direction(
                model, seed=seed + k)
            for k in range(2)
        ]
        for split, data in splits:
            result = keras_sam.landscape.loss_surface_1d(
                model, data, directions[0], num_points=num_points,
                extent=extent)
            line += [{"model": name, "split": split, "alpha": a, "loss": v}
                     for a, v in zip(result["alpha"], result["loss"])]
        if surface_2d:
            result = keras_sam.landscape.loss_surface_2d(
                model, probe, directions, num_points=num_points,
                extent=extent)
            plane += [
                {"model": name, "alpha": a, "beta": b,
                 "loss": result["loss"][i, j]}
                for i, a in enumerate(result["alpha"])
                for j, b in enumerate(result["beta"])
            ]
        progress(f"{name}: loss {keskar['loss']:.4g}, top eigenvalue "
                 f"{float(top):.4g}, trace {trace['trace']:.4g}, Keskar "
                 f"{keskar['sharpness']:.4g}")
    paths = {
        "measures": _write(output_dir / "measures.csv", measures,
                           MEASURE_FIELDS),
        "density": _write(output_dir / "density.csv", density,
                          ("model", "run", "node", "weight")),
        "surface_1d": _write(output_dir / "surface_1d.csv", line,
                             ("model", "split", "alpha", "loss")),
    }
    if surface_2d:
        paths["surface_2d"] = _write(output_dir / "surface_2d.csv", plane,
                                     ("model", "alpha", "beta", "loss"))
    if len(models) > 1:
        rows = []
        for name, model in zip(names[1:], models[1:]):
            for split, data in splits:
                result = keras_sam.landscape.interpolate(
                    models[0], models[0], model, data,
                    num_points=2 * num_points - 1, alpha_range=(-0.5, 1.5))
                rows += [{"start": names[0], "end": name, "split": split,
                          "alpha": a, "loss": v}
                         for a, v in zip(result["alpha"], result["loss"])]
            progress(f"interpolated {names[0]} -> {name}")
        paths["interpolation"] = _write(
            output_dir / "interpolation.csv", rows,
            ("start", "end", "split", "alpha", "loss"))
    return paths


def plot_results(output_dir):
    """Draws the figures from the CSVs in `output_dir`; returns their
    paths (the densities smoothed by `hessian.smoothed_density`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_sam import hessian

    output_dir = pathlib.Path(output_dir)
    paths = {}
    density = _read(output_dir / "density.csv")
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    nodes = np.array([r["node"] for r in density])
    sigma = max(0.01 * (nodes.max() - nodes.min()), 1e-6)
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, 600)
    for name in dict.fromkeys(r["model"] for r in density):
        rows = [r for r in density if r["model"] == name]
        runs = sorted({r["run"] for r in rows})
        quadrature = {
            key: np.array([[r[key] for r in rows if r["run"] == k]
                           for k in runs])
            for key in ("node", "weight")
        }
        values = hessian.smoothed_density(
            {"nodes": quadrature["node"], "weights": quadrature["weight"]},
            grid=grid, sigma=sigma,
        )["density"]
        axis.plot(grid, np.maximum(values, 1e-12), label=name, linewidth=1)
    axis.set_yscale("log")
    axis.set_ylim(bottom=1e-6)
    axis.set_xlabel("Hessian eigenvalue")
    axis.set_ylabel("density (SLQ, smoothed)")
    axis.legend(fontsize=8)
    paths["density_plot"] = _save(figure, output_dir / "density.png")
    line = _read(output_dir / "surface_1d.csv")
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    _plot_loss_lines(axis, line, "model",
                     lambda name, rows, split: f"{name} ({split})")
    axis.set_xlabel("alpha along a filter-normalized direction")
    axis.set_ylabel("loss")
    axis.legend(fontsize=8)
    paths["surface_1d_plot"] = _save(figure, output_dir / "surface_1d.png")
    if (output_dir / "surface_2d.csv").is_file():
        plane = _read(output_dir / "surface_2d.csv")
        names = list(dict.fromkeys(r["model"] for r in plane))
        figure, axes = plt.subplots(1, len(names), squeeze=False,
                                    figsize=(4.5 * len(names), 3.8))
        for axis, name in zip(axes[0], names):
            rows = [r for r in plane if r["model"] == name]
            alpha = sorted({r["alpha"] for r in rows})
            beta = sorted({r["beta"] for r in rows})
            loss = np.array([r["loss"] for r in rows]).reshape(
                len(alpha), len(beta))
            contour = axis.contour(alpha, beta, loss.T, levels=15)
            axis.clabel(contour, fontsize=6)
            axis.set_title(name, fontsize=9)
            axis.set_xlabel("alpha")
            axis.set_ylabel("beta")
        paths["surface_2d_plot"] = _save(figure,
                                         output_dir / "surface_2d.png")
    if (output_dir / "interpolation.csv").is_file():
        rows = _read(output_dir / "interpolation.csv")
        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        _plot_loss_lines(
            axis, rows, "end",
            lambda end, part, split: f"{part[0]['start']} -> {end} ({split})",
        )
        axis.axvline(0.0, color="0.6", linewidth=0.8)
        axis.axvline(1.0, color="0.6", linewidth=0.8)
        axis.set_xlabel("alpha: (1 - alpha) w_start + alpha w_end")
        axis.set_ylabel("loss")
        axis.legend(fontsize=8)
        paths["interpolation_plot"] = _save(
            figure, output_dir / "interpolation.png")
    return paths


def _plot_loss_lines(axis, rows, key, label):
    """Plots the loss against alpha, one line per value of `key` and
    split (probe solid, test dashed), in the order of `rows`; `label(value,
    rows of the line, split)` names each line."""
    for value in dict.fromkeys(r[key] for r in rows):
        for split, style in (("probe", "-"), ("test", "--")):
            part = [r for r in rows
                    if r[key] == value and r["split"] == split]
            if part:
                axis.plot([r["alpha"] for r in part],
                          [r["loss"] for r in part], style, linewidth=1,
                          label=label(value, part, split))


def _write(path, rows, fields):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({
                key: repr(float(value))
                if isinstance(value, (float, np.floating)) else value
                for key, value in row.items()
            })
    return path


def _read(path):
    rows = _run_records.read_csv(path)
    for row in rows:
        for key, value in row.items():
            if key not in _TEXT_FIELDS:
                row[key] = float(value)
    return rows


# The CSV columns that hold names, not numbers.
_TEXT_FIELDS = ("model", "start", "end", "split")


def _save(figure, path):
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
