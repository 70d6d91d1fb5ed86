"""Images per second of the NumPy CIFAR input pipeline, per host core.

Reads the CIFAR-10 sample shipped with keras-sam (Pillow-decoded, no
TensorFlow), builds `keras_sam.experiments.numpy_pipeline.TrainBatches`
(the training pipeline `keras-sam reproduce` uses on JAX and PyTorch) and
reads whole epochs through Keras' `PyDatasetAdapter` (as `fit` does, with
`on_epoch_begin`/`on_epoch_end`), for each augmentation and number of
Keras worker threads, in interleaved rounds. Each round records the wall
time and the process's CPU time (all threads): images per CPU-second is
the throughput per host core, the figure that says how many cores a GPU
step needs. With `--pipelines numpy,tf.data` the `tf.data` pipeline
(TensorFlow installed) is timed the same way beside it. A breakdown of
one batch's cost by stage (gather, crop and flip, normalize, cutout) is
measured on one thread.

    KERAS_BACKEND=jax python benchmarks/loader_throughput.py

Writes `saved_results/benchmarks/loader_throughput.csv` (one row per
configuration and round, then one per stage) and a section of that
folder's README.
"""

import argparse
import csv
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_sam.experiments import _run_records  # noqa: E402
from keras_sam.experiments.cli._arguments import positive_int  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

# WRN-16-8 SAMModel, bf16, batch 128, one H100 (README, Performance).
GPU_STEP_IMAGES_PER_SECOND = 16_500
README_BEGIN = "<!-- loader_throughput begin -->"
README_END = "<!-- loader_throughput end -->"
FIELDS = (
    "kind",
    "pipeline",
    "augment",
    "workers",
    "round",
    "images",
    "wall_seconds",
    "cpu_seconds",
    "images_per_second",
    "images_per_cpu_second",
    "stage",
    "ms_per_batch",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=positive_int,
                        default=256)
    parser.add_argument("--train-size", type=positive_int,
                        default=5000,
                        help="images of the shipped sample (at most 5000)")
    parser.add_argument("--augments", default="basic,cutout")
    parser.add_argument("--workers", default="1,2",
                        help="Keras PyDataset worker threads to time")
    parser.add_argument("--pipelines", default="numpy",
                        help="numpy, or numpy,tf.data")
    parser.add_argument("--rounds", type=positive_int,
                        default=5)
    parser.add_argument("--epochs", type=positive_int,
                        default=2, help="epochs read per round")
    parser.add_argument("--stage-repeats", type=positive_int,
                        default=20)
    parser.add_argument("--output-dir",
                        default=str(ROOT / "saved_results" / "benchmarks"))
    return parser.parse_args(argv)


def load_images(train_size):
    from keras_sam.experiments import datasets

    (x, y), _ = datasets.load_cifar10_sample()
    x, y = x[:train_size], y[:train_size]
    pixels = x.reshape(-1, 3) / 255.0
    return x, y, pixels.mean(axis=0), pixels.std(axis=0)


def numpy_reader(x, y, mean, std, augment, workers, batch_size):
    """A function reading `epochs` epochs as `fit` does; returns images."""
    from keras.src.trainers.data_adapters import py_dataset_adapter

    from keras_sam.experiments import numpy_pipeline

    batches = numpy_pipeline.TrainBatches(
        x, y, batch_size, mean, std, augment=augment, seed=0,
        workers=workers,
    )
    adapter = py_dataset_adapter.PyDatasetAdapter(batches, shuffle=False)

    def read(epochs):
        images = 0
        for _ in range(epochs):
            adapter.on_epoch_begin()
            for batch_x, _ in adapter.get_numpy_iterator():
                images += len(batch_x)
            adapter.on_epoch_end()
        return images

    return read


