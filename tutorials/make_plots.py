"""Draws every tutorial figure from the tutorial's CSV, and nothing else.

The tutorials call these functions after writing their CSVs; run this file
to redraw all figures from the committed CSVs (and the generated section
of `saved_results/tutorials/README.md`):

```
python tutorials/make_plots.py                    # saved_results/tutorials
python tutorials/make_plots.py --results-dir DIR  # another copy
```

No training: NumPy, Matplotlib, and `tutorial_results.py` for reading
the CSVs and writing the README's headline numbers.
"""

import argparse
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tutorial_results  # noqa: E402
from tutorial_results import climb, read_csv  # noqa: E402

RESULTS_ROOT = (
    pathlib.Path(__file__).resolve().parent.parent / "saved_results"
    / "tutorials"
)
DPI = 110


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    print(f"wrote {path}")


def _column(rows, key):
    return np.array([row[key] for row in rows], dtype=float)


# 01 ------------------------------------------------------------------------


def plot_quickstart(output_dir):
    """`history.csv`: loss, SAM sharpness and top eigenvalue per epoch."""
    output_dir = pathlib.Path(output_dir)
    rows = read_csv(output_dir / "history.csv")
    epochs = _column(rows, "epoch")
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(epochs, _column(rows, "loss"), "o-", label="train")
    axes[0].plot(epochs, _column(rows, "val_loss"), "s--", label="test")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, _column(rows, "sam_sharpness"), "o-")
    axes[1].set_title("sam_sharpness = L(w + eps) - L(w)")
    axes[2].plot(epochs, _column(rows, "sharpness"), "o-")
    axes[2].set_title("sharpness (top Hessian eigenvalue)")
    for axis in axes:
        axis.set_xlabel("epoch")
    _save(figure, output_dir / "quickstart.png")


# 02 ------------------------------------------------------------------------


def plot_gd_stability(output_dir):
    """`gd_stability.csv`: edge of stability and the sharp-start runs."""
    output_dir = pathlib.Path(output_dir)
    rows = read_csv(output_dir / "gd_stability.csv")
    eos = [r for r in rows if r["experiment"] == "edge_of_stability"]
    rates = sorted({r["learning_rate"] for r in eos})
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(rates)))
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 6.5), sharex=True,
        gridspec_kw={"height_ratios": [3, 2]},
    )
    for rate, color in zip(rates, colors):
        part = [r for r in eos if r["learning_rate"] == rate]
        steps = _column(part, "step")
        top.plot(steps, _column(part, "sharpness"), color=color,
                 label=f"lr = {rate:g}")
        top.axhline(2.0 / rate, color=color, linestyle="--", linewidth=1)
        bottom.semilogy(steps, _column(part, "loss"), color=color)
    top.set_ylabel("sharpness (top Hessian eigenvalue)")
    top.set_title("Full-batch GD: sharpness rises to 2/lr (dashed) and stays")
    top.legend(loc="lower right")
    bottom.set_ylabel("training loss (mse)")
    bottom.set_xlabel("GD step")
    _save(figure, output_dir / "edge_of_stability.png")

    starts = [r for r in rows if r["experiment"].startswith("sharp_start")]
    if not starts:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = sorted({r["experiment"] for r in starts})
    for name, color in zip(names, ("tab:blue", "tab:red")):
        part = [r for r in starts if r["experiment"] == name]
        factor = name.split("_")[3]
        threshold = part[0]["threshold"]
        label = f"lr = {factor}/a (2/lr = {threshold:.1f})"
        steps = _column(part, "step")
        left.semilogy(steps, _column(part, "loss"), color=color, label=label)
        measured = [r for r in part if not math.isnan(r["sharpness"])]
        right.plot(_column(measured, "step"), _column(measured, "sharpness"),
                   "o-", color=color, label=label)
        right.axhline(threshold, color=color, linestyle="--", linewidth=1)
    first = [r for r in starts if r["experiment"] == names[-1]]
    rate, sharpness0 = first[0]["learning_rate"], first[0]["sharpness"]
    rising = climb(first)
    if rising:
        anchor = rising[0]
        steps = np.arange(anchor["step"], first[-1]["step"] + 1)
        predicted = anchor["loss"] * (1.0 - rate * sharpness0) ** (
            2 * (steps - anchor["step"])
        )
        keep = predicted < 10 * max(_column(first, "loss"))
        left.semilogy(steps[keep], predicted[keep], "k:", linewidth=1,
                      label=f"slope (1 - lr a)^2 = "
                      f"{(1 - rate * sharpness0) ** 2:.2f} per step")
    left.set_xlabel("GD step from the minimum")
    left.set_ylabel("training loss")
    left.set_title(f"Start at a minimum of sharpness a = {sharpness0:.1f}")
    left.legend(fontsize=8)
    right.set_xlabel("GD step from the minimum")
    right.set_ylabel("sharpness")
    right.set_title("sharpness (dashed: 2/lr)")
    right.legend(fontsize=8)
    _save(figure, output_dir / "sharp_minimum_escape.png")


