"""Paired train-step timing: plain Keras vs `SAMModel` (vs tf-keras SAM).

Measures, in one process and on the same architecture, the median time of
one training step of

- `keras_sgd`: the plain Keras 3 model, `fit` with SGD (momentum 0.9);
- `sam_model`: `keras_sam.SAMModel(model, rho)` with the same optimizer;
- `tf_keras_sgd` and `tf_keras_sam`: the same architecture built in
  tf-keras (Keras 2), plain and wrapped in
  `tf_keras.models.experimental.SharpnessAwareMinimization`, when the
  backend is TensorFlow and tf-keras is installed;
- `minimal_jax_sam`: on the JAX backend, the shortest SAM step one can
  write in Keras-JAX (`minimal_jax_sam` below: two `jax.value_and_grad`
  of `stateless_call`, no m-sharpness, no metrics but the loss), the
  floor SAMModel's generality is measured against.

All variants start from the same weights and train on the same synthetic
batches (N(0, 1) images, uniform labels). After one warm-up `fit` each
(compilation), the variants are timed in turns: each repeat runs one
`fit` of `--steps` steps per variant, in an order rotated every repeat,
and the time from the start to the end of the epoch (read in Keras
callbacks, after the epoch's logs are materialized, so asynchronous
devices have finished) is divided by the number of steps. The reported
time is the median over repeats. `fit` set-up (data adapters, callbacks)
is outside the timed window.

Writes `step_time_<backend>_<model>_<precision>_b<batch>_<device>.json`
into `--output` and regenerates the `step_time.py` section of the README
there from every such JSON. Needs only Keras, NumPy and the backend's
library: it runs on the JAX backend without TensorFlow installed.

Examples:

```
python benchmarks/step_time.py                      # ResNet-20, TF, CPU
KERAS_BACKEND=jax python benchmarks/step_time.py --backend jax \\
    --model wrn-28-10 --mixed-precision bfloat16    # the GPU run
python benchmarks/step_time.py --regenerate-readme  # README from JSON
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

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

DEFAULT_OUTPUT = REPO_ROOT / "saved_results" / "benchmarks"
README_BEGIN = "<!-- BEGIN step_time.py section (generated, do not edit) -->"
README_END = "<!-- END step_time.py section -->"
PRECISION_POLICIES = {
    "none": "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}
VARIANT_TITLES = {
    "keras_sgd": "Keras 3 SGD",
    "sam_model": "keras_sam.SAMModel",
    "tf_keras_sgd": "tf-keras SGD",
    "tf_keras_sam": "tf-keras SAM",
    "minimal_jax_sam": "minimal Keras-JAX SAM",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument("--model", default="resnet-20")
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        default=32,
        help="side of the synthetic images (default: 32; ImageNet: 224)",
    )
    parser.add_argument(
        "--num-classes",
        type=_positive_int,
        default=10,
        help="classes of the synthetic labels (default: 10; ImageNet: 1000)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=128
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="timed steps per repeat (default: 10 on CPU, 50 on a GPU)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive_int,
        default=3,
        help="steps of the untimed warm-up fit (default: 3)",
    )
    parser.add_argument("--repeats", type=_positive_int, default=5)
    parser.add_argument(
        "--mixed-precision",
        choices=tuple(PRECISION_POLICIES),
        default="none",
    )
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help=(
            "coupled L2 on kernels (default 0: tf-keras's SAM ignores "
            "regularization losses, so 0 keeps the comparison equal)"
        ),
    )
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="Keras compile(jit_compile=...) (default: auto)",
    )
    parser.add_argument(
        "--no-tf-keras",
        action="store_true",
        help="skip the tf-keras variants",
    )
    parser.add_argument(
        "--no-minimal-jax-sam",
        action="store_true",
        help="skip the minimal Keras-JAX SAM reference (JAX backend only)",
    )
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


# Environment -------------------------------------------------------------


def _positive_int(text):
    """`argparse` type: an integer >= 1 (checked before Keras is
    imported, which the backend option must precede)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


# Timed models --------------------------------------------------------------


