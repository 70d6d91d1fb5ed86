"""
Title: Gradient descent stability and the edge of stability
Author: keras-sam contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Full-batch GD can only stay where the sharpness is at most
2/lr; trained from a flat start, the sharpness rises to 2/lr and stays.
Time: about 2 minutes on 2 CPU cores (`--quick`: about 20 seconds).
"""

"""
## Introduction

Near a minimum `w*` with Hessian `H`, one step of gradient descent with
learning rate `lr` maps the deviation `d = w - w*` to `(I - lr H) d`. Along
the top eigenvector of `H` (eigenvalue `a`, the *sharpness*) the deviation
is multiplied by `1 - lr a` at every step, so GD can converge to, and stay
at, `w*` only if `|1 - lr a| <= 1`, that is

    a <= 2 / lr.

A minimum sharper than `2 / lr` repels GD exponentially fast. This
tutorial checks both halves of that statement on a small regression
network trained with full-batch GD:

1. **Progressive sharpening and the edge of stability.** Trained from a
   flat start, the sharpness grows as the loss falls. When it reaches
   `2 / lr` it stops growing and hovers at `2 / lr` while the loss keeps
   falling (Cohen et al., 2021): GD can only settle where the landscape is
   flat enough for it.
2. **Divergence from a sharp minimum.** Starting exactly at a minimum of
   sharpness `a`, GD with `lr = 1.8 / a` (`a < 2 / lr`) stays; GD with
   `lr = 2.2 / a` (`a > 2 / lr`) leaves it, with the loss growing by the
   predicted factor `(1 - lr a)^2` per step, and lands in a flatter
   region.

The sharpness is measured with `keras_sam.callbacks.Sharpness`, which
writes the top Hessian eigenvalue (Lanczos on exact Hessian-vector
products) and `gd_stability_ratio = sharpness / (2 / lr)` into the logs.
Keras's `"mse"` has no `1/2`, so its Hessian is twice that of half the
squared error; the threshold `2 / lr` refers to the Hessian of the loss
that is minimized, which is what the callback measures.

## Setup
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import make_plots
import numpy as np
import tutorial_results
import tutorial_utils

import keras_sam

run = tutorial_utils.Run(
    "02_gd_stability",
    "Full-batch GD: edge of stability and divergence from sharp minima.",
)

NUM_SAMPLES = 64  # the full batch
INPUT_DIM = 8
WIDTH = 32
if run.quick:
    LEARNING_RATES = [0.03, 0.1]
    NUM_STEPS, MEASURE_EVERY = 200, 20
    ESCAPE_STEPS, ESCAPE_MEASURE_EVERY = 40, 10
else:
    LEARNING_RATES = [0.03, 0.07, 0.1, 0.14]
    NUM_STEPS, MEASURE_EVERY = 2000, 20
    ESCAPE_STEPS, ESCAPE_MEASURE_EVERY = 300, 10

"""
## Data and model

A regression problem small enough that every GD step is a full-batch step
and the Hessian is cheap to probe: 64 Gaussian inputs in 8 dimensions,
targets `sin(x . u)` for a fixed random `u`, and a two-hidden-layer tanh
network of width 32 (1,377 parameters, so it can interpolate the data).
Every run starts from the same initial weights.
"""

rng = np.random.default_rng(0)
x = rng.normal(size=(NUM_SAMPLES, INPUT_DIM)).astype("float32")
y = np.sin(x @ rng.normal(size=(INPUT_DIM, 1))).astype("float32")


def make_model(learning_rate):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((INPUT_DIM,)),
            keras.layers.Dense(WIDTH, activation="tanh"),
            keras.layers.Dense(WIDTH, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


"""
Full-batch GD with `fit`: with `batch_size=64` every step sees the whole
data set. To make `fit` run `k` steps per epoch without shuffling, we
stack `k` copies of the data; the `Sharpness` callback then measures at
the end of every epoch, that is every `k` steps. Its `max_overhead=None`
lifts the default time budget, so every measurement is made.
"""


def train_full_batch(model, num_steps, steps_per_epoch):
    """Runs `num_steps` GD steps; returns one row per epoch."""
    tiled = (np.tile(x, (steps_per_epoch, 1)), np.tile(y, (steps_per_epoch, 1)))
    sharpness = keras_sam.callbacks.Sharpness(
        (x, y), num_iterations=20, max_overhead=None, seed=0
    )
    history = model.fit(
        *tiled,
        batch_size=NUM_SAMPLES,
        epochs=num_steps // steps_per_epoch,
        shuffle=False,
        verbose=0,
        callbacks=[sharpness],
    )
    return [
        {
            "step": (epoch + 1) * steps_per_epoch,
            # The mean loss over the epoch's steps (the last one alone
            # when `steps_per_epoch` is 1).
            "loss": history.history["loss"][epoch],
            "sharpness": history.history["sharpness"][epoch],
        }
        for epoch in range(len(history.history["loss"]))
    ]


"""
## Part 1: progressive sharpening and the edge of stability

