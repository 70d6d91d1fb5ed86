"""
Title: Flat and sharp minima: small and large batches (Keskar et al.)
Author: keras-sam contributors
Date created: 2026/12/02
Last modified: 2026/12/02
Description: The same network trained with a small and a large batch for
the same number of epochs, both minima measured with every sharpness
measure in keras-sam, the loss along the line between them and around
each, and the generalization gap of each, over three seeds.
Time: about 20 minutes of wall time on 2 shared CPU cores (`--quick`:
about a minute).
"""

"""
## Introduction

Keskar et al. (2017) trained the same networks with small batches (SB,
256 samples) and large batches (LB, 10% of the training set) for the
same number of epochs, and found that LB training ends at *sharper*
minima that generalize worse. Their evidence: the training and test loss
along the line from the SB to the LB minimum (their Figure 3, after
Goodfellow et al., 2015) rise steeply around the LB end, and their
epsilon-sharpness is larger at the LB minima. The seed lecture of this
package rests the flat-minima hypothesis on that figure.

This tutorial repeats the experiment at laptop scale, and measures both
minima with every measure keras-sam has, since no single sharpness
number predicts generalization reliably (Andriushchenko et al., 2023):

- the top Hessian eigenvalue and the trace (`keras_sam.hessian`);
- the eigenvalue density (stochastic Lanczos quadrature);
- Keskar's epsilon-sharpness (`keskar_sharpness`, epsilon 1e-3);
- adaptive worst-case (linf) and average-case sharpness
  (`adaptive_sharpness`, rho 0.01 and 0.05);
- the training and test loss along the SB-to-LB line and along a random
  filter-normalized direction around each minimum (Li et al., 2018;
  `keras_sam.landscape`).

Setup: 2,000 images of the shipped CIFAR-10 sample, a small CNN without
BatchNorm (so the weights alone define the function, and interpolated
weights are a network of the same kind), Adam with learning rate 1e-3
for both runs, as in Keskar et al.; SB batch 50 (40 steps per epoch), LB
batch 500 (a quarter of the data, 4 steps per epoch), **the same 40
epochs** (so LB makes a tenth of the steps, as in the paper). Three seeds;
each seed changes the initial weights (shared by its SB and LB runs) and
the data order. Every measure is taken on 500 training images (the
probe) in inference mode; test numbers on 1,000 test images.

## Setup
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import time

import keras
import make_plots
import numpy as np
import tutorial_utils

import keras_sam
from keras_sam.experiments import datasets

run = tutorial_utils.Run(
    "06_flat_vs_sharp_minima",
    "Small versus large batch: the minima's sharpness and generalization.",
)

if run.quick:
    SEEDS, EPOCHS, TRAIN_SIZE, TEST_SIZE, PROBE_SIZE = [0], 1, 200, 100, 50
    SB, LB, POINTS, DENSITY_STEPS, DENSITY_RUNS = 20, 100, 5, 5, 1
    LANCZOS_STEPS, TRACE_SAMPLES = 5, 4
else:
    SEEDS, EPOCHS, TRAIN_SIZE, TEST_SIZE, PROBE_SIZE = (
        [0, 1, 2], 40, 2000, 1000, 500
    )
    SB, LB, POINTS, DENSITY_STEPS, DENSITY_RUNS = 50, 500, 25, 30, 2
    LANCZOS_STEPS, TRACE_SAMPLES = 20, 16
LEARNING_RATE, EPSILON, RHO_WORST, RHO_AVERAGE = 1e-3, 1e-3, 0.01, 0.05

(x_train, y_train), (x_test, y_test) = datasets.load_cifar10_sample()
x_train = x_train[:TRAIN_SIZE].astype("float32") / 255.0
y_train = y_train[:TRAIN_SIZE]
x_test = x_test[:TEST_SIZE].astype("float32") / 255.0
y_test = y_test[:TEST_SIZE]
probe = (x_train[:PROBE_SIZE], y_train[:PROBE_SIZE])
test_probe = (x_test[:PROBE_SIZE], y_test[:PROBE_SIZE])


def make_model():
    """A small CNN without BatchNorm: 25,578 weights."""
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def compiled(model):
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


"""
## Train both minima

`fit(shuffle=True)` after `keras.utils.set_random_seed(seed)`: the order
depends on the seed; SB and LB start from the same weights.
"""


def train(seed, batch_size, initial_weights):
    keras.utils.set_random_seed(seed)
    model = compiled(make_model())
    model.set_weights(initial_weights)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=EPOCHS,
              shuffle=True, verbose=0)
    return model, time.perf_counter() - start


"""
## Measure each minimum