def build_variants(args, x, y):
    import keras

    import keras_sam
    from keras_sam import models
    from keras_sam.experiments import _step_timing

    keras.mixed_precision.set_dtype_policy(
        PRECISION_POLICIES[args.mixed_precision]
    )
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    options = {
        "input_shape": x.shape[1:],
        "num_classes": args.num_classes,
        "weight_decay": args.weight_decay,
        "classifier_activation": None,
    }
    keras.utils.set_random_seed(args.seed)
    plain = models.get_model(args.model, **options)
    initial_weights = plain.get_weights()
    inner = models.get_model(args.model, **options)
    inner.set_weights(initial_weights)
    sam = keras_sam.SAMModel(inner, rho=args.rho)

    def compile_keras(model):
        model.compile(
            optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit,
        )
        return model

    callback = _step_timing.epoch_timer_class(keras.callbacks.Callback)
    variants = [
        _step_timing.TimedModel(
            "keras_sgd", compile_keras(plain), callback, x, y, args.batch_size
        ),
        _step_timing.TimedModel(
            "sam_model", compile_keras(sam), callback, x, y, args.batch_size
        ),
    ]
    details = {
        "parameters": plain.count_params(),
        "jit_compile": {
            "keras_sgd": str(plain.jit_compile),
            "sam_model": str(sam.jit_compile),
        },
    }
    if args.backend == "jax" and not args.no_minimal_jax_sam:
        reference = models.get_model(args.model, **options)
        reference.set_weights(initial_weights)
        minimal = compile_keras(minimal_jax_sam(reference, args.rho))
        details["jit_compile"]["minimal_jax_sam"] = str(minimal.jit_compile)
        variants.append(
            _step_timing.TimedModel(
                "minimal_jax_sam", minimal, callback, x, y, args.batch_size
            )
        )
    if args.backend == "tensorflow" and not args.no_tf_keras:
        try:
            import tf_keras
        except ImportError:
            tf_keras = None
        if tf_keras is not None:
            variants += _tf_keras_variants(
                args, tf_keras, x, y, initial_weights, options, details
            )
    return variants, details


def minimal_jax_sam(model, rho):
    """The shortest Keras-JAX SAM step (Foret et al., 2021), a reference.

    Returns a `keras.Model` wrapping `model` whose stateless `train_step`
    takes `jax.value_and_grad` of `stateless_call` at `w`, perturbs by
    `eps = rho g / ||g||` and applies the gradient at `w + eps`; BatchNorm
    statistics come from the first pass. Nothing else: no loss scaling,
    regularization losses, sample weights, m-sharpness or metrics (the
    loss is logged per step, not averaged), so its time is the floor for
    a SAM step of `model` on this backend.
    """
    import jax
    import jax.numpy as jnp
    import keras

    class MinimalJaxSAM(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, inputs, training=False):
            return self.inner(inputs, training=training)

        def train_step(self, state, data):
            trainable, non_trainable, optimizer_values, metrics = state
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)

            def loss_fn(trainable, non_trainable):
                y_pred, non_trainable = self.stateless_call(
                    trainable, non_trainable, x, training=True
                )
                y_pred = keras.ops.cast(y_pred, "float32")
                return self.loss(y, y_pred), non_trainable

            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            (loss, updated), grads = grad_fn(trainable, non_trainable)
            squares = [jnp.sum(jnp.square(g.astype("float32"))) for g in grads]
            scale = rho / (jnp.sqrt(sum(squares)) + 1e-12)
            perturbed = [
                w + (scale * g).astype(w.dtype)
                for w, g in zip(trainable, grads)
            ]
            _, grads = grad_fn(perturbed, non_trainable)
            trainable, optimizer_values = self.optimizer.stateless_apply(
                optimizer_values, grads, trainable
            )
            state = (trainable, updated, optimizer_values, metrics)
            return {"loss": loss}, state

    return MinimalJaxSAM(model)


def _check_twin(args, difference, details):
    """The tf-keras twin must compute what the Keras 3 model does (the
    check runs where tf-keras is installed: the test suite has only Keras
    3 to rebuild with)."""
    details["tf_keras_twin_difference"] = difference
    tolerance = 1e-4 if args.mixed_precision == "none" else 5e-2
    if max(difference.values()) > tolerance:
        raise RuntimeError(
            f"The tf-keras twin of {args.model!r} differs from the Keras 3 "
            f"model by {difference} (relative), above {tolerance}."
        )


def _tf_keras_variants(args, tf_keras, x, y, initial_weights, options, details):
    from keras_sam import models
    from keras_sam.experiments import _step_timing
    from keras_sam.experiments._tf_keras_twin import (
        tf_keras_twin,
        twin_difference,
    )

    # The same architecture made of tf-keras layers.
    tf_keras.mixed_precision.set_global_policy(
        PRECISION_POLICIES[args.mixed_precision]
    )
    jit = {"auto": None, "true": True, "false": False}[args.jit_compile]
    built = []
    for wrap in (False, True):
        original = models.get_model(args.model, **options)
        original.set_weights(initial_weights)
        inner = tf_keras_twin(original, tf_keras)
        inner.set_weights(initial_weights)
        if not wrap:
            _check_twin(args, twin_difference(original, inner, x[:4]), details)
        if wrap:
            sam_class = tf_keras.models.experimental.SharpnessAwareMinimization
            model = sam_class(inner, rho=args.rho)
        else:
            model = inner
        model.compile(
            optimizer=tf_keras.optimizers.SGD(args.learning_rate, momentum=0.9),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            jit_compile=jit,
        )
        name = "tf_keras_sam" if wrap else "tf_keras_sgd"
        details["jit_compile"][name] = str(getattr(model, "_jit_compile", jit))
        callback = _step_timing.epoch_timer_class(tf_keras.callbacks.Callback)
        built.append(
            _step_timing.TimedModel(
                name, model, callback, x, y, args.batch_size
            )
        )
    details["tf_keras_version"] = tf_keras.__version__
    return built