def tf_data_reader(x, y, mean, std, augment, batch_size):
    from keras_sam.experiments import data_pipeline

    dataset, _ = data_pipeline.train_dataset(
        x, y, batch_size, mean, std, augment=augment, seed=0
    )

    def read(epochs):
        images = 0
        for _ in range(epochs):
            for batch_x, _ in dataset.as_numpy_iterator():
                images += len(batch_x)
        return images

    return read


def time_read(read, epochs):
    wall, cpu = time.perf_counter(), time.process_time()
    images = read(epochs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images": images,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "images_per_second": images / wall,
        "images_per_cpu_second": images / cpu,
    }


def stage_rows(x, mean, std, batch_size, repeats):
    """Milliseconds per batch of each stage of a cutout batch, one thread."""
    from keras_sam.experiments import numpy_pipeline

    rows = np.random.default_rng(0).permutation(len(x))[:batch_size]
    batch = x[rows]
    cropped = numpy_pipeline.crop_and_flip(batch, np.random.default_rng(1))
    normalized = numpy_pipeline.normalize(cropped, mean, std)
    stages = {
        "gather rows": lambda: x[rows],
        "crop and flip": lambda: numpy_pipeline.crop_and_flip(
            batch, np.random.default_rng(1)),
        "normalize": lambda: numpy_pipeline.normalize(cropped, mean, std),
        "cutout": lambda: numpy_pipeline.cutout(
            normalized, np.random.default_rng(2)),
    }
    result = []
    for name, stage in stages.items():
        stage()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            stage()
            times.append(time.process_time() - start)
        result.append({"kind": "stage", "stage": name,
                       "ms_per_batch": 1000 * statistics.median(times)})
    return result


def measure(args):
    x, y, mean, std = load_images(args.train_size)
    readers = {}
    for pipeline in args.pipelines.split(","):
        for augment in args.augments.split(","):
            if pipeline == "tf.data":
                readers[(pipeline, augment, "autotune")] = tf_data_reader(
                    x, y, mean, std, augment, args.batch_size)
                continue
            for workers in (int(w) for w in args.workers.split(",")):
                readers[(pipeline, augment, workers)] = numpy_reader(
                    x, y, mean, std, augment, workers, args.batch_size)
    for read in readers.values():
        read(1)  # warm-up: imports, caches, thread pools
    rows = []
    for round_index in range(args.rounds):
        for (pipeline, augment, workers), read in readers.items():
            rows.append({
                "kind": "epochs", "pipeline": pipeline, "augment": augment,
                "workers": workers, "round": round_index,
                **time_read(read, args.epochs),
            })
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rows += stage_rows(x, mean, std, args.batch_size, args.stage_repeats)
    return rows


def summarize(rows):
    """Median over rounds per configuration, in the order first timed."""
    keys = dict.fromkeys(
        (r["pipeline"], r["augment"], r["workers"])
        for r in rows if r["kind"] == "epochs"
    )
    summary = []
    for pipeline, augment, workers in keys:
        own = [r for r in rows if r["kind"] == "epochs"
               and (r["pipeline"], r["augment"], r["workers"])
               == (pipeline, augment, workers)]
        per_cpu = statistics.median(r["images_per_cpu_second"] for r in own)
        summary.append({
            "pipeline": pipeline, "augment": augment, "workers": workers,
            "images_per_second": statistics.median(
                r["images_per_second"] for r in own),
            "images_per_cpu_second": per_cpu,
            "cores_for_gpu_step": GPU_STEP_IMAGES_PER_SECOND / per_cpu,
        })
    return summary