# 03 ------------------------------------------------------------------------


def _toy_loss(x, sharp, flat=0.5, center=4.0):
    return 0.5 * np.minimum(sharp * x**2, flat * (x - center) ** 2)


def plot_momentum_escape(output_dir):
    """`momentum_escape.csv`: escapes against the learning rate over the
    exact momentum threshold."""
    rows = read_csv(output_dir / "momentum_escape.csv")
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for momentum in sorted({r["momentum"] for r in rows}):
        part = [r for r in rows if r["momentum"] == momentum]
        axis.plot(_column(part, "factor"),
                  _column(part, "escaped") / _column(part, "seeds"), "o-",
                  label=f"momentum {momentum:g} "
                  f"(lr* = {part[0]['critical_learning_rate']:.3f})")
    axis.axvline(1.0, color="0.6", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate / lr* (exact mean-square threshold)")
    axis.set_ylabel("fraction of seeds that left")
    axis.set_title("SGD with momentum at the 1-D sharp minimum")
    axis.legend(fontsize=8)
    _save(figure, output_dir / "momentum_escape.png")


def plot_sgd_escape(output_dir):
    """`trajectories.csv`, `escape_runs.csv`, `scalar_criteria.csv`,
    `momentum_escape.csv`."""
    output_dir = pathlib.Path(output_dir)
    if (output_dir / "momentum_escape.csv").is_file():
        plot_momentum_escape(output_dir)
    trajectories = read_csv(output_dir / "trajectories.csv")
    runs = read_csv(output_dir / "escape_runs.csv")
    scalar = read_csv(output_dir / "scalar_criteria.csv")
    colors = {"gd": "tab:blue", "sgd": "tab:red"}

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    grid = np.linspace(-1.5, 5.5, 701)
    per_sample = [_toy_loss(grid, a) for a in (0.2, 3.0)]
    for curve, a in zip(per_sample, (0.2, 3.0)):
        axes[0].plot(grid, curve, linewidth=1, label=f"f_i, a_i = {a:g}")
    axes[0].plot(grid, np.mean(per_sample, axis=0), "k", label="mean loss")
    axes[0].set_ylim(0, 1.5)
    axes[0].set_xlabel("x")
    axes[0].set_title("1-D: sharp minimum at 0, flat at 4")
    axes[0].legend(fontsize=8)
    toy = [r for r in trajectories if r["experiment"] == "toy"]
    for seed in sorted({r["seed"] for r in toy}):
        for method in ("gd", "sgd"):
            part = [r for r in toy
                    if r["seed"] == seed and r["method"] == method]
            values = np.maximum(np.abs(_column(part, "value")), 1e-12)
            axes[1].semilogy(_column(part, "step"), values,
                             color=colors[method], alpha=0.6, linewidth=1)
    toy_runs = [r for r in runs if r["experiment"] == "toy"]
    for method in ("gd", "sgd"):
        part = [r for r in toy_runs if r["method"] == method]
        escaped = sum(r["escaped"] == "True" for r in part)
        axes[1].plot([], [], color=colors[method],
                     label=f"{method.upper()}: left x = 0 in "
                     f"{escaped}/{len(part)} seeds")
    axes[1].axhline(4.0, color="gray", linestyle=":", linewidth=1)
    axes[1].set_ylim(1e-12, 30)
    axes[1].set_xlabel("step (lr = 1)")
    axes[1].set_ylabel("|x|  (flat minimum: x = 4, dotted)")
    axes[1].set_title("GD stays at 0, SGD (B = 1) leaves for 4")
    axes[1].legend(fontsize=8, loc="lower left")
    _plot_scalar_map(axes[2], scalar)
    _save(figure, output_dir / "escape_1d.png")

    network = [r for r in runs if r["experiment"] == "network"]
    if not network:
        return
    main_batch = min(r["batch_size"] for r in network)
    lines = [r for r in trajectories if r["experiment"] == "network"]
    figure, axes = plt.subplots(1, 4, figsize=(18, 3.9))
    for seed in sorted({r["seed"] for r in lines}):
        for method in ("gd", "sgd"):
            part = [r for r in lines
                    if r["seed"] == seed and r["method"] == method]
            axes[0].semilogy(_column(part, "step"), _column(part, "value"),
                             color=colors[method], alpha=0.5, linewidth=1)
            axes[1].semilogy(_column(part, "step"), _column(part, "loss"),
                             color=colors[method], alpha=0.5, linewidth=1)
    for method in ("gd", "sgd"):
        part = [r for r in network if r["method"] == method
                and (method == "gd" or r["batch_size"] == main_batch)]
        escaped = sum(r["escaped"] == "True" for r in part)
        name = "GD" if method == "gd" else f"SGD, B = {main_batch:g}"
        axes[0].plot([], [], color=colors[method],
                     label=f"{name}: escaped {escaped}/{len(part)}")
    axes[0].axhline(1e-2, color="gray", linestyle=":", linewidth=1)
    axes[0].set_xlabel("step after the GD minimum (same lr)")
    axes[0].set_ylabel("|w - w_GD| / |w_GD|")
    axes[0].set_title("Distance from the GD minimum")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("step after the GD minimum")
    axes[1].set_ylabel("full-batch training loss")
    axes[1].set_title("Loss: SGD climbs out, then fits again")
    sgd = [r for r in network
           if r["method"] == "sgd" and r["batch_size"] == main_batch]
    before, after = _column(sgd, "sharpness"), _column(sgd, "final_sharpness")
    axes[2].scatter(before, after, color="tab:red", s=18,
                    label=f"SGD, B = {main_batch:g}, one dot per seed")
    gd = [r for r in network if r["method"] == "gd"]
    axes[2].scatter(_column(gd, "sharpness"), _column(gd, "final_sharpness"),
                    color="tab:blue", s=18, marker="x", label="GD")
    top = max(np.max(before), np.max(after)) * 1.1
    axes[2].plot([0, top], [0, top], "k:", linewidth=1)
    axes[2].set_xlim(0, top)
    axes[2].set_ylim(0, top)
    axes[2].set_xlabel("sharpness at the GD minimum")
    axes[2].set_ylabel("sharpness where the run ends")
    axes[2].set_title("Escaped runs end flatter")
    axes[2].legend(fontsize=8)
    _plot_batch_sweep(axes[3], runs, main_batch)
    _save(figure, output_dir / "escape_network.png")


def _plot_batch_sweep(axis, runs, main_batch):
    """Escape and predicted-instability fractions per SGD batch size, on
    the seeds of the sweep."""
    sweep = [r for r in runs if r["experiment"] == "batch_size_sweep"]
    seeds = {r["seed"] for r in sweep}
    main = [r for r in runs if r["experiment"] == "network"
            and r["method"] == "sgd" and r["seed"] in seeds]
    rows = sweep + main
    sizes = sorted({r["batch_size"] for r in rows})
    positions = np.arange(len(sizes))
    escaped, unstable = [], []
    for size in sizes:
        part = [r for r in rows if r["batch_size"] == size]
        escaped.append(np.mean([r["escaped"] == "True" for r in part]))
        unstable.append(np.mean([r["sgd_stable"] == 0.0 for r in part]))
    axis.bar(positions - 0.18, unstable, 0.36, color="tab:gray",
             label="criterion: sgd_stable false")
    axis.bar(positions + 0.18, escaped, 0.36, color="tab:red",
             label="escaped within the run")
    axis.set_xticks(positions, [f"B = {size:g}" for size in sizes])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"fraction of {len(seeds)} seeds")
    axis.set_title("Same GD minima, SGD batch size varied")
    axis.legend(fontsize=8, loc="upper right")


