"""Where CIFAR images come from: JPEG npz files, the shipped sample, an
image folder tree, or tensorflow_datasets.

Images in this project are stored as JPEG bytes in NumPy `.npz` files (the
format of the offline CIFAR-10 copy, see `load_jpeg_npz`). They are decoded
with Pillow everywhere (the `keras-sam` command, the benchmarks, the
tutorials, the tests), never with `tf.io.decode_jpeg`: the two decoders
differ by a few intensity levels on some pixels, and the GPU machines used
for measurements have no TensorFlow. Using one decoder keeps the pixels of
every run identical. This module needs only NumPy and Pillow (and
tensorflow_datasets for the tfds source); it does not import TensorFlow or
Keras. `keras_sam.experiments.datasets` turns what it reads into splits.
"""

import io
import pathlib
import zipfile

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
    with _open_npz(path) as arrays:
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


def _open_npz(path):
    """`np.load(path)` of an `.npz` archive, or a ValueError naming it."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a valid npz file (a NumPy .npz archive): "
            f"{type(error).__name__} while reading it."
        ) from error
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} is not a valid npz file: it holds a single array "
            "(a .npy file), not an archive of arrays."
        )
    return arrays


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
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"In {path}, `y` must hold integer class labels, got dtype "
            f"{labels.dtype} (float labels would be truncated)."
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


SOURCES = ("auto", "npz", "folder", "tfds", "sample")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_source(name, data_dir, source, download):
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
    tried = "; ".join(attempts)
    raise ValueError(
        f"Could not load {name!r} (source={source!r}, "
        f"data_dir={data_dir!r}). Tried {tried}. "
        "Pass data_dir= a folder with train.npz and test.npz (the JPEG npz "
        "format), or an image folder tree data_dir/{train,test}/<class>/, "
        "or a tfds data directory (downloads need network access); for "
        "CIFAR-10, source='sample' uses the 5,000-image sample shipped "
        "with keras-sam."
    )


class _SourceUnavailable(Exception):
    pass


def _require(paths, exists, message):
    """Raises `_SourceUnavailable("<message> <the paths not passing
    exists>")` unless every path does."""
    missing = [str(path) for path in paths if not exists(path)]
    if missing:
        raise _SourceUnavailable(f"{message} {', '.join(missing)}")


def _read_npz(name, data_dir, download):
    folder = pathlib.Path(data_dir)
    paths = [folder / "train.npz", folder / "test.npz"]
    _require(paths, pathlib.Path.is_file, "missing")
    train, test = (load_jpeg_npz(path) for path in paths)
    return train, test, f"JPEG npz copy in {folder} (Pillow-decoded)"


def _read_folder(name, data_dir, download):
    root = pathlib.Path(data_dir)
    splits = [root / "train", root / "test"]
    _require(splits, pathlib.Path.is_dir, "missing folders")
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
            f"tensorflow_datasets is not installed ({error}; pip install "
            "'keras-sam[tfds]', from a clone pip install -e '.[tfds]')"
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
