"""Paired step time of SAM's replica and global modes, MirroredStrategy.

Measures, in one process, on two logical CPU devices under one
`tf.distribute.MirroredStrategy`, the median time of one training step of

- `keras_sgd`: the plain Keras 3 model, `fit` with SGD (momentum 0.9):
  one gradient all-reduce per step (the optimizer's);
- `sam_replica`: `SAMModel(model, rho, perturbation="replica")`: each
  replica perturbs with its own gradient; no extra gradient all-reduce
  (only the small all-reduce that averages BatchNorm statistics);
- `sam_global`: `SAMModel(model, rho, perturbation="global")`: the
  first-pass gradients are all-reduced before the norm, one more full
  gradient all-reduce per step;

and, as an independent check of the difference, `all_reduce`: one SUM
all-reduce, on its own, of a gradient-sized list of tensors (the model's
trainable shapes), through `merge_call` and `batch_reduce_to` as the SAM
step does it.

All models start from the same weights and train on the same synthetic
batches (N(0, 1) 32x32x3 images, uniform labels). After one warm-up `fit`
each (tracing), the variants are timed in turns: each repeat runs one
`fit` of `--steps` steps per variant, in an order rotated every repeat.
The time is taken from the end of the first step to the end of the epoch
(both read in Keras callbacks after the step's loss is materialized) and
divided by `steps - 1`, so the distributed iterator's set-up and the first
step are outside the window. The reported time is the median over
repeats; `overhead` is global minus replica, as a difference of medians
and as the median of the differences within each repeat (steadier when
the machine's load drifts).

On two logical devices of one CPU the all-reduce is a copy and a sum in
memory: the measured overhead is the synchronization and reduction cost
on this machine, not a network's. How communication grows with more
replicas is written down in the README section this script generates.

Writes `distribute_step_time_<model>_b<batch>_<device>.json` into
`--output` and regenerates the `distribute_step_time.py` section of the
README there from every such JSON (other sections are left alone).

Examples:

```
python benchmarks/distribute_step_time.py             # ResNet-20, b64
python benchmarks/distribute_step_time.py --regenerate-readme
```
"""

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

DEFAULT_OUTPUT = REPO_ROOT / "saved_results" / "benchmarks"
README_BEGIN = "<!-- BEGIN distribute_step_time.py section -->"
README_END = "<!-- END distribute_step_time.py section -->"
NUM_REPLICAS = 2
VARIANT_TITLES = {
    "keras_sgd": "Keras 3 SGD",
    "sam_replica": "SAMModel, perturbation='replica'",
    "sam_global": "SAMModel, perturbation='global'",
    "all_reduce": "one gradient all-reduce alone",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet-20")
    parser.add_argument(
        "--batch-size",
        type=_at_least(1),
        default=64,
        help="global batch, split over the 2 replicas (default: 64)",
    )
    parser.add_argument(
        "--steps",
        type=_at_least(2),
        default=8,
        help="steps per timed fit; the first is not timed (default: 8)",
    )
    parser.add_argument("--repeats", type=_at_least(1), default=7)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=DEFAULT_OUTPUT,
        help="folder for the JSON and README (default: %(default)s)",
    )
    parser.add_argument(
        "--regenerate-readme",
        action="store_true",
        help="only rewrite the README section from the JSON files",
    )
    return parser.parse_args(argv)


def _at_least(minimum):
    """`argparse` type: an integer >= `minimum` (checked before Keras is
    imported)."""

    def integer(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be >= {minimum}, got {text}"
            )
        return value

    return integer


# Variants ------------------------------------------------------------------


class AllReduceVariant:
    """One SUM all-reduce of gradient-shaped tensors, as the step does it."""

    name = "all_reduce"

    def __init__(self, strategy, shapes):
        import tensorflow as tf

        from keras_sam.backend import tensorflow as tf_backend

        self.times = []
        self.tensors = [tf.ones(shape, "float32") for shape in shapes]

        @tf.function
        def all_reduce(tensors):
            def replica_fn(tensors):
                # Per-replica copies, on each replica's device, like the
                # gradients the step all-reduces.
                local = [tf.identity(t) for t in tensors]
                reduced = tf_backend._all_reduce_sum(local)
                return tf.add_n([tf.reduce_sum(t) for t in reduced])

            per_replica = strategy.run(replica_fn, args=(tensors,))
            return strategy.reduce("SUM", per_replica, axis=None)

        self.function = all_reduce

    def run(self, steps):
        float(self.function(self.tensors))
        start = time.perf_counter()
        for _ in range(steps - 1):
            total = self.function(self.tensors)
        float(total)
        return (time.perf_counter() - start) / (steps - 1)


