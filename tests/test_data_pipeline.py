"""Tests for `keras_sam.experiments.datasets.load` / `load_splits` and
`keras_sam.experiments.data_pipeline`: sources, splits, augmentation and
normalization checked against NumPy, determinism, CIFAR-100 through mocked
tfds."""

import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from keras_sam.experiments import data_pipeline, datasets

tf = pytest.importorskip("tensorflow")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIR = pathlib.Path(
    os.environ.get(
        "KERAS_SAM_CIFAR10_DIR", REPO_ROOT.parent / "shared/data/cifar10"
    )
)


def _images(count, seed=0, low=0):
    rng = np.random.default_rng(seed)
    return rng.integers(low, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def _epoch(dataset):
    batches = list(dataset.as_numpy_iterator())
    return (
        np.concatenate([x for x, _ in batches]),
        np.concatenate([y for _, y in batches]),
    )


def _raw_pipeline(images, labels, augment, seed=0, batch_size=16):
    """Training pipeline in row order with mean 0 and std 1/255, so that
    outputs are the augmented pixel values themselves."""
    dataset, _ = data_pipeline.train_dataset(
        images,
        labels,
        batch_size,
        mean=np.zeros(3),
        std=np.full(3, 1 / 255),
        augment=augment,
        seed=seed,
        shuffle=False,
    )
    return dataset


def _crop_candidates(image, padding=4):
    """Every crop of the zero-padded image and its mirror, in NumPy."""
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    size = image.shape[0]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[dy : dy + size, dx : dx + size]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, ::-1]


def _find_crop(output, image):
    matches = [
        key
        for key, candidate in _crop_candidates(image)
        if np.array_equal(np.rint(output), candidate)
    ]
    assert matches, "output is no crop/flip of its input"
    return matches[0]


def test_basic_augmentation_is_a_padded_crop_and_flip():
    images = _images(96, low=1)
    labels = np.arange(96) % 10
    x, y = _epoch(_raw_pipeline(images, labels, "basic"))
    np.testing.assert_array_equal(y, labels)
    found = [_find_crop(out, image) for out, image in zip(x, images)]
    offsets = {(dy, dx) for dy, dx, _ in found}
    flips = np.mean([flip for _, _, flip in found])
    # 96 draws from 81 offsets and a fair coin.
    assert len(offsets) > 40
    assert {dy for dy, _ in offsets} == set(range(9))
    assert 0.3 < flips < 0.7


def test_none_augmentation_is_the_identity():
    images = _images(20)
    x, _ = _epoch(_raw_pipeline(images, np.zeros(20, int), "none"))
    np.testing.assert_allclose(x, images, atol=1e-3)


def _cutout_centers(before, after, size=16):
    """Every centre (cy, cx) whose clipped square, zeroed in `before`,
    gives `after`, searched in NumPy."""
    height, width = before.shape[:2]
    centers = []
    for cy in range(height):
        for cx in range(width):
            mask = np.zeros((height, width), bool)
            top, left = cy - size // 2, cx - size // 2
            mask[max(top, 0) : top + size, max(left, 0) : left + size] = True
            if np.array_equal(after, np.where(mask[..., None], 0, before)):
                centers.append((cy, cx))
    return centers


def test_cutout_zeroes_one_clipped_16x16_square():
    images = _images(48, seed=1, low=1)
    labels = np.zeros(48, int)
    basic, _ = _epoch(_raw_pipeline(images, labels, "basic", seed=3))
    cut, _ = _epoch(_raw_pipeline(images, labels, "cutout", seed=3))
    found = []
    for before, after in zip(basic, cut):
        centers = _cutout_centers(np.rint(before), np.rint(after))
        assert centers, "output is no cutout of the cropped image"
        found.append(centers[0])
    rows = {cy for cy, _ in found}
    # Centres are uniform over the image, so squares get clipped too.
    assert min(rows) < 8 or max(rows) > 24
    assert len(set(found)) > 30


def _splits(source, train, test):
    """CIFAR-10 `CifarSplits` of `(images, labels)` pairs, nothing held
    out."""
    images, labels = train
    return datasets.CifarSplits(
        "cifar10", 10, source, train, (images[:0], labels[:0]), test
    )