Train loss and error on the whole training set, test loss and error on
the test set; the generalization gap is test minus train.
"""


def measure(model, seed, regime, batch_size, seconds):
    train_loss, train_accuracy = model.evaluate(
        x_train, y_train, batch_size=500, verbose=0)
    test_loss, test_accuracy = model.evaluate(
        x_test, y_test, batch_size=500, verbose=0)
    top = keras_sam.hessian.top_eigenvalues(
        model, probe, num_iterations=LANCZOS_STEPS, seed=seed)[0]
    trace = keras_sam.hessian.hessian_trace(
        model, probe, num_samples=TRACE_SAMPLES, seed=seed)
    keskar = keras_sam.hessian.keskar_sharpness(
        model, probe, epsilon=EPSILON, seed=seed)
    worst = keras_sam.hessian.adaptive_sharpness(
        model, probe, rho=RHO_WORST, kind="worst", seed=seed)
    average = keras_sam.hessian.adaptive_sharpness(
        model, probe, rho=RHO_AVERAGE, kind="average", seed=seed)
    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    return {
        "seed": seed, "regime": regime, "batch_size": batch_size,
        "epochs": EPOCHS, "steps": EPOCHS * -(-TRAIN_SIZE // batch_size),
        "train_loss": train_loss, "train_error": 1.0 - train_accuracy,
        "test_loss": test_loss, "test_error": 1.0 - test_accuracy,
        "gap_loss": test_loss - train_loss,
        "gap_error": train_accuracy - test_accuracy,
        "top_eigenvalue": float(top), "hessian_trace": trace["trace"],
        "hessian_trace_stderr": trace["trace_stderr"],
        "keskar_sharpness": keskar["sharpness"],
        "adaptive_worst_sharpness": worst["sharpness"],
        "adaptive_average_sharpness": average["sharpness"],
        "weight_norm": float(np.linalg.norm(weights)),
        "train_seconds": seconds,
    }


def density_rows(model, seed, regime):
    density = keras_sam.hessian.eigenvalue_density(
        model, probe, num_steps=DENSITY_STEPS, num_runs=DENSITY_RUNS,
        seed=seed)
    return [
        {"seed": seed, "regime": regime, "run": r, "node": node,
         "weight": weight}
        for r in range(DENSITY_RUNS)
        for node, weight in zip(density["nodes"][r], density["weights"][r])
    ]


"""
## Along the line and around each minimum

