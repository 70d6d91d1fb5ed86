"""Weights after 3 SAM steps, saved bit for bit, to compare two versions.

Trains a small model with BatchNorm, dropout and an L2 regularizer for 3
steps in each case (SAM, ASAM, m-sharpness splits, mixed precision) and
saves every weight to an `.npz`; `--compare a.npz b.npz` reports any
array that differs in even one bit. Used to check that a refactor of the
SAM step changes nothing (issue 11):

    KERAS_BACKEND=jax python benchmarks/bitwise_fingerprint.py \
        --output before.npz
    ... change the code, run again with --output after.npz ...
    python benchmarks/bitwise_fingerprint.py --compare before.npz after.npz
"""

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CASES = {
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5, "adaptive": True},
    "splits": {"rho": 0.05, "num_batch_splits": 2},
    "rho0": {"rho": 0.0},
    "mixed": {"rho": 0.05, "policy": "mixed"},
}


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
        policy = case.pop("policy", None)
        if policy == "mixed":
            policy = (
                "mixed_bfloat16" if keras.backend.backend() == "jax"
                else "mixed_float16"
            )
        keras.config.set_dtype_policy(policy or "float32")
        keras.utils.set_random_seed(1)
        model = keras_sam.SAMModel(_model(keras), **case)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = model.fit(
            x, y, batch_size=8, epochs=1, shuffle=False, verbose=0
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
