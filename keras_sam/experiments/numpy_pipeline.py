"""NumPy pipelines for CIFAR: the `tf.data` pipelines without TensorFlow.

The same training and evaluation pipelines as
`keras_sam.experiments.data_pipeline` (same augmentations, normalization,
batching and shuffling semantics), as `keras.utils.PyDataset`s over the
decoded uint8 arrays, so that `keras-sam reproduce`, `sweep` and `demo`
run on JAX or PyTorch with TensorFlow not installed. Every augmentation
is a batched NumPy array operation. `make_pipelines` in
`experiments.data_pipeline` chooses between the two (`choose_pipeline`).

The random stream is NumPy's, keyed by `(seed, epoch, batch index)`,
so the batches are deterministic given the seed and the epoch, and any
batch can be made on its own (in any order, by any worker):

- the order of epoch `e` is a permutation of the rows drawn from
  `numpy.random.default_rng([seed, e, 0])`;
- the augmentation of batch `b` of epoch `e` draws from
  `numpy.random.default_rng([seed, e, 1, b])`: the crop offsets and the
  flips, then the cutout centres.

The draws are NumPy's, not TensorFlow's: the two pipelines give batches
with the same distribution (tested against each other), not the same
batches.
"""

import math

import keras
import numpy as np

from keras_sam.experiments import data_pipeline

# Seeds are keyed as unsigned 64-bit words: NumPy's seed sequences take
# non-negative integers, the tf.data pipeline any int64.
_SEED_MODULUS = 1 << 64


def normalize(images, mean, std):
    """`(images / 255 - mean) / std` in float32, per channel.

    The same float32 operations, in the same order, as
    `experiments.data_pipeline.normalize`. For uint8 images they are
    computed once per channel and pixel value (a 256-entry table per
    channel) and looked up, which gives the same numbers faster.

    Args:
        images: array of pixel values in `[0, 255]`, channels last.
        mean: per-channel mean of `images / 255`.
        std: per-channel standard deviation of `images / 255`.

    Returns:
        A new float32 array of the same shape.
    """
    images = np.asarray(images)
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if images.dtype == np.uint8:
        channels = images.shape[-1]
        values = np.arange(256, dtype=np.float32)[:, None]
        table = (values / np.float32(255.0) - mean) / std  # (256, channels)
        table = np.broadcast_to(table, (256, channels)).T.ravel()
        # Entry `channel * 256 + value`.
        index = images.astype(np.uint16)
        index += (np.arange(channels) * 256).astype(np.uint16)
        return table[index]
    output = images.astype(np.float32)
    output /= np.float32(255.0)
    output -= mean
    output /= std
    return output


def crop_and_flip(
    images, rng, padding=data_pipeline.PADDING, padding_mode="constant"
):
    """Random crop of the padded images, then random horizontal flip.

    Each image of the batch is padded with `padding` pixels on every
    side (zeros, or the image mirrored for `padding_mode="reflect"`),
    cropped back to its size at an offset drawn uniformly from
    `{0, ..., 2 padding}` in each direction, and flipped left-right with
    probability 1/2: the "basic" augmentation of the SAM paper, as
    `experiments.data_pipeline.crop_and_flip` does it. The crops are one
    gather from a strided view of the padded batch (every crop of every
    image), the flips one reversed copy of the flipped images.

    Args:
        images: batch array `(n, height, width, channels)`, any dtype.
        rng: a `numpy.random.Generator`; the row offsets, the column
            offsets and the flips are drawn from it, in that order.
        padding: pixels of padding. Defaults to `4`.
        padding_mode: `"constant"` (zeros) or `"reflect"` (as `np.pad`
            names them). Defaults to `"constant"`.

    Returns:
        A new array like `images`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> crop_and_flip(np.ones((8, 32, 32, 3), np.uint8), rng).shape
    (8, 32, 32, 3)
    """
    if padding_mode not in ("constant", "reflect"):
        raise ValueError(
            "Argument `padding_mode` must be 'constant' or 'reflect'. "
            f"Received: padding_mode={padding_mode!r}."
        )
    images = np.asarray(images)
    count, height, width, channels = images.shape
    span = 2 * padding + 1
    dy = rng.integers(0, span, size=count)
    dx = rng.integers(0, span, size=count)
    flip = rng.random(count) < 0.5
    if padding_mode == "reflect":
        pad = (padding, padding)
        padded = np.pad(images, ((0, 0), pad, pad, (0, 0)), mode="reflect")
    else:
        padded = np.zeros(
            (count, height + 2 * padding, width + 2 * padding, channels),
            images.dtype,
        )
        padded[:, padding : padding + height, padding : padding + width] = (
            images
        )
    strides = padded.strides
    # crops[i, dy, dx] is the crop of image i at offset (dy, dx): a view.
    crops = np.lib.stride_tricks.as_strided(
        padded,
        shape=(count, span, span, height, width, channels),
        strides=(strides[0], *strides[1:3], *strides[1:]),
        writeable=False,
    )
    cropped = crops[np.arange(count), dy, dx]
    cropped[flip] = cropped[flip, :, ::-1]
    return cropped