`interpolate` evaluates `(1 - alpha) w_SB + alpha w_LB` for alpha in
[-0.5, 1.5] (Keskar's Figure 3); `loss_surface_1d` evaluates
`w + alpha d` for a random filter-normalized direction `d` (each filter
of `d` scaled to the norm of the weights' filter, biases not moved), the
same seed for both minima. Both on the training probe and the test
probe; the model is never changed.
"""


def line_rows(small, large, seed):
    rows = {}
    for split, data in (("train", probe), ("test", test_probe)):
        line = keras_sam.landscape.interpolate(
            small, small, large, data, num_points=2 * POINTS - 1,
            alpha_range=(-0.5, 1.5))
        rows[split] = line
    return [
        {"seed": seed, "alpha": alpha,
         "train_loss": rows["train"]["loss"][i],
         "test_loss": rows["test"]["loss"][i],
         "train_accuracy": rows["train"]["accuracy"][i],
         "test_accuracy": rows["test"]["accuracy"][i]}
        for i, alpha in enumerate(rows["train"]["alpha"])
    ]


def surface_rows(model, seed, regime):
    direction = keras_sam.landscape.filter_normalized_direction(
        model, seed=seed)
    lines = {
        split: keras_sam.landscape.loss_surface_1d(
            model, data, direction, num_points=POINTS, extent=1.0)
        for split, data in (("train", probe), ("test", test_probe))
    }
    return [
        {"seed": seed, "regime": regime, "alpha": alpha,
         "train_loss": lines["train"]["loss"][i],
         "test_loss": lines["test"]["loss"][i]}
        for i, alpha in enumerate(lines["train"]["alpha"])
    ]


minima, densities, lines, surfaces = [], [], [], []
for seed in SEEDS:
    keras.utils.set_random_seed(seed)
    initial_weights = make_model().get_weights()
    models = {}
    for regime, batch_size in (("small", SB), ("large", LB)):
        model, seconds = train(seed, batch_size, initial_weights)
        models[regime] = model
        minima.append(measure(model, seed, regime, batch_size, seconds))
        densities += density_rows(model, seed, regime)
        surfaces += surface_rows(model, seed, regime)
        row = minima[-1]
        print(
            f"seed {seed} {regime:5s} batch {batch_size}: train error "
            f"{row['train_error']:.3f}, test error {row['test_error']:.3f}, "
            f"gap {row['gap_loss']:.3f} (loss), top eigenvalue "
            f"{row['top_eigenvalue']:.1f}, Keskar "
            f"{row['keskar_sharpness']:.2f}, {seconds:.0f} s"
        )
    lines += line_rows(models["small"], models["large"], seed)

"""
## Results
"""

MINIMA_FIELDS = [
    "seed", "regime", "batch_size", "epochs", "steps", "train_loss",
    "train_error", "test_loss", "test_error", "gap_loss", "gap_error",
    "top_eigenvalue", "hessian_trace", "hessian_trace_stderr",
    "keskar_sharpness", "adaptive_worst_sharpness",
    "adaptive_average_sharpness", "weight_norm", "train_seconds",
]
run.write_csv("minima.csv", minima, MINIMA_FIELDS)
run.write_csv("density.csv", densities,
              ["seed", "regime", "run", "node", "weight"])
run.write_csv("interpolation.csv", lines,
              ["seed", "alpha", "train_loss", "test_loss", "train_accuracy",
               "test_accuracy"])
run.write_csv("surfaces.csv", surfaces,
              ["seed", "regime", "alpha", "train_loss", "test_loss"])
make_plots.plot_flat_vs_sharp(run.output_dir)

summary = {}
for key in MINIMA_FIELDS[5:-2]:
    small = np.array([r[key] for r in minima if r["regime"] == "small"])
    large = np.array([r[key] for r in minima if r["regime"] == "large"])
    summary[key] = {"small_mean": float(small.mean()),
                    "large_mean": float(large.mean()),
                    "large_minus_small": (large - small).tolist()}
    print(f"{key:28s} SB {small.mean():10.4f}  LB {large.mean():10.4f}  "
          f"LB - SB per seed {np.round(large - small, 4).tolist()}")
run.finish(**summary)

"""
## Reading the result

The numbers of the committed run are in
`saved_results/tutorials/README.md` (generated from the CSVs). Read them
per seed: SB and LB of one seed share their initial weights, so the
paired difference LB - SB is the comparison. Keskar et al.'s claim has
two parts, and each can hold or fail here:

1. LB minima are sharper: compare the sharpness columns (all of them;
   they need not agree with each other).
2. The sharper minimum generalizes worse: compare `gap_loss` and
   `test_error`.

In the committed run, part 1 held on the curvature measures: the LB
minimum had the larger top eigenvalue (2.5 to 4.2 times SB's), trace
(1.5 to 3.0 times) and Keskar sharpness (1.1 to 1.7 times) on all three
seeds, while the adaptive worst- and average-case sharpness did not
separate them (LB/SB between 0.95 and 1.6, both ways). Part 2 did not
hold: the LB minima had the *lower* test error (by 0.3 to 2.4 points)
and a much smaller gap (test minus train loss 0.36 against 1.67),
because SB had fitted the 2,000 images far further (train error 13.3%
against 38.5%). The line between the minima shows the same: the training
loss falls from the LB end to a deeper SB end, the test loss rises.

Caveats. Same epochs means LB made a tenth of the steps: it may simply be
less trained (compare `train_loss`), which confounds sharpness with
progress; Keskar et al. trained both to a comparable training loss. The
measures are taken in inference mode on 500 training images, and the
stochastic ones (trace, average-case sharpness, density) carry their
noise. Without BatchNorm, rescaling symmetries of ReLU networks (Dinh et
al., 2017) still let sharpness change without the function changing;
the adaptive measures and filter normalization are designed to discount
them, the top eigenvalue and trace are not.

## References

- Keskar et al., 2017. On Large-Batch Training for Deep Learning:
  Generalization Gap and Sharp Minima. https://arxiv.org/abs/1609.04836
- Goodfellow, Vinyals & Saxe, 2015. Qualitatively characterizing neural
  network optimization problems. https://arxiv.org/abs/1412.6544
- Li et al., 2018. Visualizing the Loss Landscape of Neural Nets.
  https://arxiv.org/abs/1712.09913
- Andriushchenko et al., 2023. A Modern Look at the Relationship between
  Sharpness and Generalization. https://arxiv.org/abs/2302.07011
- Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net
  Optimization via Hessian Eigenvalue Density.
  https://arxiv.org/abs/1901.10159
- Dinh, Pascanu, Bengio & Bengio, 2017. Sharp Minima Can Generalize For
  Deep Nets. https://arxiv.org/abs/1703.04933
"""