def build_variants(args, strategy, x, y):
    import keras

    import keras_sam
    from keras_sam import models
    from keras_sam.experiments import _step_timing

    options = {
        "input_shape": x.shape[1:],
        "num_classes": 10,
        "classifier_activation": None,
    }
    keras.utils.set_random_seed(args.seed)
    timer = _step_timing.step_timer_class(keras.callbacks.Callback)
    variants = []
    with strategy.scope():
        plain = models.get_model(args.model, **options)
        initial_weights = plain.get_weights()
        wrapped = {}
        for mode in ("replica", "global"):
            inner = models.get_model(args.model, **options)
            inner.set_weights(initial_weights)
            wrapped[mode] = keras_sam.SAMModel(inner, rho=args.rho,
                                               perturbation=mode)
        for name, model in (("keras_sgd", plain),
                            ("sam_replica", wrapped["replica"]),
                            ("sam_global", wrapped["global"])):
            model.compile(
                optimizer=keras.optimizers.SGD(args.learning_rate,
                                               momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
            variants.append(
                _step_timing.TimedModel(
                    name, model, timer, x, y, args.batch_size,
                    untimed_steps=1,
                )
            )
    shapes = [tuple(v.shape) for v in plain.trainable_variables]
    variants.append(AllReduceVariant(strategy, shapes))
    batch_norm_floats = sum(
        int(v.numpy().size) for v in plain.non_trainable_variables
        if "float" in str(v.dtype)
    )
    details = {
        "parameters": plain.count_params(),
        "trainable_floats": sum(
            int(v.numpy().size) for v in plain.trainable_variables
        ),
        "batch_norm_state_floats": batch_norm_floats,
    }
    return variants, details


# Results -----------------------------------------------------------------


def summarize(variants, batch_size):
    """Medians, ratios and the global-mode overhead, plain and paired."""
    times = {variant.name: variant.times for variant in variants}
    results = {}
    for name, values in times.items():
        median = statistics.median(values)
        results[name] = {
            "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(values),
            "ms_by_repeat": [1e3 * t for t in values],
        }
        if name != "all_reduce":
            results[name]["images_per_second"] = batch_size / median
    ratios, paired_ratios = {}, {}
    for name, numerator, denominator in (
        ("sam_replica_over_keras_sgd", "sam_replica", "keras_sgd"),
        ("sam_global_over_keras_sgd", "sam_global", "keras_sgd"),
        ("sam_global_over_sam_replica", "sam_global", "sam_replica"),
    ):
        ratios[name] = (results[numerator]["median_ms"]
                        / results[denominator]["median_ms"])
        paired_ratios[name] = statistics.median(
            a / b for a, b in zip(times[numerator], times[denominator])
        )
    differences = [
        1e3 * (a - b) for a, b in zip(times["sam_global"], times["sam_replica"])
    ]
    quartiles = (
        statistics.quantiles(differences, n=4)
        if len(differences) > 1 else differences * 3
    )
    overhead = {
        "global_minus_replica_ms": results["sam_global"]["median_ms"]
        - results["sam_replica"]["median_ms"],
        "paired_global_minus_replica_ms": statistics.median(differences),
        "paired_difference_quartiles_ms": [quartiles[0], quartiles[2]],
        "all_reduce_alone_ms": results["all_reduce"]["median_ms"],
    }
    return results, ratios, paired_ratios, overhead


COMMUNICATION_TEXT = """\
How a step's communication grows with the number of replicas `N`, for a
model with `P` trainable floats (ResNet-20: about 0.27M) and `S` floats of
BatchNorm statistics (ResNet-20: under 1.4k):

| | all-reduces per step | floats all-reduced |
|---|---|---|
| Keras SGD (plain `fit`) | 1 (gradients, `optimizer.apply`) | `P` |
| SAM, `perturbation="replica"` | 1, + 1 if BatchNorm | `P` (+ `S`) |
| SAM, `perturbation="global"` | 2, + 1 if BatchNorm | `2P` (+ `S`) |

(The BatchNorm all-reduce averages the moving statistics so that the
replicas' copies stay identical; plain Keras `fit` does not, and its
copies drift apart.)

With a ring or tree all-reduce each replica sends and receives about
`2 (N - 1) / N` times the reduced size, so the bytes per replica are
nearly independent of `N` (they approach `2 x 4P` bytes per gradient
all-reduce in float32) while the latency term grows with `N` (`2 (N - 1)`
ring steps, or `log N` for trees). Global mode therefore doubles the
gradient traffic of plain training at any `N`; more importantly its
all-reduce sits between the two passes, so it cannot overlap with
computation and makes every replica wait for the slowest one before the
second pass (a second synchronization point per step). Replica mode has
the communication of plain training (the BatchNorm all-reduce is about
`S / P` = 0.5% of it for ResNet-20) and computes twice as much, so it
scales like plain data-parallel training. These counts are from the code
(`keras_sam/backend/tensorflow.py`); only 2 logical CPU devices were
available, where an all-reduce is a copy in memory, so the multi-GPU or
multi-host cost was not measured.
"""


def _conclusion(record):
    """One sentence on whether the extra all-reduce shows in the step."""
    overhead = record["overhead"]
    paired = overhead["paired_global_minus_replica_ms"]
    low, high = overhead["paired_difference_quartiles_ms"]
    alone = overhead["all_reduce_alone_ms"]
    share = 100 * alone / record["results"]["sam_global"]["median_ms"]
    text = (
        f"`{record['file']}`: one full-gradient all-reduce alone took "
        f"{alone:.1f} ms, {share:.1f}% of the global-mode step; global "
        f"minus replica was {paired:.1f} ms (median within repeats)"
    )
    if low <= 0 <= high:
        return text + (
            f", and zero lies between the quartiles of the within-repeat "
            f"differences ({low:.0f} to {high:.0f} ms): on this machine the "
            "extra all-reduce is below the noise of the step time."
        )
    return text + (
        f", with quartiles {low:.0f} to {high:.0f} ms of the within-repeat "
        "differences."
    )


def regenerate_readme(output_dir):
    """Rewrites this script's section of `README.md` from the JSON files."""
    output_dir = pathlib.Path(output_dir)
    records = []
    for path in sorted(output_dir.glob("distribute_step_time_*.json")):
        record = json.loads(path.read_text())
        record["file"] = path.name
        records.append(record)
    lines = [
        README_BEGIN,
        "## Distributed step time: `benchmarks/distribute_step_time.py`",
        "",
        (
            "Median time of one training step under `MirroredStrategy` on "
            "2 logical CPU devices (one physical CPU), the variants timed in "
            "turns in one process from the same weights on the same "
            "synthetic batches (see the script's docstring). Ratios are of "
            "medians, with the median of the within-repeat ratios in "
            "brackets; the overhead of global mode is global minus replica "
            "as a difference of medians, with the median within-repeat "
            "difference and the quartiles of the within-repeat differences "
            "in brackets (their spread is the machine's noise), beside the "
            "time of one full-gradient all-reduce measured alone. "
            "Regenerate this section with "
            "`python benchmarks/distribute_step_time.py "
            "--regenerate-readme`."
        ),
        "",
        (
            "| file | device | model | global batch (per replica) | "
            "Keras SGD ms | SAM replica ms | SAM global ms | "
            "replica/SGD | global/SGD | global/replica | "
            "global - replica ms | all-reduce alone ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(record, name):
        return f"{record['results'][name]['median_ms']:.1f}"

    def ratio(record, name):
        return (f"{record['ratios'][name]:.2f} "
                f"({record['paired_ratios'][name]:.2f})")

    for record in records:
        config, overhead = record["config"], record["overhead"]
        low, high = overhead["paired_difference_quartiles_ms"]
        batch = config["batch_size"]
        lines.append("| " + " | ".join([
            f"`{record['file']}`",
            record["device"],
            config["model"],
            f"{batch} ({batch // config['replicas']})",
            ms(record, "keras_sgd"),
            ms(record, "sam_replica"),
            ms(record, "sam_global"),
            ratio(record, "sam_replica_over_keras_sgd"),
            ratio(record, "sam_global_over_keras_sgd"),
            ratio(record, "sam_global_over_sam_replica"),
            f"{overhead['global_minus_replica_ms']:.1f} "
            f"({overhead['paired_global_minus_replica_ms']:.1f}; "
            f"{low:.0f} to {high:.0f})",
            f"{overhead['all_reduce_alone_ms']:.2f}",
        ]) + " |")
    lines.append("")
    for record in records:
        lines += [_conclusion(record), ""]
    lines += [COMMUNICATION_TEXT, "Commands, commits and dates:", ""]
    for record in records:
        config = record["config"]
        load = record.get("load_average")
        load_text = "" if load is None else f", load average {load:.1f}"
        lines.append(
            f"- `{record['file']}`: `{record['command']}` (commit "
            f"{record.get('commit') or 'unknown'}, {record['date']}, "
            f"Keras {record['versions'].get('keras')}, TensorFlow "
            f"{record['versions'].get('tensorflow')}, {config['repeats']} "
            f"repeats x {config['steps'] - 1} timed steps{load_text} at the "
            "end)"
        )
    lines.append(README_END)
    section = "\n".join(lines)

    from keras_sam.experiments import _run_records

    return _run_records.write_readme_section(
        output_dir, README_BEGIN, README_END, section
    )


def main(argv=None):
    args = parse_args(argv)
    if args.regenerate_readme:
        print(f"wrote {regenerate_readme(args.output)}")
        return 0
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    # Two logical devices, before TensorFlow initializes its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_REPLICAS
    )
    import keras
    import numpy as np

    import keras_sam
    from keras_sam.experiments import _run_records, _step_timing

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("this benchmark needs KERAS_BACKEND=tensorflow")
    device, _, versions = _run_records.describe_device("tensorflow")
    devices = [f"/cpu:{i}" for i in range(NUM_REPLICAS)]
    strategy = tf.distribute.MirroredStrategy(devices)
    print(f"device: {device}; {strategy.num_replicas_in_sync} replicas",
          flush=True)

    rng = np.random.default_rng(args.seed)
    samples = args.steps * args.batch_size
    x = rng.standard_normal((samples, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=samples).astype(np.int32)
    variants, details = build_variants(args, strategy, x, y)
    # Timed from the end of each run's first step: 2 steps warm up.
    _step_timing.measure(variants, args.steps, 2, args.repeats)
    results, ratios, paired_ratios, overhead = summarize(
        variants, args.batch_size
    )

    versions.update(keras=keras.__version__,
                    keras_sam=keras_sam.__version__,
                    numpy=np.__version__,
                    python=platform.python_version())
    record = {
        "device": device,
        "backend": "tensorflow",
        "strategy": "MirroredStrategy(" + ", ".join(devices) + ")",
        "config": {
            "model": args.model,
            **details,
            "replicas": NUM_REPLICAS,
            "batch_size": args.batch_size,
            "image_shape": [32, 32, 3],
            "rho": args.rho,
            "optimizer": f"SGD(learning_rate={args.learning_rate}, "
                         "momentum=0.9)",
            "steps": args.steps,
            "repeats": args.repeats,
            "seed": args.seed,
        },
        "results": results,
        "ratios": ratios,
        "paired_ratios": paired_ratios,
        "overhead": overhead,
        "load_average": _run_records.load_average(),
        "versions": versions,
        "command": shlex.join(
            ["python", "benchmarks/distribute_step_time.py"]
            + list(sys.argv[1:] if argv is None else argv)
        ),
        "commit": _run_records.git_commit(),
        "date": _run_records.now(),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    name = (
        f"distribute_step_time_{_step_timing.slug(args.model)}"
        f"_b{args.batch_size}_{_step_timing.slug(device.split(',')[0])}.json"
    )
    path = args.output / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    readme = regenerate_readme(args.output)

    print()
    for variant_name, result in results.items():
        print(f"{VARIANT_TITLES[variant_name]:>34}: "
              f"{result['median_ms']:8.2f} ms")
    for ratio_name, value in ratios.items():
        print(f"{ratio_name}: {value:.3f} (paired: "
              f"{paired_ratios[ratio_name]:.3f})")
    print(f"overhead: {json.dumps(overhead)}")
    print(f"wrote {path} and {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
