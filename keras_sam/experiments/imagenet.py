"""ImageNet (ILSVRC-2012) for `keras-sam reproduce`: the data of the SAM
paper's Table 2 and its Inception-style `tf.data` input pipeline.

Two sources, like the CIFAR ones of `experiments.sources`:

- `"folder"`: an ImageNet-style image folder tree,
  `data_dir/train/<class>/<image>` and `data_dir/val/<class>/<image>`
  (or `validation/`), labels the class folders in sorted order (for the
  usual `n01440764 ...` synset folders, the standard label order);
- `"tfds"`: tensorflow_datasets' `imagenet2012`, prepared in `data_dir`
  from the two ILSVRC-2012 tar files placed by hand in `manual_dir`
  (tfds cannot download ImageNet).

The pipeline is the standard one of the ResNet papers and of the SAM
authors' code: training images get an Inception-style random crop (a
window of 8% to 100% of the image's area and aspect ratio 3/4 to 4/3,
`tf.image.stateless_sample_distorted_bounding_box`, the whole image's
centre crop when 10 attempts fail), resized to `image_size` (bicubic),
and a random horizontal flip; evaluation images the centre crop of
`CROP_FRACTION` of the shorter side (224 of 256), resized likewise.
Pixels are normalized with the ImageNet channel statistics. JPEG files
are decoded only inside the crop window (`tf.image.decode_and_crop_jpeg`);
other formats (ImageNet's train split holds a few PNG and CMYK files)
are decoded whole. The pipeline needs TensorFlow on every backend.

Randomness: the folder source's order of epoch `e` is
`tf.random.experimental.index_shuffle` under the key `(seed, e)` and the
crop and flip of the image at position `i` draw from
`stateless_fold_in((seed, e), i)`, so a run resumed at epoch `e` sees
the batches the uninterrupted run would have. tfds reads its shards in its
own order (`shuffle_files` with `seed`, then a 10,000-image shuffle
buffer), which is reproducible from the start of a run but not from the
middle: a resumed run sees other batches, from the same distribution.
"""

import math
import pathlib

import numpy as np

