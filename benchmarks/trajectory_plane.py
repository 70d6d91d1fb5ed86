"""A training trajectory over the loss contours of its principal plane.

Trains a small CNN on the shipped CIFAR-10 sample with SGD (momentum
0.9): `--model plain-cnn` (default; two 3x3 convolutions of 8 and 16
channels with ReLU and max pooling, global average pooling, a Dense
softmax; 1,562 parameters, no BatchNorm, so the plane's loss is the
training loss at every point) or `small-cnn` (width 3, with BatchNorm:
the plane is evaluated with the final moving statistics, see
`keras_sam.hessian` on BatchNorm), records the weights every
`--every-n-steps` steps with `keras_sam.callbacks.WeightTrajectory`, and
projects the path on its first two principal directions over the loss
contours in that plane with `keras_sam.landscape.trajectory_plane` (Li et
al., 2018, Section 7). Writes into `--output`
(`saved_results/measurement/trajectory/` by default):

- `path.csv`: one row per record: `step`, `alpha`, `beta` (the
  coordinates along the two directions; the last record is the origin);
- `surface.csv`: `alpha`, `beta`, `loss`, `accuracy` on the grid;
- `directions.csv`: each direction's explained variance;
- `run.json`: the command, commit, hardware, software and date;
- `trajectory.png`, drawn from the CSVs (`--plot-only` redraws it alone).

The record files themselves (`weights_step*.npy`) go to a temporary
folder and are not kept.

Example (what made `saved_results/measurement/trajectory/`):

```
python benchmarks/trajectory_plane.py
```
"""

import argparse
import csv
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "saved_results" / "measurement" / "trajectory"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("plain-cnn", "small-cnn"),
                        default="plain-cnn")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--every-n-steps", type=int, default=5)
    parser.add_argument("--probe-samples", type=int, default=256)
    parser.add_argument("--num-points", type=int, default=15)
    parser.add_argument("--plot-only", action="store_true")
    return parser.parse_args(argv)


def run(args):
    import keras
    import numpy as np

    import keras_sam
    from keras_sam import landscape, models
    from keras_sam.experiments import _run_records, datasets

    (x_train, y_train), _ = datasets.load_cifar10_sample()
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    x_train = x_train[order].astype("float32") / 255.0
    y_train = y_train[order]
    x, y = x_train[: args.train_samples], y_train[: args.train_samples]
    keras.utils.set_random_seed(args.seed)
    if args.model == "small-cnn":
        model = models.get_model("small-cnn", width=3)
    else:
        model = plain_cnn(keras, x.shape[1:])
    model.compile(
        optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    with tempfile.TemporaryDirectory() as folder:
        recorder = keras_sam.callbacks.WeightTrajectory(
            folder, args.every_n_steps
        )
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs,
                  callbacks=[recorder], verbose=0)
        probe = (x[: args.probe_samples], y[: args.probe_samples])
        plane = landscape.trajectory_plane(
            model, probe, folder, num_points=args.num_points
        )
    args.output.mkdir(parents=True, exist_ok=True)
    write_csv(args.output / "path.csv", [
        {"step": int(step), "alpha": float(a), "beta": float(b)}
        for step, (a, b) in zip(plane["step"], plane["path"])
    ])
    write_csv(args.output / "surface.csv", [
        {"alpha": float(a), "beta": float(b),
         "loss": float(plane["loss"][i, j]),
         "accuracy": float(plane["accuracy"][i, j])}
        for i, a in enumerate(plane["alpha"])
        for j, b in enumerate(plane["beta"])
    ])
    write_csv(args.output / "directions.csv", [
        {"direction": k + 1, "explained_variance": float(v)}
        for k, v in enumerate(plane["explained_variance"])
    ])
    record = {
        "command": "python benchmarks/trajectory_plane.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": _run_records.git_commit(),
        "date": datetime.date.today().isoformat(),
        "hardware": f"{_run_records.processor_name()}, "
        f"{os.cpu_count()} cores visible",
        "software": f"Python {platform.python_version()}, Keras "
        f"{keras.__version__}, backend {keras.backend.backend()}",
        "data": "shipped CIFAR-10 sample (keras_sam/experiments/data), "
        f"first {args.train_samples} images of a seed-{args.seed} "
        f"permutation; probe: the first {args.probe_samples} of them",
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    (args.output / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def plain_cnn(keras, input_shape):
    """Two convolutions, pooling and a softmax layer; no BatchNorm."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(8, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(16, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10, activation="softmax"),
    ])


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot(output):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = read_csv(output / "path.csv")
    surface = read_csv(output / "surface.csv")
    explained = [
        float(r["explained_variance"])
        for r in read_csv(output / "directions.csv")
    ]
    alphas = np.unique([float(r["alpha"]) for r in surface])
    betas = np.unique([float(r["beta"]) for r in surface])
    loss = np.full((len(alphas), len(betas)), np.nan)
    for r in surface:
        i = np.searchsorted(alphas, float(r["alpha"]))
        j = np.searchsorted(betas, float(r["beta"]))
        loss[i, j] = float(r["loss"])
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    contours = axes.contour(alphas, betas, loss.T, levels=20, cmap="viridis")
    axes.clabel(contours, contours.levels[::4], fontsize=7)
    coordinates = np.array([[float(r["alpha"]), float(r["beta"])]
                            for r in path])
    axes.plot(*coordinates.T, "o-", color="tab:red", markersize=3,
              label="trajectory (every record)")
    axes.plot(*coordinates[0], "s", color="tab:red", label="start")
    axes.plot(0, 0, "*", color="black", markersize=10, label="end")
    axes.set_xlabel(f"1st PCA direction ({100 * explained[0]:.1f}%)")
    axes.set_ylabel(f"2nd PCA direction ({100 * explained[1]:.1f}%)")
    model = json.loads((output / "run.json").read_text())["settings"].get(
        "model", "small-cnn"
    )
    axes.set_title(f"{model} on the CIFAR-10 sample: SGD's path")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "trajectory.png", dpi=120)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    if not args.plot_only:
        run(args)
    plot(args.output)


if __name__ == "__main__":
    main()
