"""Cost of every SAM rule against a plain Keras step, measured side by side.

One process, one backend: the same model is trained with plain Keras and
with `SAMModel(rule=...)` for each rule, in rounds; each round times a
block of `--block` steps of every arm in turn, so every ratio is taken
between neighbouring measurements. The reported ratio is the median over
rounds of `arm block time / plain block time` (blocks are whole periods
of LookSAM, so its 1 + 1/every cost is measured, not assumed).

    KERAS_BACKEND=jax python benchmarks/variant_cost.py
    KERAS_BACKEND=tensorflow python benchmarks/variant_cost.py
    # a few arms, small settings, their own CSV and README section:
    KERAS_BACKEND=jax python benchmarks/variant_cost.py \
        --arms SAM,SAF,MESA --rounds 5 --batch-size 64 --tag small

Writes `saved_results/benchmarks/variant_cost_<backend>.csv` (one row per
arm and round) and a section of that folder's README.
"""

import argparse
import csv
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam.experiments import _run_records  # noqa: E402
from keras_sam.experiments.cli._arguments import positive_int  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def arms(rho):
    """name -> (SAMModel keyword arguments, or None for plain Keras; the
    ratio the cheaper-SAM issue targets, or None)."""
    from keras_sam import rules

    return {
        "plain": (None, None),
        "SAM": ({"rho": rho}, None),
        "ASAM": ({"rho": 10 * rho, "rule": rules.ASAM()}, None),
        "GSAM(0.2)": ({"rho": rho, "rule": rules.GSAM(0.2)}, None),
        "FriendlySAM": ({"rho": rho, "rule": rules.FriendlySAM()}, None),
        "LookSAM(every=5)": (
            {"rho": rho, "rule": rules.LookSAM(every=5)}, 1.25),
        "RandomizedSAM(p=0.5)": (
            {"rho": rho, "rule": rules.RandomizedSAM(0.5)}, 1.55),
        # Its fraction of SAM steps depends on the gradient norms; the
        # `sam_step_fraction` column gives it.
        "AESAM": (
            {"rho": rho, "rule": rules.AESAM(total_steps=1000)}, None),
        "ESAM(0.5, 0.5)": (
            {"rho": rho, "rule": rules.ESAM(0.5, 0.5)}, None),
        "LateSAM, before start": (
            {"rho": rho, "rule": rules.LateSAM(10**9)}, None),
        "MomentumSAM": (
            {"rho": 6 * rho, "rule": rules.MomentumSAM()}, 1.10),
        # The trajectory loss on from the first step; SAF's table sized
        # for CIFAR's 50,000 images (3 epochs back, batch 128).
        "SAF": ({"rule": rules.SAF(
            num_samples=SAF_SAMPLES, num_classes=10, steps_per_epoch=391,
            start_epoch=0)}, 1.25),
        "MESA": ({"rule": rules.MESA(start_step=0)}, 1.25),
        **_in_graph_arms(rho),
    }


def _in_graph_arms(rho):
    """On JAX with a CPU, the skipping rules decide on the host; these
    arms force the in-graph decision (both branches computed and
    selected) to time the two side by side."""
    import jax

    from keras_sam import rules

    if keras.backend.backend() != "jax" or jax.default_backend() != "cpu":
        return {}
    return {
        "LookSAM(every=5), in-graph": (
            {"rho": rho, "rule": rules.LookSAM(every=5), IN_GRAPH: True},
            None),
        "LateSAM, before start, in-graph": (
            {"rho": rho, "rule": rules.LateSAM(10**9), IN_GRAPH: True},
            None),
    }


IN_GRAPH = "_in_graph"


SAF_SAMPLES = 50_000
# The arms whose batches carry each sample's index.
INDEXED = ("SAF", "MESA")


def build(kwargs, seed, width, optimizer_momentum=0.9):
    from keras_sam import SAMModel, models

    keras.utils.set_random_seed(seed)
    inner = models.small_cnn(width=width, classifier_activation=None)
    kwargs = None if kwargs is None else dict(kwargs)
    in_graph = kwargs is not None and kwargs.pop(IN_GRAPH, False)
    model = inner if kwargs is None else SAMModel(inner, **kwargs)
    if in_graph:
        model._decides_on_host = lambda: False
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=optimizer_momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def time_block(model, x, y, steps):
    """Seconds for `steps` steps, and the fraction of them that made the
    ascent (a step without it logs `sam_sharpness` 0)."""
    start = time.perf_counter()
    sharpness = []
    for _ in range(steps):
        logs = model.train_on_batch(x, y, return_dict=True)
        sharpness.append(logs.get("sam_sharpness"))
    keras.ops.convert_to_numpy(logs["loss"])
    seconds = time.perf_counter() - start
    if sharpness[0] is None:
        return seconds, 0.0
    values = [float(keras.ops.convert_to_numpy(v)) for v in sharpness]
    return seconds, sum(v != 0.0 for v in values) / steps