# Results -----------------------------------------------------------------


def summarize(variants, batch_size):
    """Per-variant medians and two kinds of ratio.

    `ratios` divides medians. `paired_ratios` is the median over repeats
    of the ratio within each repeat, where the variants ran back to back:
    on a shared machine whose load drifts it is the steadier of the two.
    """
    results = {}
    for variant in variants:
        median = statistics.median(variant.times)
        results[variant.name] = {
            "median_ms_per_step": 1e3 * median,
            "min_ms_per_step": 1e3 * min(variant.times),
            "images_per_second": batch_size / median,
            "ms_per_step_by_repeat": [1e3 * t for t in variant.times],
        }
    by_name = {variant.name: variant.times for variant in variants}
    ratios, paired_ratios = {}, {}
    for name, numerator, denominator in (
        ("sam_model_over_keras_sgd", "sam_model", "keras_sgd"),
        ("tf_keras_sam_over_tf_keras_sgd", "tf_keras_sam", "tf_keras_sgd"),
        ("sam_model_over_tf_keras_sam", "sam_model", "tf_keras_sam"),
        ("keras_sgd_over_tf_keras_sgd", "keras_sgd", "tf_keras_sgd"),
        ("minimal_jax_sam_over_keras_sgd", "minimal_jax_sam", "keras_sgd"),
        ("sam_model_over_minimal_jax_sam", "sam_model", "minimal_jax_sam"),
    ):
        if numerator in results and denominator in results:
            ratios[name] = (
                results[numerator]["median_ms_per_step"]
                / results[denominator]["median_ms_per_step"]
            )
            paired_ratios[name] = statistics.median(
                a / b for a, b in zip(by_name[numerator], by_name[denominator])
            )
    return results, ratios, paired_ratios


