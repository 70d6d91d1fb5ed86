"""
Title: Full-batch gradient descent versus SGD
Author: keras-sam contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: A scaled-down version of Geiping et al. (2021): minibatch SGD,
full-batch GD for the same and for five times as many epochs, then
full-batch with gradient clipping, a gradient-norm penalty, and SAM.
Time: about 8.5 minutes on 2 CPU cores (`--quick`: about 40 seconds).
"""

"""
## Introduction

SGD usually generalizes better than full-batch gradient descent (GD), and
the lecture's first table (from Geiping et al., 2021, ResNet-18 on
CIFAR-10 with data augmentation, 5 runs each) asks how much of that is due
to the noise of minibatches:

| Experiment | Epochs | Steps | Modifications | Val. accuracy % |
|---|---|---|---|---|
| Baseline SGD | 300 | 117,000 | - | 95.70 (+- 0.11) |
| Baseline FB | 300 | 300 | - | 75.42 (+- 0.13) |
| FB train longer | 3000 | 3000 | - | 87.36 (+- 1.23) |
| FB clipped | 3000 | 3000 | clip | 93.85 (+- 0.10) |
| FB regularized | 3000 | 3000 | clip + reg | 95.36 (+- 0.07) |
| FB strong reg. | 3000 | 3000 | clip + reg + bs32 | 95.67 (+- 0.08) |
| FB in practice | 3000 | 3000 | clip + reg + bs32 + shuffle | 95.91 (+- 0.14) |

Their answer: with enough steps, gradient clipping and an explicit penalty
on the gradient norm (the term that SGD's noise adds implicitly, Smith et
al., 2021), full-batch training nearly matches SGD.

This tutorial runs the same ladder at a size that fits a laptop CPU:
the package's small CNN (width 8, 19k parameters), 1,000 training images
of the CIFAR-10 sample (100 per class) with random horizontal flips, the
sample's 1,000 test images, 10 epochs for SGD and the full-batch baseline,
and 50 for the longer full-batch runs (the paper's ratio is 10). It also
adds a row the paper does not have: full-batch SAM. The rows map onto the
paper's first five; "strong reg." and "in practice" are not reproduced.

## Full-batch steps by gradient accumulation

The full batch (1,000 images) is processed in microbatches of 50:
`keras_sam.accumulation.full_batch_optimizer` returns a copy of an
optimizer that adds up the 20 microbatch gradients of each epoch and
updates the weights once, with their mean: exactly the gradient of the
loss over the whole training set. Clipping (`global_clipnorm`) then acts
on that full-batch gradient, and learning-rate schedules count full-batch
steps. It works unchanged with `SAMModel`, which then perturbs each
microbatch with its own gradient (SAM with `m = 50`). BatchNorm normalizes
each microbatch with its own statistics in every row, SGD included.

## Setup
"""

import os

# The gradient-norm penalty below differentiates a gradient with nested
# `tf.GradientTape`s, so this tutorial runs on TensorFlow.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import time

import keras
import make_plots
import numpy as np
import tensorflow as tf
import tutorial_utils

import keras_sam
from keras_sam import accumulation
from keras_sam.experiments import datasets

run = tutorial_utils.Run(
    "05_full_batch_vs_sgd",
    "Full-batch GD (clipping, gradient-norm penalty, SAM) versus SGD.",
    extra_options=[
        (("--seeds",), {"type": int, "default": None,
                        "help": "number of seeds (default 2, quick 1)"}),
    ],
)

if run.quick:
    TRAIN_SIZE, EPOCHS, LONGER, NUM_SEEDS = 200, 2, 2, 1
else:
    TRAIN_SIZE, EPOCHS, LONGER, NUM_SEEDS = 1000, 10, 5, 2
if run.args.seeds:
    NUM_SEEDS = run.args.seeds
MICROBATCH = 50
WIDTH = 8
SGD_LEARNING_RATE = 0.1
FULL_BATCH_LEARNING_RATE = 0.8
CLIP_NORM = 0.25
PENALTY = SGD_LEARNING_RATE / 4  # see "The gradient-norm penalty"
RHO = 0.05

(x_train, y_train), (x_test, y_test) = (
    datasets.load_cifar10_sample()
)
x_train = x_train[:TRAIN_SIZE].astype("float32") / 255.0
y_train = y_train[:TRAIN_SIZE]
x_test = x_test.astype("float32") / 255.0

"""
## Data: every sample once per epoch, fresh flips

One epoch is one full-batch step, so the data must cover every training
image exactly once per epoch (`TRAIN_SIZE` is a multiple of the
microbatch size). Each epoch draws new flips and a new order; the order
does not change a full-batch gradient, but it does change SGD's batches.
"""