def write(rows, summary, args, load_start, load_end):
    import keras

    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "loader_throughput.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
    command = "python benchmarks/loader_throughput.py " + " ".join(
        sys.argv[1:])
    lines = [
        README_BEGIN,
        "## Input pipeline throughput (NumPy, per host core)",
        "",
        f"`KERAS_BACKEND={keras.backend.backend()} {command.strip()}`: the "
        f"shipped sample's first {args.train_size} training images, batch "
        f"{args.batch_size}, {args.rounds} rounds of {args.epochs} epochs "
        "per configuration read through Keras' `PyDatasetAdapter`, "
        "interleaved; medians over rounds. `workers`: Keras PyDataset "
        "threads (1: each batch is made in the reading thread); tf.data "
        "runs its own AUTOTUNE thread pool. Images per CPU-second is the "
        "process's CPU time over all its threads, the throughput of one "
        f"host core. {_run_records.processor_name()}, "
        f"{_run_records.cpu_count()} cores, shared with other jobs: load "
        f"average {load_start:.1f} at the start, {load_end:.1f} at the "
        f"end; NumPy {np.__version__}, Keras {keras.__version__}; commit "
        f"{_run_records.git_commit() or 'unknown'}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. Rows: "
        "[loader_throughput.csv](loader_throughput.csv).",
        "",
        "| pipeline | augment | workers | images/s (wall) | images per "
        f"CPU-second | cores for {GPU_STEP_IMAGES_PER_SECOND:,} img/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['pipeline']} | {s['augment']} | {s['workers']} | "
            f"{s['images_per_second']:,.0f} | "
            f"{s['images_per_cpu_second']:,.0f} | "
            f"{s['cores_for_gpu_step']:.1f} |"
        )
    single = [s for s in summary
              if s["pipeline"] == "numpy" and s["workers"] == 1]
    if single:
        needed = max(s["cores_for_gpu_step"] for s in single)
        lines += [
            "",
            f"A GPU step at {GPU_STEP_IMAGES_PER_SECOND:,} img/s (WRN-16-8 "
            "`SAMModel`, bf16, batch 128, one H100; README, Performance) "
            f"needs {needed:.2f} host cores of this CPU for the NumPy "
            "pipeline at the slowest augmentation timed "
            f"({', '.join(s['augment'] for s in single)}), one thread: the "
            "loader alone, not the host side of the step (copying the "
            "float32 batch to the device, dispatch)."
            + _workers_sentence(summary),
        ]
    stages = [r for r in rows if r["kind"] == "stage"]
    total = sum(r["ms_per_batch"] for r in stages)
    lines += [
        "",
        f"One cutout batch of {args.batch_size} by stage (one thread, CPU "
        "ms, median of "
        f"{args.stage_repeats}): "
        + ", ".join(f"{r['stage']} {r['ms_per_batch']:.2f}" for r in stages)
        + f"; {total:.2f} in all.",
        README_END,
    ]
    _run_records.write_readme_section(
        output, README_BEGIN, README_END, "\n".join(lines)
    )
    return path


def _workers_sentence(summary):
    """Whether more Keras worker threads raised the wall-clock rate."""
    rates = {(s["augment"], s["workers"]): s["images_per_second"]
             for s in summary if s["pipeline"] == "numpy"}
    ratios = [rate / rates[(augment, 1)]
              for (augment, workers), rate in rates.items()
              if workers > 1 and (augment, 1) in rates]
    if not ratios:
        return ""
    verb = "raised" if min(ratios) > 1 else "did not raise"
    return (
        f" More worker threads {verb} the wall-clock rate here (x"
        f"{min(ratios):.2f} to x{max(ratios):.2f} of one thread's), so "
        "the pipeline uses one by default."
    )


def main(argv=None):
    args = parse_args(argv)
    load_start = _run_records.load_average() or float("nan")
    rows = measure(args)
    load_end = _run_records.load_average() or float("nan")
    summary = summarize(rows)
    for s in summary:
        print(f"{s['pipeline']} {s['augment']} workers={s['workers']}: "
              f"{s['images_per_second']:,.0f} img/s, "
              f"{s['images_per_cpu_second']:,.0f} img per CPU-s, "
              f"{s['cores_for_gpu_step']:.1f} cores for "
              f"{GPU_STEP_IMAGES_PER_SECOND:,} img/s", flush=True)
    print(f"wrote {write(rows, summary, args, load_start, load_end)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
