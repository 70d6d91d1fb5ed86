"""Weights after 3 SAM steps, saved bit for bit, to compare two versions.

Trains a small model with BatchNorm, dropout and an L2 regularizer for 3
steps in each case (SAM, ASAM, every rule of `keras_sam.rules`,
m-sharpness and shared splits, rho 0, a rho schedule, a perturbed subset,
mixed precision) and
saves every weight to an `.npz`; `--compare a.npz b.npz` reports any
array that differs in even one bit. Used to check that a refactor of the
SAM step changes nothing (issue 11):

It runs the installed `keras_sam` (`pip install -e .` of the checkout, or
`PYTHONPATH=<checkout>`):

    KERAS_BACKEND=jax python benchmarks/bitwise_fingerprint.py \
        --output before.npz
    ... change the code, run again with --output after.npz ...
    python benchmarks/bitwise_fingerprint.py --compare before.npz after.npz
"""

import argparse
import os
import sys

import numpy as np

CASES = {
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5, "adaptive": True},
    "splits": {"rho": 0.05, "num_batch_splits": 2},
    "shared_splits": {"rho": 0.05, "num_batch_splits": 2,
                      "split_perturbation": "shared"},
    "rho0": {"rho": 0.0},
    "rho_schedule": {"rho": "schedule"},
    "mixed": {"rho": 0.05, "policy": "mixed"},
    "perturb_subset": {"rho": 0.05, "perturb": "normalization"},
    # The rules, by class name in keras_sam's rule module and arguments.
    "gsam": {"rho": 0.05, "rule": ("GSAM", {"alpha": 0.3})},
    "friendly_sam": {"rho": 0.05, "rule": ("FriendlySAM", {})},
    "look_sam": {"rho": 0.05, "rule": ("LookSAM", {"every": 2})},
    "randomized_sam": {"rho": 0.05,
                       "rule": ("RandomizedSAM", {"probability": 0.5})},
    "late_sam": {"rho": 0.05, "rule": ("LateSAM", {"start_step": 1})},
    "ae_sam": {"rho": 0.05, "rule": ("AESAM", {"total_steps": 3})},
    "esam": {"rho": 0.05, "rule": ("ESAM", {})},
    "momentum_sam": {"rho": 0.3, "rule": ("MomentumSAM", {})},
    "look_sam_splits": {"rho": 0.05, "num_batch_splits": 2,
                        "rule": ("LookSAM", {"every": 2})},
    # The trajectory-loss rules (issue 28). SAF's batches carry indices
    # 0-7 in every step, so with one step per epoch each step reads the
    # outputs of the step before.
    "saf": {"rho": 0.05, "indexed": True,
            "rule": ("SAF", {"num_samples": 8, "num_classes": 5,
                             "steps_per_epoch": 1, "epochs_back": 1,
                             "start_epoch": 1})},
    "mesa": {"rho": 0.05, "rule": ("MESA", {"start_step": 1,
                                            "decay": 0.5})},
}


def _rule(keras_sam, name, arguments):
    module = getattr(keras_sam, "rules", None) or keras_sam.variants
    return getattr(module, name)(**arguments)


def _has_rule(keras_sam, name):
    module = getattr(keras_sam, "rules", None) or keras_sam.variants
    return hasattr(module, name)


def _arguments(keras, keras_sam, case):
    """`SAMModel` keyword arguments for a case (the rule's keyword is
    `variant` before the rename, `rule` after)."""
    case = dict(case)
    if case["rho"] == "schedule":
        case["rho"] = keras.optimizers.schedules.PolynomialDecay(0.1, 3, 0.01)
    if case.get("perturb") == "normalization":
        case["perturb"] = keras_sam.NORMALIZATION_LAYERS
    if "rule" in case:
        rule = _rule(keras_sam, *case.pop("rule"))
        keyword = "rule" if hasattr(keras_sam, "rules") else "variant"
        case[keyword] = rule
    return case


def _model(keras):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        4, 3, kernel_regularizer=keras.regularizers.L2(1e-3)
    )(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.25, seed=3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def fingerprint():
    import keras

    import keras_sam

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=24)
    arrays = {}
    for name, case in CASES.items():
        case = dict(case)
        if "rule" in case and not _has_rule(keras_sam, case["rule"][0]):
            continue  # a version before the rule
        inputs = x
        if case.pop("indexed", False):
            inputs = {"inputs": x, "sample_index": np.arange(len(x)) % 8}
        policy = case.pop("policy", None)
        if policy == "mixed":
            policy = (
                "mixed_bfloat16" if keras.backend.backend() == "jax"
                else "mixed_float16"
            )
        keras.config.set_dtype_policy(policy or "float32")
        keras.utils.set_random_seed(1)
        model = keras_sam.SAMModel(
            _model(keras), **_arguments(keras, keras_sam, case)
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = model.fit(
            inputs, y, batch_size=8, epochs=1, shuffle=False, verbose=0
        )
        keras.config.set_dtype_policy("float32")
        for index, weight in enumerate(model.weights):
            key = f"{name}/{index}/{weight.path}"
            arrays[key] = keras.ops.convert_to_numpy(weight.value)
        for key, values in history.history.items():
            arrays[f"{name}/logs/{key}"] = np.asarray(values)
    return arrays


def _raw(array):
    return array.dtype.str, array.shape, array.tobytes()


def compare(first, second):
    a, b = np.load(first), np.load(second)
    differing = []
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            differing.append(f"{key}: only in one file")
        elif _raw(a[key]) != _raw(b[key]):
            differing.append(f"{key}: differs")
    for line in differing:
        print(line)
    print(f"{len(a.files)} arrays, {len(differing)} differ")
    return 1 if differing else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--compare", nargs=2)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    np.savez(args.output, **fingerprint())
    return 0


if __name__ == "__main__":
    sys.exit(main())