def test_normalization_matches_numpy_statistics():
    x_train = _images(60, seed=2)
    y_train = np.arange(60) % 10
    x_test = _images(10, seed=3)
    splits = _splits("test arrays", (x_train, y_train), (x_test, np.arange(10)))
    mean, std = splits.channel_statistics()
    pixels = x_train.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-9)
    pipelines = data_pipeline.make_pipelines(splits, batch_size=7)
    assert pipelines.validation is None
    x, y = _epoch(pipelines.test)
    expected = (x_test / 255.0 - mean) / std
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, np.arange(10))
    # The training pipeline without augmentation: the same normalized rows,
    # shuffled, each exactly once.
    train, _ = data_pipeline.train_dataset(
        x_train, y_train, 16, pipelines.mean, pipelines.std, augment="none"
    )
    x, y = _epoch(train)
    pixels = np.rint((x * pipelines.std + pipelines.mean) * 255).astype(int)
    flat = x_train.reshape(60, -1).astype(int)
    rows = [
        int(np.flatnonzero((flat == p.reshape(-1)).all(axis=1))[0])
        for p in pixels
    ]
    assert sorted(rows) == list(range(60)) and rows != list(range(60))
    np.testing.assert_array_equal(y, y_train[rows])


def test_training_pipeline_is_deterministic_given_the_seed():
    images = _images(50, seed=4)
    labels = np.arange(50) % 10

    def two_epochs(seed):
        dataset, _ = data_pipeline.train_dataset(
            images, labels, 16, np.zeros(3), np.ones(3), "cutout", seed
        )
        return [_epoch(dataset) for _ in range(2)]

    first = two_epochs(7)
    tf.random.set_seed(123)  # TensorFlow's global seed plays no part.
    again = two_epochs(7)
    other = two_epochs(8)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # A new epoch reshuffles and re-augments; another seed differs.
    assert not np.array_equal(first[0][1], first[1][1])
    assert not np.array_equal(first[0][0], other[0][0])


def test_set_epoch_replays_that_epoch():
    images = _images(40, seed=5)
    labels = np.arange(40) % 10
    mean, std = np.zeros(3), np.ones(3)
    dataset, _ = data_pipeline.train_dataset(
        images, labels, 8, mean, std, seed=2
    )
    epochs = [_epoch(dataset) for _ in range(3)]
    splits = _splits("test", (images, labels), (images[:8], labels[:8]))
    pipelines = data_pipeline.make_pipelines(
        splits, batch_size=8, augment="basic", seed=2
    )
    assert pipelines.steps_per_epoch == 5
    pipelines.set_epoch(2)
    x, y = _epoch(pipelines.train)
    np.testing.assert_array_equal(y, epochs[2][1])
    # The reference pipeline has mean 0 and std 1: outputs are x / 255.
    unnormalized = x * pipelines.std + pipelines.mean
    np.testing.assert_allclose(unnormalized, epochs[2][0], atol=1e-5)
    with pytest.raises(ValueError, match="epoch"):
        pipelines.set_epoch(-1)


def test_randaugment_runs_and_autoaugment_is_refused_clearly():
    images = _images(16, seed=6)
    x, _ = _epoch(_raw_pipeline(images, np.zeros(16, int), "randaugment"))
    assert x.shape == (16, 32, 32, 3) and np.isfinite(x).all()
    with pytest.raises(ValueError, match="AutoAugment"):
        _raw_pipeline(images, np.zeros(16, int), "autoaugment")
    with pytest.raises(ValueError, match="mixup"):
        _raw_pipeline(images, np.zeros(16, int), "mixup")
    with pytest.raises(ValueError, match="batch_size"):
        data_pipeline.eval_dataset(images, np.zeros(16), 0, 0, 1)


# Splits and sources ----------------------------------------------------------


def test_balanced_order_prefixes_are_class_balanced():
    labels = np.repeat(np.arange(10), 30)
    order = datasets.balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(300))
    for size in (10, 50, 120):
        np.testing.assert_array_equal(
            np.bincount(labels[order[:size]], minlength=10), size // 10
        )
    assert not np.array_equal(order, datasets.balanced_order(labels, seed=4))


def test_load_splits_holds_out_a_balanced_disjoint_validation_split():
    splits = datasets.load_splits("cifar10", source="sample", train_size=1000)
    assert len(splits.y_train) == 900 and len(splits.y_validation) == 100
    assert len(splits.y_test) == 1000
    np.testing.assert_array_equal(np.bincount(splits.y_validation), [10] * 10)
    (x_all, _), _ = datasets.load_cifar10_sample()
    keys = {image.tobytes() for image in x_all}
    train_keys = {image.tobytes() for image in splits.x_train}
    validation_keys = {image.tobytes() for image in splits.x_validation}
    assert not train_keys & validation_keys
    assert train_keys | validation_keys <= keys
    again = datasets.load_splits("cifar10", source="sample", train_size=1000)
    np.testing.assert_array_equal(again.x_validation, splits.x_validation)
    other = datasets.load_splits(
        "cifar10", source="sample", train_size=1000, split_seed=1
    )
    assert not np.array_equal(other.y_validation, splits.y_validation)
    everything = datasets.load_splits(
        "cifar10", source="sample", validation_fraction=0, test_size=200
    )
    assert len(everything.y_train) == 5000 and len(everything.y_validation) == 0
    np.testing.assert_array_equal(np.bincount(everything.y_test), [20] * 10)


