"""How good is `linear_stability`'s top-eigenspace growth? Against the full map.

A `Dense(width, tanh) -> Dense(1)` network on 3 inputs is put at an
interpolating minimum of `"mse"` (its targets are its own outputs), so the
per-sample Hessians are the Gauss-Newton terms `2 J_i^T J_i`. They are
built densely (one Hessian-vector product per parameter and sample), and
for SGD with batch size `B` out of `N` the learning rate at which the
exact mean-square growth (`keras_sam.hessian.sgd_second_moment_growth`,
full space) turns positive is compared with the one from the Hessians
projected on the top `k` eigenvectors of `H` (what `linear_stability`
computes with `num_directions=k`), and, without momentum, with Wu et
al.'s sufficient bound. Each critical learning rate is found by
bisection to 0.1%.

    python benchmarks/stability_subspace.py            # width 4, 21 params
    python benchmarks/stability_subspace.py --width 6  # 31 params, slower

Writes `saved_results/stability_subspace/stability_subspace_w<width>.csv`,
one row per (momentum, method). Width 4 took 5 minutes on 2 busy cores
(the full map with momentum is a 903 x 903 eigenproblem per bisection
step).
"""

import argparse
import csv
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import hessian  # noqa: E402
from keras_sam.hessian import curvature  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def per_sample_hessians(width, num_samples, seed):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(width, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(num_samples, 3)).astype("float32")
    y = model.predict(x, verbose=0)
    loss = curvature.prepare_curvature(model, (x, y), 128)
    units = np.eye(loss.dim)
    hessians = []
    for i in range(num_samples):
        batch = loss.batches(np.array([i]))
        columns = [loss.hvp(unit, batch) for unit in units]
        hessians.append(np.stack(columns, axis=1))
    hessians = np.stack(hessians)
    return (hessians + hessians.transpose(0, 2, 1)) / 2


def wu_growth(hessians, learning_rate, batch_size):
    n = len(hessians)
    h = hessians.mean(axis=0)
    sigma = np.mean(hessians @ hessians, axis=0) - h @ h
    factor = (n - batch_size) / (batch_size * (n - 1))
    step = np.eye(len(h)) - learning_rate * h
    m = step @ step + learning_rate**2 * factor * sigma
    return np.linalg.eigvalsh(m)[-1] - 1


def critical(growth, upper, tolerance=1e-3):
    """The learning rate in (0, upper) where `growth` turns positive."""
    low, high = 1e-3 * upper, upper
    while high / low - 1 > tolerance:
        middle = np.sqrt(low * high)
        if growth(middle) > 1e-9:
            high = middle
        else:
            low = middle
    return np.sqrt(low * high)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hessians = per_sample_hessians(args.width, args.num_samples, args.seed)
    dim = hessians.shape[1]
    eigenvalues, eigenvectors = np.linalg.eigh(hessians.mean(axis=0))
    rows = []
    for momentum in (0.0, 0.9):
        upper = hessian.gd_stability_threshold(1.0, momentum) / eigenvalues[-1]

        def growth_in(basis, lr, momentum=momentum):
            projected = np.einsum("ia,sij,jb->sab", basis, hessians, basis)
            return hessian.sgd_second_moment_growth(
                projected, lr, args.batch_size, momentum=momentum
            )

        begin = time.perf_counter()
        exact = critical(lambda lr: growth_in(np.eye(dim), lr), upper)
        seconds = time.perf_counter() - begin
        methods = [("full", dim, exact, seconds)]
        if momentum == 0.0:
            wu = critical(
                lambda lr: wu_growth(hessians, lr, args.batch_size), upper
            )
            methods.append(("wu_bound", dim, wu, 0.0))
        for k in (1, 2, 4, 8):
            basis = eigenvectors[:, -k:]
            begin = time.perf_counter()
            rate = critical(lambda lr, basis=basis: growth_in(basis, lr), upper)
            methods.append((f"top_{k}", k, rate, time.perf_counter() - begin))
        for method, directions, rate, seconds in methods:
            rows.append(
                {
                    "width": args.width,
                    "parameters": dim,
                    "num_samples": args.num_samples,
                    "batch_size": args.batch_size,
                    "seed": args.seed,
                    "momentum": momentum,
                    "method": method,
                    "directions": directions,
                    "critical_learning_rate": f"{rate:.6g}",
                    "relative_error": f"{rate / exact - 1:+.4f}",
                    "gd_threshold_learning_rate": f"{upper:.6g}",
                    "seconds": f"{seconds:.1f}",
                }
            )
            print(rows[-1], flush=True)
    out = ROOT / "saved_results" / "stability_subspace"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stability_subspace_w{args.width}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
