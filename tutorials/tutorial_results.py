"""The analysis of the tutorials' CSVs: what their results say.

Reads the CSVs the tutorials write, measures the loss growth of tutorial
02's restarts, and writes the headline numbers of every tutorial into the
generated section of `saved_results/tutorials/README.md`
(`python tutorials/make_plots.py` redraws the figures and calls
`update_readme`). No training: NumPy and the package's CSV reader.
"""

import json
import math
import pathlib

import numpy as np

from keras_sam.experiments import _run_records


def read_csv(path):
    """Rows of a CSV as dicts; numeric fields as floats, others str."""
    rows = _run_records.read_csv(path)
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                pass
    return rows


# 02 ------------------------------------------------------------------------


def climb(rows):
    """The rows of a restart whose loss is on its way up, between 100
    times the starting loss and 1e-2 (where the quadratic model holds)."""
    losses = [r["loss"] for r in rows]
    peak = int(np.argmax(losses))
    return [r for r in rows[: peak + 1]
            if 100 * rows[0]["loss"] < r["loss"] < 1e-2]


def loss_growth_rate(rows):
    """Mean factor per step by which the loss grows during the climb,
    or None when the climb has fewer than three rows."""
    rising = climb(rows)
    if len(rising) < 3:
        return None
    steps = np.array([r["step"] for r in rising], dtype=float)
    logs = np.log([r["loss"] for r in rising])
    return float(np.exp((logs[-1] - logs[0]) / (steps[-1] - steps[0])))


# Headline numbers, from the CSVs --------------------------------------------


def _mean_std(values):
    values = np.asarray(values, dtype=float)
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    return values.mean(), spread


def headline_quickstart(folder):
    rows = read_csv(folder / "history.csv")
    last = rows[-1]
    with open(folder / "run.json") as f:
        same = json.load(f)["summary"].get("reload_same_predictions")
    return [
        f"After {int(last['epoch'])} epochs of SAM (rho 0.05): test "
        f"accuracy {100 * last['val_accuracy']:.1f}%, `sam_sharpness` "
        f"{last['sam_sharpness']:.4f}, `sharpness` {last['sharpness']:.1f} "
        f"(`gd_stability_ratio` {last['gd_stability_ratio']:.3f}); "
        "predictions of the reloaded `.keras` file equal the original's: "
        f"{same} (from `run.json`).",
    ]


def headline_gd_stability(folder):
    rows = read_csv(folder / "gd_stability.csv")
    eos = [r for r in rows if r["experiment"] == "edge_of_stability"]
    steps = max(r["step"] for r in eos)
    lines = []
    for rate in sorted({r["learning_rate"] for r in eos}):
        part = [r for r in eos if r["learning_rate"] == rate]
        ratios = [r["sharpness"] * rate / 2 for r in part]
        late = [r["sharpness"] * rate / 2 for r in part
                if r["step"] > steps / 2]
        if max(ratios) < 0.9:
            lines.append(
                f"lr {rate:g} (2/lr = {2 / rate:.1f}): sharpness stays "
                f"below 2/lr, ends at {part[-1]['sharpness']:.1f}."
            )
        else:
            median = float(np.median(late))
            lines.append(
                f"lr {rate:g} (2/lr = {2 / rate:.1f}): sharpness / (2/lr) "
                f"over the second half: median {median:.3f}, range "
                f"{min(late):.3f} to {max(late):.3f} "
                f"({'within' if abs(median - 1) <= 0.1 else 'outside'} "
                f"the 10% target); final loss {part[-1]['loss']:.1e}."
            )
    restarts = {r["experiment"] for r in rows} - {"edge_of_stability"}
    for name in sorted(restarts):
        part = [r for r in rows if r["experiment"] == name]
        measured = [r for r in part if not math.isnan(r["sharpness"])]
        growth = loss_growth_rate(part)
        predicted = (1 - part[0]["learning_rate"] * part[0]["sharpness"]) ** 2
        lines.append(
            f"Restart at a minimum of sharpness {part[0]['sharpness']:.2f} "
            f"with lr = {name.split('_')[3]}/a (2/lr = "
            f"{part[0]['threshold']:.2f}): loss {part[0]['loss']:.1e} -> "
            f"max {max(r['loss'] for r in part):.1e}, last measured "
            f"sharpness {measured[-1]['sharpness']:.2f}"
            + (
                f"; loss grew {growth:.3f}x per step on the way up "
                f"(linear theory: {predicted:.3f}x)" if growth else ""
            )
            + "."
        )
    return lines