IMAGE_SIZE = 224
CROP_FRACTION = 0.875
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
NUM_CLASSES = 1000
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
SHUFFLE_BUFFER = 10_000
SOURCES = ("auto", "folder", "tfds")
_EVAL_FOLDERS = ("val", "validation")
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class ImageNetPipelines:
    """The train and test pipelines of ImageNet, as `fit` reads them.

    Returned by `make_pipelines`; it has the attributes of
    `experiments.data_pipeline.CifarPipelines` that training reads.

    Attributes:
        train: `tf.data.Dataset` of `(images, labels)` batches, cropped,
            flipped and shuffled anew every epoch.
        validation: `None` (the SAM paper chose ImageNet's `rho` once,
            on ResNet-50 at 100 epochs).
        test: the ILSVRC-2012 validation images, centre-cropped, in a
            fixed order (the paper's "test error").
        num_classes: number of classes.
        input_shape: `(image_size, image_size, 3)`.
        train_images, test_images: number of images of each split.
        steps_per_epoch: training batches per epoch (the last one may be
            smaller).
        source: a sentence saying where the images came from.
        epoch: `tf.Variable`, the epoch the next iteration of `train`
            produces (see `set_epoch`).
        pipeline: `"tf.data"`.
    """

    pipeline = "tf.data"
    validation = None

    def __init__(self, train, test, epoch, num_classes, image_size,
                 train_images, test_images, batch_size, source):
        self.train = train
        self.test = test
        self.epoch = epoch
        self.num_classes = num_classes
        self.input_shape = (image_size, image_size, 3)
        self.train_images = train_images
        self.test_images = test_images
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(train_images / batch_size)
        self.source = source

    def set_epoch(self, epoch):
        """Makes the next iteration of `train` produce epoch `epoch`."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"`epoch` must be a non-negative integer, got {epoch!r}."
            )
        self.epoch.assign(epoch)


def folder_files(data_dir, split):
    """The image files and labels of one split of an image folder tree.

    Args:
        data_dir: the tree's root.
        split: `"train"`, or `"test"` for `val/` (else `validation/`).

    Returns:
        A tuple `(paths, labels, class_names)`: file paths (strings) in
        sorted order, int64 labels (the index of the class folder in
        sorted order), and the sorted class folder names.

    Raises:
        FileNotFoundError: when the split's folder is missing.
        ValueError: when it holds no class folder or no image.
    """
    root = pathlib.Path(data_dir)
    if split == "train":
        candidates = ("train",)
    else:
        candidates = _EVAL_FOLDERS
    folder = next(
        (root / name for name in candidates if (root / name).is_dir()), None
    )
    if folder is None:
        raise FileNotFoundError(
            f"{root} has no {' or '.join(f'{c}/' for c in candidates)} "
            "folder (expected an ImageNet-style tree "
            "train/<class>/<image>, val/<class>/<image>)."
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{folder} holds no class folder.")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (folder / name).iterdir()
            if p.suffix.lower() in _IMAGE_SUFFIXES
        )
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(
            f"{folder} holds no image ({', '.join(_IMAGE_SUFFIXES)})."
        )
    return paths, np.asarray(labels, np.int64), classes


def read_shape(image_bytes):
    """`(height, width, channels)` of an encoded image, int32."""
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.extract_jpeg_shape(image_bytes),
        lambda: tf.shape(
            tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False),
            out_type=tf.int32,
        ),
    )


def decode_window(image_bytes, window):
    """Decodes the crop `window = [top, left, height, width]` of an encoded
    image to RGB uint8 (a JPEG only inside the window)."""
    import tensorflow as tf

    def other_format():
        image = tf.io.decode_image(image_bytes, channels=3,
                                   expand_animations=False)
        return tf.image.crop_to_bounding_box(
            image, window[0], window[1], window[2], window[3]
        )

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.image.decode_and_crop_jpeg(image_bytes, window,
                                              channels=3),
        other_format,
    )


def center_window(shape, crop_fraction=CROP_FRACTION):
    """The centred square window of `crop_fraction` of the shorter side."""
    import tensorflow as tf

    height, width = shape[0], shape[1]
    side = tf.cast(
        tf.round(crop_fraction * tf.cast(tf.minimum(height, width),
                                         tf.float32)),
        tf.int32,
    )
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2,
                     side, side])


def random_window(shape, seed):
    """An Inception-style random crop window of an image of `shape`.

    A window of `AREA_RANGE` of the image's area and `ASPECT_RATIO_RANGE`
    aspect ratio, from `MAX_ATTEMPTS` attempts of
    `tf.image.stateless_sample_distorted_bounding_box`; when all fail
    (the sampler then returns the whole image), the centre crop.

    Args:
        shape: int32 `(height, width, channels)`.
        seed: int tensor of shape `(2,)`.

    Returns:
        int32 `[top, left, height, width]`.
    """
    import tensorflow as tf

    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.cond(failed, lambda: center_window(shape), lambda: window)


def _resize_and_normalize(image, image_size):
    import tensorflow as tf

    image = tf.image.resize(image, [image_size, image_size],
                            method="bicubic")
    image = tf.clip_by_value(image, 0.0, 255.0)
    mean = tf.constant(MEAN_RGB, tf.float32) * 255.0
    std = tf.constant(STD_RGB, tf.float32) * 255.0
    return (image - mean) / std


def train_image(image_bytes, seed, image_size=IMAGE_SIZE, augment=True):
    """One training image: random crop, resize, flip, normalize.

    Args:
        image_bytes: the encoded image (string tensor).
        seed: int tensor of shape `(2,)`.
        image_size: side of the output. Defaults to `224`.
        augment: `False` gives the evaluation crop instead. Defaults to
            `True`.

    Returns:
        float32 `(image_size, image_size, 3)`.
    """
    import tensorflow as tf

    if not augment:
        return eval_image(image_bytes, image_size)
    keys = tf.random.experimental.stateless_split(seed, 2)
    shape = read_shape(image_bytes)
    image = decode_window(image_bytes, random_window(shape, keys[0]))
    image = _resize_and_normalize(image, image_size)
    return tf.image.stateless_random_flip_left_right(image, keys[1])


def eval_image(image_bytes, image_size=IMAGE_SIZE):
    """One evaluation image: centre crop, resize, normalize."""
    shape = read_shape(image_bytes)
    image = decode_window(image_bytes, center_window(shape))
    return _resize_and_normalize(image, image_size)


def _check_split_sizes(train_images, test_images, batch_size, source):
    if not train_images or not test_images:
        raise ValueError(
            f"{source}: the train split has {train_images} images and the "
            f"test split {test_images}; both need at least one."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
        batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer, got {batch_size!r}."
        )


def make_pipelines(
    data_dir,
    source="auto",
    batch_size=256,
    augment="basic",
    seed=0,
    image_size=IMAGE_SIZE,
    manual_dir=None,
    train_size=None,
    test_size=None,
):
    """ImageNet train and test pipelines (see the module).

    Args:
        data_dir: the image folder tree, or the tfds data directory.
        source: `"auto"` (the folder tree when `data_dir` has a `train/`
            folder, else tfds), `"folder"` or `"tfds"`. Defaults to
            `"auto"`.
        batch_size: batch size of both pipelines. Defaults to `256`.
        augment: `"basic"` (Inception-style crop and flip) or `"none"`
            (the evaluation crop for training too). Defaults to
            `"basic"`.
        seed: seed of the order, crops and flips. Defaults to `0`.
        image_size: side of the network's input. Defaults to `224`.
        manual_dir: for tfds, the folder holding the ILSVRC-2012 tar
            files, used when `imagenet2012` is not prepared yet. Defaults
            to `None` (`data_dir/downloads/manual`, tfds' own).
        train_size: the first `train_size` training images (folder: in
            file order after a seeded shuffle; tfds: the first ones read),
            or `None` for all. Defaults to `None`.
        test_size: likewise for the test images. Defaults to `None`.

    Returns:
        An `ImageNetPipelines`.
    """
    if augment not in ("basic", "none"):
        raise ValueError(
            f"augment={augment!r} is not available for imagenet2012; "
            "expected 'basic' (Inception-style crop and flip, the paper's) "
            "or 'none'."
        )
    if source not in SOURCES:
        raise ValueError(
            f"Unknown source={source!r} for imagenet2012; expected one of "
            f"{list(SOURCES)}."
        )
    if image_size is None or isinstance(image_size, bool) or not isinstance(
        image_size, int
    ) or image_size < 8:
        raise ValueError(
            f"`image_size` must be an integer >= 8, got {image_size!r}."
        )
    if data_dir is None:
        raise ValueError(
            "imagenet2012 needs `data_dir`: an image folder tree or a tfds "
            "data directory (tfds cannot download ImageNet)."
        )
    if source == "auto":
        has_train = (pathlib.Path(data_dir) / "train").is_dir()
        source = "folder" if has_train else "tfds"
    reader = _folder_pipelines if source == "folder" else _tfds_pipelines
    return reader(data_dir, batch_size, augment == "basic", seed,
                  image_size, manual_dir, train_size, test_size)


def _assemble(epoch_images, test_images, counts, num_classes, batch_size,
              augment, seed, image_size, source):
    """The train and test pipelines from the encoded images of a source.

    Args:
        epoch_images: `key -> dataset of (position, encoded image, label)`,
            the training images of the epoch whose random key is `key`.
        test_images: dataset of `(encoded image, label)`.
        counts: `(training images, test images)`.
        num_classes, batch_size, augment, seed, image_size, source: see
            `make_pipelines` and `ImageNetPipelines`.
    """
    import tensorflow as tf

    count, test_count = counts
    _check_split_sizes(count, test_count, batch_size, source)
    seed_key = tf.constant(int(seed), tf.int64)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    def one_epoch(_):
        key = tf.stack([seed_key, epoch.assign_add(1) - 1])

        def load(position, image_bytes, label):
            image_key = tf.random.experimental.stateless_fold_in(
                key, position
            )
            return train_image(image_bytes, image_key, image_size,
                               augment), label

        return epoch_images(key).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    train = tf.data.Dataset.range(1).flat_map(one_epoch).batch(batch_size)
    # flat_map hides the length; Keras needs it to count steps.
    train = train.apply(tf.data.experimental.assert_cardinality(
        math.ceil(count / batch_size)
    )).prefetch(tf.data.AUTOTUNE)
    test = test_images.map(
        lambda image_bytes, label: (eval_image(image_bytes, image_size),
                                    label),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ImageNetPipelines(train, test, epoch, num_classes, image_size,
                             count, test_count, batch_size, source)


def _folder_pipelines(data_dir, batch_size, augment, seed, image_size,
                      manual_dir, train_size, test_size):
    import tensorflow as tf

    train_paths, train_labels, classes = folder_files(data_dir, "train")
    test_paths, test_labels, test_classes = folder_files(data_dir, "test")
    if test_classes != classes[: len(test_classes)]:
        raise ValueError(
            f"The class folders of {data_dir}'s train/ and val/ differ: "
            f"{classes[:5]}... against {test_classes[:5]}..."
        )
    rng = np.random.default_rng(seed)
    if train_size is not None:
        rows = np.sort(rng.permutation(len(train_paths))[:train_size])
        train_paths = [train_paths[i] for i in rows]
        train_labels = train_labels[rows]
    if test_size is not None:
        test_paths = test_paths[:test_size]
        test_labels = test_labels[:test_size]
    count = len(train_paths)
    paths, labels = tf.constant(train_paths), tf.constant(train_labels)

    def epoch_images(key):
        def read(position):
            row = tf.random.experimental.index_shuffle(
                position, key, count - 1
            )
            return (position, tf.io.read_file(tf.gather(paths, row)),
                    tf.gather(labels, row))

        return tf.data.Dataset.range(count).map(
            read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    test_images = tf.data.Dataset.from_tensor_slices(
        (tf.constant(test_paths), tf.constant(test_labels))
    ).map(lambda path, label: (tf.io.read_file(path), label))
    source = (
        f"ImageNet-style image folder tree {data_dir} ({len(classes)} "
        "classes)"
    )
    return _assemble(epoch_images, test_images, (count, len(test_paths)),
                     len(classes), batch_size, augment, seed, image_size,
                     source)


def _tfds_pipelines(data_dir, batch_size, augment, seed, image_size,
                    manual_dir, train_size, test_size):
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if not builder.is_prepared():
        # From the tar files in `manual_dir`: tfds cannot download ImageNet.
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir
            )
        )
    decoders = {"image": tfds.decode.SkipDecoding()}
    train_split = "train" if train_size is None else f"train[:{train_size}]"
    test_split = (
        "validation" if test_size is None else f"validation[:{test_size}]"
    )
    base = builder.as_dataset(
        split=train_split, shuffle_files=True, decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=int(seed)),
    )
    test_base = builder.as_dataset(split=test_split, decoders=decoders)
    counts = (_split_size(builder, base, train_split),
              _split_size(builder, test_base, test_split))
    shuffled = base.shuffle(min(counts[0], SHUFFLE_BUFFER) or 1,
                            seed=int(seed), reshuffle_each_iteration=True)

    def epoch_images(key):
        return shuffled.enumerate().map(
            lambda position, example: (position, example["image"],
                                       example["label"])
        )

    test_images = test_base.map(
        lambda example: (example["image"], example["label"])
    )
    return _assemble(
        epoch_images, test_images, counts,
        builder.info.features["label"].num_classes, batch_size, augment,
        seed, image_size, f"tensorflow_datasets imagenet2012 in {data_dir}",
    )


def _split_size(builder, dataset, split):
    """Images in `split`: from the dataset's metadata, else counted."""
    try:
        size = builder.info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        size = 0
    if size:
        return int(size)
    return int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
