"""Accuracy, overhead and cost of `keras_sam.hessian` and its callbacks.

Three parts, each writing CSV/JSON into `--output`
(`saved_results/measurement/` by default); the README there and the plots
are regenerated from those files every time (`--part report` does only
that).

- `accuracy`: a small CNN (`small-cnn`, width 3, 2,806 parameters)
  trained for `--train-epochs` epochs on the shipped CIFAR-10 sample; its
  dense Hessian on `--probe-samples` training images is built from one
  Hessian-vector product per basis vector and diagonalized by
  `numpy.linalg.eigh`. Against it: the relative error of the top
  eigenvalue from Lanczos (as in `top_eigenvalues`), from power iteration
  (PyHessian's method) and from `scipy.sparse.linalg.eigsh` (ARPACK, at
  several tolerances), versus the number of Hessian-vector products, with
  the dense matrix as the operator; and `top_eigenvalues` itself on the
  model. `accuracy.csv`, `accuracy.json`. Then `linear_stability` on 64
  probe samples, exact (per-sample products) against the sampled
  estimator with 8 and 32 noise batches: `stability.csv`.
- `overhead`: `fit` wall time on the CIFAR-10 sample with each callback
  at its defaults (`max_overhead=0.05`, every epoch) against no callback,
  paired (variants in a rotated order, each repeat from the same initial
  weights): `overhead.csv`.
- `cost`: one call of each function with its defaults on ResNet-20 on
  CPU: Hessian-vector products (in passes over the probe set) and
  seconds: `cost.csv`.
- `cost_landscape`: the same for the second-tier measures (eigenvalue
  density, per-layer curvature, Keskar and adaptive sharpness, lines and
  planes of `keras_sam.landscape`), the arguments of each call in the
  CSV: `cost_landscape.csv`. Not part of `all`.
- `cost_operators`: the curvature operators (`operator="hessian"`,
  `"ggn"`, `"fisher"`, `"empirical_fisher"`) on ResNet-20: one product,
  `top_eigenvalues` and `hessian_trace` (Hutchinson, and Hutch++ for the
  Hessian) with small settings (`--operator-iterations`,
  `--operator-samples`), products and seconds per call and the load
  average around it: `cost_operators.csv`. Not part of `all`.

Example (what made `saved_results/measurement/`):

```
python benchmarks/measure_hessian.py --part all
```
"""

import argparse
import contextlib
import csv
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.sparse import linalg as sparse_linalg  # noqa: E402

from keras_sam import callbacks, hessian, landscape, models  # noqa: E402
from keras_sam.experiments import _run_records, datasets  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

DEFAULT_OUTPUT = REPO_ROOT / "saved_results" / "measurement"
PARTS = (
    "accuracy", "overhead", "cost", "cost_landscape", "cost_operators",
    "report", "all",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=PARTS, default="all")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-samples", type=int, default=256)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--max-hvps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--overhead-model", default="small-cnn")
    parser.add_argument("--overhead-epochs", type=int, default=6)
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--cost-model", default="resnet-20")
    parser.add_argument("--cost-probe-samples", type=int, default=128)
    parser.add_argument("--operator-iterations", type=int, default=10)
    parser.add_argument("--operator-samples", type=int, default=12)
    return parser.parse_args(argv)


# Data and models ---------------------------------------------------------


def cifar_sample():
    (x_train, y_train), _ = datasets.load_cifar10_sample()
    order = np.random.default_rng(0).permutation(len(x_train))
    x_train = x_train[order].astype("float32") / 255.0
    return x_train, y_train[order]