def _plot_scalar_map(axis, examples):
    """Stability regions of SGD (B = 1) for one parameter, per-sample
    curvatures `h +- s` with equal weight, in units of `1 / lr`."""
    h = np.linspace(0.0, 2.6, 521)
    s = np.linspace(0.0, 1.6, 321)
    hh, ss = np.meshgrid(h, s)
    # With two curvatures h +- s >= 0, the lecture's form never calls an
    # unstable point stable (that needs s > h); `scalar_criteria.csv` has
    # a 20-sample example where it does.
    exact = (1 - hh) ** 2 + ss**2 <= 1
    lecture = hh <= 2 * (1 - ss)
    axis.contourf(hh, ss, exact & ~lecture, levels=[0.5, 1.5],
                  colors=["tab:orange"], alpha=0.35)
    axis.contour(hh, ss, (1 - hh) ** 2 + ss**2, levels=[1.0],
                 colors="k")
    axis.plot(h, 1 - h / 2, "k--", linewidth=1)
    with np.errstate(divide="ignore"):
        lyapunov = 0.5 * (np.log(np.abs(1 - hh + ss))
                          + np.log(np.abs(1 - hh - ss)))
    axis.contour(hh, ss, lyapunov, levels=[0.0], colors="tab:green",
                 linewidths=1)
    axis.fill_between(h, h, 1.6, color="0.85", zorder=2)
    axis.text(0.03, 0.62, "s > h: curvature\nh - s < 0", fontsize=7,
              zorder=3)
    axis.plot([], [], "k", label="exact: (1 - h)^2 + s^2 = 1")
    axis.plot([], [], "k--", label="lecture: h = 2 (1 - s)")
    axis.plot([], [], color="tab:green",
              label="typical run: E log|1 - h_i| = 0")
    axis.fill_between([], [], color="tab:orange", alpha=0.35,
                      label="stable, lecture says unstable")
    for row in examples:
        if row["example"] == "one_sharp_sample_of_20":
            continue  # not a two-point distribution
        axis.plot(row["h"], row["s"], "ko", markersize=4, zorder=4)
        axis.annotate(str(row["curvatures"]).replace(";", ", "),
                      (row["h"], row["s"]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")
    axis.set_xlabel("lr x mean curvature h")
    axis.set_ylabel("lr x non-uniformity s")
    axis.set_title("SGD, B = 1, curvatures h +- s (lr = 1)")
    axis.set_xlim(0, 2.6)
    axis.set_ylim(0, 1.6)
    axis.legend(fontsize=6.5, loc="upper left", framealpha=0.95)


# 04 ------------------------------------------------------------------------


def plot_sam_flatness(output_dir):
    """`sam_flatness.csv`: SGD vs SAM per seed, paired."""
    output_dir = pathlib.Path(output_dir)
    rows = read_csv(output_dir / "sam_flatness.csv")
    panels = [
        ("test_accuracy", "test accuracy"),
        ("sharpness", "sharpness (top Hessian eigenvalue)"),
        ("hessian_trace", "Hessian trace"),
    ]
    names = ("sgd", "sam")
    seeds = sorted({r["seed"] for r in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(11, 3.6))
    for axis, (key, title) in zip(axes, panels):
        for seed in seeds:
            values = [
                next(r[key] for r in rows
                     if r["seed"] == seed and r["optimizer"] == name)
                for name in names
            ]
            axis.plot([0, 1], values, "o-", color="0.6", markersize=4,
                      linewidth=1)
        for position, name in enumerate(names):
            values = np.array([r[key] for r in rows
                               if r["optimizer"] == name])
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            axis.errorbar(position + (0.12 if position else -0.12),
                          values.mean(), yerr=spread, fmt="s",
                          color=("tab:blue", "tab:red")[position],
                          capsize=4, label="mean +- std" if position else None)
        axis.set_xticks([0, 1], ["SGD", "SAM (rho 0.05)"])
        axis.set_xlim(-0.5, 1.5)
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"Small CNN, CIFAR-10 sample, {int(rows[0]['epochs'])} epochs, "
        f"{len(seeds)} seeds (grey: one seed, same init and batches)",
        fontsize=10,
    )
    _save(figure, output_dir / "sam_flatness.png")


# 05 ------------------------------------------------------------------------


def plot_full_batch(output_dir):
    """`full_batch_vs_sgd.csv`: our ladder beside the paper's."""
    output_dir = pathlib.Path(output_dir)
    rows = read_csv(output_dir / "full_batch_vs_sgd.csv")
    names = list(dict.fromkeys(r["run"] for r in rows))
    first = {name: next(r for r in rows if r["run"] == name) for name in names}
    labels = [
        f"{first[n]['paper_row']}\n(here: {n}, {int(first[n]['epochs'])} "
        "epochs)"
        for n in names
    ]
    positions = np.arange(len(names))[::-1]
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(11, 0.55 * len(names) + 1.6), sharey=True
    )
    paper = [first[n]["paper_accuracy"] for n in names]
    for position, value in zip(positions, paper):
        if isinstance(value, float):
            left.barh(position, value, color="0.6")
            left.text(value + 0.5, position, f"{value:.2f}", va="center",
                      fontsize=8)
    left.set_xlim(50, 100)
    left.set_yticks(positions, labels, fontsize=8)
    left.set_xlabel("validation accuracy, %")
    left.set_title("Geiping et al. 2021 (ResNet-18, 50k images)",
                   fontsize=10)
    for position, name in zip(positions, names):
        values = 100 * np.array([r["test_accuracy"] for r in rows
                                 if r["run"] == name])
        right.barh(position, values.mean(),
                   color="tab:red" if first[name]["full_batch"] == "True"
                   else "tab:blue")
        right.plot(values, [position] * len(values), "k.", markersize=5)
        right.text(values.max() + 0.8, position, f"{values.mean():.1f}",
                   va="center", fontsize=8)
    seeds = len({r["seed"] for r in rows})
    right.set_xlabel(f"test accuracy, % (bar: mean of {seeds} seeds; "
                     "dots: seeds)")
    right.set_title("here (small CNN, 1,000 images)", fontsize=10)
    low = 100 * min(r["test_accuracy"] for r in rows)
    high = 100 * max(r["test_accuracy"] for r in rows)
    right.set_xlim(max(0.0, low - 10), high + 5)
    _save(figure, output_dir / "full_batch_vs_sgd.png")


# 06 ------------------------------------------------------------------------

_REGIMES = {"small": ("tab:blue", "small batch"),
            "large": ("tab:red", "large batch")}


def _smoothed(nodes, weights, grid, sigma):
    """Gaussian-smoothed quadrature: `sum_k w_k N(grid; node_k, sigma)`."""
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
    return kernel @ weights / (sigma * math.sqrt(2 * math.pi))


def plot_flat_vs_sharp(output_dir):
    """`interpolation.csv`, `surfaces.csv`, `density.csv`, `minima.csv`:
    the SB-to-LB line, the loss around each minimum, the Hessian
    eigenvalue densities and the measures, per seed."""
    output_dir = pathlib.Path(output_dir)
    line = read_csv(output_dir / "interpolation.csv")
    surfaces = read_csv(output_dir / "surfaces.csv")
    density = read_csv(output_dir / "density.csv")
    minima = read_csv(output_dir / "minima.csv")
    seeds = sorted({r["seed"] for r in minima})
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axis = axes[0]
    for seed in seeds:
        rows = [r for r in line if r["seed"] == seed]
        first = seed == seeds[0]
        axis.plot(_column(rows, "alpha"), _column(rows, "train_loss"),
                  color="k", linewidth=1, label="train" if first else None)
        axis.plot(_column(rows, "alpha"), _column(rows, "test_loss"),
                  color="k", linestyle="--", linewidth=1,
                  label="test" if first else None)
    axis.axvline(0, color="tab:blue", linewidth=0.8)
    axis.axvline(1, color="tab:red", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xlabel("alpha: (1 - alpha) w_SB + alpha w_LB")
    axis.set_ylabel("loss")
    axis.set_title("between the minima (SB at 0, LB at 1)")
    axis.legend(fontsize=8)
    axis = axes[1]
    for regime, (color, label) in _REGIMES.items():
        for seed in seeds:
            rows = [r for r in surfaces
                    if r["seed"] == seed and r["regime"] == regime]
            first = seed == seeds[0]
            axis.plot(_column(rows, "alpha"), _column(rows, "train_loss"),
                      color=color, linewidth=1,
                      label=f"{label}, train" if first else None)
            axis.plot(_column(rows, "alpha"), _column(rows, "test_loss"),
                      color=color, linestyle="--", linewidth=1,
                      label=f"{label}, test" if first else None)
    axis.set_yscale("log")
    axis.set_xlabel("alpha along a filter-normalized direction")
    axis.set_ylabel("loss")
    axis.set_title("around each minimum")
    axis.legend(fontsize=7)
    axis = axes[2]
    nodes_all = _column(density, "node")
    span = nodes_all.max() - nodes_all.min()
    sigma = max(0.01 * span, 1e-6)
    grid = np.linspace(nodes_all.min() - 5 * sigma,
                       nodes_all.max() + 5 * sigma, 600)
    for regime, (color, label) in _REGIMES.items():
        for seed in seeds:
            rows = [r for r in density
                    if r["seed"] == seed and r["regime"] == regime]
            runs = sorted({r["run"] for r in rows})
            values = np.mean([
                _smoothed(_column([r for r in rows if r["run"] == run],
                                  "node"),
                          _column([r for r in rows if r["run"] == run],
                                  "weight"), grid, sigma)
                for run in runs
            ], axis=0)
            axis.plot(grid, np.maximum(values, 1e-12), color=color,
                      linewidth=1, label=label if seed == seeds[0] else None)
    axis.set_yscale("log")
    axis.set_ylim(bottom=1e-6)
    axis.set_xlabel("Hessian eigenvalue")
    axis.set_ylabel("density (SLQ, smoothed)")
    axis.set_title("eigenvalue density")
    axis.legend(fontsize=8)
    axis = axes[3]
    measures = [("top_eigenvalue", "top eig."), ("hessian_trace", "trace"),
                ("keskar_sharpness", "Keskar"),
                ("adaptive_worst_sharpness", "adapt. worst"),
                ("adaptive_average_sharpness", "adapt. avg."),
                ("gap_loss", "gap (loss)")]
    for position, (key, _) in enumerate(measures):
        for seed in seeds:
            small, large = (
                next(r[key] for r in minima
                     if r["seed"] == seed and r["regime"] == regime)
                for regime in ("small", "large")
            )
            ratio = large / small if small else float("nan")
            axis.plot(position, ratio, "o", color="0.3", markersize=4)
    axis.axhline(1.0, color="0.6", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xticks(range(len(measures)), [m[1] for m in measures],
                    rotation=30, fontsize=8)
    axis.set_ylabel("large batch / small batch (per seed)")
    axis.set_title("measures, LB over SB")
    epochs = int(minima[0]["epochs"])
    batches = sorted({int(r["batch_size"]) for r in minima})
    figure.suptitle(
        f"Small CNN without BatchNorm, CIFAR-10 sample, batch {batches[0]} "
        f"vs {batches[-1]}, {epochs} epochs each, {len(seeds)} seeds",
        fontsize=10,
    )
    _save(figure, output_dir / "flat_vs_sharp.png")


# 07 ------------------------------------------------------------------------

_ARCHITECTURES = {"vit": ("ViT", "tab:purple"), "resnet": ("ResNet",
                                                           "tab:green")}


def plot_vit_vs_resnet(output_dir):
    """`runs.csv`, `lines.csv`: test error and top eigenvalue of each
    network with AdamW and SAM (a line per seed), and the training loss
    along a filter-normalized direction through each minimum."""
    output_dir = pathlib.Path(output_dir)
    runs = read_csv(output_dir / "runs.csv")
    lines = read_csv(output_dir / "lines.csv")
    seeds = sorted({r["seed"] for r in runs})
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    for key, axis, title in (
        ("test_error", axes[0], "test error (%)"),
        ("top_eigenvalue", axes[1], "top Hessian eigenvalue (train probe)"),
    ):
        for offset, (architecture, (name, color)) in enumerate(
                _ARCHITECTURES.items()):
            x = np.array([0, 1]) + 2.5 * offset
            for seed in seeds:
                values = [
                    r[key] for arm in ("adamw", "sam") for r in runs
                    if r["architecture"] == architecture
                    and r["arm"] == arm and r["seed"] == seed
                ]
                if len(values) == 2:
                    axis.plot(x, values, "o-", color=color, alpha=0.8,
                              label=name if seed == seeds[0] else None)
        axis.set_xticks([0, 1, 2.5, 3.5])
        axis.set_xticklabels(["ViT\nAdamW", "ViT\nSAM", "ResNet\nAdamW",
                              "ResNet\nSAM"])
        axis.set_title(title)
        axis.legend(fontsize=8, title="one line per seed",
                    title_fontsize=8)
    axes[1].set_yscale("log")
    axis = axes[2]
    for architecture, (name, color) in _ARCHITECTURES.items():
        for arm, style in (("adamw", "-"), ("sam", "--")):
            for seed in seeds:
                rows = [r for r in lines if r["architecture"] == architecture
                        and r["arm"] == arm and r["seed"] == seed]
                axis.plot(_column(rows, "alpha"), _column(rows, "loss"),
                          style, color=color, linewidth=1,
                          label=f"{name} {'SAM' if arm == 'sam' else 'AdamW'}"
                          if seed == seeds[0] else None)
    axis.set_yscale("log")
    axis.set_xlabel("alpha: w + alpha d, d filter-normalized")
    axis.set_ylabel("training loss")
    axis.set_title("loss along a random direction")
    axis.legend(fontsize=8)
    figure.suptitle(
        f"ViT against ResNet, AdamW and SAM, {len(seeds)} seed(s)",
        fontsize=10,
    )
    _save(figure, output_dir / "vit_vs_resnet.png")


PLOTTERS = {
    "01_quickstart": plot_quickstart,
    "02_gd_stability": plot_gd_stability,
    "03_sgd_escape": plot_sgd_escape,
    "04_sam_flatness": plot_sam_flatness,
    "05_full_batch_vs_sgd": plot_full_batch,
    "06_flat_vs_sharp_minima": plot_flat_vs_sharp,
    "07_vit_vs_resnet": plot_vit_vs_resnet,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(RESULTS_ROOT))
    parser.add_argument(
        "--check-readme", action="store_true",
        help="only check that the README section matches the CSVs",
    )
    args = parser.parse_args()
    root = pathlib.Path(args.results_dir)
    readme = root / "README.md"
    if args.check_readme:
        if not tutorial_results.update_readme(root, check=True):
            raise SystemExit(
                f"{readme} is out of date: run python tutorials/make_plots.py"
            )
        return
    for name, plotter in PLOTTERS.items():
        if (root / name).is_dir():
            plotter(root / name)
    if readme.exists() and tutorial_results.README_BEGIN in readme.read_text():
        tutorial_results.update_readme(root)


if __name__ == "__main__":
    main()