def _write_tree(root, images, labels, class_names):
    for split, rows in (("train", range(0, 12)), ("test", range(12, 16))):
        for row in rows:
            folder = root / split / class_names[labels[row]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row]).save(folder / f"img{row:03d}.png")


def test_image_folder_tree_matches_tfds_image_folder(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    images = _images(16, seed=7)
    labels = np.array([0, 1, 2] * 5 + [1])
    class_names = ["cat", "airplane", "bird"]  # sorted: airplane, bird, cat
    _write_tree(tmp_path, images, labels, class_names)
    splits = datasets.load_splits(
        "cifar10", data_dir=tmp_path, validation_fraction=0
    )
    assert "image folder" in splits.source
    reference = tfds.folder_dataset.ImageFolder(str(tmp_path))
    expected = reference.as_dataset(split="train", as_supervised=True)
    pairs = sorted(
        (image.tobytes(), int(label))
        for image, label in tfds.as_numpy(expected)
    )
    ours = sorted(
        (image.tobytes(), int(label))
        for image, label in zip(splits.x_train, splits.y_train)
    )
    assert ours == pairs  # same pixels (lossless PNG), same label indices
    assert reference.info.features["label"].names == sorted(class_names)


def _write_npz(path, images, labels):
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])])
    np.savez(
        path,
        data=np.concatenate(blobs),
        offsets=offsets.astype(np.int64),
        y=np.asarray(labels, np.uint8),
    )


def test_npz_folder_source_and_load(tmp_path):
    images = _images(40, seed=8)
    labels = np.arange(40) % 10
    _write_npz(tmp_path / "train.npz", images[:30], labels[:30])
    _write_npz(tmp_path / "test.npz", images[30:], labels[30:])
    data = datasets.load(
        "cifar10", data_dir=tmp_path, batch_size=8, validation_fraction=0.2
    )
    assert "npz" in data.splits.source
    assert len(data.splits.y_train) == 24
    assert len(data.splits.y_validation) == 6
    x, y = next(iter(data.train))
    assert x.shape == (8, 32, 32, 3) and x.dtype == tf.float32
    assert y.dtype == tf.int64
    assert sum(1 for _ in data.validation.unbatch()) == 6
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        _write_npz(tmp_path / "test.npz", images[30:], labels[30:] + 5)
        datasets.load_splits("cifar10", data_dir=tmp_path)


def test_no_source_error_names_every_attempt(tmp_path):
    with pytest.raises(ValueError) as error:
        datasets.load_splits(
            "cifar10", data_dir=tmp_path / "missing", download=False
        )
    message = str(error.value)
    for attempt in ("npz: missing", "folder: missing", "tfds: tfds.load"):
        assert attempt in message
    assert "source='sample'" in message
    with pytest.raises(ValueError, match="cifar1000"):
        datasets.load_splits("cifar1000")
    with pytest.raises(ValueError, match="source"):
        datasets.load_splits("cifar10", source="web")
    with pytest.raises(ValueError, match="CIFAR-10 only"):
        datasets.load_splits("cifar100", source="sample")
    with pytest.raises(ValueError, match="validation_fraction"):
        datasets.load_splits("cifar10", source="sample", validation_fraction=1)
    with pytest.raises(ValueError, match="train_size"):
        datasets.load_splits("cifar10", source="sample", train_size=10**6)


def test_cifar100_through_mocked_tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=120):
        data = datasets.load(
            "cifar100", source="tfds", batch_size=32, download=False
        )
    splits = data.splits
    assert splits.num_classes == 100 and "tensorflow_datasets" in splits.source
    assert len(splits.y_train) == 108 and len(splits.y_validation) == 12
    assert splits.x_train.shape[1:] == (32, 32, 3)
    assert splits.y_train.max() < 100
    x, y = next(iter(data.train))
    assert x.shape == (32, 32, 32, 3)
    mean, std = splits.channel_statistics()
    np.testing.assert_allclose(data.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(data.std, std, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not (SOURCE_DIR / "train.npz").is_file(),
    reason=f"full CIFAR-10 JPEG copy not found in {SOURCE_DIR}",
)
def test_full_offline_copy_splits_and_statistics():
    splits = datasets.load_splits("cifar10", data_dir=SOURCE_DIR)
    assert len(splits.y_train) == 45000
    assert len(splits.y_validation) == 5000 and len(splits.y_test) == 10000
    np.testing.assert_array_equal(np.bincount(splits.y_validation), [500] * 10)
    mean, std = splits.channel_statistics()
    # ../shared/data/cifar10/README.md, on all 50,000 training images.
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-3)
    np.testing.assert_allclose(std, [0.2452, 0.2428, 0.2606], atol=2e-3)