def headline_sgd_escape(folder):
    runs = read_csv(folder / "escape_runs.csv")
    scalar = read_csv(folder / "scalar_criteria.csv")
    lines = []
    if (folder / "momentum_escape.csv").is_file():
        momentum = read_csv(folder / "momentum_escape.csv")
        for beta in sorted({r["momentum"] for r in momentum}):
            part = [r for r in momentum if r["momentum"] == beta]
            lines.append(
                f"1-D, SGD with momentum {beta:g} (exact threshold lr* = "
                f"{part[0]['critical_learning_rate']:.4f}): left the sharp "
                "minimum in " + ", ".join(
                    f"{int(r['escaped'])}/{int(r['seeds'])} seeds at "
                    f"{r['factor']:g} lr*" for r in part) + "."
            )
    toy = [r for r in runs if r["experiment"] == "toy"]
    for method in ("gd", "sgd"):
        part = [r for r in toy if r["method"] == method]
        lines.append(
            f"1-D example, {method.upper()}: left the sharp minimum in "
            f"{sum(r['escaped'] == 'True' for r in part)}/{len(part)} "
            f"seeds (ended at the flat one in "
            f"{sum(r['at_flat_minimum'] == 'True' for r in part)})."
        )
    network = [r for r in runs if r["experiment"] == "network"]
    for method in ("gd", "sgd"):
        part = [r for r in network if r["method"] == method]
        escaped = [r for r in part if r["escaped"] == "True"]
        ratios = [r["gd_stability_ratio"] for r in part]
        label = "GD" if method == "gd" else (
            f"SGD, B = {int(part[0]['batch_size'])}"
        )
        lines.append(
            f"Network, {label}, same lr 0.05, from the GD minimum: "
            f"escaped {len(escaped)}/{len(part)} seeds; at the GD minima "
            f"`gd_stability_ratio` {min(ratios):.2f} to {max(ratios):.2f}, "
            f"`sgd_stable` false in "
            f"{sum(r['sgd_stable'] == 0.0 for r in part)}/{len(part)}"
            + (
                f"; mean sharpness {_mean(escaped, 'sharpness'):.1f} -> "
                f"{_mean(escaped, 'final_sharpness'):.1f}"
                if escaped and method == "sgd" else ""
            )
            + "."
        )
    sweep = [r for r in runs if r["experiment"] == "batch_size_sweep"]
    seeds = {r["seed"] for r in sweep}
    main = [r for r in network if r["method"] == "sgd" and r["seed"] in seeds]
    for size in sorted({r["batch_size"] for r in sweep + main}):
        part = [r for r in sweep + main if r["batch_size"] == size]
        lines.append(
            f"Batch-size sweep ({len(part)} seeds), B = {int(size)}: "
            f"`sgd_stable` false in "
            f"{sum(r['sgd_stable'] == 0.0 for r in part)}, escaped in "
            f"{sum(r['escaped'] == 'True' for r in part)}."
        )
    for row in scalar:
        lines.append(
            f"Curvatures {{{_compress(row['curvatures'])}}}, "
            f"lr 1: exact {_stability(row['exact_stable'])} "
            f"({row['mean_square_factor']:.2f}), lecture form "
            f"{_stability(row['lecture_stable_s_std'])}"
            f", Lyapunov {row['lyapunov_exponent']:+.3f}, simulated SGD "
            f"escaped {100 * row['simulated_escape_fraction']:.0f}%."
        )
    return lines


def _compress(curvatures):
    """'0;0;0;4' -> '0 (x3), 4'."""
    values = str(curvatures).split(";")
    groups = []
    for value in values:
        if groups and groups[-1][0] == value:
            groups[-1][1] += 1
        else:
            groups.append([value, 1])
    return ", ".join(
        value if count == 1 else f"{value} (x{count})"
        for value, count in groups
    )


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def _stability(flag):
    return "stable" if flag == "True" else "unstable"


