"""The SAM paper's CIFAR training recipe, shared by the sweep and the table.

Foret et al. (2020) train their CIFAR models with SGD with Nesterov
momentum 0.9, a cosine learning-rate schedule (peak 0.1, decayed to zero
over the run, no warm-up), batch size 256, L2 weight decay 5e-4 added to
the gradient (coupled, so momentum sees it), and choose `rho` from
{0.01, 0.02, 0.05, 0.1, 0.2, 0.5} on 10% of the training set held out;
the non-SAM baseline gets twice the epochs. These settings are the
defaults of `keras_sam.experiments.config.RunConfig`, which
`train_and_evaluate` reads; the building blocks take them as arguments.
The ImageNet recipe (`config.IMAGENET_RECIPE`) adds label smoothing
(`SmoothedSparseCrossentropy`) and reports top-5 error.
"""

import contextlib
import math
import pathlib
import time

import keras
from keras import ops

from keras_sam import models
from keras_sam.experiments.config import IMAGENET, RunConfig
from keras_sam.sam_model import SAMModel

_PAPER = RunConfig()


DISTRIBUTIONS = ("none", "mirrored", "multi-worker", "data-parallel")


@contextlib.contextmanager
def distribution_scope(distribute):
    """The context a run builds, compiles and trains its model in.

    - `"none"`: one device.
    - `"mirrored"` (TensorFlow): `tf.distribute.MirroredStrategy` over
      the host's GPUs;
    - `"multi-worker"` (TensorFlow): `MultiWorkerMirroredStrategy`, the
      cluster read from `TF_CONFIG` on every host. Under both strategies
      each replica perturbs with its own gradient: `m` is the
      per-replica batch (batch size / replicas), as the SAM paper ran.
    - `"data-parallel"` (JAX): `keras.distribution.DataParallel` over
      every device (of every host, after `keras.distribution.initialize`
      when `KERAS_DISTRIBUTION_JOB_ADDRESSES` is set); `SAMModel`'s
      default `perturbation="replica"` gives each device its own `eps`,
      so `m` is the per-device batch, as under the strategies.

    Args:
        distribute: one of `DISTRIBUTIONS`.

    Yields:
        The number of replicas (devices) the batch is spread over.
    """
    if distribute not in DISTRIBUTIONS:
        raise ValueError(
            f"Unknown distribute={distribute!r}; expected one of "
            f"{list(DISTRIBUTIONS)}."
        )
    backend = keras.backend.backend()
    needs = {"mirrored": "tensorflow", "multi-worker": "tensorflow",
             "data-parallel": "jax"}.get(distribute)
    if needs is not None and backend != needs:
        raise ValueError(
            f"distribute={distribute!r} needs the {needs} backend; Keras "
            f"runs on {backend}."
        )
    if distribute == "none":
        yield 1
    elif distribute == "data-parallel":
        processes = initialize_processes(distribute)
        devices = keras.distribution.list_devices()
        previous = keras.distribution.distribution()
        # Several processes: each feeds its own rows (`ProcessShare`).
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=processes == 1
            )
        )
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
    else:
        strategy = _strategy(distribute)
        with strategy.scope():
            yield strategy.num_replicas_in_sync


def initialize_processes(distribute):
    """Joins the processes of a multi-process JAX job, once per process.

    With `distribute="data-parallel"` and
    `KERAS_DISTRIBUTION_JOB_ADDRESSES` set (with
    `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`),
    calls `keras.distribution.initialize()` the first time.

    Args:
        distribute: one of `DISTRIBUTIONS`.

    Returns:
        The number of processes (1 without a multi-process job).
    """
    import os

    if distribute != "data-parallel":
        return 1
    import jax

    if (os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
            and not jax.distributed.is_initialized()):
        keras.distribution.initialize()
    return jax.process_count()


def process_path(path, distribute):
    """`path`, or `path/process_<i>` for process `i > 0` of a
    multi-process job (whose processes would otherwise write the same
    files)."""
    if initialize_processes(distribute) == 1:
        return path
    import jax

    index = jax.process_index()
    return path if index == 0 else path / f"process_{index}"


