"""CIFAR-10 and CIFAR-100 for keras-sam: class-balanced splits and the
paper's input pipelines.

`load_splits` reads a dataset from one of the sources of
`keras_sam.experiments.sources` (a JPEG npz copy, an image folder tree,
tensorflow_datasets, or the CIFAR-10 sample shipped with keras-sam) and
holds out a class-balanced validation split; `load` makes the training,
validation and test pipelines from it. The readers of the JPEG npz format
and of the sample are re-exported here (`load_jpeg_npz`,
`load_cifar10_sample`, `decode_jpeg`). This module needs only NumPy and
Pillow; `load` needs TensorFlow for its `tf.data` pipelines (the default
on the TensorFlow backend), not for its NumPy ones (the default on JAX
and PyTorch).
"""

import numpy as np

from keras_sam.experiments.sources import (
    CIFAR10_CLASS_NAMES,
    SOURCES,
    decode_jpeg,
    load_cifar10_sample,
    load_jpeg_npz,
    read_source,
)

DATASET_NAMES = ("cifar10", "cifar100")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# Height, width, channels of every CIFAR image.
IMAGE_SHAPE = (32, 32, 3)


class CifarSplits:
    """Images and labels of one dataset: train, held-out validation, test.

    Returned by `load_splits`. Arrays are NumPy: `x_*` uint8 of shape
    `(N, 32, 32, 3)`, `y_*` int64 of shape `(N,)`. `x_validation` is empty
    when no validation split is held out.

    Attributes:
        name: the dataset name, `"cifar10"` or `"cifar100"`.
        num_classes: number of classes.
        source: a sentence saying where the images came from.
        x_train, y_train: the training split (after holding out the
            validation split).
        x_validation, y_validation: the held-out validation split.
        x_test, y_test: the test split.
    """

    def __init__(
        self,
        name,
        num_classes,
        source,
        train,
        validation,
        test,
    ):
        self.name = name
        self.num_classes = num_classes
        self.source = source
        self.x_train, self.y_train = train
        self.x_validation, self.y_validation = validation
        self.x_test, self.y_test = test

    def channel_statistics(self):
        """Per-channel mean and standard deviation of the training split.

        Computed in float64 over every pixel of `x_train / 255`; the
        validation and test splits are not used.

        Returns:
            A tuple `(mean, std)` of float64 arrays of shape `(3,)`.
        """
        pixels = self.x_train.reshape(-1, self.x_train.shape[-1])
        total = np.zeros(pixels.shape[-1])
        squares = np.zeros(pixels.shape[-1])
        # Chunked, so that 50,000 images need no 1.2 GB float64 copy.
        for start in range(0, len(pixels), 1 << 22):
            chunk = pixels[start : start + (1 << 22)].astype(np.float64)
            chunk /= 255.0
            total += chunk.sum(axis=0)
            squares += (chunk**2).sum(axis=0)
        mean = total / len(pixels)
        std = np.sqrt(np.maximum(squares / len(pixels) - mean**2, 0.0))
        return mean, std

    def __repr__(self):
        return (
            f"CifarSplits(name={self.name!r}, train={len(self.y_train)}, "
            f"validation={len(self.y_validation)}, test={len(self.y_test)}, "
            f"source={self.source!r})"
        )