def _paired_lines(rows, column, names, measures, formats):
    """One line per `(key, label, scale)` of `measures`: the mean +- std
    over the seeds of the scaled `key` for each of the two values of
    `column` (`names`: value -> printed name, the baseline first), then the
    second minus the first per seed; `formats`: of the means, the stds
    and the differences."""
    (baseline, first), (other, second) = names.items()
    mean_format, std_format, difference_format = formats
    seeds = len({r["seed"] for r in rows})
    lines = []
    for key, label, scale in measures:
        parts = {
            value: scale * np.array(
                [r[key] for r in rows if r[column] == value])
            for value in names
        }
        difference = parts[other] - parts[baseline]
        (first_mean, first_std), (second_mean, second_std) = (
            _mean_std(parts[baseline]), _mean_std(parts[other])
        )
        lines.append(
            f"{label}: {first} {first_mean:{mean_format}} +- "
            f"{first_std:{std_format}}, {second} "
            f"{second_mean:{mean_format}} +- {second_std:{std_format}} "
            f"(mean +- std over {seeds} seeds); {second} - {first} per seed "
            f"{', '.join(f'{d:{difference_format}}' for d in difference)}."
        )
    return lines


def headline_sam_flatness(folder):
    return _paired_lines(
        read_csv(folder / "sam_flatness.csv"),
        "optimizer",
        {"sgd": "SGD", "sam": "SAM"},
        (
            ("test_accuracy", "test accuracy %", 100.0),
            ("sharpness", "sharpness", 1.0),
            ("hessian_trace", "Hessian trace", 1.0),
            ("weight_norm", "weight norm", 1.0),
        ),
        (".2f", ".2f", "+.2f"),
    )


def headline_full_batch(folder):
    rows = read_csv(folder / "full_batch_vs_sgd.csv")
    lines = []
    for name in dict.fromkeys(r["run"] for r in rows):
        part = [r for r in rows if r["run"] == name]
        mean, spread = _mean_std([100 * r["test_accuracy"] for r in part])
        paper = part[0]["paper_accuracy"]
        paper_text = (
            f"paper {paper:.2f}%" if isinstance(paper, float)
            else "not in the paper's table"
        )
        spread_text = "" if math.isnan(spread) else f" +- {spread:.1f}"
        seeds = "1 seed" if len(part) == 1 else f"{len(part)} seeds"
        lines.append(
            f"{part[0]['paper_row']} (`{name}`, {int(part[0]['epochs'])} "
            f"epochs, {int(part[0]['steps'])} steps): test accuracy "
            f"{mean:.1f}{spread_text}% over {seeds}; {paper_text}."
        )
    return lines


def headline_flat_vs_sharp(folder):
    return _paired_lines(
        read_csv(folder / "minima.csv"),
        "regime",
        {"small": "SB", "large": "LB"},
        (
            ("train_error", "train error %", 100.0),
            ("test_error", "test error %", 100.0),
            ("gap_loss", "generalization gap (test - train loss)", 1.0),
            ("top_eigenvalue", "top eigenvalue", 1.0),
            ("hessian_trace", "Hessian trace", 1.0),
            ("keskar_sharpness", "Keskar sharpness", 1.0),
            ("adaptive_worst_sharpness", "adaptive worst-case sharpness",
             1.0),
            ("adaptive_average_sharpness", "adaptive average-case sharpness",
             1.0),
        ),
        (".4g", ".2g", "+.3g"),
    )


def _interval_text(values, digits=2):
    from keras_sam.experiments.reproduce import (
        format_interval,
        mean_and_interval,
    )

    mean, half = mean_and_interval(values)
    return format_interval(mean, half, digits)


