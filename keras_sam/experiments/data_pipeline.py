"""`tf.data` pipelines for CIFAR: shuffling, augmentation, normalization.

The SAM paper's CIFAR input pipeline, deterministic given a seed, and
the one place that chooses between it and its NumPy twin
(`experiments.numpy_pipeline`, for JAX and PyTorch without TensorFlow):
`make_pipelines(..., pipeline="auto")`, see `choose_pipeline`. Images
enter as uint8 NumPy arrays (from `experiments.datasets.load_splits`) and
leave as normalized float32 batches. Every random choice is a stateless
TensorFlow op keyed by `(seed, epoch, batch index)`:

- the order of epoch `e` is `tf.random.experimental.index_shuffle` of
  the row numbers under the key `(seed, e)`;
- the augmentation of batch `b` of epoch `e` draws from
  `stateless_fold_in((seed, e), b)`.

The epoch `e` is a counter that goes up by one each time the training
dataset is iterated (`fit` iterates it once per epoch), so two pipelines
built with the same arguments give the same batches, epoch after epoch,
whatever TensorFlow's global seed. Augmentations are applied to whole
batches (vectorized), so the pipeline costs little next to a training
step even on two CPU cores.

RandAugment is Keras' `keras.layers.RandAugment`, which differs from
these in three ways: it chooses its operations once per batch (the
magnitudes per image), it draws from its own seed generator (seeded with
`seed`; reproducible because that map runs in order on one thread), and
it computes every candidate operation, so it is about ten times slower
than the basic augmentation on a CPU.
"""

import importlib.util
import math

import numpy as np

AUGMENTATIONS = ("none", "basic", "cutout", "randaugment", "autoaugment")
PIPELINES = ("auto", "tf.data", "numpy")
PADDING = 4
CUTOUT_SIZE = 16