def balanced_order(labels, seed):
    """A seeded order of rows in which every prefix is class-balanced.

    Rows are shuffled within each class; then the first row of every
    class comes (classes in a seeded order), then the second row of every
    class, and so on. So the first `n` rows hold `n / num_classes` rows of
    each class (up to one) when classes have equal sizes.

    Args:
        labels: 1-D integer array of class labels.
        seed: seed of `numpy.random.default_rng`.

    Returns:
        A 1-D int64 array, a permutation of `range(len(labels))`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    classes = np.unique(labels)
    class_rank = dict(zip(classes.tolist(), rng.permutation(len(classes))))
    rank_within_class = np.empty(len(labels), dtype=np.int64)
    for label in classes:
        rows = shuffled[labels[shuffled] == label]
        rank_within_class[rows] = np.arange(len(rows))
    class_key = np.array([class_rank[label] for label in labels.tolist()])
    return np.lexsort((class_key, rank_within_class)).astype(np.int64)


def _check_fraction(validation_fraction):
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0 <= validation_fraction < 1
    ):
        raise ValueError(
            "`validation_fraction` must be in [0, 1), got "
            f"{validation_fraction!r}."
        )
    return float(validation_fraction)


def _check_size(argument, size, available):
    if size is None:
        return available
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"`{argument}` must be None or a positive integer, got {size!r}."
        )
    if size > available:
        raise ValueError(
            f"`{argument}`={size} is more than the {available} images "
            "available."
        )
    return size


def minimum_train_size(validation_fraction):
    """The fewest training images that `validation_fraction` can split.

    `load_splits` holds out `round(validation_fraction * N)` of `N`
    training images; both the held-out and the remaining part must keep
    at least one image.

    Args:
        validation_fraction: fraction held out, in `[0, 1)`.

    Returns:
        The smallest `N` that leaves both parts non-empty (`1` when
        `validation_fraction` is `0`: nothing is held out).

    Example:

    >>> keras_sam.experiments.datasets.minimum_train_size(0.1)
    6
    """
    validation_fraction = _check_fraction(validation_fraction)
    if validation_fraction == 0:
        return 1
    size = max(2, int(0.5 / validation_fraction))
    while not 1 <= round(validation_fraction * size) < size:
        size += 1
    return size


def _subset(x, y, size, seed):
    """The first `size` rows of a balanced order, kept in file order."""
    rows = np.sort(balanced_order(y, seed)[:size])
    return x[rows], y[rows]


def load_splits(
    name="cifar10",
    data_dir=None,
    source="auto",
    validation_fraction=0.1,
    train_size=None,
    test_size=None,
    split_seed=0,
    download=True,
):
    """Loads CIFAR-10 or CIFAR-100 and holds out a validation split.

    Sources, tried in this order with `source="auto"`:

    1. `"npz"`: `data_dir` holds `train.npz` and `test.npz` in the JPEG npz
       format of the offline CIFAR-10 copy (see `load_jpeg_npz`);
    2. `"folder"`: `data_dir` is an image folder tree as read by
       `tfds.folder_dataset.ImageFolder`:
       `data_dir/{train,test}/<class name>/<image>.{png,jpg,jpeg}`;
       labels are the class folder names in sorted order (for CIFAR-10
       folders named as in `CIFAR10_CLASS_NAMES` this is the usual label
       order);
    3. `"tfds"`: `tensorflow_datasets.load(name, data_dir=data_dir)`, which
       downloads the dataset when it is not prepared yet and `download`
       is true.

    `"sample"` reads the 5,000-image CIFAR-10 sample shipped with
    keras-sam (see `load_cifar10_sample`). JPEG images (npz, folder and
    sample) are decoded with Pillow, like everywhere in keras-sam; only the
    tfds source needs TensorFlow (its CIFAR images are stored losslessly).
    When no source works, the `ValueError` lists what was tried and why it
    failed.

    The splits are made with NumPy, deterministically from `split_seed`:
    first a class-balanced subset of `train_size` training images and of
    `test_size` test images (when given), then a class-balanced
    `validation_fraction` of the training images is held out (the SAM
    paper holds out 10% to choose `rho`). Rows keep the order of the
    source.

    Args:
        name: `"cifar10"` or `"cifar100"`. Defaults to `"cifar10"`.
        data_dir: folder of the local copy (npz or image folder), or the
            tfds data directory; `None` uses tfds' default directory.
            Defaults to `None`.
        source: one of `"auto"`, `"npz"`, `"folder"`, `"tfds"`,
            `"sample"`. Defaults to `"auto"`.
        validation_fraction: fraction of the training images held out, in
            `[0, 1)`. Defaults to `0.1`.
        train_size: number of training images to use (before holding out
            the validation split), or `None` for all. Defaults to `None`.
        test_size: number of test images to use, or `None` for all.
            Defaults to `None`.
        split_seed: seed of the subsets and of the held-out split. Keep it
            fixed across runs that must be compared. Defaults to `0`.
        download: whether the tfds source may download. Defaults to
            `True`.

    Returns:
        A `CifarSplits`.

    Example:

    >>> splits = keras_sam.experiments.datasets.load_splits(
    ...     "cifar10", data_dir="../shared/data/cifar10")
    >>> len(splits.y_train), len(splits.y_validation), len(splits.y_test)
    (45000, 5000, 10000)
    """
    if name not in _NUM_CLASSES:
        raise ValueError(
            f"Unknown dataset name={name!r}; expected one of "
            f"{list(DATASET_NAMES)}."
        )
    if source not in SOURCES:
        raise ValueError(
            f"Unknown source={source!r}; expected one of {list(SOURCES)}."
        )
    validation_fraction = _check_fraction(validation_fraction)
    num_classes = _NUM_CLASSES[name]
    (x_train, y_train), (x_test, y_test), description = read_source(
        name, data_dir, source, download
    )
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{description}: {split} labels must be in [0, "
                f"{num_classes}) for {name}, got {labels.min()} to "
                f"{labels.max()}."
            )
    for split, images in (("train", x_train), ("test", x_test)):
        if images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(
                f"{description}: {split} images must have shape "
                f"{IMAGE_SHAPE} for {name}, got {images.shape[1:]}."
            )
    train_size = _check_size("train_size", train_size, len(y_train))
    test_size = _check_size("test_size", test_size, len(y_test))
    if train_size < len(y_train):
        x_train, y_train = _subset(x_train, y_train, train_size, split_seed)
    if test_size < len(y_test):
        x_test, y_test = _subset(x_test, y_test, test_size, split_seed + 1)
    held_out = round(validation_fraction * len(y_train))
    if validation_fraction and not 1 <= held_out < len(y_train):
        raise ValueError(
            f"The training set ({len(y_train)} images) is too small for "
            f"validation_fraction={validation_fraction}: it would hold out "
            f"{held_out} of them. Use train_size >= "
            f"{minimum_train_size(validation_fraction)} or another "
            "validation_fraction."
        )
    order = balanced_order(y_train, split_seed + 2)
    validation_rows = np.sort(order[:held_out])
    train_rows = np.sort(order[held_out:])
    return CifarSplits(
        name,
        num_classes,
        description,
        (x_train[train_rows], y_train[train_rows]),
        (x_train[validation_rows], y_train[validation_rows]),
        (x_test, y_test),
    )


def load(
    name="cifar10",
    data_dir=None,
    source="auto",
    batch_size=256,
    augment="basic",
    validation_fraction=0.1,
    seed=0,
    split_seed=0,
    train_size=None,
    test_size=None,
    download=True,
    pipeline="auto",
):
    """CIFAR train, validation and test pipelines, as in the SAM paper.

    Reads the images with `load_splits` (tfds, a JPEG npz folder or an
    image folder tree; see there), holds out `validation_fraction` of the
    training set, and builds the pipelines with
    `experiments.data_pipeline`: the training pipeline is shuffled every
    epoch and augmented (`augment`), all three are normalized per channel
    with the training split's mean and standard deviation. Everything
    random is a function of `seed` and the epoch, so two pipelines made
    with the same arguments give the same batches. The pipelines are
    `tf.data` datasets on the TensorFlow backend and
    `keras.utils.PyDataset`s (`experiments.numpy_pipeline`, no TensorFlow
    needed) on JAX and PyTorch (see `pipeline`); either feeds `fit` on
    any Keras backend.

    Args:
        name: `"cifar10"` or `"cifar100"`. Defaults to `"cifar10"`.
        data_dir: see `load_splits`. Defaults to `None`.
        source: see `load_splits`. Defaults to `"auto"`.
        batch_size: batch size of all three pipelines. Defaults to `256`
            (the paper's).
        augment: one of `experiments.data_pipeline.AUGMENTATIONS`: `"basic"`
            (4-pixel zero padding, random 32x32 crop, random horizontal
            flip), `"cutout"` (basic, then a 16x16 cutout),
            `"randaugment"` (basic, Keras' `RandAugment`, then cutout) or
            `"none"`. Defaults to `"basic"`.
        validation_fraction: fraction of the training images held out.
            `0` trains on all of them (`validation` is then `None`).
            Defaults to `0.1`.
        seed: seed of the shuffling and the augmentation. Defaults to `0`.
        split_seed: seed of the held-out split and subsets. Defaults to
            `0`.
        train_size: use a class-balanced subset of this many training
            images, or `None` for all. Defaults to `None`.
        test_size: likewise for the test images. Defaults to `None`.
        download: whether tfds may download. Defaults to `True`.
        pipeline: `"auto"`, `"tf.data"` or `"numpy"` (see
            `experiments.data_pipeline.choose_pipeline`). Defaults to
            `"auto"`.

    Returns:
        A `keras_sam.experiments.data_pipeline.CifarPipelines` with `train`,
        `validation` and `test` datasets of `(images, labels)` batches
        (float32 normalized images, int64 labels), `splits` (the
        `CifarSplits`), `mean`, `std` and `steps_per_epoch`.

    Example:

    >>> data = keras_sam.experiments.datasets.load(
    ...     "cifar10", data_dir="../shared/data/cifar10", seed=1)
    >>> model.fit(data.train, validation_data=data.validation, epochs=200)
    >>> model.evaluate(data.test)
    """
    from keras_sam.experiments import data_pipeline

    splits = load_splits(
        name,
        data_dir=data_dir,
        source=source,
        validation_fraction=validation_fraction,
        train_size=train_size,
        test_size=test_size,
        split_seed=split_seed,
        download=download,
    )
    return data_pipeline.make_pipelines(
        splits,
        batch_size=batch_size,
        augment=augment,
        seed=seed,
        pipeline=pipeline,
    )


__all__ = [
    "CIFAR10_CLASS_NAMES",
    "DATASET_NAMES",
    "IMAGE_SHAPE",
    "SOURCES",
    "CifarSplits",
    "balanced_order",
    "decode_jpeg",
    "load",
    "load_cifar10_sample",
    "load_jpeg_npz",
    "load_splits",
    "minimum_train_size",
]