def headline_vit_vs_resnet(folder):
    """Test error of each network and arm; SAM's paired gain per network
    and the difference of the gains (95% t intervals over the seeds);
    the ratios of the top eigenvalue (geometric means over the seeds)."""
    rows = read_csv(pathlib.Path(folder) / "runs.csv")
    table = {(r["architecture"], r["arm"], int(r["seed"])): r for r in rows}
    seeds = sorted({int(r["seed"]) for r in rows})
    names = {"vit": "ViT", "resnet": "ResNet"}

    def column(architecture, arm, key):
        return np.array([table[architecture, arm, s][key] for s in seeds])

    lines, gains = [], {}
    for architecture, name in names.items():
        adamw = column(architecture, "adamw", "test_error")
        sam = column(architecture, "sam", "test_error")
        gains[architecture] = adamw - sam
        lines.append(
            f"{name}: test error {adamw.mean():.2f}% with AdamW, "
            f"{sam.mean():.2f}% with SAM; SAM's gain "
            f"{_interval_text(gains[architecture])} points "
            f"(per seed {np.round(gains[architecture], 2).tolist()})"
        )
    lines.append(
        "gain(ViT) - gain(ResNet): "
        f"{_interval_text(gains['vit'] - gains['resnet'])} points "
        f"({len(seeds)} seeds, 95% t interval)"
    )
    for key, label in (("top_eigenvalue", "top eigenvalue"),
                       ("trace", "trace")):
        vit = column("vit", "adamw", key)
        resnet = column("resnet", "adamw", key)
        parts = []
        for architecture, name in names.items():
            base = column(architecture, "adamw", key)
            sam = column(architecture, "sam", key)
            parts.append(f"SAM / AdamW {_ratio_text(sam, base)} ({name})")
        lines.append(
            f"{label}: ViT / ResNet with AdamW {_ratio_text(vit, resnet)} "
            "(geometric means over the seeds where both are positive); "
            + ", ".join(parts)
        )
    return lines


def _ratio_text(numerator, denominator):
    """The geometric mean of `numerator / denominator` over the entries
    where both are positive (a trace estimate can be negative)."""
    keep = (numerator > 0) & (denominator > 0)
    if not keep.any():
        return "n/a"
    ratio = 10 ** np.mean(np.log10(numerator[keep] / denominator[keep]))
    return f"{ratio:.2f}x"


HEADLINES = {
    "01_quickstart": headline_quickstart,
    "02_gd_stability": headline_gd_stability,
    "03_sgd_escape": headline_sgd_escape,
    "04_sam_flatness": headline_sam_flatness,
    "05_full_batch_vs_sgd": headline_full_batch,
    "06_flat_vs_sharp_minima": headline_flat_vs_sharp,
    "07_vit_vs_resnet": headline_vit_vs_resnet,
}
README_BEGIN = "<!-- BEGIN make_plots.py section (generated, do not edit) -->"
README_END = "<!-- END make_plots.py section -->"


def readme_section(root):
    """The generated part of the README: per tutorial, its files, how
    they were made (from `run.json`) and the headline numbers (from the
    CSVs)."""
    root = pathlib.Path(root)
    lines = [README_BEGIN]
    for name, headline in HEADLINES.items():
        folder = root / name
        if not (folder / "run.json").exists():
            continue
        with open(folder / "run.json") as f:
            record = json.load(f)
        files = sorted(p.name for p in folder.iterdir()
                       if p.suffix in (".csv", ".png"))
        lines += [
            "",
            f"## `{name}`",
            "",
            f"- Files: {', '.join(f'`{n}`' for n in files)}",
            f"- Command: `{record['command']}`",
            f"- Commit: `{record['commit']}`"
            + (
                " with uncommitted changes in "
                + ", ".join(f"`{p}`" for p in record["uncommitted"])
                if record.get("uncommitted") else ""
            )
            + f"; Keras {record['keras']}, {record['backend']} backend",
            f"- Hardware: {record['hardware']} (shared; load average "
            f"{record['load_average_end']} at the end)",
            f"- Date: {record['date']}; wall time "
            f"{record['runtime_seconds']:.0f} s, CPU time "
            f"{record['cpu_seconds']:.0f} s",
            "",
            "Headline numbers (computed from the CSVs by `make_plots.py`):",
            "",
        ]
        lines += [f"- {line}" for line in headline(folder)]
    lines.append(README_END)
    return "\n".join(lines) + "\n"


def update_readme(root, check=False):
    """Rewrites the generated section of `root/README.md`; with `check`,
    returns whether it is up to date instead."""
    readme = pathlib.Path(root) / "README.md"
    text = readme.read_text()
    updated = _run_records.replace_readme_section(
        text, README_BEGIN, README_END, readme_section(root).rstrip("\n")
    )
    if check:
        return updated == text
    readme.write_text(updated)
    print(f"wrote {readme}")
    return True
