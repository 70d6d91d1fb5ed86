"""
Title: keras-sam quick start
Author: keras-sam contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Wrap a Keras model in SAMModel, train it, read the sharpness it
logs, measure curvature with a callback, save and load it.
Time: about 2 minutes on 2 CPU cores (`--quick`: about 20 seconds).
"""

"""
## Introduction

Sharpness-Aware Minimization (SAM, Foret et al., 2020) looks for weights
whose whole neighbourhood has low loss. Each training step makes two
passes over the batch: the first gives the gradient `g` at the weights
`w` and the ascent step `eps = rho g / ||g||`; the second gives the
gradient at `w + eps`, which the optimizer applies to `w`.

`keras_sam.SAMModel` wraps any Keras model and does this inside the
ordinary `compile` / `fit` / `evaluate` / `save`. This tutorial trains a
small CNN on the CIFAR-10 sample shipped with the package (5,000 training
and 1,000 test images), reads what SAM logs, adds a curvature-measuring
callback, and saves and reloads the model.

## Setup
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tempfile

import keras
import make_plots
import numpy as np
import tutorial_utils

import keras_sam
from keras_sam.experiments import datasets

run = tutorial_utils.Run("01_quickstart", "SAMModel quick start.")
EPOCHS = 1 if run.quick else 6
TRAIN_SIZE = 256 if run.quick else 5000
PROBE_SIZE = 32 if run.quick else 256
keras.utils.set_random_seed(0)

"""
## Data

`load_cifar10_sample()` needs no network: the images ship with the
package as JPEG bytes. Pixels are scaled to `[0, 1]`.
"""

(x_train, y_train), (x_test, y_test) = (
    datasets.load_cifar10_sample()
)
x_train = x_train[:TRAIN_SIZE].astype("float32") / 255.0
y_train = y_train[:TRAIN_SIZE]
x_test = x_test.astype("float32") / 255.0
print(f"train {x_train.shape}, test {x_test.shape}")

"""
## Wrap a model

Any `keras.Model` works. Here, the package's small VGG-style CNN with
BatchNorm (width 8, about 19k parameters, so that this runs in a couple
of minutes on a laptop CPU). `rho=0.05` is the radius the SAM paper uses
on CIFAR. Compile exactly as you would compile the inner model.
"""

inner = keras_sam.models.get_model("small-cnn", width=8)
model = keras_sam.SAMModel(inner, rho=0.05)
model.compile(
    optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=["accuracy"],
)
print(f"{inner.count_params():,} parameters")

"""
## Measure curvature with a callback

`keras_sam.callbacks.Sharpness` computes the largest eigenvalue of the
Hessian of the training loss on a fixed probe set (Lanczos iterations of
exact Hessian-vector products, in inference mode, changing nothing in the
model) and writes it into the epoch's logs as `sharpness`, with
`gd_stability_ratio = sharpness / (2 (1 + momentum) / lr)`, which is
above 1 where full-batch gradient descent at this learning rate would be
unstable. By default a callback keeps its cost under 5% of training time
and skips measurements (logging NaN) when it would exceed that;
`max_overhead=None` measures every epoch.
"""

probe = (x_train[:PROBE_SIZE], y_train[:PROBE_SIZE])
sharpness = keras_sam.callbacks.Sharpness(
    probe, num_iterations=10 if run.quick else 20, max_overhead=None, seed=0
)

"""
## Train
"""

history = model.fit(
    x_train,
    y_train,
    batch_size=128,
    epochs=EPOCHS,
    validation_data=(x_test, y_test),
    callbacks=[sharpness],
    verbose=2,
)

"""
## Read the logs

Besides `loss` (the loss at `w`, never mixed with the perturbed one) and
the compiled metrics, `SAMModel` logs two values per epoch, averaged over
the batches like `loss`:

- `sam_sharpness`: `L(w + eps) - L(w)` on each batch, how much the loss
  rises within the `rho`-ball in the steepest direction;
- `grad_norm`: `||g||`, the norm of the first pass's gradient.

The callback added `sharpness` and `gd_stability_ratio`.
"""

logs = history.history
for epoch in range(EPOCHS):
    print(
        f"epoch {epoch + 1}: loss {logs['loss'][epoch]:.3f}, "
        f"sam_sharpness {logs['sam_sharpness'][epoch]:.4f}, "
        f"grad_norm {logs['grad_norm'][epoch]:.3f}, "
        f"sharpness {logs['sharpness'][epoch]:.1f} "
        f"(gd_stability_ratio {logs['gd_stability_ratio'][epoch]:.2f}), "
        f"test accuracy {logs['val_accuracy'][epoch]:.3f}"
    )

"""
Do not be surprised by a `gd_stability_ratio` above 1 here. It says that
*full-batch* GD with this learning rate and momentum could not stay at
these weights, while this model is trained with minibatches, and the
Hessian is measured in inference mode: BatchNorm uses its moving
statistics, so the measured loss is not the one the training steps
descend (those normalize with each batch's statistics). The tutorials
`02_gd_stability.py` and `03_sgd_escape.py` use networks without
BatchNorm, where the measured and the trained loss coincide.

## Save and load

`SAMModel` is registered with Keras serialization: `model.save` writes an
ordinary `.keras` file, and `keras.models.load_model` returns a
`SAMModel` with its `rho`, the inner model and the optimizer state, ready
to predict or to continue training. (The file goes to a temporary folder
here; model files are not kept with the results.)
"""

with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "sam_small_cnn.keras")
    model.save(path)
    restored = keras.models.load_model(path)
print(f"restored a {type(restored).__name__} with rho={restored.rho}")
same = np.allclose(
    model.predict(x_test[:256], verbose=0),
    restored.predict(x_test[:256], verbose=0),
    atol=1e-6,
)
print(f"same predictions after loading: {same}")
restored_loss, restored_accuracy = restored.evaluate(x_test, y_test, verbose=0)
print(f"restored model: test accuracy {restored_accuracy:.3f}")

"""
The inner model is available as `model.model`, for example to export it
without the SAM wrapper (its weights are the trained ones):
"""

plain = restored.model
plain.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
_, plain_accuracy = plain.evaluate(x_test, y_test, verbose=0)
print(f"inner model: test accuracy {plain_accuracy:.3f}")

"""
## Results

The CSV holds the per-epoch logs; `make_plots.py` draws the figure from it.
"""

fields = [
    "loss", "accuracy", "val_loss", "val_accuracy", "sam_sharpness",
    "grad_norm", "sharpness", "gd_stability_ratio",
]
rows = [
    {"epoch": epoch + 1, **{k: logs[k][epoch] for k in fields}}
    for epoch in range(EPOCHS)
]
run.write_csv("history.csv", rows, ["epoch", *fields])
make_plots.plot_quickstart(run.output_dir)
run.finish(
    epochs=EPOCHS,
    final_test_accuracy=logs["val_accuracy"][-1],
    final_sharpness=logs["sharpness"][-1],
    final_sam_sharpness=logs["sam_sharpness"][-1],
    reload_same_predictions=bool(same),
)

"""
## Next

- `02_gd_stability.py`: why `gd_stability_ratio` matters.
- `03_sgd_escape.py`: the stability of SGD, and `LinearStability`.
- `04_sam_flatness.py`: does SAM end at lower sharpness than SGD?
- `05_full_batch_vs_sgd.py`: full-batch training with gradient
  accumulation (`keras_sam.accumulation`).

## References

- Foret, Kleiner, Mobahi & Neyshabur, 2020. Sharpness-Aware Minimization
  for Efficiently Improving Generalization.
  https://arxiv.org/abs/2010.01412
"""