The smallest learning rate, 0.03, has `2 / lr = 66.7`, far above any
sharpness this network reaches: it stands for gradient flow. The others
have `2 / lr` = 28.6, 20 and 14.3, below the sharpness of the minimum that
gradient flow finds.
"""

rows = []
final_models = {}
for learning_rate in LEARNING_RATES:
    model = make_model(learning_rate)
    for row in train_full_batch(model, NUM_STEPS, MEASURE_EVERY):
        rows.append(
            {
                "experiment": "edge_of_stability",
                "learning_rate": learning_rate,
                "threshold": 2.0 / learning_rate,
                **row,
            }
        )
    final_models[learning_rate] = model
    last = rows[-1]
    print(
        f"lr={learning_rate}: 2/lr={2 / learning_rate:.1f}, final "
        f"sharpness {last['sharpness']:.2f}, final loss {last['loss']:.2e}"
    )

"""
How close does the sharpness stay to `2 / lr`? For every learning rate
whose `2 / lr` the sharpness reached (it came within 10%), take the
median of `sharpness / (2 / lr)` over the second half of training.
"""


def plateau(learning_rate):
    """Median sharpness * lr / 2 over the second half, or None if the
    sharpness never came within 10% of 2 / lr."""
    ratios = [
        r["sharpness"] * learning_rate / 2.0
        for r in rows
        if r["experiment"] == "edge_of_stability"
        and r["learning_rate"] == learning_rate
        and r["step"] > NUM_STEPS // 2
    ]
    reached = any(
        r["sharpness"] * learning_rate / 2.0 >= 0.9
        for r in rows
        if r["experiment"] == "edge_of_stability"
        and r["learning_rate"] == learning_rate
    )
    return float(np.median(ratios)) if reached else None


plateaus = {lr: plateau(lr) for lr in LEARNING_RATES}
for learning_rate, ratio in plateaus.items():
    if ratio is None:
        print(f"lr={learning_rate}: sharpness stayed below 2/lr (stable)")
    else:
        print(
            f"lr={learning_rate}: plateau at {ratio:.3f} x 2/lr "
            f"({'within' if abs(ratio - 1) <= 0.1 else 'NOT within'} 10%)"
        )

"""
## Part 2: GD leaves a minimum sharper than 2/lr