class FlippedEpochs(keras.utils.PyDataset):
    """All samples once per epoch in microbatches, random flips."""

    def __init__(self, x, y, batch_size, seed):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = 0

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.x))
        flips = rng.random(len(self.x)) < 0.5
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.where(
            flips[rows, None, None, None], self.x[rows][:, :, ::-1],
            self.x[rows],
        )
        return images, self.y[rows]

    def on_epoch_end(self):
        self.epoch += 1


"""
## The gradient-norm penalty

Smith et al. (2021) showed that SGD with learning rate `lr` and `m`
batches per epoch follows, to first order in `lr`, the gradient flow of a
modified loss

    L(w) + lr / (4 m) sum_k ||grad L_k(w)||^2,

where `L_k` is the loss of batch `k`. Full-batch GD adds only
`lr / 4 ||grad L(w)||^2`. Geiping et al. add the penalty on minibatch
gradients explicitly. Here, each microbatch of 50 contributes
`PENALTY ||grad L_k||^2` with `PENALTY = 0.1 / 4`, the value that SGD at
`lr = 0.1` with batches of 50 adds implicitly, and accumulation averages
the microbatches. The gradient of the penalty, `2 PENALTY H_k grad L_k`,
is computed exactly by differentiating through the gradient (double
backpropagation), which costs about two extra backward passes per
microbatch. A minimal Keras model wrapper does it in `train_step`:
"""


class GradientNormPenalty(keras.Model):
    """Trains `model` on `loss + strength * ||grad loss||^2` per batch."""

    def __init__(self, model, strength, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.strength = strength
        self.penalty_tracker = keras.metrics.Mean(name="gradient_norm_sq")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def train_step(self, data):
        x, y = data
        variables = self.trainable_variables
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                y_pred = self(x, training=True)
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, training=True
                )
            gradients = inner.gradient(loss, variables)
            penalty = tf.add_n([tf.reduce_sum(g * g) for g in gradients])
            total = loss + self.strength * penalty
        self.optimizer.apply(outer.gradient(total, variables), variables)
        # Log the loss without the penalty, as SAMModel logs L(w).
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        self.penalty_tracker.update_state(penalty)
        logs = self.compute_metrics(x, y, y_pred)
        logs["gradient_norm_sq"] = self.penalty_tracker.result()
        return logs


"""
## The runs

Every row starts from the same initial weights (per seed) and uses SGD
with momentum 0.9 and a cosine learning-rate decay. SGD: learning rate
0.1, batches of 50 (200 steps in 10 epochs). Full batch: learning rate
0.8, reached by a linear warm-up over the first 10% of the steps, one
step per epoch. Clipping rescales the full-batch
gradient to a norm of at most 0.25 (the paper's value).
"""

ROWS = [
    # name, paper row, paper accuracy, full batch?, epochs, clip, extra
    ("sgd", "Baseline SGD", 95.70, False, EPOCHS, None, None),
    ("full_batch", "Baseline FB", 75.42, True, EPOCHS, None, None),
    ("full_batch_longer", "FB train longer", 87.36, True, LONGER * EPOCHS,
     None, None),
    ("full_batch_clip", "FB clipped", 93.85, True, LONGER * EPOCHS,
     CLIP_NORM, None),
    ("full_batch_clip_penalty", "FB regularized", 95.36, True,
     LONGER * EPOCHS, CLIP_NORM, "penalty"),
    ("full_batch_clip_sam", "(not in the paper)", None, True,
     LONGER * EPOCHS, CLIP_NORM, "sam"),
]


def make_optimizer(full_batch, epochs, clip):
    if not full_batch:
        steps = epochs * (TRAIN_SIZE // MICROBATCH)
        return keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(SGD_LEARNING_RATE, steps),
            momentum=0.9,
            global_clipnorm=clip,
        )
    warmup = epochs // 10
    if warmup:
        schedule = keras.optimizers.schedules.CosineDecay(
            FULL_BATCH_LEARNING_RATE / (warmup + 1),
            decay_steps=epochs - warmup,
            warmup_target=FULL_BATCH_LEARNING_RATE,
            warmup_steps=warmup,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            FULL_BATCH_LEARNING_RATE, decay_steps=epochs
        )
    # One update per epoch; the schedule counts updates.
    return accumulation.full_batch_optimizer(
        keras.optimizers.SGD(schedule, momentum=0.9, global_clipnorm=clip),
        dataset_size=TRAIN_SIZE,
        batch_size=MICROBATCH,
    )