def regenerate_readme(output_dir):
    """Rewrites the generated section of `README.md` from the JSON files."""
    output_dir = pathlib.Path(output_dir)
    records = []
    for path in sorted(output_dir.glob("step_time_*.json")):
        record = json.loads(path.read_text())
        record["file"] = path.name
        records.append(record)
    lines = [
        README_BEGIN,
        "## Train-step time: `benchmarks/step_time.py`",
        "",
        (
            "Median time of one training step over interleaved repeats, "
            "paired "
            "in one process on the same architecture and the same synthetic "
            "32x32x3 batches (see the script's docstring for the method). "
            "Ratios are SAM step time over the same library's plain SGD step "
            "time, as a ratio of medians and, in brackets, the median of the "
            "ratios within each repeat (steadier when the machine's load "
            "drifts); `SAMModel / tf-keras SAM` and `SAMModel / minimal` "
            "below 1 mean SAMModel is faster. On JAX, `minimal JAX SAM` is "
            "the shortest Keras-JAX SAM step (the script's "
            "`minimal_jax_sam`), timed beside SAMModel. "
            "Regenerate this section with "
            "`python benchmarks/step_time.py --regenerate-readme`."
        ),
        "",
        (
            "| file | device | backend | model | precision | batch | "
            "Keras SGD ms (img/s) | SAMModel ms (img/s) | SAM/SGD | "
            "tf-keras SGD ms | tf-keras SAM ms | tf-keras SAM/SGD | "
            "SAMModel / tf-keras SAM | minimal JAX SAM ms (img/s) | "
            "SAMModel / minimal |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(record, name, with_rate=False):
        result = record["results"].get(name)
        if result is None:
            return "n/a"
        text = f"{result['median_ms_per_step']:.1f}"
        if with_rate:
            text += f" ({result['images_per_second']:,.0f})"
        return text

    def ratio_cell(record, name):
        value = record["ratios"].get(name)
        if value is None:
            return "n/a"
        paired = record.get("paired_ratios", {}).get(name)
        if paired is None:
            return f"{value:.2f}"
        return f"{value:.2f} ({paired:.2f})"

    for record in records:
        config = record["config"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{record['file']}`",
                    record["device"],
                    record["backend"],
                    config["model"],
                    config["mixed_precision"],
                    str(config["batch_size"]),
                    cell(record, "keras_sgd", True),
                    cell(record, "sam_model", True),
                    ratio_cell(record, "sam_model_over_keras_sgd"),
                    cell(record, "tf_keras_sgd"),
                    cell(record, "tf_keras_sam"),
                    ratio_cell(record, "tf_keras_sam_over_tf_keras_sgd"),
                    ratio_cell(record, "sam_model_over_tf_keras_sam"),
                    cell(record, "minimal_jax_sam", True),
                    ratio_cell(record, "sam_model_over_minimal_jax_sam"),
                ]
            )
            + " |"
        )
    lines += ["", "Commands, commits and dates:", ""]
    for record in records:
        lines.append(
            f"- `{record['file']}`: `{record['command']}` "
            f"(commit {record.get('commit') or 'unknown'}, {record['date']}, "
            f"Keras {record['versions'].get('keras')}, "
            f"{config_steps(record)}{_load_text(record)})"
        )
    lines.append(README_END)
    section = "\n".join(lines)

    from keras_sam.experiments import _run_records

    return _run_records.write_readme_section(
        output_dir, README_BEGIN, README_END, section
    )


def _load_text(record):
    load = record.get("load_average")
    return "" if load is None else f", load average {load:.1f} at the end"


def config_steps(record):
    config = record["config"]
    return (
        f"{config['repeats']} repeats x {config['steps']} steps, "
        f"warm-up {config['warmup']}"
    )


def main(argv=None):
    args = parse_args(argv)
    if args.regenerate_readme:
        print(f"wrote {regenerate_readme(args.output)}")
        return 0
    # Keras reads the backend once, when first imported.
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    import keras_sam
    from keras_sam.experiments import _run_records, _step_timing

    if keras.backend.backend() != args.backend:
        raise RuntimeError(
            f"Keras was loaded with backend {keras.backend.backend()!r}, "
            f"not {args.backend!r}."
        )
    device, accelerator, versions = _run_records.describe_device(
        args.backend
    )
    steps = args.steps or (50 if accelerator else 10)
    print(f"device: {device}; backend: {args.backend}", flush=True)

    rng = np.random.default_rng(args.seed)
    samples = max(steps, args.warmup) * args.batch_size
    size = args.image_size
    x = rng.standard_normal((samples, size, size, 3), dtype=np.float32)
    y = rng.integers(0, args.num_classes, size=samples).astype(np.int32)
    variants, details = build_variants(args, x, y)
    _step_timing.measure(variants, steps, args.warmup, args.repeats)
    results, ratios, paired_ratios = summarize(variants, args.batch_size)

    versions.update(
        keras=keras.__version__,
        keras_sam=keras_sam.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
    )
    if "tf_keras_version" in details:
        versions["tf_keras"] = details.pop("tf_keras_version")
    record = {
        "device": device,
        "backend": args.backend,
        "config": {
            "model": args.model,
            "parameters": details["parameters"],
            "batch_size": args.batch_size,
            "image_shape": [size, size, 3],
            "num_classes": args.num_classes,
            "mixed_precision": args.mixed_precision,
            "rho": args.rho,
            "optimizer": f"SGD(learning_rate={args.learning_rate}, "
            "momentum=0.9)",
            "weight_decay": args.weight_decay,
            "jit_compile": details["jit_compile"],
            "steps": steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "seed": args.seed,
        },
        "results": results,
        "ratios": ratios,
        "paired_ratios": paired_ratios,
        "load_average": _run_records.load_average(),
        "versions": versions,
        "command": shlex.join(
            [
                f"KERAS_BACKEND={args.backend}",
                "python",
                "benchmarks/step_time.py",
            ]
            + list(sys.argv[1:] if argv is None else argv)
        ),
        "commit": _run_records.git_commit(),
        "date": _run_records.now(),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    pixels = "" if size == 32 else f"_{size}px"
    name = (
        f"step_time_{args.backend}_{_step_timing.slug(args.model)}{pixels}"
        f"_{args.mixed_precision}_b{args.batch_size}"
        f"_{_step_timing.slug(device.split(',')[0])}.json"
    )
    path = args.output / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    readme = regenerate_readme(args.output)

    print()
    for variant_name, result in results.items():
        print(
            f"{VARIANT_TITLES[variant_name]:>20}: "
            f"{result['median_ms_per_step']:8.1f} ms/step "
            f"{result['images_per_second']:10.0f} img/s"
        )
    for ratio_name, value in ratios.items():
        print(
            f"{ratio_name}: {value:.3f} (paired: "
            f"{paired_ratios[ratio_name]:.3f})"
        )
    print(f"wrote {path} and {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