class CifarPipelines:
    """The train, validation and test pipelines of one dataset.

    Returned by `make_pipelines` and `keras_sam.experiments.datasets.load`.

    Attributes:
        train: `(images, labels)` batches, shuffled and augmented anew
            every epoch: a `tf.data.Dataset` (`pipeline="tf.data"`) or an
            `experiments.numpy_pipeline.TrainBatches` (a
            `keras.utils.PyDataset`, `pipeline="numpy"`).
        validation: the held-out split, normalized, not augmented, in a
            fixed order; `None` when nothing is held out.
        test: the test split, like `validation`.
        splits: the `experiments.datasets.CifarSplits` the pipelines read.
        mean, std: the per-channel statistics used to normalize (float32
            arrays of shape `(3,)`).
        batch_size, augment, seed: the arguments they were built with.
        steps_per_epoch: number of training batches per epoch.
        epoch: `tf.Variable`, the epoch the next iteration of `train` will
            produce (see `set_epoch`); `None` for the NumPy pipeline,
            whose `train.epoch` holds it.
        pipeline: `"tf.data"` or `"numpy"`.
    """

    def __init__(
        self,
        train,
        validation,
        test,
        splits,
        mean,
        std,
        batch_size,
        augment,
        seed,
        epoch,
        pipeline="tf.data",
    ):
        self.train = train
        self.validation = validation
        self.test = test
        self.splits = splits
        self.mean = mean
        self.std = std
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.epoch = epoch
        self.pipeline = pipeline
        self.steps_per_epoch = math.ceil(len(splits.y_train) / batch_size)

    @property
    def num_classes(self):
        """Number of classes of the dataset."""
        return self.splits.num_classes

    @property
    def train_images(self):
        """Number of training images."""
        return len(self.splits.y_train)

    @property
    def test_images(self):
        """Number of test images."""
        return len(self.splits.y_test)

    @property
    def input_shape(self):
        """Shape of one image, `(height, width, channels)`."""
        return tuple(self.splits.x_train.shape[1:])

    def set_epoch(self, epoch):
        """Makes the next iteration of `train` produce epoch `epoch`.

        Use it when resuming training at epoch `epoch` (0-based), so that
        the resumed run sees the batches it would have seen.

        Args:
            epoch: non-negative integer.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"`epoch` must be a non-negative integer, got {epoch!r}."
            )
        if self.pipeline == "numpy":
            self.train.set_epoch(epoch)
        else:
            self.epoch.assign(epoch)


def check_augment(augment):
    """Checks an `augment` name; raises a ValueError naming the choices.

    Args:
        augment: the name to check.

    Returns:
        The name.
    """
    if augment == "autoaugment":
        raise ValueError(
            "augment='autoaugment' is not available: Keras 3 has no "
            "AutoAugment layer (it has RandAugment). Use "
            "augment='randaugment' (basic + RandAugment + cutout) and "
            "report it as such, not as the paper's AA rows."
        )
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"Unknown augment={augment!r}; expected one of "
            f"{[name for name in AUGMENTATIONS if name != 'autoaugment']}."
        )
    return augment


def normalize(images, mean, std):
    """`(images / 255 - mean) / std` in float32, per channel.

    Args:
        images: tensor of pixel values in `[0, 255]`, channels last.
        mean: per-channel mean of `images / 255`.
        std: per-channel standard deviation of `images / 255`.

    Returns:
        A float32 tensor of the same shape.
    """
    import tensorflow as tf

    mean = tf.constant(np.asarray(mean, np.float32))
    std = tf.constant(np.asarray(std, np.float32))
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def crop_and_flip(images, seed, padding=PADDING):
    """Random crop of the zero-padded images, then random horizontal flip.

    Each image of the batch is padded with `padding` zero pixels on every
    side, cropped back to its size at an offset drawn uniformly from
    `{0, ..., 2 padding}` in each direction, and flipped left-right with
    probability 1/2: the "basic" augmentation of the SAM paper.

    Args:
        images: batch tensor `(n, height, width, channels)`, any dtype.
        seed: int tensor of shape `(2,)`, the stateless random key.
        padding: pixels of zero padding. Defaults to `4`.

    Returns:
        A tensor like `images`.
    """
    import tensorflow as tf

    count = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    keys = tf.random.experimental.stateless_split(seed, 3)
    span = 2 * padding + 1
    dy = tf.random.stateless_uniform(
        [count], keys[0], minval=0, maxval=span, dtype=tf.int32
    )
    dx = tf.random.stateless_uniform(
        [count], keys[1], minval=0, maxval=span, dtype=tf.int32
    )
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    rows = dy[:, None] + tf.range(height)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    columns = dx[:, None] + tf.range(width)[None, :]
    cropped = tf.gather(cropped, columns, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([count], keys[2]) < 0.5
    return tf.where(
        flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped
    )


def cutout(images, seed, size=CUTOUT_SIZE):
    """Sets a `size` x `size` square of each image to zero (Cutout).

    The square's centre is drawn uniformly over the image; the square is
    `[cy - size // 2, cy - size // 2 + size)` in each direction, clipped at
    the border (DeVries & Taylor, 2017). Apply it after normalization, so
    that zero is the mean pixel.

    Args:
        images: batch tensor `(n, height, width, channels)`.
        seed: int tensor of shape `(2,)`, the stateless random key.
        size: side of the square. Defaults to `16`.

    Returns:
        A tensor like `images`.

    References:
        - [DeVries & Taylor, 2017. Improved Regularization of
          Convolutional Neural Networks with Cutout](
          https://arxiv.org/abs/1708.04552)
    """
    import tensorflow as tf

    count = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    keys = tf.random.experimental.stateless_split(seed, 2)
    cy = tf.random.stateless_uniform(
        [count], keys[0], minval=0, maxval=height, dtype=tf.int32
    )
    cx = tf.random.stateless_uniform(
        [count], keys[1], minval=0, maxval=width, dtype=tf.int32
    )
    ys = tf.range(height)[None, :]
    xs = tf.range(width)[None, :]
    top = cy[:, None] - size // 2
    left = cx[:, None] - size // 2
    in_rows = (ys >= top) & (ys < top + size)
    in_columns = (xs >= left) & (xs < left + size)
    mask = in_rows[:, :, None] & in_columns[:, None, :]
    return tf.where(mask[..., None], tf.zeros_like(images), images)


def train_dataset(
    images,
    labels,
    batch_size,
    mean,
    std,
    augment="basic",
    seed=0,
    shuffle=True,
):
    """The training pipeline: shuffled, augmented, normalized batches.

    One function, longer than most, on purpose: the nested functions are
    what `tf.data` traces, and they share the epoch counter and the seed
    keys; keeping them together shows the whole random stream of a batch
    (order, crop and flip, RandAugment, cutout) in one place.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: integer array `(N,)`.
        batch_size: images per batch; the last batch of an epoch may be
            smaller.
        mean: per-channel mean used by `normalize`.
        std: per-channel standard deviation used by `normalize`.
        augment: one of `AUGMENTATIONS` (see `experiments.datasets.load`).
            Defaults to `"basic"`.
        seed: integer seed of the order and the augmentation. Defaults to
            `0`.
        shuffle: whether to shuffle (else rows come in order, for tests).
            Defaults to `True`.

    Returns:
        A tuple `(dataset, epoch)`: the `tf.data.Dataset` and the
        `tf.Variable` counting its iterations (see
        `CifarPipelines.set_epoch`).
    """
    import tensorflow as tf

    augment = check_augment(augment)
    _check_batch_size(batch_size)
    count = len(labels)
    if count == 0:
        raise ValueError("The training split is empty.")
    x = tf.constant(np.asarray(images, np.uint8))
    y = tf.constant(np.asarray(labels, np.int64))
    seed_key = tf.constant(int(seed), tf.int64)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    randaugment = None
    if augment == "randaugment":
        import keras

        randaugment = keras.layers.RandAugment(
            value_range=(0, 255), seed=int(seed)
        )
    num_batches = math.ceil(count / batch_size)

    def next_epoch(_):
        return epoch.assign_add(1) - 1

    def one_epoch(epoch_index):
        key = tf.stack([seed_key, epoch_index])

        def make_batch(batch_index):
            start = batch_index * batch_size
            positions = tf.range(start, tf.minimum(start + batch_size, count))
            if shuffle:
                positions = tf.random.experimental.index_shuffle(
                    positions, key, count - 1
                )
            batch = tf.gather(x, positions)
            batch_key = tf.random.experimental.stateless_fold_in(
                key, batch_index
            )
            keys = tf.random.experimental.stateless_split(batch_key, 2)
            if augment != "none":
                batch = crop_and_flip(batch, keys[0])
            batch = tf.cast(batch, tf.float32)
            if randaugment is not None:
                batch = randaugment(batch, training=True)
            batch = normalize(batch, mean, std)
            if augment in ("cutout", "randaugment"):
                batch = cutout(batch, keys[1])
            return batch, tf.gather(y, positions)

        batches = tf.data.Dataset.range(num_batches)
        if randaugment is not None:
            # Keras' RandAugment draws from its own seed generator: run it
            # in order, on one thread, so that the draws are reproducible.
            return batches.map(make_batch)
        return batches.map(
            make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    dataset = tf.data.Dataset.range(1).map(next_epoch).flat_map(one_epoch)
    # flat_map hides the length; Keras needs it to count steps.
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(num_batches)
    )
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset, epoch


def eval_dataset(images, labels, batch_size, mean, std):
    """A pipeline of normalized batches in a fixed order, no augmentation.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: integer array `(N,)`.
        batch_size: images per batch.
        mean: per-channel mean used by `normalize`.
        std: per-channel standard deviation used by `normalize`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.
    """
    import tensorflow as tf

    _check_batch_size(batch_size)
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.asarray(images, np.uint8), np.asarray(labels, np.int64))
    )
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (normalize(x, mean, std), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def choose_pipeline(pipeline="auto"):
    """The input pipeline `make_pipelines` builds: `"tf.data"` or `"numpy"`.

    The one place where the pipeline is chosen. `"auto"` is `"tf.data"`
    on the TensorFlow backend and `"numpy"` on the others (JAX, PyTorch),
    whether or not TensorFlow is installed, so that a backend always gets
    the same batches. The two pipelines have the same augmentations,
    normalization and batching; their random draws differ (TensorFlow's
    stateless ops against NumPy's generators), so a run gives other
    batches, from the same distribution, under the other pipeline.

    Args:
        pipeline: `"auto"`, `"tf.data"` (needs TensorFlow, on any
            backend) or `"numpy"` (JAX and PyTorch backends only: on the
            TensorFlow backend Keras prefetches a `PyDataset` through
            `tf.data`, ahead of the epoch counter). Defaults to `"auto"`.

    Returns:
        `"tf.data"` or `"numpy"`.

    Example:

    >>> # With KERAS_BACKEND=jax:
    >>> keras_sam.experiments.data_pipeline.choose_pipeline()
    'numpy'
    """
    if pipeline not in PIPELINES:
        raise ValueError(
            f"Unknown pipeline={pipeline!r}; expected one of "
            f"{list(PIPELINES)}."
        )
    import keras

    on_tensorflow = keras.backend.backend() == "tensorflow"
    if pipeline == "auto":
        return "tf.data" if on_tensorflow else "numpy"
    if pipeline == "numpy" and on_tensorflow:
        # Keras reads a PyDataset through tf.data on this backend, whose
        # prefetching starts the next epoch before `on_epoch_end`.
        raise ValueError(
            "pipeline='numpy' is for the JAX and PyTorch backends: on the "
            "TensorFlow backend Keras prefetches a PyDataset's next epoch "
            "before the epoch counter moves. Use pipeline='tf.data' (or "
            "'auto')."
        )
    if pipeline == "tf.data" and not _tensorflow_installed():
        raise ValueError(
            "pipeline='tf.data' needs TensorFlow, which is not installed; "
            "use pipeline='numpy' (or 'auto')."
        )
    return pipeline


def make_pipelines(
    splits, batch_size=256, augment="basic", seed=0, pipeline="auto"
):
    """Builds the train, validation and test pipelines of `splits`.

    All three are normalized with the training split's per-channel mean
    and standard deviation (`splits.channel_statistics()`).

    Args:
        splits: a `keras_sam.experiments.datasets.CifarSplits`.
        batch_size: batch size of the three pipelines. Defaults to `256`.
        augment: one of `AUGMENTATIONS`. Defaults to `"basic"`.
        seed: seed of the training order and augmentation. Defaults to
            `0`.
        pipeline: `"auto"`, `"tf.data"` or `"numpy"`; see
            `choose_pipeline`. Defaults to `"auto"` (`tf.data` on the
            TensorFlow backend, NumPy on JAX and PyTorch).

    Returns:
        A `CifarPipelines`.
    """
    check_augment(augment)
    return assemble_pipelines(
        splits, batch_size, augment, seed, choose_pipeline(pipeline)
    )


def assemble_pipelines(splits, batch_size, augment, seed, kind):
    """The train, validation and test pipelines of `kind` (`"tf.data"` or
    `"numpy"`, not checked against the backend), normalized with the
    training split's statistics; see `make_pipelines`."""
    mean, std = (v.astype(np.float32) for v in splits.channel_statistics())
    if kind == "numpy":
        from keras_sam.experiments import numpy_pipeline

        train = numpy_pipeline.TrainBatches(
            splits.x_train, splits.y_train, batch_size, mean, std,
            augment=augment, seed=seed,
        )
        epoch, evaluation = None, numpy_pipeline.EvalBatches
    else:
        train, epoch = train_dataset(
            splits.x_train, splits.y_train, batch_size, mean, std,
            augment=augment, seed=seed,
        )
        evaluation = eval_dataset
    validation = None
    if len(splits.y_validation):
        validation = evaluation(
            splits.x_validation, splits.y_validation, batch_size, mean, std
        )
    test = evaluation(splits.x_test, splits.y_test, batch_size, mean, std)
    return CifarPipelines(
        train, validation, test, splits, mean, std, batch_size, augment,
        seed, epoch, pipeline=kind,
    )


def _tensorflow_installed():
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except ImportError:  # an import hook refusing it
        return False


def _check_batch_size(batch_size):
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer, got {batch_size!r}."
        )