class ProcessShare(keras.utils.PyDataset):
    """This process's rows of every global batch of `dataset`.

    In a multi-process JAX job each process feeds its part of the global
    batch: process `i` of `n` the rows `[i b / n, (i + 1) b / n)` of a
    batch of `b`, which `DataParallel` places on its devices.

    Args:
        dataset: a `keras.utils.PyDataset` of global batches.
        index: this process's index.
        count: the number of processes.
    """

    def __init__(self, dataset, index, count):
        super().__init__()
        self.dataset = dataset
        self.index = index
        self.count = count

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        batch = self.dataset[index]
        size = len(keras.tree.flatten(batch)[0])
        if size % self.count:
            raise ValueError(
                f"Batch {index} has {size} rows for {self.count} "
                "processes: choose a batch size and subset whose batches "
                "split evenly."
            )
        start = self.index * size // self.count
        stop = (self.index + 1) * size // self.count
        return keras.tree.map_structure(lambda a: a[start:stop], batch)

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _process_shares(pipelines, distribute):
    """The train, validation and test data this process feeds."""
    splits = (pipelines.train, pipelines.validation, pipelines.test)
    if initialize_processes(distribute) == 1:
        return splits
    import jax

    for split in splits:
        if split is not None and not isinstance(split, keras.utils.PyDataset):
            raise ValueError(
                "A multi-process data-parallel run feeds each process its "
                "rows of the NumPy pipeline's batches; received "
                f"pipeline={getattr(pipelines, 'pipeline', 'tf.data')!r} "
                "(the NumPy pipeline is the default on JAX)."
            )
    return tuple(
        None if split is None
        else ProcessShare(split, jax.process_index(), jax.process_count())
        for split in splits
    )


_STRATEGIES = {}