def measure(args):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,)).astype("int32")
    specs = arms(args.rho)
    if args.arms:
        specs = {name: specs[name]
                 for name in ["plain", *_arm_names(args.arms, specs)]}
    models = {name: build(kwargs, 0, args.width)
              for name, (kwargs, _) in specs.items()}
    indexed = {"inputs": x, "sample_index": np.arange(len(x)) * (
        SAF_SAMPLES // len(x))}
    inputs = {name: indexed if name in INDEXED else x for name in models}
    for name, model in models.items():  # compile and warm up
        time_block(model, inputs[name], y, args.block)
    rows = []
    for round_index in range(args.rounds):
        blocks = {name: time_block(model, inputs[name], y, args.block)
                  for name, model in models.items()}
        times = {name: block[0] for name, block in blocks.items()}
        for name, (seconds, fraction) in blocks.items():
            rows.append({
                "round": round_index, "arm": name, "seconds": seconds,
                "step_ms": 1000 * seconds / args.block,
                "ratio_to_plain": seconds / times["plain"],
                "sam_step_fraction": fraction,
            })
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{n} {times[n] / times['plain']:.2f}x" for n in times),
            flush=True)
    return rows, specs


def _arm_names(text, specs):
    """The arm names in the comma-separated `text` (names may contain
    commas, "LateSAM, before start": the longest known name wins)."""
    parts, names, start = text.split(","), [], 0
    while start < len(parts):
        for stop in range(len(parts), start, -1):
            name = ",".join(parts[start:stop])
            if name in specs:
                names.append(name)
                start = stop
                break
        else:
            raise ValueError(
                f"Unknown arm {parts[start]!r} in --arms; arms: "
                f"{list(specs)}."
            )
    return names


def summarize(rows, specs):
    summary = []
    for name, (_, target) in specs.items():
        ratios = [r["ratio_to_plain"] for r in rows if r["arm"] == name]
        steps = [r["step_ms"] for r in rows if r["arm"] == name]
        quartiles = statistics.quantiles(ratios, n=4)
        summary.append({
            "arm": name, "median_step_ms": statistics.median(steps),
            "median_ratio": statistics.median(ratios),
            "ratio_q1": quartiles[0], "ratio_q3": quartiles[2],
            "sam_step_fraction": statistics.mean(
                r["sam_step_fraction"] for r in rows if r["arm"] == name),
            "target": target,
        })
    return summary


def write(rows, summary, args, backend, argv=None):
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    name = f"{backend}_{args.tag}" if args.tag else backend
    path = output / f"variant_cost_{name}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    device, _, versions = _run_records.describe_device(backend)
    begin = f"<!-- variant_cost {name} begin -->"
    end = f"<!-- variant_cost {name} end -->"
    command = " ".join(["python benchmarks/variant_cost.py", *(argv or [])])
    lines = [
        begin,
        f"## Cost of the SAM rules ({name})",
        "",
        f"`{command}` with KERAS_BACKEND={backend}: "
        f"small CNN width {args.width}, batch {args.batch_size}, rho "
        f"{args.rho}; {args.rounds} rounds of {args.block}-step blocks per "
        "arm, each ratio between neighbouring blocks of one process. "
        f"{device}; {', '.join(f'{k} {v}' for k, v in versions.items())}, "
        f"Keras {keras.__version__}; commit "
        f"{_run_records.git_commit() or 'unknown'}; load average at the "
        f"end {_load_text()}. Rows: "
        f"[variant_cost_{name}.csv](variant_cost_{name}.csv).",
        "",
        "| arm | median step ms | ratio to plain (median, IQR) | SAM steps "
        "| target |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        target = "" if s["target"] is None else (
            f"<= {s['target']:.2f}x: "
            + ("met" if s["median_ratio"] <= s["target"] else "not met")
        )
        lines.append(
            f"| {s['arm']} | {s['median_step_ms']:.1f} | "
            f"{s['median_ratio']:.2f}x ({s['ratio_q1']:.2f}-"
            f"{s['ratio_q3']:.2f}) | {100 * s['sam_step_fraction']:.0f}% "
            f"| {target} |"
        )
    lines.append(end)
    _run_records.write_readme_section(output, begin, end, "\n".join(lines))
    return path


def _load_text():
    load = _run_records.load_average()
    return "unknown" if load is None else f"{load:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int,
                        default=15)
    parser.add_argument("--block", type=positive_int,
                        default=10, help="steps per block (default 10, two "
                        "LookSAM periods)")
    parser.add_argument("--batch-size", type=positive_int,
                        default=128)
    parser.add_argument("--width", type=positive_int,
                        default=32)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--arms", default="", help="comma-separated arm "
                        "names to time beside plain (default: all)")
    parser.add_argument("--tag", default="", help="suffix of the CSV and "
                        "README section (default: none, the full run's)")
    parser.add_argument("--output-dir", default=str(
        ROOT / "saved_results" / "benchmarks"))
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    rows, specs = measure(args)
    summary = summarize(rows, specs)
    path = write(rows, summary, args, backend,
                 sys.argv[1:] if argv is None else argv)
    for s in summary:
        print(f"{s['arm']}: {s['median_ratio']:.2f}x plain "
              f"({s['median_step_ms']:.1f} ms)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
