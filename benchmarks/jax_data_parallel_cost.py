"""SAM's cost under JAX `DataParallel`: collectives per step and step time.

On `--devices` CPU devices of one process (`XLA_FLAGS=
--xla_force_host_platform_device_count=N`, set here before JAX starts),
one `keras.distribution.DataParallel`, the same global batch, compares

- `plain`: the Keras model with SGD (momentum 0.9), plain data-parallel
  training;
- `sam_global`: `SAMModel(perturbation="global")`: one SPMD program over
  the whole batch, `eps` from the global gradient;
- `sam_replica`: `SAMModel()` (`perturbation="replica"`): both passes on
  each device's shard (`jax.shard_map`), `eps` per device, one gradient
  all-reduce for the descent;
- `sam_splits`: the workaround the README gave before per-device
  replica mode: `perturbation="global", num_batch_splits=devices` (one
  `eps` per chunk of the batch, the chunks computed one after another
  over the whole mesh).

For each, the step is compiled with `jax.jit(model.train_step)` on the
model's state and a batch sharded along the mesh's batch axis, and the
collectives of the compiled program are counted from its HLO text
(`all-reduce`, `all-gather`, `reduce-scatter`, `collective-permute`,
`all-to-all`), with the floats each moves. Then the compiled steps run in
turns (`--repeats` rounds of `--steps` steps per variant, the order
rotated each round) and the median time per step is reported; on CPU
devices of one shared CPU the times say little about accelerators, the
counts do.

Writes `jax_data_parallel_cost_<model>_b<batch>_d<devices>.json` into
`--output` and prints a Markdown table.

Example:

```
python benchmarks/jax_data_parallel_cost.py --devices 4 --batch-size 64
```
"""

import argparse
import json
import os
import pathlib
import re
import shlex
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter",
               "collective-permute", "all-to-all")
VARIANTS = ("plain", "sam_global", "sam_replica", "sam_splits")


def parse_args(argv=None):
    import benchmark_env

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=benchmark_env.positive_int,
                        default=4)
    parser.add_argument("--model", default="resnet-20")
    parser.add_argument("--batch-size", type=benchmark_env.positive_int,
                        default=64)
    parser.add_argument("--steps", type=benchmark_env.positive_int,
                        default=3)
    parser.add_argument("--repeats", type=benchmark_env.positive_int,
                        default=3)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--output",
                        default=str(REPO_ROOT / "saved_results/benchmarks"))
    return parser.parse_args(argv)


def count_collectives(hlo_text):
    """`{op: {"count": n, "floats": elements, "sizes": [...]}}` of the
    collectives in an HLO module's text: XLA combines several tensors into
    one tuple-valued collective, which counts once, with the elements of
    all its tensors (async pairs counted once, at their start)."""
    counts = {op: {"count": 0, "floats": 0, "sizes": []}
              for op in COLLECTIVES}
    pattern = re.compile(
        r"^\s*(?:ROOT\s+)?%[\w.\-]+\s*=\s*(?P<type>.*?)\s(?P<op>"
        + "|".join(COLLECTIVES) + r")(?:-start)?\("
    )
    for line in hlo_text.splitlines():
        match = pattern.search(line)
        if match is None:
            continue
        size = 0
        for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", match["type"]):
            elements = 1
            for d in filter(None, dims.split(",")):
                elements *= int(d)
            size += elements
        record = counts[match["op"]]
        record["count"] += 1
        record["floats"] += size
        record["sizes"].append(size)
    return counts


def build(variant, inner_weights, args):
    import keras

    import keras_sam
    from keras_sam import models

    inner = models.get_model(args.model)
    inner.set_weights(inner_weights)
    kwargs = {
        "sam_global": {"perturbation": "global"},
        "sam_replica": {},
        "sam_splits": {"perturbation": "global",
                       "num_batch_splits": args.devices},
    }
    model = inner if variant == "plain" else keras_sam.SAMModel(
        inner, rho=args.rho, **kwargs[variant]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        metrics=["accuracy"],
    )
    return model


def main(argv=None):
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ["KERAS_BACKEND"] = "jax"
    import benchmark_env
    import jax
    import keras
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from keras_sam import _keras_compat, models

    distribution = keras.distribution.DataParallel(
        devices=jax.devices()[:args.devices]
    )
    keras.distribution.set_distribution(distribution)
    mesh = distribution.device_mesh.backend_mesh
    batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,)).astype("int32")
    data = (jax.device_put(x, batch_sharding),
            jax.device_put(y, batch_sharding))
    keras.utils.set_random_seed(0)
    weights = models.get_model(args.model).get_weights()
    compiled, states, records = {}, {}, {}
    for variant in VARIANTS:
        model = build(variant, weights, args)
        # Builds the optimizer, loss and metrics as `fit`'s first step.
        _keras_compat.symbolic_build(model, data_batch=(x, y))
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        start = time.perf_counter()
        compiled[variant] = jax.jit(model.train_step).lower(
            state, data).compile()
        compile_seconds = time.perf_counter() - start
        states[variant] = state
        records[variant] = {
            "collectives": count_collectives(compiled[variant].as_text()),
            "compile_seconds": compile_seconds,
            "parameters": int(sum(
                np.prod(v.shape) for v in model.trainable_variables)),
            "times_ms": [],
        }
        print(variant, json.dumps(records[variant]["collectives"]),
              flush=True)
    for repeat in range(args.repeats + 1):
        order = VARIANTS[repeat % 4:] + VARIANTS[:repeat % 4]
        for variant in order:
            state = states[variant]
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(args.steps):
                _, state = compiled[variant](state, data)
            jax.block_until_ready(state)
            if repeat > 0:  # round 0 warms up
                records[variant]["times_ms"].append(
                    1000 * (time.perf_counter() - start) / args.steps
                )
            states[variant] = state
    device, _, versions = benchmark_env.describe_device("jax")
    result = {
        "benchmark": "jax_data_parallel_cost",
        "command": "python " + " ".join(
            shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]
        ),
        "commit": benchmark_env.git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "devices": args.devices,
        "model": args.model,
        "global_batch": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "keras": keras.__version__,
        **versions,
        "load_average_end": benchmark_env.load_average(),
        "variants": records,
    }
    for record in records.values():
        record["median_ms"] = statistics.median(record["times_ms"])
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / (f"jax_data_parallel_cost_{args.model}_b"
                     f"{args.batch_size}_d{args.devices}.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {path}")


def markdown(result):
    plain = result["variants"]["plain"]["median_ms"]
    lines = [
        "| variant | all-reduces | floats all-reduced | other collectives "
        "| median ms/step | / plain |",
        "|---|---|---|---|---|---|",
    ]
    for name, record in result["variants"].items():
        reduce = record["collectives"]["all-reduce"]
        others = sum(record["collectives"][op]["count"]
                     for op in COLLECTIVES if op != "all-reduce")
        lines.append(
            f"| {name} | {reduce['count']} | {reduce['floats']:,} | {others} "
            f"| {record['median_ms']:.0f} | "
            f"{record['median_ms'] / plain:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
