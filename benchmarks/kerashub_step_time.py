"""Paired train-step timing of a KerasHub task model: plain vs `SAMModel`.

Builds one small KerasHub task model from a backbone with random weights
(no preset download): `vit` (`ViTImageClassifier`, 32x32 images, patch
8, 2 layers, width 32), `bert` (`BertTextClassifier`, 2 layers, width
64, sequences of 64 with padding) or `gpt2` (`GPT2CausalLM`, same
sizes). Two copies with the same initial weights are compiled with the
same AdamW optimizer: the task itself (`plain`) and
`keras_sam.SAMModel(task, rho)` (`sam`). After `--warmup` steps each
(compilation), the two are timed in turns, in one process: each repeat
runs `--steps` `train_on_batch` calls per variant (whose returned logs
are NumPy values, so the step has finished), the order swapped every
repeat. The reported time is the median over repeats; the ratio is the
median of the per-repeat ratios `sam / plain` (paired, so a slow moment
of a shared machine hits both).

Appends one row per run to `--output/step_time.csv` (task, backend,
batch, parameters, medians, ratio, seed, hardware, the 1-minute load
average, commit, date); `--output/README.md` says how each row was made.

Example:

```
python benchmarks/kerashub_step_time.py --task vit --batch-size 32
KERAS_BACKEND=jax python benchmarks/kerashub_step_time.py --task bert
```
"""

import argparse
import csv
import datetime
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import benchmark_env  # noqa: E402

FIELDS = (
    "task", "backend", "batch_size", "parameters", "rho", "steps",
    "repeats", "plain_ms", "sam_ms", "paired_ratio", "seed", "device",
    "load_average", "commit", "date",
)
TASKS = ("vit", "bert", "gpt2")
SEQUENCE_LENGTH = 64
VOCABULARY = 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=TASKS, default="vit")
    parser.add_argument("--batch-size", type=benchmark_env.positive_int,
                        default=32)
    parser.add_argument("--steps", type=benchmark_env.positive_int,
                        default=10)
    parser.add_argument("--warmup", type=benchmark_env.positive_int,
                        default=3)
    parser.add_argument("--repeats", type=benchmark_env.positive_int,
                        default=5)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", default=str(benchmark_env.REPO_ROOT / "saved_results"
                                / "kerashub"),
    )
    return parser.parse_args(argv)


def build_task(name):
    """A small task model with random weights, built."""
    import keras_hub

    if name == "vit":
        backbone = keras_hub.models.ViTBackbone(
            image_shape=(32, 32, 3), patch_size=8, num_layers=2,
            num_heads=2, hidden_dim=32, mlp_dim=64,
        )
        return keras_hub.models.ViTImageClassifier(
            backbone=backbone, num_classes=10, preprocessor=None,
        )
    sizes = {
        "vocabulary_size": VOCABULARY, "num_layers": 2, "num_heads": 2,
        "hidden_dim": 64, "intermediate_dim": 128,
        "max_sequence_length": SEQUENCE_LENGTH, "dropout": 0.0,
    }
    if name == "bert":
        backbone = keras_hub.models.BertBackbone(**sizes)
        return keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=2, preprocessor=None,
            dropout=0.0,
        )
    backbone = keras_hub.models.GPT2Backbone(**sizes)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def make_batch(name, batch_size, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    if name == "vit":
        x = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
        return x, rng.integers(0, 10, batch_size), None
    lengths = rng.integers(SEQUENCE_LENGTH // 2, SEQUENCE_LENGTH + 1,
                           batch_size)
    mask = np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]
    ids = np.where(
        mask, rng.integers(1, VOCABULARY, mask.shape), 0
    ).astype("int32")
    x = {"token_ids": ids, "padding_mask": mask}
    if name == "bert":
        x["segment_ids"] = np.zeros_like(ids)
        return x, rng.integers(0, 2, batch_size), None
    targets = rng.integers(1, VOCABULARY, mask.shape)
    return x, targets, mask.astype("float32")


def build_variants(args):
    import keras

    import keras_sam

    keras.utils.set_random_seed(args.seed)
    plain = build_task(args.task)
    inner = build_task(args.task)
    inner.set_weights(plain.get_weights())
    sam = keras_sam.SAMModel(inner, rho=args.rho)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for model in (plain, sam):
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05),
            loss=loss,
        )
    return {"plain": plain, "sam": sam}


def time_steps(model, batch, steps):
    x, y, sample_weight = batch
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y, sample_weight=sample_weight)
    return (time.perf_counter() - start) / steps


def measure(variants, batch, args):
    for model in variants.values():
        time_steps(model, batch, args.warmup)
    times = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_steps(variants[name], batch, args.steps))
        print(f"repeat {repeat + 1}/{args.repeats} ms/step: " + ", ".join(
            f"{name} {1e3 * times[name][-1]:.1f}" for name in names
        ), flush=True)
    return times


def main(argv=None):
    args = parse_args(argv)
    import keras

    backend = keras.backend.backend()
    variants = build_variants(args)
    batch = make_batch(args.task, args.batch_size, args.seed)
    times = measure(variants, batch, args)
    device, _, _ = benchmark_env.describe_device(backend)
    load = benchmark_env.load_average()
    row = {
        "task": args.task,
        "backend": backend,
        "batch_size": args.batch_size,
        "parameters": variants["plain"].count_params(),
        "rho": args.rho,
        "steps": args.steps,
        "repeats": args.repeats,
        "plain_ms": round(1e3 * statistics.median(times["plain"]), 2),
        "sam_ms": round(1e3 * statistics.median(times["sam"]), 2),
        "paired_ratio": round(statistics.median(
            s / p for s, p in zip(times["sam"], times["plain"])
        ), 3),
        "seed": args.seed,
        "device": device,
        "load_average": load if load is None else round(load, 2),
        "commit": benchmark_env.git_commit(),
        "date": datetime.date.today().isoformat(),
    }
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "step_time.csv"
    new_file = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    print(", ".join(f"{k}={v}" for k, v in row.items()))
    return row


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