def train(seed, name, full_batch, epochs, clip, extra):
    keras.utils.set_random_seed(seed)
    inner = keras_sam.models.get_model("small-cnn", width=WIDTH)
    if extra == "penalty":
        model = GradientNormPenalty(inner, PENALTY)
    elif extra == "sam":
        model = keras_sam.SAMModel(inner, rho=RHO)
    else:
        model = inner
    model.compile(
        optimizer=make_optimizer(full_batch, epochs, clip),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        FlippedEpochs(x_train, y_train, MICROBATCH, seed),
        epochs=epochs,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    # Training loss and accuracy of the final weights on the unflipped
    # training set, in inference mode, like the test numbers.
    train_logs = model.evaluate(
        x_train, y_train, batch_size=500, verbose=0, return_dict=True
    )
    test_logs = model.evaluate(
        x_test, y_test, batch_size=500, verbose=0, return_dict=True
    )
    return {
        "seed": seed,
        "run": name,
        "full_batch": full_batch,
        "epochs": epochs,
        "steps": int(model.optimizer.iterations),
        "clip_norm": clip if clip is not None else "",
        "modification": extra or "",
        "train_loss": train_logs["loss"],
        "train_accuracy": train_logs["accuracy"],
        "test_loss": test_logs["loss"],
        "test_accuracy": test_logs["accuracy"],
        "last_epoch_loss": history.history["loss"][-1],
        "train_seconds": seconds,
    }


if run.quick:
    # The smoke test runs one row of each kind of training step.
    ROWS = [row for row in ROWS if row[0] not in (
        "full_batch_longer", "full_batch_clip")]

rows = []
for seed in range(NUM_SEEDS):
    for name, paper_row, paper_accuracy, full_batch, epochs, clip, extra in (
        ROWS
    ):
        result = train(seed, name, full_batch, epochs, clip, extra)
        result.update(paper_row=paper_row,
                      paper_accuracy=paper_accuracy or "")
        rows.append(result)
        print(
            f"seed {seed} {name:24s} {result['steps']:4d} steps: test "
            f"accuracy {result['test_accuracy']:.3f}, train accuracy "
            f"{result['train_accuracy']:.3f}, {result['train_seconds']:.0f} s"
        )

"""
## Results, next to the paper's

Mean test accuracy over seeds (and the spread when there are several),
beside the paper's validation accuracy. The absolute numbers are not
comparable (19k parameters, 1,000 images, tens of epochs against a
ResNet-18 on 50,000 images for hundreds); the question is whether the
ordering of the rows is the same.
"""

summary = {}
for name, paper_row, paper_accuracy, *_ in ROWS:
    accuracies = np.array(
        [r["test_accuracy"] for r in rows if r["run"] == name]
    )
    spread = float(accuracies.std(ddof=1)) if len(accuracies) > 1 else None
    summary[name] = {
        "test_accuracy_mean": float(accuracies.mean()),
        "test_accuracy_std": spread,
        "paper": paper_accuracy,
    }
    paper = f"{paper_accuracy:.2f}" if paper_accuracy else "  -  "
    spread_text = f" +- {100 * spread:.1f}" if spread is not None else ""
    print(
        f"{paper_row:20s} paper {paper}   here "
        f"{100 * accuracies.mean():.1f}{spread_text}  ({name})"
    )

run.write_csv(
    "full_batch_vs_sgd.csv",
    rows,
    [
        "seed", "run", "paper_row", "paper_accuracy", "full_batch",
        "epochs", "steps", "clip_norm", "modification", "train_loss",
        "train_accuracy", "test_loss", "test_accuracy", "last_epoch_loss",
        "train_seconds",
    ],
)
make_plots.plot_full_batch(run.output_dir)
run.finish(**summary)

"""
## What to take away

The committed numbers are in `saved_results/tutorials/README.md`. At this
scale (two seeds):

- full-batch GD for the same number of epochs as SGD (10 steps against
  200) is far behind (22% against 43.5% test accuracy), as in the paper;
- five times more full-batch steps close most of the gap (42.4%);
- clipping alone did not help here (42.2%), while clipping plus the
  gradient-norm penalty matched SGD (43.8% against 43.5%), the paper's
  main point; full-batch SAM landed in between (42.8%);
- the differences among the long full-batch rows are about one point,
  comparable to the spread between seeds, so only the coarse ordering
  (baseline FB far below; longer training, clipping and the penalty close
  to SGD) is supported by this run, not the paper's finer steps.

## References

- Geiping, Goldblum, Pope, Moeller & Goldstein, 2021. Stochastic Training
  is Not Necessary for Generalization. https://arxiv.org/abs/2109.14119
- Smith, Dherin, Barrett & De, 2021. On the Origin of Implicit
  Regularization in Stochastic Gradient Descent.
  https://arxiv.org/abs/2101.12176
- Foret, Kleiner, Mobahi & Neyshabur, 2020. Sharpness-Aware Minimization
  for Efficiently Improving Generalization.
  https://arxiv.org/abs/2010.01412
"""