def compiled(name, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    model = models.get_model(name, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@contextlib.contextmanager
def counting_products(probe_size):
    """Counts Hessian-vector products, in passes over the probe set."""
    original = hessian.curvature.Curvature.hvp
    counter = {"passes": 0.0}

    def hvp(self, vector, batches=None):
        for batch, _ in batches or self.batches():
            leaf = keras.tree.flatten(batch[0])[0]
            counter["passes"] += int(keras.ops.shape(leaf)[0]) / probe_size
        return original(self, vector, batches)

    hessian.curvature.Curvature.hvp = hvp
    try:
        yield counter
    finally:
        hessian.curvature.Curvature.hvp = original


# Accuracy ------------------------------------------------------------------


def dense_hessian(model, probe):
    curvature = hessian.curvature.prepare_curvature(model, probe, 128)
    dim = curvature.dim
    matrix = np.zeros((dim, dim))
    basis = np.zeros(dim)
    for i in range(dim):
        basis[i] = 1.0
        matrix[:, i] = curvature.hvp(basis)
        basis[i] = 0.0
    asymmetry = np.abs(matrix - matrix.T).max() / np.abs(matrix).max()
    return (matrix + matrix.T) / 2, float(asymmetry)


def lanczos_prefix_estimates(matrix, max_hvps, seed):
    """The top three Ritz values after each of 1..max_hvps steps from one
    start vector (NaN where fewer exist)."""
    estimates = []
    for m in range(1, max_hvps + 1):
        rng = np.random.default_rng(seed)
        ritz = hessian.linalg.lanczos(
            lambda v: matrix @ v, len(matrix), m, rng
        )
        top = list(ritz[::-1][:3]) + [float("nan")] * 3
        estimates.append([float(v) for v in top[:3]])
    return estimates


def power_estimates(matrix, max_hvps, seed):
    """Power iteration as in PyHessian: the Rayleigh quotient after each
    product."""
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(len(matrix))
    vector /= np.linalg.norm(vector)
    estimates = []
    for _ in range(max_hvps):
        product = matrix @ vector
        estimates.append(float(vector @ product))
        vector = product / np.linalg.norm(product)
    return estimates


def eigsh_runs(matrix, seed):
    """ARPACK at several tolerances: (tol, products, estimate)."""
    rows = []
    start = np.random.default_rng(seed).standard_normal(len(matrix))
    for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0):
        count = {"n": 0}

        def matvec(v, count=count):
            count["n"] += 1
            return matrix @ v

        operator = sparse_linalg.LinearOperator(
            matrix.shape, matvec=matvec, dtype=np.float64
        )
        value = sparse_linalg.eigsh(
            operator, k=1, which="LA", tol=tol, v0=start
        )[0][0]
        rows.append((tol, count["n"], float(value)))
    return rows


def run_accuracy(args):
    x_train, y_train = cifar_sample()
    model = compiled("small-cnn", args.seed, width=3)
    model.fit(
        x_train, y_train, batch_size=128, epochs=args.train_epochs, verbose=0
    )
    probe = (x_train[: args.probe_samples], y_train[: args.probe_samples])
    begin = time.perf_counter()
    matrix, asymmetry = dense_hessian(model, probe)
    dense_seconds = time.perf_counter() - begin
    exact = np.linalg.eigvalsh(matrix)[::-1]
    rows = []

    def add(method, seed, hvps, estimate, parameter="", rank=1):
        reference = exact[rank - 1]
        rows.append(
            {
                "method": method,
                "parameter": parameter,
                "seed": seed,
                "num_hvps": hvps,
                "estimate": estimate,
                "exact": reference,
                "relative_error": abs(estimate - reference) / abs(reference),
            }
        )

    for seed in range(args.seeds):
        for m, values in enumerate(
            lanczos_prefix_estimates(matrix, args.max_hvps, seed), 1
        ):
            add("lanczos", seed, m, values[0])
            for rank in (2, 3):
                if np.isfinite(values[rank - 1]):
                    add(
                        f"lanczos_rank{rank}",
                        seed,
                        m,
                        values[rank - 1],
                        rank=rank,
                    )
        for m, value in enumerate(
            power_estimates(matrix, 2 * args.max_hvps, seed), 1
        ):
            add("power_iteration", seed, m, value)
        for tol, count, value in eigsh_runs(matrix, seed):
            add("scipy_eigsh", seed, count, value, f"tol={tol:g}")
    for seed in range(3):
        for m in (10, 20):
            with counting_products(args.probe_samples) as counter:
                value = hessian.top_eigenvalues(
                    model, probe, num_iterations=m, seed=seed
                )[0]
            add("top_eigenvalues", seed, counter["passes"], float(value))
    write_csv(args.output / "accuracy.csv", rows)
    summary = {
        "model": "small-cnn width 3, trained "
        f"{args.train_epochs} epochs on the CIFAR-10 sample",
        "num_parameters": int(len(matrix)),
        "probe_samples": args.probe_samples,
        "top_eigenvalues": [float(v) for v in exact[:5]],
        "bottom_eigenvalue": float(exact[-1]),
        "dense_hessian_seconds": round(dense_seconds, 1),
        "dense_relative_asymmetry": asymmetry,
    }
    write_json(args.output / "accuracy.json", summary)
    run_stability_accuracy(model, x_train, y_train, args.output)


def run_stability_accuracy(model, x_train, y_train, output):
    probe = (x_train[:64], y_train[:64])
    sharpness = hessian.top_eigenvalues(model, probe, seed=0)[0]
    # lr * sharpness = 1: GD is stable, SGD's fate is decided by Sigma.
    settings = {
        "learning_rate": float(f"{1.0 / sharpness:.3g}"),
        "batch_size": 8,
        "dataset_size": 5000,
    }
    rows = []
    plans = [("exact", None, 0)] + [
        ("sampled", k, s) for k in (8, 32) for s in range(3)
    ]
    for mode, batches, seed in plans:
        begin = time.perf_counter()
        with counting_products(64) as counter:
            result = hessian.linear_stability(
                model,
                probe,
                **settings,
                max_exact_samples=64 if mode == "exact" else 0,
                num_noise_batches=batches,
                seed=seed,
            )
        rows.append(
            {
                "learning_rate": settings["learning_rate"],
                "mode": mode,
                "num_noise_batches": batches or "",
                "seed": seed,
                **{
                    k: result[k]
                    for k in ("sharpness", "non_uniformity", "sgd_growth")
                },
                "probe_passes": round(counter["passes"], 1),
                "seconds": round(time.perf_counter() - begin, 1),
            }
        )
    write_csv(output / "stability.csv", rows)


# Overhead ------------------------------------------------------------------


def overhead_variants(probe):
    small_probe = (probe[0][:32], probe[1][:32])
    return {
        "none": lambda: [],
        "Sharpness": lambda: [callbacks.Sharpness(probe, seed=0)],
        "HessianTrace": lambda: [callbacks.HessianTrace(probe, seed=0)],
        "LinearStability": lambda: [
            callbacks.LinearStability(probe, batch_size=128, seed=0)
        ],
        "NoiseAlignment": lambda: [
            callbacks.NoiseAlignment(probe, batch_size=128, seed=0)
        ],
        "Sharpness(32 probe images)": lambda: [
            callbacks.Sharpness(small_probe, seed=0)
        ],
        "Sharpness(32 probe images, max_overhead=0.15)": lambda: [
            callbacks.Sharpness(small_probe, max_overhead=0.15, seed=0)
        ],
        "Sharpness(max_overhead=None)": lambda: [
            callbacks.Sharpness(probe, max_overhead=None, seed=0)
        ],
    }


def run_overhead(args):
    x_train, y_train = cifar_sample()
    probe = (x_train[: args.probe_samples], y_train[: args.probe_samples])
    variants = overhead_variants(probe)
    names = list(variants)
    # Warm-up: compile the train step and the products once per process.
    warm = compiled(args.overhead_model, args.seed)
    warm.fit(x_train[:256], y_train[:256], batch_size=128, verbose=0)
    hessian.top_eigenvalues(warm, probe, num_iterations=1)
    rows = []
    for repeat in range(args.overhead_repeats):
        shift = repeat % len(names)
        for position, name in enumerate(names[shift:] + names[:shift]):
            model = compiled(args.overhead_model, args.seed)
            measurement = variants[name]()
            begin = time.perf_counter()
            history = model.fit(
                x_train,
                y_train,
                batch_size=128,
                epochs=args.overhead_epochs,
                verbose=0,
                callbacks=measurement,
            )
            seconds = time.perf_counter() - begin
            measured = 0
            spent = 0.0
            if measurement:
                key = measurement[0].log_names[0]
                measured = int(np.sum(np.isfinite(history.history[key])))
                spent = measurement[0]._spent
            rows.append(
                {
                    "variant": name,
                    "repeat": repeat,
                    "position": position,
                    "fit_seconds": round(seconds, 2),
                    "measurements": measured,
                    "callback_seconds": round(spent, 2),
                }
            )
            print(rows[-1], flush=True)
    baseline = {
        r["repeat"]: r["fit_seconds"] for r in rows if r["variant"] == "none"
    }
    for row in rows:
        row["overhead"] = round(
            row["fit_seconds"] / baseline[row["repeat"]] - 1, 4
        )
        # The callback's own share, as its budget counts it.
        row["accounted_overhead"] = round(
            row["callback_seconds"]
            / (row["fit_seconds"] - row["callback_seconds"]),
            4,
        )
    write_csv(args.output / "overhead.csv", rows)


# Cost ----------------------------------------------------------------------


def run_cost(args):
    x_train, y_train = cifar_sample()
    n = args.cost_probe_samples
    probe = hessian.as_probe_set((x_train[:n], y_train[:n]))
    model = compiled(args.cost_model, args.seed)
    model.fit(x_train[:256], y_train[:256], batch_size=128, verbose=0)
    dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    vector = np.random.default_rng(0).standard_normal(dim)
    hessian.hessian_vector_product(model, probe, vector)  # compile
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        hessian.hessian_vector_product(model, probe, vector)
        times.append(time.perf_counter() - begin)
    calls = {
        "hessian_vector_product": lambda: hessian.hessian_vector_product(
            model, probe, vector
        ),
        "top_eigenvalues": lambda: hessian.top_eigenvalues(
            model, probe, seed=0
        ),
        "hessian_trace": lambda: hessian.hessian_trace(model, probe, seed=0),
        "noise_alignment": lambda: hessian.noise_alignment(
            model, probe, batch_size=128, dataset_size=50000, seed=0
        ),
        "linear_stability": lambda: hessian.linear_stability(
            model,
            probe,
            learning_rate=0.1,
            batch_size=128,
            dataset_size=50000,
            seed=0,
        ),
    }
    rows = []
    for name, call in calls.items():
        begin = time.perf_counter()
        with counting_products(n) as counter:
            call()
        rows.append(
            {
                "function": name,
                "model": args.cost_model,
                "num_parameters": dim,
                "probe_samples": n,
                "probe_passes": round(counter["passes"], 1),
                "seconds": round(time.perf_counter() - begin, 1),
                "seconds_per_pass": round(float(np.median(times)), 3),
            }
        )
        print(rows[-1], flush=True)
    write_csv(args.output / "cost.csv", rows)


def run_cost_landscape(args):
    x_train, y_train = cifar_sample()
    n = args.cost_probe_samples
    probe = hessian.as_probe_set((x_train[:n], y_train[:n]))
    model = compiled(args.cost_model, args.seed)
    model.fit(x_train[:256], y_train[:256], batch_size=128, verbose=0)
    other = compiled(args.cost_model, args.seed + 1)
    dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    hessian.top_eigenvalues(model, probe, num_iterations=1)  # compile
    calls = {
        "eigenvalue_density": ("defaults (30 steps, 4 runs)", lambda: (
            hessian.eigenvalue_density(model, probe, seed=0))),
        "hessian_trace per_layer": ("per_layer=True", lambda: (
            hessian.hessian_trace(model, probe, seed=0, per_layer=True))),
        "layer_top_eigenvalues": ("num_iterations=5", lambda: (
            hessian.layer_top_eigenvalues(model, probe, num_iterations=5,
                                          seed=0))),
        "keskar_sharpness": ("defaults (epsilon 1e-3, 10 iterations)",
                             lambda: hessian.keskar_sharpness(
                                 model, probe, seed=0)),
        "adaptive_sharpness worst": ("rho=0.01, linf, 20 steps", lambda: (
            hessian.adaptive_sharpness(model, probe, 0.01, seed=0))),
        "adaptive_sharpness average": ("rho=0.05, 32 draws", lambda: (
            hessian.adaptive_sharpness(model, probe, 0.05, kind="average",
                                       seed=0))),
        "landscape.interpolate": ("defaults (25 points)", lambda: (
            landscape.interpolate(model, model, other, probe))),
        "landscape.loss_surface_1d": ("defaults (25 points)", lambda: (
            landscape.loss_surface_1d(model, probe, seed=0))),
        "landscape.loss_surface_2d": ("defaults (21 x 21 points)", lambda: (
            landscape.loss_surface_2d(model, probe, seed=0))),
    }
    rows = []
    for name, (arguments, call) in calls.items():
        begin = time.perf_counter()
        with counting_products(n) as counter:
            call()
        rows.append({
            "function": name, "arguments": arguments,
            "model": args.cost_model, "num_parameters": dim,
            "probe_samples": n,
            "probe_passes": round(counter["passes"], 1),
            "seconds": round(time.perf_counter() - begin, 1),
        })
        print(rows[-1], flush=True)
    write_csv(args.output / "cost_landscape.csv", rows)


@contextlib.contextmanager
def counting_operator_products():
    """Counts products of any curvature operator over the whole probe
    set (each `Operator.full_product` call is one pass)."""
    operator_class = hessian.operators.Operator
    original = operator_class.full_product
    counter = {"passes": 0.0}

    def full_product(self, vector):
        counter["passes"] += 1
        return original(self, vector)

    operator_class.full_product = full_product
    try:
        yield counter
    finally:
        operator_class.full_product = original


def operator_calls(model, probe, vector, operator, args):
    """`{function: (arguments, call)}` for one operator."""
    iterations, samples = args.operator_iterations, args.operator_samples
    return {
        "curvature_vector_product": ("", lambda: (
            hessian.curvature_vector_product(
                model, probe, vector, operator=operator))),
        "top_eigenvalues": (f"num_iterations={iterations}", lambda: (
            hessian.top_eigenvalues(
                model, probe, num_iterations=iterations, seed=0,
                operator=operator))),
        "hessian_trace": (f"num_samples={samples}", lambda: (
            hessian.hessian_trace(
                model, probe, num_samples=samples, seed=0,
                operator=operator))),
    }


def run_cost_operators(args):
    x_train, y_train = cifar_sample()
    n = args.cost_probe_samples
    probe = hessian.as_probe_set((x_train[:n], y_train[:n]))
    model = compiled(args.cost_model, args.seed)
    model.fit(x_train[:256], y_train[:256], batch_size=128, verbose=0)
    dim = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    vector = np.random.default_rng(0).standard_normal(dim)
    samples = args.operator_samples
    rows = []
    for operator in ("hessian", "ggn", "fisher", "empirical_fisher"):
        hessian.curvature_vector_product(  # compile
            model, probe, vector, operator=operator
        )
        calls = operator_calls(model, probe, vector, operator, args)
        if operator == "hessian":
            calls["hessian_trace hutch++"] = (
                f"num_samples={samples}, method='hutch++'", lambda: (
                    hessian.hessian_trace(
                        model, probe, num_samples=samples, seed=0,
                        method="hutch++")))
        for name, (arguments, call) in calls.items():
            load_before = os.getloadavg()[0]
            begin = time.perf_counter()
            with counting_operator_products() as counter:
                call()
            seconds = time.perf_counter() - begin
            rows.append({
                "function": name, "operator": operator,
                "arguments": arguments, "model": args.cost_model,
                "num_parameters": dim, "probe_samples": n,
                "probe_passes": round(counter["passes"], 1),
                "seconds": round(seconds, 1),
                "seconds_per_pass": round(seconds / counter["passes"], 2),
                "load_average": round(
                    (load_before + os.getloadavg()[0]) / 2, 1
                ),
            })
            print(rows[-1], flush=True)
    write_csv(args.output / "cost_operators.csv", rows)


# Files, plots, README --------------------------------------------------------


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def record_run(args, part, commit):
    """Records how and where `part` was made in `runs.json`; `commit` is
    the one checked out when the run started (the code that ran)."""
    path = args.output / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[part] = {
        "command": "python benchmarks/measure_hessian.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "hardware": f"{_run_records.processor_name()}, "
        f"{os.cpu_count()} cores visible",
        "software": f"Python {platform.python_version()}, Keras "
        f"{keras.__version__}, backend {keras.backend.backend()}",
        "data": "shipped CIFAR-10 sample (keras_sam/experiments/data), "
        "JPEG copy",
    }
    write_json(path, runs)


def median_error(rows, method, hvps):
    values = [
        float(r["relative_error"])
        for r in rows
        if r["method"] == method and float(r["num_hvps"]) == hvps
    ]
    return float(np.median(values)) if values else float("nan")


def first_below(rows, method, target, seeds):
    """Fewest products after which every seed is within `target`."""
    counts = sorted(
        {int(float(r["num_hvps"])) for r in rows if r["method"] == method}
    )
    for count in counts:
        errors = [
            float(r["relative_error"])
            for r in rows
            if r["method"] == method and int(float(r["num_hvps"])) == count
        ]
        if len(errors) == seeds and max(errors) <= target:
            return count
    return None


def plot(output):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    accuracy = _run_records.read_csv(output / "accuracy.csv", missing_ok=True)
    if accuracy:
        figure, axes = pyplot.subplots(figsize=(6, 4))
        for method, style in (("lanczos", "-"), ("power_iteration", "--")):
            counts = sorted(
                {int(r["num_hvps"]) for r in accuracy if r["method"] == method}
            )
            medians = [median_error(accuracy, method, c) for c in counts]
            axes.semilogy(
                counts,
                np.maximum(medians, 1e-12),
                style,
                label=f"{method} (median of seeds)",
            )
        arpack = [r for r in accuracy if r["method"] == "scipy_eigsh"]
        axes.semilogy(
            [float(r["num_hvps"]) for r in arpack],
            [max(float(r["relative_error"]), 1e-12) for r in arpack],
            "o",
            alpha=0.5,
            label="scipy eigsh (tolerances)",
        )
        axes.axhline(1e-3, color="grey", lw=0.8)
        axes.set_xlabel("Hessian-vector products")
        axes.set_ylabel("relative error, top eigenvalue (floor 1e-12)")
        axes.set_xlim(0, 80)
        axes.legend()
        figure.tight_layout()
        figure.savefig(output / "accuracy.png", dpi=120)
        pyplot.close(figure)
    overhead = _run_records.read_csv(output / "overhead.csv", missing_ok=True)
    if overhead:
        names = list(dict.fromkeys(r["variant"] for r in overhead))
        figure, axes = pyplot.subplots(figsize=(7, 5))
        for i, name in enumerate(names):
            chosen = [r for r in overhead if r["variant"] == name]
            own = [100 * float(r["accounted_overhead"]) for r in chosen]
            wall = [100 * float(r["overhead"]) for r in chosen]
            axes.bar(
                i,
                np.median(own),
                color="C0",
                label="own time (median)" if i == 0 else None,
            )
            axes.plot(
                [i] * len(wall),
                wall,
                "k.",
                label="wall time, per repeat" if i == 0 else None,
            )
        axes.axhline(5, color="grey", lw=0.8)
        axes.set_xticks(range(len(names)))
        axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        axes.set_ylabel("overhead vs no callback (%)")
        axes.set_yscale("symlog", linthresh=10)
        axes.set_ylim(-30, 1000)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(output / "overhead.png", dpi=120)
        pyplot.close(figure)


def write_readme(output, seeds, overhead_model, overhead_epochs, probe_samples):
    runs = (
        json.loads((output / "runs.json").read_text())
        if (output / "runs.json").exists()
        else {}
    )
    lines = [
        "# Measurements of keras_sam.hessian and its callbacks",
        "",
        "Generated by `benchmarks/measure_hessian.py` from the CSV/JSON",
        "files in this folder (do not edit by hand; rerun with",
        "`--part report`). Each part lists the command, commit, hardware",
        "and date that produced it.",
        "",
    ]

    def provenance(part):
        run = runs.get(part)
        if not run:
            return ["(not run yet)", ""]
        return [
            f"- command: `{run['command']}`",
            f"- commit: `{run['commit']}`, date: {run['date']}",
            f"- hardware: {run['hardware']}",
            f"- software: {run['software']}",
            f"- data: {run['data']}",
            "",
        ]

    accuracy = _run_records.read_csv(output / "accuracy.csv", missing_ok=True)
    lines += ["## Accuracy of the top eigenvalue (`accuracy.csv`)", ""]
    lines += provenance("accuracy")
    if accuracy:
        summary = json.loads((output / "accuracy.json").read_text())
        lines += [
            f"Model: {summary['model']}, {summary['num_parameters']} "
            f"parameters; probe: {summary['probe_samples']} training "
            "images. Dense Hessian from one product per basis vector "
            f"({summary['dense_hessian_seconds']} s, relative asymmetry "
            f"{summary['dense_relative_asymmetry']:.1e}); its top "
            "eigenvalues: "
            + ", ".join(f"{v:.4g}" for v in summary["top_eigenvalues"])
            + f"; smallest {summary['bottom_eigenvalue']:.3g}.",
            "",
            f"Median relative error over {seeds} random start vectors "
            "(operator: the dense matrix):",
            "",
            "| products | Lanczos (top_eigenvalues) | power iteration | "
            "Lanczos, 2nd | Lanczos, 3rd |",
            "|---:|---:|---:|---:|---:|",
        ]
        for count in (5, 10, 15, 20, 30, 40, 60):
            errors = [
                median_error(accuracy, method, count)
                for method in (
                    "lanczos",
                    "power_iteration",
                    "lanczos_rank2",
                    "lanczos_rank3",
                )
            ]
            lines.append(
                f"| {count} | " + " | ".join(f"{e:.1e}" for e in errors) + " |"
            )
        lanczos = first_below(accuracy, "lanczos", 1e-3, seeds)
        power = first_below(accuracy, "power_iteration", 1e-3, seeds)
        third = first_below(accuracy, "lanczos_rank3", 1e-3, seeds)
        lines += [
            "",
            f"Every seed within 1e-3: Lanczos after {lanczos} products "
            f"(third eigenvalue: {third}), power iteration after {power}.",
            "",
            "`scipy.sparse.linalg.eigsh` (ARPACK, `k=1`, `which='LA'`, "
            "default `ncv`) at several tolerances, median over seeds:",
            "",
            "| tol | products | relative error |",
            "|---|---:|---:|",
        ]
        tolerances = list(
            dict.fromkeys(
                r["parameter"] for r in accuracy if r["method"] == "scipy_eigsh"
            )
        )
        for tol in tolerances:
            chosen = [
                r
                for r in accuracy
                if r["method"] == "scipy_eigsh" and r["parameter"] == tol
            ]
            lines.append(
                f"| {tol[4:]} | "
                f"{np.median([float(r['num_hvps']) for r in chosen]):.0f} | "
                f"{np.median([float(r['relative_error']) for r in chosen]):.1e}"
                " |"
            )
        direct = [r for r in accuracy if r["method"] == "top_eigenvalues"]
        lines += [
            "",
            "`top_eigenvalues(model, probe, num_iterations=m)` on the model "
            "(real products, float32):",
            "",
            "| m | seed | relative error |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {float(r['num_hvps']):.0f} | {r['seed']} | "
            f"{float(r['relative_error']):.1e} |"
            for r in direct
        ]
        lines += ["", "![accuracy](accuracy.png)", ""]
    stability = _run_records.read_csv(output / "stability.csv", missing_ok=True)
    if stability:
        lines += [
            "## Sampled against exact `linear_stability` (`stability.csv`)",
            "",
            "Made by the accuracy part (same command, commit and machine).",
            "",
            "Same model, 64 probe images, learning rate "
            f"{stability[0]['learning_rate']} (1 / sharpness), batch 8, "
            "dataset size 5,000. `exact`: per-sample products; `sampled`: "
            "noise batches of 8 probe images.",
            "",
            "| mode | noise batches | seed | sharpness | non_uniformity | "
            "sgd_growth | probe passes | seconds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['mode']} | {r['num_noise_batches']} | {r['seed']} | "
            f"{float(r['sharpness']):.4g} | "
            f"{float(r['non_uniformity']):.4g} | "
            f"{float(r['sgd_growth']):.3g} | {r['probe_passes']} | "
            f"{r['seconds']} |"
            for r in stability
        ]
        lines.append("")
    overhead = _run_records.read_csv(output / "overhead.csv", missing_ok=True)
    lines += ["## Overhead of the callbacks in `fit` (`overhead.csv`)", ""]
    lines += provenance("overhead")
    if overhead:
        lines += [
            "Each callback at its defaults (`max_overhead=0.05`, measured "
            "every epoch when the budget allows) against no callback, on "
            f"`{overhead_model}`, {overhead_epochs} epochs of the 5,000 "
            f"sample images, batch 128, {probe_samples} probe images "
            "unless said otherwise; paired runs from the same initial "
            "weights, variants in an order rotated per repeat. `wall "
            "time`: the median over repeats of the fit time over the "
            "paired `none` run's, minus one; on this shared 2-core "
            "machine the runs without any measurement spread by tens of "
            "percent, so it is noise-dominated. `own time`: the "
            "callback's measured time over the rest of `fit`, which is "
            "what `max_overhead` bounds.",
            "",
            "| variant | wall time | own time | measurements per run | "
            "callback seconds per run | fit seconds per run |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in dict.fromkeys(r["variant"] for r in overhead):
            chosen = [r for r in overhead if r["variant"] == name]
            wall = np.median([float(r["overhead"]) for r in chosen])
            own = np.median([float(r["accounted_overhead"]) for r in chosen])
            lines.append(
                f"| {name} | {100 * wall:+.1f}% | {100 * own:.1f}% | "
                f"{'/'.join(r['measurements'] for r in chosen)} | "
                f"{'/'.join(r['callback_seconds'] for r in chosen)} | "
                f"{'/'.join(r['fit_seconds'] for r in chosen)} |"
            )
        lines += ["", "![overhead](overhead.png)", ""]
    cost = _run_records.read_csv(output / "cost.csv", missing_ok=True)
    lines += ["## Cost of one call (`cost.csv`)", ""]
    lines += provenance("cost")
    if cost:
        lines += [
            f"Model {cost[0]['model']} ({cost[0]['num_parameters']} "
            f"parameters), {cost[0]['probe_samples']} probe images, "
            "defaults; one product over the probe set takes "
            f"{cost[0]['seconds_per_pass']} s.",
            "",
            "| function | products (probe passes) | seconds |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {r['function']} | {r['probe_passes']} | {r['seconds']} |"
            for r in cost
        ]
        lines.append("")
    second = _run_records.read_csv(
        output / "cost_landscape.csv", missing_ok=True
    )
    if second:
        lines += ["## Cost of the second-tier measures "
                  "(`cost_landscape.csv`)", ""]
        lines += provenance("cost_landscape")
        lines += [
            f"Model {second[0]['model']} ({second[0]['num_parameters']} "
            f"parameters), {second[0]['probe_samples']} probe images; "
            "products are Hessian-vector products only (losses and "
            "gradients are not counted).",
            "",
            "| function | arguments | products (probe passes) | seconds |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {r['function']} | {r['arguments']} | {r['probe_passes']} | "
            f"{r['seconds']} |"
            for r in second
        ]
        lines.append("")
    operators = _run_records.read_csv(
        output / "cost_operators.csv", missing_ok=True
    )
    if operators:
        lines += ["## Cost of the curvature operators "
                  "(`cost_operators.csv`)", ""]
        lines += provenance("cost_operators")
        lines += [
            f"Model {operators[0]['model']} "
            f"({operators[0]['num_parameters']} parameters), "
            f"{operators[0]['probe_samples']} probe images; a product is "
            "one pass of the operator over the probe set (for the GGN and "
            "Fisher: a Jacobian-vector and a vector-Jacobian product of "
            "the network output per microbatch; for the Hessian: double "
            "backpropagation). Small settings, run on a shared machine: "
            "`load average` is the 1-minute load (mean of before and "
            "after the call) on its 2 cores.",
            "",
            "| function | operator | arguments | products (probe passes) | "
            "seconds | seconds per product | load average |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['function']} | {r['operator']} | {r['arguments']} | "
            f"{r['probe_passes']} | {r['seconds']} | "
            f"{r['seconds_per_pass']} | {r['load_average']} |"
            for r in operators
        ]
        lines.append("")
    (output / "README.md").write_text("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    parts = (
        ("accuracy", "overhead", "cost")
        if args.part == "all"
        else ((args.part,) if args.part != "report" else ())
    )
    commit = _run_records.git_commit()
    for part in parts:
        {"accuracy": run_accuracy, "overhead": run_overhead, "cost": run_cost,
         "cost_landscape": run_cost_landscape,
         "cost_operators": run_cost_operators}[part](args)
        record_run(args, part, commit)
    plot(args.output)
    write_readme(
        args.output,
        args.seeds,
        args.overhead_model,
        args.overhead_epochs,
        args.probe_samples,
    )


if __name__ == "__main__":
    main()