def cutout(images, rng, size=data_pipeline.CUTOUT_SIZE):
    """Sets a `size` x `size` square of each image to zero (Cutout).

    The square's centre is drawn uniformly over the image; the square is
    `[cy - size // 2, cy - size // 2 + size)` in each direction, clipped
    at the border (DeVries & Taylor, 2017), as in
    `experiments.data_pipeline.cutout`. Apply it after normalization, so
    that zero is the mean pixel.

    Args:
        images: batch array `(n, height, width, channels)`.
        rng: a `numpy.random.Generator`; the row centres, then the column
            centres are drawn from it.
        size: side of the square. Defaults to `16`.

    Returns:
        A new array like `images`.

    References:
        - [DeVries & Taylor, 2017. Improved Regularization of
          Convolutional Neural Networks with Cutout](
          https://arxiv.org/abs/1708.04552)
    """
    output = np.array(images, order="C", copy=True)
    _cutout_in_place(output, rng, size)
    return output


def _cutout_in_place(images, rng, size):
    """`cutout` writing into `images`, a C-contiguous array."""
    count, height, width = images.shape[:3]
    cy = rng.integers(0, height, size=count)
    cx = rng.integers(0, width, size=count)
    top = (cy - size // 2)[:, None]
    left = (cx - size // 2)[:, None]
    rows = np.arange(height)[None, :]
    columns = np.arange(width)[None, :]
    in_rows = (rows >= top) & (rows < top + size)
    in_columns = (columns >= left) & (columns < left + size)
    inside = in_rows[:, :, None] & in_columns[:, None, :]
    # One element per pixel (its channels as raw bytes), so the boolean
    # assignment moves whole pixels: about 4x faster than masking floats.
    pixel = np.dtype((np.void, images.dtype.itemsize * images.shape[3]))
    pixels = images.view(pixel)[..., 0]
    pixels[inside] = np.zeros((), pixel)


class TrainBatches(keras.utils.PyDataset):
    """The training pipeline: shuffled, augmented, normalized batches.

    A `keras.utils.PyDataset`, so `fit` takes it on every backend. Batch
    `index` of epoch `epoch` is a function of `(seed, epoch, index)` only
    (see the module): the rows `order[index * batch_size:][:batch_size]`
    of the epoch's permutation `order` (the last batch may be smaller),
    padded-cropped and flipped (`augment` other than `"none"`), converted
    to float32, passed through Keras' `RandAugment` (`"randaugment"`),
    normalized, and cut out (`"cutout"`, `"randaugment"`).

    `epoch` goes up by one at the end of every epoch of `fit` that
    produced all its batches (Keras calls `on_epoch_end`);
    `experiments.training.DataEpoch` sets it at the start of each epoch
    instead (`set_epoch`), so that a resumed run sees the batches it would
    have seen. Fit it with `shuffle=False`: with `shuffle=True` Keras
    reorders the batches of an epoch (their contents stay the same). Fit
    it on JAX or PyTorch: on the TensorFlow backend Keras reads a
    `PyDataset` through a prefetching `tf.data` iterator that asks for the
    next epoch's first batches before `on_epoch_end` (use the `tf.data`
    pipeline there). With `workers > 1` Keras' threads make the batches of
    an epoch ahead of the step, after the epoch is set.

    `"randaugment"` calls Keras' `RandAugment` eagerly on the backend's
    arrays, which is slow: on a 2-core CPU one 256-image batch took 1.7 s
    on JAX and about 2 minutes on PyTorch (the other augmentations take
    about 5 ms). Use it for small runs, or the `tf.data` pipeline.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: integer array `(N,)`.
        batch_size: images per batch.
        mean: per-channel mean used by `normalize`.
        std: per-channel standard deviation used by `normalize`.
        augment: one of `experiments.data_pipeline.AUGMENTATIONS`.
            Defaults to `"basic"`.
        seed: integer seed of the order and the augmentation. Defaults to
            `0`.
        shuffle: whether to shuffle (else rows come in order, for tests).
            Defaults to `True`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`. Defaults to one worker: the batches
            are made in the training loop's thread.

    Example:

    >>> batches = TrainBatches(x_train, y_train, 256, mean, std, seed=1)
    >>> model.fit(batches, epochs=10, shuffle=False)
    """

    def __init__(
        self,
        images,
        labels,
        batch_size,
        mean,
        std,
        augment="basic",
        seed=0,
        shuffle=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.augment = data_pipeline.check_augment(augment)
        data_pipeline._check_batch_size(batch_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an integer, got {seed!r}.")
        self.images = np.asarray(images, np.uint8)
        self.labels = np.asarray(labels, np.int64)
        if len(self.labels) == 0:
            raise ValueError("The training split is empty.")
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"`images` ({len(self.images)}) and `labels` "
                f"({len(self.labels)}) must have the same length."
            )
        self.batch_size = batch_size
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self._order_cache = (None, None)
        self._produced = set()
        self._randaugment = None
        if self.augment == "randaugment":
            if self.workers > 1 or self.use_multiprocessing:
                raise ValueError(
                    "augment='randaugment' draws from Keras' own seed "
                    "generator, in call order: it needs one worker, got "
                    f"workers={self.workers}, use_multiprocessing="
                    f"{self.use_multiprocessing}."
                )
            self._randaugment = keras.layers.RandAugment(
                value_range=(0, 255), seed=self.seed
            )

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def set_epoch(self, epoch):
        """Makes the following batches those of epoch `epoch`.

        Args:
            epoch: non-negative integer.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"`epoch` must be a non-negative integer, got {epoch!r}."
            )
        self.epoch = epoch
        self._produced = set()

    def on_epoch_end(self):
        if len(self._produced) == len(self):
            self.epoch += 1
        self._produced = set()

    def order(self, epoch=None):
        """The rows of the training split in the order of an epoch.

        Args:
            epoch: the epoch, or `None` for `self.epoch`. Defaults to
                `None`.

        Returns:
            An int64 array, a permutation of `range(N)` (`range(N)` itself
            without shuffling).
        """
        epoch = self.epoch if epoch is None else epoch
        cached_epoch, order = self._order_cache
        if cached_epoch != epoch:
            count = len(self.labels)
            if self.shuffle:
                rng = np.random.default_rng([self._seed_word, epoch, 0])
                order = rng.permutation(count)
            else:
                order = np.arange(count)
            self._order_cache = (epoch, order)
        return order

    @property
    def _seed_word(self):
        return self.seed % _SEED_MODULUS

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index {index} out of range for {len(self)} batches."
            )
        epoch = self.epoch
        start = index * self.batch_size
        rows = self.order(epoch)[start : start + self.batch_size]
        batch = self.images[rows]
        rng = np.random.default_rng([self._seed_word, epoch, 1, index])
        if self.augment != "none":
            batch = crop_and_flip(batch, rng)
        if self._randaugment is not None:
            batch = keras.ops.convert_to_numpy(
                self._randaugment(batch.astype(np.float32), training=True)
            )
        batch = normalize(batch, self.mean, self.std)
        if self.augment in ("cutout", "randaugment"):
            _cutout_in_place(batch, rng, data_pipeline.CUTOUT_SIZE)
        self._produced.add(index)
        return batch, self.labels[rows]


class EvalBatches(keras.utils.PyDataset):
    """Normalized batches in a fixed order, not augmented.

    Args:
        images: uint8 array `(N, height, width, 3)`.
        labels: integer array `(N,)`.
        batch_size: images per batch.
        mean: per-channel mean used by `normalize`.
        std: per-channel standard deviation used by `normalize`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`. Defaults to one worker.
    """

    def __init__(self, images, labels, batch_size, mean, std, **kwargs):
        super().__init__(**kwargs)
        data_pipeline._check_batch_size(batch_size)
        self.images = np.asarray(images, np.uint8)
        self.labels = np.asarray(labels, np.int64)
        self.batch_size = batch_size
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index {index} out of range for {len(self)} batches."
            )
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        batch = normalize(self.images[rows], self.mean, self.std)
        return batch, self.labels[rows]


def make_pipelines(splits, batch_size=256, augment="basic", seed=0):
    """Builds the NumPy train, validation and test pipelines of `splits`.

    As `experiments.data_pipeline.make_pipelines(..., pipeline="numpy")`:
    all three are normalized with the training split's per-channel mean
    and standard deviation (`splits.channel_statistics()`).

    Args:
        splits: a `keras_sam.experiments.datasets.CifarSplits`.
        batch_size: batch size of the three pipelines. Defaults to `256`.
        augment: one of `experiments.data_pipeline.AUGMENTATIONS`.
            Defaults to `"basic"`.
        seed: seed of the training order and augmentation. Defaults to
            `0`.

    Returns:
        A `keras_sam.experiments.data_pipeline.CifarPipelines` whose
        `train` is a `TrainBatches`, `validation` (or `None`) and `test`
        `EvalBatches`, and `pipeline` is `"numpy"`.
    """
    data_pipeline.check_augment(augment)
    return data_pipeline.assemble_pipelines(
        splits, batch_size, augment, seed, "numpy"
    )