The run with `lr = 0.1` ended at a minimum (loss below `1e-8`) whose
sharpness `a` is just below `2 / 0.1`. From exactly these weights we
restart GD with two
learning rates on either side of `2 / a`: `lr = 1.8 / a` (the minimum is
stable) and `lr = 2.2 / a` (unstable). Linear theory predicts that in the
unstable case the deviation along the top eigenvector grows by
`|1 - lr a| = 1.2` per step, so the loss by `1.44` per step, until the
quadratic approximation breaks down.
"""

start_model = final_models[0.1]
start_weights = start_model.get_weights()
start_sharpness = float(
    keras_sam.hessian.top_eigenvalues(
        start_model, (x, y), num_iterations=40, seed=0
    )[0]
)
start_loss = float(
    start_model.evaluate(x, y, batch_size=NUM_SAMPLES, verbose=0)
)
print(f"start: sharpness {start_sharpness:.2f}, loss {start_loss:.2e}")

escape = {}
for factor in (1.8, 2.2):
    learning_rate = factor / start_sharpness
    model = make_model(learning_rate)
    model.set_weights(start_weights)
    rows.append(
        {
            "experiment": f"sharp_start_lr_{factor}_over_a",
            "learning_rate": learning_rate,
            "threshold": 2.0 / learning_rate,
            "step": 0,
            "loss": start_loss,
            "sharpness": start_sharpness,
        }
    )
    # One step per epoch, so `loss` is the loss before each step; the
    # sharpness is measured every `ESCAPE_MEASURE_EVERY` steps.
    history = model.fit(
        x,
        y,
        batch_size=NUM_SAMPLES,
        epochs=ESCAPE_STEPS,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras_sam.callbacks.Sharpness(
                (x, y),
                freq=ESCAPE_MEASURE_EVERY,
                max_overhead=None,
                seed=0,
            )
        ],
    )
    losses = history.history["loss"]
    sharpness = history.history["sharpness"]
    for step in range(1, ESCAPE_STEPS):
        # Epoch `step` logs the loss at the weights after `step` updates;
        # the sharpness (NaN when not measured) after `step + 1`: shift it.
        rows.append(
            {
                "experiment": f"sharp_start_lr_{factor}_over_a",
                "learning_rate": learning_rate,
                "threshold": 2.0 / learning_rate,
                "step": step,
                "loss": losses[step],
                "sharpness": sharpness[step - 1],
            }
        )
    final_loss = float(model.evaluate(x, y, batch_size=NUM_SAMPLES, verbose=0))
    final_sharpness = float(
        keras_sam.hessian.top_eigenvalues(model, (x, y), seed=0)[0]
    )
    escape[factor] = {
        "max_loss": float(np.max(losses)),
        "final_loss": final_loss,
        "final_sharpness": final_sharpness,
        "threshold": 2.0 / learning_rate,
    }
    print(
        f"lr={factor}/a: max loss {np.max(losses):.2e}, final loss "
        f"{final_loss:.2e}, final sharpness {final_sharpness:.2f} "
        f"(2/lr={2 / learning_rate:.2f})"
    )

"""
The measured growth rate of the loss while it climbs from 100 times its
starting value to `1e-2` (where the quadratic picture still holds),
against the predicted `(1 - lr a)^2 = 1.44`:
"""

growth = tutorial_results.loss_growth_rate(
    [r for r in rows if r["experiment"] == "sharp_start_lr_2.2_over_a"]
)
print(f"loss growth per step: measured {growth}, predicted 1.44")

"""
## Results

`make_plots.py` draws the figures from the CSV alone (so they can be
redrawn from the committed results): the sharpness of every run against
its `2 / lr`, with the loss below, and the two restarts from the sharp
minimum.
"""

run.write_csv(
    "gd_stability.csv",
    rows,
    ["experiment", "learning_rate", "threshold", "step", "loss", "sharpness"],
)
make_plots.plot_gd_stability(run.output_dir)
run.finish(
    plateau_ratio={str(lr): ratio for lr, ratio in plateaus.items()},
    start_sharpness=start_sharpness,
    escape={str(k): v for k, v in escape.items()},
    measured_loss_growth=growth,
)

"""
## What to take away

- With `2 / lr` above the sharpness gradient flow reaches, GD just
  converges (the `lr = 0.03` run).
- Otherwise the sharpness climbs to `2 / lr` and stays there, within a
  few percent in the committed run, while the loss keeps falling: GD
  trains at the edge of stability, and the learning rate caps the
  sharpness of the minimum it can end in.
- Started at a minimum with `a > 2 / lr`, GD leaves it at the rate linear
  theory predicts and settles where the sharpness is below `2 / lr`.

`03_sgd_escape.py` adds the noise of SGD, whose stability condition is
stricter.

## References

- Cohen, Kaur, Li, Kolter & Talwalkar, 2021. Gradient Descent on Neural
  Networks Typically Occurs at the Edge of Stability.
  https://arxiv.org/abs/2103.00065
- Wu, Ma & E, 2018. How SGD Selects the Global Minima in
  Over-parameterized Learning: A Dynamical Stability Perspective.
  https://papers.nips.cc/paper/8049
"""