def _strategy(distribute):
    """One `tf.distribute` strategy per kind and process: a second
    strategy's collective ops collide with the first's in TensorFlow."""
    if distribute not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[distribute] = (
            tf.distribute.MirroredStrategy() if distribute == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
    return _STRATEGIES[distribute]


def check_last_batches(train_images, test_images, batch_size, replicas):
    """Refuses a last batch with fewer images than replicas.

    Keras then leaves a replica an empty batch, on which BatchNorm fails
    under `tf.distribute` (plain Keras models too).

    Args:
        train_images, test_images: images of the two splits.
        batch_size: the global batch size.
        replicas: replicas the batch is spread over.

    Raises:
        ValueError: naming the split, its size and `batch_size`.
    """
    if replicas == 1:
        return
    for split, count in (("training", train_images), ("test", test_images)):
        last = count % batch_size
        if 0 < last < replicas:
            raise ValueError(
                f"The last {split} batch has {last} image(s) for {replicas} "
                f"replicas ({count} images, batch_size={batch_size}): a "
                "replica would get none. Choose a batch size or subset "
                "that leaves at least one per replica."
            )


def build_model(
    model_name,
    rho,
    num_classes=10,
    weight_decay=_PAPER.weight_decay,
    input_shape=(32, 32, 3),
    adaptive=False,
    num_batch_splits=None,
):
    """The network `model_name`, wrapped in `SAMModel` unless `rho == 0`.

    `rho = 0` returns the plain `keras.Model`: the baseline is ordinary
    Keras training, not a SAM step with a zero radius. The network outputs
    logits; weight decay is the coupled L2 of `keras_sam.models`.

    Args:
        model_name: a name known to `keras_sam.models.get_model`.
        rho: SAM radius, `>= 0`.
        num_classes: number of classes. Defaults to `10`.
        weight_decay: coupled L2 coefficient (gradient `weight_decay * w`).
            Defaults to `5e-4`.
        input_shape: shape of one image. Defaults to `(32, 32, 3)`.
        adaptive: whether to use ASAM. Defaults to `False`.
        num_batch_splits: `SAMModel`'s (m-sharpness on chunks of the
            batch). Defaults to `None`.

    Returns:
        A `keras.Model` (rho 0) or a `SAMModel`.
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or rho < 0:
        raise ValueError(f"`rho` must be a number >= 0, got {rho!r}.")
    inner = models.get_model(
        model_name,
        input_shape=input_shape,
        num_classes=num_classes,
        weight_decay=weight_decay,
        classifier_activation=None,
    )
    if rho == 0:
        return inner
    return SAMModel(inner, rho=float(rho), adaptive=adaptive,
                    num_batch_splits=num_batch_splits)


@keras.saving.register_keras_serializable(package="keras_sam")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels, smoothed.

    The target of label `y` among `K` classes is
    `(1 - label_smoothing) one_hot(y) + label_smoothing / K` (Szegedy et
    al., 2016), as `keras.losses.CategoricalCrossentropy(label_smoothing=
    ...)` computes it from one-hot labels; this takes the integer labels
    the pipelines give. `label_smoothing = 0` is the sparse cross-entropy.

    Args:
        label_smoothing: Float in `[0, 1)`. Defaults to `0.1`.
        name: the loss's name. Defaults to
            `"smoothed_sparse_crossentropy"`.

    Reference:
        Szegedy et al., 2016. Rethinking the Inception Architecture for
        Computer Vision. https://arxiv.org/abs/1512.00567
    """

    def __init__(self, label_smoothing=0.1,
                 name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(label_smoothing, bool) or not isinstance(
            label_smoothing, (int, float)
        ) or not 0 <= label_smoothing < 1:
            raise ValueError(
                "`label_smoothing` must be a number in [0, 1), got "
                f"{label_smoothing!r}."
            )
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.one_hot(
            ops.cast(ops.reshape(y_true, [-1]), "int32"),
            ops.shape(y_pred)[-1],
            dtype=y_pred.dtype,
        )
        return keras.losses.categorical_crossentropy(
            labels, y_pred, from_logits=True,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        return {**super().get_config(),
                "label_smoothing": self.label_smoothing}


def compile_model(
    model,
    total_steps,
    learning_rate=_PAPER.learning_rate,
    momentum=_PAPER.momentum,
    nesterov=_PAPER.nesterov,
    label_smoothing=0.0,
    top5=False,
):
    """Compiles `model` with the paper's optimizer and loss.

    SGD with (Nesterov) momentum and a cosine decay from `learning_rate`
    to 0 over `total_steps` optimizer steps; sparse categorical cross-
    entropy on logits (smoothed by `label_smoothing`); `accuracy` (and
    `top5_accuracy`) as the metrics.

    Args:
        model: the model from `build_model`.
        total_steps: optimizer steps of the whole run (epochs times steps
            per epoch).
        learning_rate: peak learning rate. Defaults to `0.1`.
        momentum: SGD momentum. Defaults to `0.9`.
        nesterov: whether to use Nesterov momentum. Defaults to `True`.
        label_smoothing: see `SmoothedSparseCrossentropy`; `0` uses
            Keras' `SparseCategoricalCrossentropy`. Defaults to `0.0`.
        top5: whether to measure top-5 accuracy too. Defaults to `False`.

    Returns:
        The compiled model.
    """
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(int(total_steps), 1)
    )
    if label_smoothing:
        loss = SmoothedSparseCrossentropy(label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if top5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(
            k=5, name="top5_accuracy"
        ))
    model.compile(
        optimizer=keras.optimizers.SGD(
            schedule, momentum=momentum, nesterov=nesterov
        ),
        loss=loss,
        metrics=metrics,
    )
    return model


def steps_per_epoch(num_examples, batch_size):
    """Training batches in one epoch (the last one may be smaller)."""
    return math.ceil(num_examples / batch_size)


class DataEpoch(keras.callbacks.Callback):
    """Keeps a pipeline's data epoch equal to the training epoch.

    At the start of epoch `e` of `fit`, sets the training pipeline of a
    `experiments.data_pipeline.CifarPipelines` (or
    `experiments.imagenet.ImageNetPipelines`) to produce its epoch `e`, so
    that a run resumed at epoch `e` (e.g. by `BackupAndRestore`) sees the
    batches the uninterrupted run would have seen.

    Args:
        pipelines: the `CifarPipelines` whose `train` dataset is fitted.
    """

    def __init__(self, pipelines):
        super().__init__()
        self.pipelines = pipelines

    def on_epoch_begin(self, epoch, logs=None):
        self.pipelines.set_epoch(int(epoch))

    def __deepcopy__(self, memo):
        # KerasTuner deep-copies callbacks; the pipelines are shared.
        return DataEpoch(self.pipelines)


def train_and_evaluate(
    pipelines, config, rho, epochs, seed=0, backup_dir=None, callbacks=None
):
    """Trains one model with the paper's recipe and measures test error.

    Seeds Keras (`keras.utils.set_random_seed(seed)`) before building, so
    the initial weights are a function of `seed`; the data order and
    augmentation are those of `pipelines` (built with its own seed).

    Args:
        pipelines: a `keras_sam.experiments.data_pipeline.CifarPipelines`
            (or `experiments.imagenet.ImageNetPipelines`); its
            `validation` split, if any, is evaluated after every epoch.
        config: a `keras_sam.experiments.config.RunConfig`; its `model`,
            `learning_rate`, `momentum`, `nesterov`, `weight_decay`,
            `label_smoothing`, `distribute` (see `distribution_scope`)
            and `verbose` are used.
        rho: SAM radius; `0` trains the plain model (the SGD baseline).
        epochs: training epochs.
        seed: seed of the initial weights. Defaults to `0`.
        backup_dir: folder for `keras.callbacks.BackupAndRestore`, so that
            a killed run resumes at its last finished epoch; `None` for no
            backup. Defaults to `None`.
        callbacks: more Keras callbacks. Defaults to `None`.

    Returns:
        A dict of floats: `test_accuracy`, `test_error` (percent),
        `test_top5_error` (percent; ImageNet and datasets of 100 classes
        or more),
        `test_loss`, the last epoch's `loss` and `accuracy` (and
        `val_accuracy`, `val_loss` when there is a validation split),
        `seconds` (wall time of `fit`), `epochs`, `epochs_run` (the
        epochs trained by this call: fewer when a backup was resumed) and
        `m` (the batch each perturbation is computed on).
    """
    keras.utils.set_random_seed(seed)
    top5 = config.dataset == IMAGENET or pipelines.num_classes >= 100
    with distribution_scope(config.distribute) as replicas:
        check_last_batches(pipelines.train_images, pipelines.test_images,
                           pipelines.batch_size, replicas)
        model = build_model(
            config.model,
            rho,
            num_classes=pipelines.num_classes,
            weight_decay=config.weight_decay,
            input_shape=pipelines.input_shape,
        )
        compile_model(
            model,
            epochs * pipelines.steps_per_epoch,
            config.learning_rate,
            config.momentum,
            config.nesterov,
            label_smoothing=config.label_smoothing,
            top5=top5,
        )
        all_callbacks = [DataEpoch(pipelines), *(callbacks or [])]
        if backup_dir is not None:
            # One backup per process: they would write the same file.
            backup_dir = process_path(pathlib.Path(backup_dir),
                                      config.distribute)
            all_callbacks.append(
                keras.callbacks.BackupAndRestore(str(backup_dir))
            )
        train, validation, test = _process_shares(pipelines,
                                                  config.distribute)
        start = time.perf_counter()
        history = model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            callbacks=all_callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=config.verbose,
        )
        seconds = time.perf_counter() - start
        test = model.evaluate(test, verbose=0, return_dict=True)
    result = {
        "test_accuracy": float(test["accuracy"]),
        "test_error": 100.0 * (1.0 - float(test["accuracy"])),
        "test_loss": float(test["loss"]),
        "seconds": seconds,
        "epochs": epochs,
        # Fewer than `epochs` when BackupAndRestore resumed the run.
        "epochs_run": len(history.history.get("loss", [])),
        "m": pipelines.batch_size // replicas,
    }
    if top5:
        result["test_top5_error"] = 100.0 * (
            1.0 - float(test["top5_accuracy"])
        )
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if history.history.get(key):
            result[key] = float(history.history[key][-1])
    return result
