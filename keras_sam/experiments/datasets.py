"""CIFAR data for keras-sam: the shipped sample and JPEG npz files.

Images in this project are stored as JPEG bytes in NumPy `.npz` files (the
format of the offline CIFAR-10 copy, see `load_jpeg_npz`). They are decoded
with Pillow everywhere (the `keras-sam` command, the benchmarks, the
tutorials, the tests), never with `tf.io.decode_jpeg`: the two decoders
differ by a few intensity levels on some pixels, and the GPU machines used
for measurements have no TensorFlow. Using one decoder keeps the pixels of
every run identical. This module needs only NumPy and Pillow; it does not
import TensorFlow or Keras.
"""

import io
import pathlib

import numpy as np

CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_SAMPLE_PATH = pathlib.Path(__file__).resolve().parent / "data"
_SAMPLE_PATH = _SAMPLE_PATH / "cifar10_sample.npz"
_REQUIRED_KEYS = ("data", "offsets", "y")


def decode_jpeg(jpeg_bytes):
    """Decode one JPEG image to an RGB uint8 array with Pillow.

    This is the decoder used for every image in keras-sam.

    Args:
        jpeg_bytes: the JPEG file, as `bytes` or a 1-D uint8 array.

    Returns:
        A uint8 NumPy array of shape `(height, width, 3)`.
    """
    from PIL import Image

    if isinstance(jpeg_bytes, np.ndarray):
        jpeg_bytes = jpeg_bytes.tobytes()
    with Image.open(io.BytesIO(jpeg_bytes)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_jpeg_npz(path, split=None):
    """Load images and labels from a JPEG npz file.

    The file holds three arrays: `data` (uint8, the JPEG files of all
    images concatenated), `offsets` (int64, length N + 1; image `i` is
    `data[offsets[i]:offsets[i + 1]]`) and `y` (the integer labels). This
    is the format of the offline CIFAR-10 copy (`train.npz`, `test.npz`).
    A file holding several splits prefixes the arrays with the split name
    (`train_data`, `train_offsets`, `train_y`, ...), as the shipped sample
    does; pass `split` to read one of them. Other arrays in the file are
    ignored. Images are decoded with Pillow (see `decode_jpeg`) and must
    all have the same size.

    Args:
        path: path of the `.npz` file.
        split: name of the split to read from a file with prefixed arrays,
            e.g. `"train"`, or `None` for unprefixed arrays. Defaults to
            `None`.

    Returns:
        A tuple `(x, y)`: `x` a uint8 array of shape `(N, height, width, 3)`
        in the file's row order, `y` an int64 array of shape `(N,)`.

    Example:

    >>> x_train, y_train = keras_sam.experiments.datasets.load_jpeg_npz(
    ...     "../shared/data/cifar10/train.npz")
    >>> x_train.shape
    (50000, 32, 32, 3)
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JPEG npz file not found: {path}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"`split` must be a string or None, got {split!r}.")
    prefix = "" if split is None else f"{split}_"
    with np.load(path, allow_pickle=False) as arrays:
        keys = [prefix + key for key in _REQUIRED_KEYS]
        missing = [key for key in keys if key not in arrays.files]
        if missing:
            raise ValueError(
                f"{path} is not a JPEG npz file for split={split!r}: "
                f"missing arrays {missing}; it holds {sorted(arrays.files)}."
            )
        data, offsets, labels = (arrays[key] for key in keys)
    _check_layout(path, data, offsets, labels)
    images = [
        decode_jpeg(data[offsets[i] : offsets[i + 1]])
        for i in range(labels.shape[0])
    ]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"Images in {path} have different shapes: {sorted(shapes)}."
        )
    if images:
        x = np.stack(images)
    else:
        x = np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return x, labels.astype(np.int64)


def _check_layout(path, data, offsets, labels):
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError(
            f"In {path}, `data` must be a 1-D uint8 array, got dtype "
            f"{data.dtype} and shape {data.shape}."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"In {path}, `y` must be 1-D, got shape {labels.shape}."
        )
    if offsets.shape != (labels.shape[0] + 1,):
        raise ValueError(
            f"In {path}, `offsets` must have shape ({labels.shape[0] + 1},) "
            f"for {labels.shape[0]} labels, got {offsets.shape}."
        )
    if (
        offsets[0] != 0
        or offsets[-1] != data.size
        or np.any(np.diff(offsets) <= 0)
    ):
        raise ValueError(
            f"In {path}, `offsets` must increase from 0 to the size of "
            f"`data` ({data.size})."
        )


def load_cifar10_sample(path=None):
    """Load the CIFAR-10 sample shipped with keras-sam.

    The sample holds 5,000 training images (500 per class) and 1,000 test
    images (100 per class), drawn with a fixed seed from the offline
    CIFAR-10 copy by `keras_sam/experiments/data/make_cifar10_sample.py`,
    and stored as the original JPEG bytes (about 2 MB). The images are
    JPEG-compressed versions of CIFAR-10, so accuracies are close to, not
    identical with, those on the official release. Rows come in a fixed
    shuffled order (every class appears throughout); images are decoded
    with Pillow. Needs no network and no TensorFlow.

    Args:
        path: another file in the same format, or `None` for the shipped
            sample. Defaults to `None`.

    Returns:
        Tuple of NumPy arrays `(x_train, y_train), (x_test, y_test)`:
        `x_*` uint8 of shape `(N, 32, 32, 3)`, `y_*` int64 labels 0-9 of
        shape `(N,)` (class names in `CIFAR10_CLASS_NAMES`).

    Example:

    >>> (x_train, y_train), (x_test, y_test) = (
    ...     keras_sam.experiments.datasets.load_cifar10_sample())
    >>> x_train.shape, x_test.shape
    ((5000, 32, 32, 3), (1000, 32, 32, 3))

    References:
        - [Krizhevsky, 2009](https://www.cs.toronto.edu/~kriz/cifar.html)
    """
    path = _SAMPLE_PATH if path is None else pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 sample not found: {path}. The shipped sample is "
            "missing from this installation; reinstall keras-sam, or make "
            "it with `python -m keras_sam.experiments.data.make_cifar10_sample "
            "--source <folder with train.npz and test.npz>`."
        )
    return load_jpeg_npz(path, split="train"), load_jpeg_npz(path, "test")


# Training splits and tf.data pipelines --------------------------------------

DATASET_NAMES = ("cifar10", "cifar100")
SOURCES = ("auto", "npz", "folder", "tfds", "sample")
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
    (x_train, y_train), (x_test, y_test), description = _read_source(
        name, data_dir, source, download
    )
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{description}: {split} labels must be in [0, "
                f"{num_classes}) for {name}, got {labels.min()} to "
                f"{labels.max()}."
            )
    train_size = _check_size("train_size", train_size, len(y_train))
    test_size = _check_size("test_size", test_size, len(y_test))
    if train_size < len(y_train):
        x_train, y_train = _subset(x_train, y_train, train_size, split_seed)
    if test_size < len(y_test):
        x_test, y_test = _subset(x_test, y_test, test_size, split_seed + 1)
    held_out = round(validation_fraction * len(y_train))
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


def _read_source(name, data_dir, source, download):
    """Returns `(train, test, description)` from the first source that
    works, or raises a ValueError listing every attempt."""
    if source == "sample":
        if name != "cifar10":
            raise ValueError(
                f"source='sample' holds CIFAR-10 only, not name={name!r}."
            )
        train, test = load_cifar10_sample()
        return train, test, "keras-sam CIFAR-10 sample (JPEG, Pillow)"
    attempts = []
    readers = {"npz": _read_npz, "folder": _read_folder, "tfds": _read_tfds}
    order = ("npz", "folder", "tfds") if source == "auto" else (source,)
    for kind in order:
        if kind in ("npz", "folder") and data_dir is None:
            attempts.append(f"{kind}: no data_dir given")
            continue
        try:
            return readers[kind](name, data_dir, download)
        except _SourceUnavailable as error:
            attempts.append(f"{kind}: {error}")
    tried = "\n".join(f"  - {attempt}" for attempt in attempts)
    raise ValueError(
        f"Could not load {name!r} (source={source!r}, "
        f"data_dir={data_dir!r}). Tried:\n{tried}\n"
        "Pass data_dir= a folder with train.npz and test.npz (the JPEG npz "
        "format), or an image folder tree data_dir/{train,test}/<class>/, "
        "or a tfds data directory (downloads need network access); for "
        "CIFAR-10, source='sample' uses the 5,000-image sample shipped "
        "with keras-sam."
    )


class _SourceUnavailable(Exception):
    pass


def _read_npz(name, data_dir, download):
    folder = pathlib.Path(data_dir)
    paths = [folder / "train.npz", folder / "test.npz"]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise _SourceUnavailable(f"missing {', '.join(missing)}")
    train, test = (load_jpeg_npz(path) for path in paths)
    return train, test, f"JPEG npz copy in {folder} (Pillow-decoded)"


def _read_folder(name, data_dir, download):
    root = pathlib.Path(data_dir)
    splits = [root / "train", root / "test"]
    missing = [str(path) for path in splits if not path.is_dir()]
    if missing:
        raise _SourceUnavailable(f"missing folders {', '.join(missing)}")
    class_names = sorted(
        path.name for path in splits[0].iterdir() if path.is_dir()
    )
    if not class_names:
        raise _SourceUnavailable(f"no class folders in {splits[0]}")
    index = {class_name: i for i, class_name in enumerate(class_names)}
    arrays = []
    for split in splits:
        images, labels = [], []
        for class_folder in sorted(p for p in split.iterdir() if p.is_dir()):
            if class_folder.name not in index:
                raise ValueError(
                    f"{class_folder}: class {class_folder.name!r} is not a "
                    f"class of {splits[0]} ({class_names})."
                )
            for path in sorted(class_folder.iterdir()):
                if path.suffix.lower() in _IMAGE_SUFFIXES:
                    images.append(decode_jpeg(path.read_bytes()))
                    labels.append(index[class_folder.name])
        if not images:
            raise _SourceUnavailable(f"no images in {split}")
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"Images in {split} have different shapes: {sorted(shapes)}."
            )
        arrays.append((np.stack(images), np.asarray(labels, np.int64)))
    return (
        arrays[0],
        arrays[1],
        f"image folder {root} ({len(class_names)} classes, Pillow-decoded)",
    )


def _read_tfds(name, data_dir, download):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise _SourceUnavailable(
            f"tensorflow_datasets is not installed ({error})"
        ) from error
    try:
        train, test = tfds.load(
            name,
            split=["train", "test"],
            as_supervised=True,
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
        )
    except Exception as error:  # tfds raises many kinds; all mean "no".
        message = " ".join(str(error).split())[:300]
        raise _SourceUnavailable(
            f"tfds.load({name!r}) failed: {type(error).__name__}: {message}"
        ) from error
    arrays = []
    for dataset in (train, test):
        images, labels = [], []
        for x, y in tfds.as_numpy(dataset.batch(10_000)):
            images.append(x)
            labels.append(y)
        arrays.append(
            (
                np.concatenate(images).astype(np.uint8),
                np.concatenate(labels).astype(np.int64),
            )
        )
    where = "tfds default directory" if data_dir is None else data_dir
    return arrays[0], arrays[1], f"tensorflow_datasets {name} ({where})"


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
):
    """CIFAR train, validation and test `tf.data` pipelines, as in the SAM
    paper.

    Reads the images with `load_splits` (tfds, a JPEG npz folder or an
    image folder tree; see there), holds out `validation_fraction` of the
    training set, and builds the pipelines with
    `experiments.data_pipeline`: the training pipeline is shuffled every
    epoch and augmented (`augment`), all three are normalized per channel
    with the training split's mean and standard deviation. Everything
    random is a function of `seed` and the epoch, so two pipelines made
    with the same arguments give the same batches. Needs TensorFlow (for
    `tf.data`); the result feeds `fit` on any Keras backend.

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
        splits, batch_size=batch_size, augment=augment, seed=seed
    )
